//! `resonance history --src A --dst B`: the stored buckets of one pair over
//! a window, read from the agent's store without disturbing it.

use std::{
    io::Write,
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::{
    report::human_ns,
    store::{BucketRow, DB_FILE_NAME, DEFAULT_STATE_DIR, Store, Totals},
};

/// Arguments of `resonance history`.
#[derive(clap::Args)]
pub struct Args {
    /// Source service.
    #[arg(long, required_unless_present = "list")]
    pub src: Option<String>,
    /// Destination service.
    #[arg(long, required_unless_present = "list")]
    pub dst: Option<String>,
    /// List the pairs the store knows (source, destination, kind) instead.
    #[arg(long, conflicts_with_all = ["src", "dst"])]
    pub list: bool,
    /// Start of the window: a duration ago (`1h`, `90m`) or an RFC 3339 time.
    #[arg(long, default_value = "1h", value_parser = parse_time)]
    pub since: TimeArg,
    /// End of the window, same forms as `--since`; default now.
    #[arg(long, value_parser = parse_time)]
    pub until: Option<TimeArg>,
    /// The agent's state folder, holding the store.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// One JSON object per bucket per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A point in time given on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeArg {
    /// That long before now.
    Ago(Duration),
    /// An absolute time.
    At(SystemTime),
}

fn parse_time(text: &str) -> Result<TimeArg, String> {
    if text == "now" {
        return Ok(TimeArg::Ago(Duration::ZERO));
    }
    if let Ok(ago) = humantime::parse_duration(text) {
        return Ok(TimeArg::Ago(ago));
    }
    humantime::parse_rfc3339_weak(text)
        .map(TimeArg::At)
        .map_err(|_| format!("{text:?} is neither a duration (`1h`) nor an RFC 3339 time"))
}

impl TimeArg {
    /// Unix epoch ns, relative to `now`; times before the epoch are 0.
    fn to_ns(self, now: SystemTime) -> u64 {
        let at = match self {
            TimeArg::Ago(ago) => now.checked_sub(ago).unwrap_or(UNIX_EPOCH),
            TimeArg::At(at) => at,
        };
        let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX)
    }
}

/// One line of `--json` output.
#[derive(Serialize)]
struct HistoryRecord<'a> {
    start_ns: u64,
    width_ns: u64,
    src: &'a str,
    dst: &'a str,
    kind: &'a str,
    interactions: u64,
    messages: u64,
    bytes: u64,
    errors: u64,
    latency_p50_ns: Option<u64>,
    latency_p99_ns: Option<u64>,
}

impl<'a> From<&'a BucketRow> for HistoryRecord<'a> {
    fn from(row: &'a BucketRow) -> Self {
        HistoryRecord {
            start_ns: row.start_ns,
            width_ns: row.width_ns,
            src: &row.src,
            dst: &row.dst,
            kind: &row.kind,
            interactions: row.interactions,
            messages: row.messages,
            bytes: row.bytes,
            errors: row.errors,
            latency_p50_ns: row.latency.quantile(0.5),
            latency_p99_ns: row.latency.quantile(0.99),
        }
    }
}

/// Prints the buckets of `--src` to `--dst` in the window.
pub fn run(args: Args) -> Result<()> {
    let now = SystemTime::now();
    let since_ns = args.since.to_ns(now);
    let until_ns = args
        .until
        .unwrap_or(TimeArg::Ago(Duration::ZERO))
        .to_ns(now);
    if until_ns <= since_ns {
        bail!("--until must be later than --since");
    }
    let path = args.state_dir.join(DB_FILE_NAME);
    let store = Store::open_read_only(&path)?;
    let mut out = std::io::stdout().lock();
    if args.list {
        return list_pairs(&mut out, &store, args.json);
    }
    let (Some(src), Some(dst)) = (args.src.as_deref(), args.dst.as_deref()) else {
        bail!("--src and --dst name the pair (or --list shows the pairs known)");
    };
    let rows = store
        .history(src, dst, since_ns, until_ns)
        .with_context(|| format!("reading the history of {src} -> {dst}"))?;
    if rows.is_empty() {
        let known = store.pairs().context("listing known pairs")?;
        eprintln!(
            "no buckets for {src} -> {dst} between {} and {} ({} pairs known; \
             `resonance history --list` names them)",
            rfc3339(since_ns),
            rfc3339(until_ns),
            known.len()
        );
    }
    if args.json {
        for row in &rows {
            serde_json::to_writer(&mut out, &HistoryRecord::from(row)).context("writing JSON")?;
            out.write_all(b"\n").context("writing JSON")?;
        }
    } else if !rows.is_empty() {
        write_table(&mut out, &rows).context("writing the table")?;
    }
    out.flush().context("writing the output")?;
    Ok(())
}

/// `--list`: every pair the store has buckets for, one per line.
fn list_pairs(out: &mut impl Write, store: &Store, json: bool) -> Result<()> {
    let pairs = store.pairs().context("listing known pairs")?;
    for (src, dst, kind) in &pairs {
        if json {
            let record = serde_json::json!({ "src": src, "dst": dst, "kind": kind });
            serde_json::to_writer(&mut *out, &record).context("writing JSON")?;
            out.write_all(b"\n").context("writing JSON")?;
        } else {
            writeln!(out, "{src}\t{dst}\t{kind}").context("writing the list")?;
        }
    }
    out.flush().context("writing the output")?;
    Ok(())
}

fn rfc3339(ns: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
}

fn write_table(out: &mut impl Write, rows: &[BucketRow]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<20} {:>6} {:<12} {:>12} {:>10} {:>14} {:>7} {:>8} {:>8}",
        "START (UTC)",
        "WIDTH",
        "KIND",
        "INTERACTIONS",
        "MESSAGES",
        "BYTES",
        "ERRORS",
        "LAT p50",
        "LAT p99"
    )?;
    for row in rows {
        writeln!(
            out,
            "{:<20} {:>6} {:<12} {:>12} {:>10} {:>14} {:>7} {:>8} {:>8}",
            rfc3339(row.start_ns),
            humantime::format_duration(Duration::from_nanos(row.width_ns)).to_string(),
            row.kind,
            row.interactions,
            row.messages,
            row.bytes,
            row.errors,
            human_ns(row.latency.quantile(0.5)),
            human_ns(row.latency.quantile(0.99)),
        )?;
    }
    let totals = Totals::from_rows(rows);
    writeln!(
        out,
        "total: {} buckets, {} interactions, {} messages, {} bytes, {} errors, latency p50 {} p99 {}",
        totals.buckets,
        totals.interactions,
        totals.messages,
        totals.bytes,
        totals.errors,
        human_ns(totals.latency_p50_ns),
        human_ns(totals.latency_p99_ns),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_durations_ago_or_absolute() {
        let now = UNIX_EPOCH + Duration::from_secs(10_000);
        let ago = parse_time("1h").unwrap();
        assert_eq!(ago.to_ns(now), 6_400 * 1_000_000_000);
        assert_eq!(
            parse_time("now").unwrap().to_ns(now),
            10_000 * 1_000_000_000
        );
        let at = parse_time("1970-01-01T00:01:40Z").unwrap();
        assert_eq!(at.to_ns(now), 100 * 1_000_000_000);
        assert_eq!(
            parse_time("3h").unwrap().to_ns(now),
            0,
            "clamped at the epoch"
        );
        assert!(parse_time("yesterday-ish").is_err());
    }

    fn row(start_s: u64, bytes: u64) -> BucketRow {
        let mut latency = crate::aggregate::Histogram::default();
        latency.record(1_000_000);
        BucketRow {
            start_ns: start_s * 1_000_000_000,
            width_ns: 10_000_000_000,
            resolution: crate::store::Resolution::Fine,
            src: "api".into(),
            dst: "db".into(),
            kind: "unix_stream".into(),
            interactions: 1,
            messages: 2,
            bytes,
            errors: 0,
            latency,
        }
    }

    #[test]
    fn json_lines_carry_the_documented_fields() {
        let line = serde_json::to_value(HistoryRecord::from(&row(100, 7))).unwrap();
        let keys: Vec<&str> = line
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for key in [
            "start_ns",
            "width_ns",
            "src",
            "dst",
            "kind",
            "interactions",
            "messages",
            "bytes",
            "errors",
            "latency_p50_ns",
            "latency_p99_ns",
        ] {
            assert!(keys.contains(&key), "{key} missing from {line}");
        }
        assert_eq!(line["start_ns"], 100_000_000_000u64);
        assert!(line["latency_p50_ns"].as_u64().is_some());
    }

    #[test]
    fn the_table_ends_with_the_totals() {
        let mut out = Vec::new();
        write_table(&mut out, &[row(100, 7), row(110, 5)]).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("1970-01-01T00:01:40Z"), "{text}");
        let last = text.lines().last().unwrap();
        assert!(last.starts_with("total: 2 buckets"), "{last}");
        assert!(last.contains(" 12 bytes"), "{last}");
    }
}
