//! `resonance observe`: load the probes, watch for a while, print who talked
//! to whom.

use std::{io::Write, time::Duration};

use anyhow::{Context, Result};

use crate::{
    observer::{Observer, ObserverOptions},
    probe::ProbeMode,
    report::{InteractionRecord, write_json_lines, write_table},
};

/// Arguments of `resonance observe`.
#[derive(clap::Args)]
pub struct Args {
    /// How long to observe (e.g. `5s`, `2m`).
    #[arg(long, default_value = "5s", value_parser = crate::config::parse_duration)]
    pub duration: Duration,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// How to hook the kernel: tp_btf, raw_tp or tracepoint (default: the
    /// first of these this kernel loads; also RESONANCE_PROBE_MODE).
    #[arg(long, value_parser = parse_probe_mode)]
    pub probe_mode: Option<ProbeMode>,
}

fn parse_probe_mode(value: &str) -> Result<ProbeMode, String> {
    value
        .parse()
        .map_err(|e: crate::probe::ProbeError| e.to_string())
}

/// Runs the observation and prints one record per (source, destination,
/// kind).
pub fn run(args: Args) -> Result<()> {
    let mut observer = Observer::start(&ObserverOptions {
        mode: args.probe_mode,
        ..ObserverOptions::default()
    })?;
    log::info!(
        "{} hooks attached in {} mode; observing for {}",
        observer.attached(),
        observer.mode(),
        humantime::format_duration(args.duration)
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(observer.watch(args.duration))?;
    let records: Vec<InteractionRecord> = observer
        .interactions()
        .iter()
        .map(InteractionRecord::from)
        .collect();
    let stats = observer.stats();
    if stats.dropped > 0 || stats.malformed > 0 {
        log::warn!(
            "{} events lost to a full ring buffer, {} malformed; byte counts are unaffected",
            stats.dropped,
            stats.malformed
        );
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        write_json_lines(&mut out, &records)?;
    } else {
        write_table(&mut out, &records)?;
    }
    out.flush().context("writing to stdout")
}
