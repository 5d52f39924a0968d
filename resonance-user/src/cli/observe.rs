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
    /// Leave latency out: the probes then cost every watched message one
    /// kernel lookup less.
    #[arg(long)]
    pub no_latency: bool,
    /// Only records whose source or destination (comm, executable or
    /// address) or kind contains this text.
    #[arg(long)]
    pub filter: Option<String>,
    /// Only records that carried at least this many bytes.
    #[arg(long, default_value_t = 0)]
    pub min_bytes: u64,
    /// Order of the records, largest first.
    #[arg(long, value_enum)]
    pub sort: Option<SortBy>,
}

/// What `--sort` orders by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    /// Bytes carried.
    Bytes,
    /// Send syscalls.
    Messages,
    /// Failed syscalls and connects.
    Errors,
    /// Median latency.
    Latency,
}

/// Keeps the records `filter` and `min_bytes` let through, in `sort`'s
/// order (largest first; ties keep the observer's order).
pub fn select(
    records: Vec<InteractionRecord>,
    filter: Option<&str>,
    min_bytes: u64,
    sort: Option<SortBy>,
) -> Vec<InteractionRecord> {
    let matches = |r: &InteractionRecord| {
        let Some(text) = filter else { return true };
        [
            Some(r.src_comm.as_str()),
            r.src_exe.as_deref(),
            r.dst_comm.as_deref(),
            r.dst_exe.as_deref(),
            r.dst_addr.as_deref(),
            Some(r.kind.as_str()),
        ]
        .into_iter()
        .flatten()
        .any(|field| field.contains(text))
    };
    let mut kept: Vec<InteractionRecord> = records
        .into_iter()
        .filter(|r| r.bytes >= min_bytes && matches(r))
        .collect();
    if let Some(sort) = sort {
        let key = |r: &InteractionRecord| match sort {
            SortBy::Bytes => r.bytes,
            SortBy::Messages => r.messages,
            SortBy::Errors => r.errors,
            SortBy::Latency => r.latency_p50_ns.unwrap_or(0),
        };
        kept.sort_by_key(|r| std::cmp::Reverse(key(r)));
    }
    kept
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
        latency: !args.no_latency,
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
    let records = select(records, args.filter.as_deref(), args.min_bytes, args.sort);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(src: &str, dst: &str, bytes: u64, errors: u64) -> InteractionRecord {
        InteractionRecord {
            src_pid: 1,
            src_ppid: 0,
            src_comm: src.into(),
            src_exe: None,
            src_cgroup: None,
            dst_pid: Some(2),
            dst_ppid: None,
            dst_comm: Some(dst.into()),
            dst_exe: None,
            dst_cgroup: None,
            dst_addr: None,
            kind: "pipe".into(),
            bytes,
            messages: 1,
            errors,
            latency_p50_ns: None,
            latency_p99_ns: None,
            latency_samples: 0,
            syscall_p50_ns: None,
            syscall_p99_ns: None,
            first_seen_ns: 0,
            last_seen_ns: 0,
        }
    }

    #[test]
    fn filter_min_bytes_and_sort_pick_and_order_the_records() {
        let records = vec![
            record("bash", "bash", 12, 0),
            record("pg_dump", "gzip", 9_000_000, 0),
            record("gzip", "rclone", 3_000_000, 2),
            record("nginx", "php-fpm", 50_000, 0),
        ];
        let names = |rs: &[InteractionRecord]| -> Vec<String> {
            rs.iter()
                .map(|r| format!("{}>{}", r.src_comm, r.dst_comm.as_deref().unwrap_or("")))
                .collect()
        };
        let big = select(records.clone(), None, 1_000, Some(SortBy::Bytes));
        assert_eq!(
            names(&big),
            ["pg_dump>gzip", "gzip>rclone", "nginx>php-fpm"]
        );
        let gzip = select(records.clone(), Some("gzip"), 0, None);
        assert_eq!(names(&gzip), ["pg_dump>gzip", "gzip>rclone"]);
        let failing = select(records, None, 0, Some(SortBy::Errors));
        assert_eq!(names(&failing)[0], "gzip>rclone");
    }
}
