//! `resonance gen-trace`: synthetic traces for named scenarios.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::{scenario, trace::write_trace_file};

/// Arguments of `resonance gen-trace`.
#[derive(clap::Args)]
pub struct Args {
    /// Scenario name: web, cron, pipelines, drift, drift-same-names, batch, sparse, build or churn.
    #[arg(long)]
    pub scenario: String,
    /// Seed of the generator: same seed, same trace.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where to write the trace (JSON Lines).
    #[arg(long)]
    pub output: std::path::PathBuf,
    /// Trace length (default: the scenario's own, e.g. 2h for web).
    #[arg(long, value_parser = crate::config::parse_duration)]
    pub duration: Option<Duration>,
}

/// Writes the trace.
pub fn run(args: Args) -> Result<()> {
    let duration = args
        .duration
        .map(|duration| u64::try_from(duration.as_nanos()).context("--duration is too long"))
        .transpose()?;
    let generated = scenario::generate(&args.scenario, args.seed, duration)?;
    write_trace_file(&args.output, &generated.events)?;
    let change = generated
        .change_ns
        .map(|ts| format!(", behaviour changes at ts_ns {ts}"))
        .unwrap_or_default();
    eprintln!(
        "resonance: wrote {} interactions to {}{change}",
        generated.events.len(),
        args.output.display()
    );
    Ok(())
}
