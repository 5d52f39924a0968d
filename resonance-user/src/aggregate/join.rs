//! Writers joined to readers by channel-end identity.
//!
//! A send flow on end `E` writes to end `P` (its `peer`): for pipes and
//! FIFOs `P == E`, for sockets `P` is the peer socket. Every recv flow *on*
//! `P` reads what the writers of `P` wrote. Bytes are counted where they are
//! sent: with one reader, each writer's count goes to it exactly; with
//! several readers (rare), a writer's bytes are split in proportion to what
//! each reader has read.

use std::collections::{BTreeMap, HashMap};

use resonance_common::{ChannelKind, Direction};

use super::{Histogram, ProcessInfo, ProcessTable};

/// One kernel flow, decoded.
#[derive(Clone, Debug)]
pub struct FlowRecord {
    /// Process id.
    pub pid: u32,
    /// Parent's pid when first seen.
    pub ppid: u32,
    /// comm when first seen.
    pub comm: String,
    /// Channel kind.
    pub kind: ChannelKind,
    /// Direction.
    pub dir: Direction,
    /// End used.
    pub end: u64,
    /// End written to (send) / read from (recv); 0 = unknown.
    pub peer: u64,
    /// Syscalls.
    pub ops: u64,
    /// Bytes.
    pub bytes: u64,
    /// Errors.
    pub errors: u64,
    /// Pipe writes that found the pipe too full to take them at once.
    pub blocked: u64,
    /// Monotonic ns of the first syscall.
    pub first_ns: u64,
    /// Monotonic ns of the latest syscall.
    pub last_ns: u64,
    /// Syscall durations.
    pub syscall: Histogram,
    /// Times this flow started after an idle gap (from ring-buffer events).
    pub starts: u64,
}

/// Latency measured on a channel end (see `EndState`).
pub type EndLatency = HashMap<u64, Histogram>;

/// A connect() that failed, with where it tried to go.
#[derive(Clone, Debug)]
pub struct ConnectFailure {
    /// Who tried.
    pub pid: u32,
    /// Their parent.
    pub ppid: u32,
    /// Their comm.
    pub comm: String,
    /// Channel kind of the socket.
    pub kind: ChannelKind,
    /// The Unix path, if any.
    pub path: Option<String>,
    /// -errno.
    pub ret: i32,
    /// Monotonic ns.
    pub ts_ns: u64,
}

/// Traffic from one process to another over one kind of channel.
#[derive(Clone, Debug)]
pub struct Interaction {
    /// The sender.
    pub src: ProcessInfo,
    /// The receiver; `None` when no reader was seen (yet), or for failed
    /// connects.
    pub dst: Option<ProcessInfo>,
    /// Where a failed connect tried to go.
    pub dst_addr: Option<String>,
    /// Channel kind.
    pub kind: ChannelKind,
    /// Bytes from `src` to `dst`.
    pub bytes: u64,
    /// Send syscalls.
    pub messages: u64,
    /// Times the sender started talking after an idle gap.
    pub interactions: u64,
    /// Failed syscalls on either side, plus failed connects.
    pub errors: u64,
    /// Wait in the pipe (one-way) or request→response turnaround (two-way).
    pub latency: Histogram,
    /// Duration of the send and receive syscalls.
    pub syscall: Histogram,
    /// Monotonic ns of the first activity.
    pub first_ns: u64,
    /// Monotonic ns of the latest activity.
    pub last_ns: u64,
}

/// Joins flows into one interaction per (src pid, dst pid, kind), plus one
/// per (pid, address, kind) of failed connects.
pub fn join(
    flows: &[FlowRecord],
    latency: &EndLatency,
    failures: &[ConnectFailure],
    processes: &mut ProcessTable,
) -> Vec<Interaction> {
    let mut readers: HashMap<(ChannelKind, u64), Vec<&FlowRecord>> = HashMap::new();
    let mut writers: HashMap<(ChannelKind, u64), Vec<&FlowRecord>> = HashMap::new();
    for flow in flows {
        match flow.dir {
            Direction::Recv => readers.entry((flow.kind, flow.end)).or_default().push(flow),
            Direction::Send => writers
                .entry((flow.kind, flow.peer))
                .or_default()
                .push(flow),
        }
    }
    // BTreeMap: output order must not depend on hashing.
    let mut merged: BTreeMap<(u32, u32, ChannelKind, String), Interaction> = BTreeMap::new();
    for (&(kind, target), senders) in &writers {
        let receivers = if target == 0 {
            &[][..]
        } else {
            readers.get(&(kind, target)).map_or(&[][..], Vec::as_slice)
        };
        let total_read: u64 = receivers.iter().map(|r| r.bytes).sum();
        for writer in senders {
            let end_latency = latency
                .get(if kind.is_one_way() {
                    &target
                } else {
                    &writer.end
                })
                .cloned()
                .unwrap_or_default();
            if receivers.is_empty() {
                let piece = Piece {
                    bytes: writer.bytes,
                    messages: writer.ops,
                    interactions: writer.starts,
                    errors: writer.errors,
                    first_ns: writer.first_ns,
                    last_ns: writer.last_ns,
                };
                add(
                    &mut merged,
                    processes,
                    writer,
                    None,
                    kind,
                    piece,
                    &end_latency,
                    &writer.syscall,
                );
                continue;
            }
            for reader in receivers {
                let bytes = if receivers.len() == 1 {
                    writer.bytes
                } else {
                    share(writer.bytes, reader.bytes, total_read)
                };
                let messages = if receivers.len() == 1 {
                    writer.ops
                } else {
                    share(writer.ops, reader.bytes, total_read)
                };
                let errors = if receivers.len() == 1 {
                    writer.errors
                } else {
                    0
                } + if senders.len() == 1 { reader.errors } else { 0 };
                let mut syscall = writer.syscall.clone();
                syscall.merge(&reader.syscall);
                let piece = Piece {
                    bytes,
                    messages,
                    interactions: writer.starts,
                    errors,
                    first_ns: writer.first_ns.min(reader.first_ns),
                    last_ns: writer.last_ns.max(reader.last_ns),
                };
                add(
                    &mut merged,
                    processes,
                    writer,
                    Some(reader),
                    kind,
                    piece,
                    &end_latency,
                    &syscall,
                );
            }
        }
    }
    for failure in failures {
        let src = processes
            .see(failure.pid, failure.ppid, &failure.comm)
            .clone();
        let address = failure.path.clone().unwrap_or_default();
        let entry = merged
            .entry((failure.pid, 0, failure.kind, address))
            .or_insert_with(|| Interaction {
                src,
                dst: None,
                dst_addr: failure.path.clone(),
                kind: failure.kind,
                bytes: 0,
                messages: 0,
                interactions: 0,
                errors: 0,
                latency: Histogram::default(),
                syscall: Histogram::default(),
                first_ns: failure.ts_ns,
                last_ns: failure.ts_ns,
            });
        entry.errors += 1;
        entry.first_ns = entry.first_ns.min(failure.ts_ns);
        entry.last_ns = entry.last_ns.max(failure.ts_ns);
    }
    merged.into_values().collect()
}

/// Figures of one writer→reader pairing before merging.
struct Piece {
    bytes: u64,
    messages: u64,
    interactions: u64,
    errors: u64,
    first_ns: u64,
    last_ns: u64,
}

#[allow(clippy::too_many_arguments)]
fn add(
    merged: &mut BTreeMap<(u32, u32, ChannelKind, String), Interaction>,
    processes: &mut ProcessTable,
    writer: &FlowRecord,
    reader: Option<&FlowRecord>,
    kind: ChannelKind,
    piece: Piece,
    latency: &Histogram,
    syscall: &Histogram,
) {
    let src = processes.see(writer.pid, writer.ppid, &writer.comm).clone();
    let dst = reader.map(|r| processes.see(r.pid, r.ppid, &r.comm).clone());
    let key = (writer.pid, reader.map_or(0, |r| r.pid), kind, String::new());
    let entry = merged.entry(key).or_insert_with(|| Interaction {
        src,
        dst,
        dst_addr: None,
        kind,
        bytes: 0,
        messages: 0,
        interactions: 0,
        errors: 0,
        latency: Histogram::default(),
        syscall: Histogram::default(),
        first_ns: piece.first_ns,
        last_ns: piece.last_ns,
    });
    entry.bytes += piece.bytes;
    entry.messages += piece.messages;
    entry.interactions += piece.interactions;
    entry.errors += piece.errors;
    entry.latency.merge(latency);
    entry.syscall.merge(syscall);
    entry.first_ns = entry.first_ns.min(piece.first_ns);
    entry.last_ns = entry.last_ns.max(piece.last_ns);
}

/// `amount * part / whole`, rounded, without overflow.
fn share(amount: u64, part: u64, whole: u64) -> u64 {
    if whole == 0 {
        return 0;
    }
    ((u128::from(amount) * u128::from(part) + u128::from(whole) / 2) / u128::from(whole)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(
        pid: u32,
        kind: ChannelKind,
        dir: Direction,
        end: u64,
        peer: u64,
        bytes: u64,
    ) -> FlowRecord {
        FlowRecord {
            pid,
            ppid: 1,
            comm: format!("p{pid}"),
            kind,
            dir,
            end,
            peer,
            ops: bytes / 10,
            bytes,
            errors: 0,
            blocked: 0,
            first_ns: 100 + u64::from(pid),
            last_ns: 200 + u64::from(pid),
            syscall: Histogram::default(),
            starts: 1,
        }
    }

    #[test]
    fn a_pipe_joins_its_writer_to_its_reader() {
        let flows = [
            flow(10, ChannelKind::Pipe, Direction::Send, 7, 7, 1000),
            flow(11, ChannelKind::Pipe, Direction::Recv, 7, 7, 990),
        ];
        let mut latency = EndLatency::new();
        let mut waits = Histogram::default();
        waits.record(5_000);
        latency.insert(7, waits);
        let out = join(&flows, &latency, &[], &mut ProcessTable::default());
        assert_eq!(out.len(), 1);
        let pipe = &out[0];
        assert_eq!(
            (pipe.src.pid, pipe.dst.as_ref().map(|d| d.pid)),
            (10, Some(11))
        );
        // Bytes count where they are sent.
        assert_eq!(pipe.bytes, 1000);
        assert_eq!(pipe.messages, 100);
        assert_eq!(pipe.latency.count(), 1);
        assert_eq!((pipe.first_ns, pipe.last_ns), (110, 211));
    }

    #[test]
    fn a_socket_pair_gives_one_interaction_each_way() {
        let flows = [
            flow(20, ChannelKind::UnixStream, Direction::Send, 1, 2, 300),
            flow(21, ChannelKind::UnixStream, Direction::Recv, 2, 1, 300),
            flow(21, ChannelKind::UnixStream, Direction::Send, 2, 1, 7000),
            flow(20, ChannelKind::UnixStream, Direction::Recv, 1, 2, 7000),
        ];
        let out = join(
            &flows,
            &EndLatency::new(),
            &[],
            &mut ProcessTable::default(),
        );
        let pairs: Vec<_> = out
            .iter()
            .map(|i| (i.src.pid, i.dst.as_ref().map(|d| d.pid), i.bytes))
            .collect();
        assert_eq!(pairs, vec![(20, Some(21), 300), (21, Some(20), 7000)]);
    }

    #[test]
    fn a_writer_with_several_readers_splits_by_what_each_read() {
        let flows = [
            flow(1, ChannelKind::Pipe, Direction::Send, 9, 9, 1000),
            flow(3, ChannelKind::Pipe, Direction::Recv, 9, 9, 300),
            flow(4, ChannelKind::Pipe, Direction::Recv, 9, 9, 100),
        ];
        let out = join(
            &flows,
            &EndLatency::new(),
            &[],
            &mut ProcessTable::default(),
        );
        let to = |pid| {
            out.iter()
                .find(|i| i.dst.as_ref().map(|d| d.pid) == Some(pid))
                .unwrap()
                .bytes
        };
        assert_eq!((to(3), to(4)), (750, 250));
    }

    #[test]
    fn several_writers_and_readers_split_bytes_in_proportion() {
        let flows = [
            flow(1, ChannelKind::Fifo, Direction::Send, 9, 9, 600),
            flow(2, ChannelKind::Fifo, Direction::Send, 9, 9, 400),
            flow(3, ChannelKind::Fifo, Direction::Recv, 9, 9, 750),
            flow(4, ChannelKind::Fifo, Direction::Recv, 9, 9, 250),
        ];
        let out = join(
            &flows,
            &EndLatency::new(),
            &[],
            &mut ProcessTable::default(),
        );
        let total: u64 = out.iter().map(|i| i.bytes).sum();
        assert_eq!(total, 1000);
        let one_to_three = out
            .iter()
            .find(|i| i.src.pid == 1 && i.dst.as_ref().map(|d| d.pid) == Some(3))
            .unwrap();
        assert_eq!(one_to_three.bytes, 450);
    }

    #[test]
    fn unread_sends_and_failed_connects_have_no_destination() {
        let flows = [flow(5, ChannelKind::UnixDgram, Direction::Send, 3, 0, 64)];
        let failures = [ConnectFailure {
            pid: 6,
            ppid: 1,
            comm: "client".into(),
            kind: ChannelKind::UnixStream,
            path: Some("/nowhere".into()),
            ret: -2,
            ts_ns: 5,
        }];
        let out = join(
            &flows,
            &EndLatency::new(),
            &failures,
            &mut ProcessTable::default(),
        );
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|i| i.dst.is_none()));
        let failed = out.iter().find(|i| i.src.pid == 6).unwrap();
        assert_eq!(
            (failed.errors, failed.dst_addr.as_deref()),
            (1, Some("/nowhere"))
        );
    }
}
