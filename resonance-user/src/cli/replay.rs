//! `resonance replay TRACE`: preallocation simulated over a trace.

use anyhow::{Result, bail};

/// Arguments of `resonance replay`.
#[derive(clap::Args)]
pub struct Args {
    /// The trace (JSON Lines, one interaction start per line).
    pub trace: std::path::PathBuf,
}

/// Runs the replay.
pub fn run(_args: Args) -> Result<()> {
    bail!("replay is not implemented yet")
}
