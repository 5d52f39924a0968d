//! How interactions are printed: one JSON object per line, or a table.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};

use crate::aggregate::Interaction;

/// One interaction as printed by `resonance observe --json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct InteractionRecord {
    /// Sender pid.
    pub src_pid: u32,
    /// Sender's parent pid.
    pub src_ppid: u32,
    /// Sender comm.
    pub src_comm: String,
    /// Sender executable.
    pub src_exe: Option<String>,
    /// Sender cgroup.
    pub src_cgroup: Option<String>,
    /// Receiver pid (null when none was seen).
    pub dst_pid: Option<u32>,
    /// Receiver's parent pid.
    pub dst_ppid: Option<u32>,
    /// Receiver comm.
    pub dst_comm: Option<String>,
    /// Receiver executable.
    pub dst_exe: Option<String>,
    /// Receiver cgroup.
    pub dst_cgroup: Option<String>,
    /// Address of a failed connect.
    pub dst_addr: Option<String>,
    /// `pipe`, `fifo`, `unix_stream`, `unix_dgram`, `unix_seqpacket`,
    /// `tcp_loopback`.
    pub kind: String,
    /// Bytes sent from src to dst.
    pub bytes: u64,
    /// Send syscalls.
    pub messages: u64,
    /// Failed syscalls and connects.
    pub errors: u64,
    /// Median wait in the pipe (one-way) or turnaround (two-way), ns.
    pub latency_p50_ns: Option<u64>,
    /// 99th percentile of the same.
    pub latency_p99_ns: Option<u64>,
    /// Latency samples behind the percentiles.
    pub latency_samples: u64,
    /// Median send/receive syscall duration, ns.
    pub syscall_p50_ns: Option<u64>,
    /// 99th percentile of the same.
    pub syscall_p99_ns: Option<u64>,
    /// First activity, Unix epoch ns.
    pub first_seen_ns: u64,
    /// Latest activity, Unix epoch ns.
    pub last_seen_ns: u64,
}

impl From<&Interaction> for InteractionRecord {
    fn from(i: &Interaction) -> Self {
        Self {
            src_pid: i.src.pid,
            src_ppid: i.src.ppid,
            src_comm: i.src.comm.clone(),
            src_exe: i.src.exe.clone(),
            src_cgroup: i.src.cgroup.clone(),
            dst_pid: i.dst.as_ref().map(|d| d.pid),
            dst_ppid: i.dst.as_ref().map(|d| d.ppid),
            dst_comm: i.dst.as_ref().map(|d| d.comm.clone()),
            dst_exe: i.dst.as_ref().and_then(|d| d.exe.clone()),
            dst_cgroup: i.dst.as_ref().and_then(|d| d.cgroup.clone()),
            dst_addr: i.dst_addr.clone(),
            kind: i.kind.as_str().to_owned(),
            bytes: i.bytes,
            messages: i.messages,
            errors: i.errors,
            latency_p50_ns: i.latency.quantile(0.5),
            latency_p99_ns: i.latency.quantile(0.99),
            latency_samples: i.latency.count(),
            syscall_p50_ns: i.syscall.quantile(0.5),
            syscall_p99_ns: i.syscall.quantile(0.99),
            first_seen_ns: i.first_ns,
            last_seen_ns: i.last_ns,
        }
    }
}

/// Writes one JSON object per line.
pub fn write_json_lines(out: &mut impl Write, records: &[InteractionRecord]) -> io::Result<()> {
    for record in records {
        serde_json::to_writer(&mut *out, record)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Writes an aligned table for people.
pub fn write_table(out: &mut impl Write, records: &[InteractionRecord]) -> io::Result<()> {
    writeln!(
        out,
        "{:<24} {:<24} {:<14} {:>14} {:>10} {:>7} {:>10} {:>10}",
        "SOURCE", "DESTINATION", "KIND", "BYTES", "MESSAGES", "ERRORS", "LAT p50", "LAT p99"
    )?;
    for r in records {
        let src = format!("{}[{}]", r.src_comm, r.src_pid);
        let dst = match (&r.dst_comm, r.dst_pid, &r.dst_addr) {
            (Some(comm), Some(pid), _) => format!("{comm}[{pid}]"),
            (_, _, Some(addr)) => addr.clone(),
            _ => "?".to_owned(),
        };
        writeln!(
            out,
            "{:<24} {:<24} {:<14} {:>14} {:>10} {:>7} {:>10} {:>10}",
            src,
            dst,
            r.kind,
            r.bytes,
            r.messages,
            r.errors,
            human_ns(r.latency_p50_ns),
            human_ns(r.latency_p99_ns)
        )?;
    }
    Ok(())
}

/// A latency in the largest unit that keeps three or four digits; `-` for none.
pub fn human_ns(ns: Option<u64>) -> String {
    match ns {
        None => "-".to_owned(),
        Some(ns) if ns < 10_000 => format!("{ns}ns"),
        Some(ns) if ns < 10_000_000 => format!("{}us", ns / 1_000),
        Some(ns) if ns < 10_000_000_000 => format!("{}ms", ns / 1_000_000),
        Some(ns) => format!("{}s", ns / 1_000_000_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_in_readable_units() {
        assert_eq!(human_ns(None), "-");
        assert_eq!(human_ns(Some(950)), "950ns");
        assert_eq!(human_ns(Some(45_000)), "45us");
        assert_eq!(human_ns(Some(52_000_000)), "52ms");
    }
}
