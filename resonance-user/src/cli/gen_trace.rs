//! `resonance gen-trace`: synthetic traces for named scenarios.

use anyhow::{Result, bail};

/// Arguments of `resonance gen-trace`.
#[derive(clap::Args)]
pub struct Args {
    /// Scenario name.
    #[arg(long)]
    pub scenario: String,
}

/// Writes the trace.
pub fn run(_args: Args) -> Result<()> {
    bail!("gen-trace is not implemented yet")
}
