//! `resonance observe`: load the probes, watch for a while, print who talked
//! to whom.

use anyhow::{Result, bail};

/// Arguments of `resonance observe`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs the observation.
pub fn run(_args: Args) -> Result<()> {
    bail!("observe is not implemented yet")
}
