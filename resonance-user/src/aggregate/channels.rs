//! What the probes saw on the channels the broker handed out (an observe
//! stage: the broker only says which inodes to look at).
//!
//! The broker records the inode numbers of both ends of every channel it
//! creates ([`Watched`]); the kernel keys its flows by those same numbers,
//! so each tick the agent picks the flows of watched channels out of the
//! observer's cumulative snapshot ([`measure`]) and hands the broker one
//! [`ChannelMeasure`] per channel. Nothing here trusts the clients: a
//! requester may also report usage, but these figures come from the kernel.

use std::collections::HashMap;

use resonance_common::{ChannelKind, Direction};
use serde::{Deserialize, Serialize};

use super::{EndLatency, FlowRecord};

/// A channel the broker created, as the probes will see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watched {
    /// The broker's channel id.
    pub channel: u64,
    /// Requester name, service.
    pub pair: (String, String),
    /// Pipe, or a socketpair's kind.
    pub kind: ChannelKind,
    /// Inode of the requester's end (a pipe's only inode).
    pub requester_end: u64,
    /// Inode of the responder's end (equal to `requester_end` for a pipe).
    pub responder_end: u64,
    /// CLOCK_MONOTONIC ns when both ends were sent.
    pub delivered_ns: u64,
    /// Buffer capacity the channel got, bytes.
    pub capacity: u32,
}

impl Watched {
    fn has_end(&self, end: u64) -> bool {
        end == self.requester_end || end == self.responder_end
    }
}

/// Cumulative figures of one channel since it was delivered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelMeasure {
    /// Bytes written into the channel (both directions).
    pub sent: u64,
    /// Bytes read out of it.
    pub received: u64,
    /// Write-like syscalls.
    pub writes: u64,
    /// Read-like syscalls.
    pub reads: u64,
    /// Failed syscalls on it.
    pub errors: u64,
    /// Writes that found a pipe too full to take them at once.
    pub blocked_writes: u64,
    /// Monotonic ns of the first syscall on it (0 = never used).
    pub first_use_ns: u64,
    /// Monotonic ns of the latest.
    pub last_use_ns: u64,
    /// Pipes: median time data waited before the reader took it, ns.
    pub wait_p50_ns: Option<u64>,
    /// Socketpairs: median turnaround of the requester's sends, ns.
    pub turnaround_p50_ns: Option<u64>,
}

impl ChannelMeasure {
    /// Whether any byte moved through the channel. Syscalls alone do not
    /// count: a revoked channel's peer reads end-of-file (0 bytes) when
    /// the other end is dropped, and an unused channel is not used for it.
    pub fn used(&self) -> bool {
        self.sent + self.received > 0
    }

    /// Time from delivery to first use, ns.
    pub fn time_to_first_use_ns(&self, delivered_ns: u64) -> Option<u64> {
        self.used()
            .then(|| self.first_use_ns.saturating_sub(delivered_ns))
    }

    /// Bytes per second written over the span the channel was in use
    /// (`None` for fewer than two syscalls' worth of span).
    pub fn throughput_bytes_per_s(&self) -> Option<f64> {
        let span = self.last_use_ns.checked_sub(self.first_use_ns)?;
        (span > 0).then(|| self.sent as f64 * 1e9 / span as f64)
    }
}

/// The figures of every watched channel the flows mention (channels with
/// no flow yet are left out: unused so far). `flows` are cumulative
/// counters as the kernel keeps them; `latency` is per-end latency.
pub fn measure<'a>(
    watched: &[Watched],
    flows: impl IntoIterator<Item = &'a FlowRecord>,
    latency: &EndLatency,
) -> HashMap<u64, ChannelMeasure> {
    let mut by_end: HashMap<u64, usize> = HashMap::with_capacity(watched.len() * 2);
    for (index, channel) in watched.iter().enumerate() {
        by_end.insert(channel.requester_end, index);
        by_end.insert(channel.responder_end, index);
    }
    let mut measures: HashMap<u64, ChannelMeasure> = HashMap::new();
    for flow in flows {
        let Some(&index) = by_end.get(&flow.end) else {
            continue;
        };
        let channel = &watched[index];
        // An inode number is reused once the channel is gone: a flow that
        // began before the delivery belongs to an older object.
        if flow.kind != channel.kind
            || flow.first_ns < channel.delivered_ns
            || !channel.has_end(flow.end)
        {
            continue;
        }
        let m = measures.entry(channel.channel).or_default();
        match flow.dir {
            Direction::Send => {
                m.sent += flow.bytes;
                m.writes += flow.ops;
                m.blocked_writes += flow.blocked;
            }
            Direction::Recv => {
                m.received += flow.bytes;
                m.reads += flow.ops;
            }
        }
        m.errors += flow.errors;
        // Use is bytes moving (see `ChannelMeasure::used`).
        if flow.bytes > 0 {
            m.first_use_ns = if m.first_use_ns == 0 {
                flow.first_ns
            } else {
                m.first_use_ns.min(flow.first_ns)
            };
            m.last_use_ns = m.last_use_ns.max(flow.last_ns);
        }
    }
    for (channel_id, m) in &mut measures {
        let Some(channel) = watched.iter().find(|w| w.channel == *channel_id) else {
            continue;
        };
        let p50 = latency
            .get(&channel.requester_end)
            .and_then(|h| h.quantile(0.5));
        if channel.kind.is_one_way() {
            m.wait_p50_ns = p50;
        } else {
            m.turnaround_p50_ns = p50;
        }
    }
    measures
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Histogram;

    fn flow(pid: u32, kind: ChannelKind, dir: Direction, end: u64, ops: u64) -> FlowRecord {
        FlowRecord {
            pid,
            ppid: 1,
            comm: format!("p{pid}"),
            kind,
            dir,
            end,
            peer: end,
            ops,
            bytes: ops * 100,
            errors: 0,
            blocked: if dir == Direction::Send { 2 } else { 0 },
            first_ns: 1_000 + u64::from(pid),
            last_ns: 5_000,
            syscall: Histogram::default(),
            starts: 1,
        }
    }

    fn pipe(channel: u64, ino: u64, delivered_ns: u64) -> Watched {
        Watched {
            channel,
            pair: ("web".into(), "db".into()),
            kind: ChannelKind::Pipe,
            requester_end: ino,
            responder_end: ino,
            delivered_ns,
            capacity: 4096,
        }
    }

    #[test]
    fn flows_on_a_watched_pipe_add_up_and_others_are_ignored() {
        let watched = [pipe(7, 42, 500)];
        let flows = [
            flow(10, ChannelKind::Pipe, Direction::Send, 42, 3),
            flow(11, ChannelKind::Pipe, Direction::Recv, 42, 2),
            flow(12, ChannelKind::Pipe, Direction::Send, 43, 9),
        ];
        let mut latency = EndLatency::new();
        let mut wait = Histogram::default();
        wait.record(20_000);
        latency.insert(42, wait);
        let measures = measure(&watched, &flows, &latency);
        assert_eq!(measures.len(), 1);
        let m = measures[&7];
        assert_eq!((m.sent, m.received, m.writes, m.reads), (300, 200, 3, 2));
        assert_eq!(m.blocked_writes, 2);
        assert_eq!(m.first_use_ns, 1_010);
        assert_eq!(m.time_to_first_use_ns(500), Some(510));
        assert!(m.wait_p50_ns.is_some_and(|p| p > 10_000 && p < 40_000));
        assert_eq!(m.turnaround_p50_ns, None);
        assert!(m.throughput_bytes_per_s().is_some_and(|t| t > 0.0));
    }

    /// A revoked channel: the responder's read finds end-of-file when the
    /// requester drops its end. That read moved nothing, so the channel
    /// counts unused (it once made used channels equal created ones).
    #[test]
    fn an_end_of_file_read_does_not_make_a_channel_used() {
        let watched = [pipe(7, 42, 500)];
        let eof = FlowRecord {
            bytes: 0,
            ..flow(11, ChannelKind::Pipe, Direction::Recv, 42, 1)
        };
        let m = measure(&watched, &[eof], &EndLatency::new())[&7];
        assert_eq!(m.reads, 1);
        assert!(!m.used());
        assert_eq!(m.time_to_first_use_ns(500), None);
        assert_eq!(m.first_use_ns, 0);
    }

    #[test]
    fn a_flow_older_than_the_delivery_is_a_reused_inode_not_the_channel() {
        let watched = [pipe(7, 42, 2_000)];
        let flows = [flow(10, ChannelKind::Pipe, Direction::Send, 42, 3)];
        assert!(measure(&watched, &flows, &EndLatency::new()).is_empty());
    }

    #[test]
    fn a_socketpair_is_measured_from_both_ends_with_the_requesters_turnaround() {
        let watched = [Watched {
            channel: 3,
            pair: ("web".into(), "db".into()),
            kind: ChannelKind::UnixStream,
            requester_end: 100,
            responder_end: 101,
            delivered_ns: 0,
            capacity: 65_536,
        }];
        let flows = [
            flow(1, ChannelKind::UnixStream, Direction::Send, 100, 4),
            flow(2, ChannelKind::UnixStream, Direction::Recv, 101, 4),
            flow(2, ChannelKind::UnixStream, Direction::Send, 101, 4),
            flow(1, ChannelKind::UnixStream, Direction::Recv, 100, 4),
        ];
        let mut latency = EndLatency::new();
        let mut turnaround = Histogram::default();
        turnaround.record(1_000_000);
        latency.insert(100, turnaround);
        let m = measure(&watched, &flows, &latency)[&3];
        assert_eq!((m.sent, m.received), (800, 800));
        assert!(m.turnaround_p50_ns.is_some());
        assert_eq!(m.wait_p50_ns, None);
        assert!(m.used());
    }
}
