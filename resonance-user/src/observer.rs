//! An observation session: probes loaded, events drained, flows read.
//!
//! [`Observer::start`] runs the preflight checks, reads offsets from BTF and
//! attaches the probes. [`Observer::drain_events`] decodes what the ring
//! buffer holds into the process table; [`Observer::interactions`] reads the
//! flow maps and joins them. [`Observer::watch`] drains asynchronously for a
//! while, waking only when the kernel has written something.

use std::{collections::HashMap, os::fd::AsFd, time::Duration};

use anyhow::{Context, Result};
use resonance_common::{ChannelKind, Direction, FlowKey, ProbeConfig};
use tokio::io::unix::AsyncFd;

use crate::{
    aggregate::{
        ConnectFailure, EndLatency, FlowRecord, Histogram, Interaction, ProcessTable, join,
    },
    decode::{DecodeError, Happening, KernelEvent, c_string, decode},
    probe::{ProbeError, ProbeMode, ProbeSet, Probes, preflight, read_offsets},
};

/// How the observer is set up.
#[derive(Clone, Debug)]
pub struct ObserverOptions {
    /// A flow silent this long emits a new `FlowStarted`.
    pub idle_gap: Duration,
    /// Which programs to attach (benchmarks measure the bare hooks too).
    pub probe_set: ProbeSet,
    /// The mode to attach in; `None`: [`ProbeMode::from_env`], else the
    /// best this kernel loads.
    pub mode: Option<ProbeMode>,
    /// Whether the probes time how long data waits in pipes and how long
    /// socket requests wait for their answers. Off, every followed message
    /// costs the kernel one hash lookup less, and interactions carry no
    /// latency (scores then rank every pair's latency as middling).
    pub latency: bool,
}

impl Default for ObserverOptions {
    fn default() -> Self {
        Self {
            idle_gap: Duration::from_secs(1),
            probe_set: ProbeSet::Observer,
            mode: None,
            latency: true,
        }
    }
}

/// Counters about the observer itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObserverStats {
    /// Ring-buffer records decoded.
    pub events: u64,
    /// Records that did not decode.
    pub malformed: u64,
    /// Reservations the kernel could not make (ring buffer full).
    pub dropped: u64,
    /// Flows in the kernel map at the last read.
    pub flows: u64,
    /// Full-pipe reports left out because nobody took the earlier ones.
    pub pipe_full_dropped: u64,
    /// Descriptor entries freed with counts not yet moved, whose counts a
    /// move took before deleting them.
    pub retired_fd_entries: u64,
}

/// A process starting to send after an idle gap, and who reads it.
#[derive(Clone, Debug)]
pub struct InteractionStart {
    /// Unix epoch ns.
    pub ts_ns: u64,
    /// The sender.
    pub src: crate::aggregate::ProcessInfo,
    /// The readers of the end it writes to (empty if none seen yet).
    pub dst: Vec<crate::aggregate::ProcessInfo>,
    /// Channel kind.
    pub kind: ChannelKind,
}

/// A writer that found its pipe full, or a reader that found it full (see
/// [`Happening::PipeFull`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipeFull {
    /// Monotonic ns.
    pub ts_ns: u64,
    /// The writing or reading process.
    pub pid: u32,
    /// Which of the two it is.
    pub dir: Direction,
    /// Its descriptor for the pipe.
    pub fd: i32,
    /// The pipe (or FIFO) end id, as in the flows.
    pub end: crate::decode::End,
    /// Bytes the write moved.
    pub bytes: u32,
}

/// Full-pipe reports kept between two [`Observer::take_pipe_full`] calls;
/// more are counted in [`ObserverStats::pipe_full_dropped`], not queued.
const MAX_PIPE_FULL: usize = 1024;

/// A running observation.
pub struct Observer {
    probes: Probes,
    processes: ProcessTable,
    failures: Vec<ConnectFailure>,
    /// Send-side starts not yet handed out by [`Observer::interaction_starts`].
    pending_starts: Vec<PendingStart>,
    /// Full-pipe reports not yet handed out by [`Observer::take_pipe_full`].
    pipe_full: Vec<PipeFull>,
    /// Where datagram ends without a peer send: end → Unix path, and the
    /// path's receiver from `/proc/net/unix`.
    addressed: crate::aggregate::unix_names::Addressed,
    /// How many times [`Observer::interval`] has read the maps.
    intervals: u64,
    /// Flow starts per (pid, kind, dir, end), cumulative like the flows.
    starts: HashMap<FlowId, u64>,
    /// Readings at the last [`Observer::interval`], to turn cumulative
    /// kernel counters into deltas.
    previous: Previous,
    stats: ObserverStats,
    clock: Clock,
}

/// How long [`Observer::interval`] waits for the reader of a new writer to
/// show up before counting its bytes as sent to nobody seen.
const READER_GRACE_NS: u64 = 2_000_000_000;

/// How long the flows of a process that is gone stay in the kernel map
/// after their last syscall: past [`READER_GRACE_NS`], so that a writer
/// held back for its reader, or a start waiting for the readers of its
/// end, still finds them (forgotten at once, the pairing lost them).
const FORGET_AFTER_NS: u64 = 2 * READER_GRACE_NS;

/// Identifies a flow the way the kernel map key does.
type FlowId = (u32, ChannelKind, Direction, u64);

#[derive(Default)]
struct Previous {
    flows: HashMap<FlowId, FlowRecord>,
    ends: EndLatency,
    /// Reading pids per (kind, end), built once per interval so that
    /// resolving a start between intervals costs a lookup, not a walk.
    readers: HashMap<(ChannelKind, u64), Vec<u32>>,
}

/// A send-side flow start waiting for its readers to be known.
struct PendingStart {
    event: KernelEvent,
    /// The [`Observer::interval`] count when it arrived: once another
    /// interval has read the maps, it goes out with whatever was found.
    interval: u64,
}

impl Observer {
    /// Checks the machine, reads offsets from BTF and attaches the probes.
    pub fn start(options: &ObserverOptions) -> Result<Self, ProbeError> {
        preflight()?;
        let offsets = read_offsets(std::path::Path::new(crate::probe::VMLINUX_BTF))?;
        let config = ProbeConfig {
            agent_tgid: std::process::id(),
            latency: u32::from(options.latency),
            idle_gap_ns: u64::try_from(options.idle_gap.as_nanos()).unwrap_or(u64::MAX),
            page_size: crate::sys::page_size().map_err(ProbeError::PageSize)?,
        };
        let mode = match options.mode {
            Some(mode) => Some(mode),
            None => ProbeMode::from_env()?,
        };
        let probes = Probes::load_set(&offsets, &config, options.probe_set, mode)?;
        Ok(Self {
            probes,
            processes: ProcessTable::default(),
            failures: Vec::new(),
            pending_starts: Vec::new(),
            pipe_full: Vec::new(),
            addressed: Default::default(),
            intervals: 0,
            starts: HashMap::new(),
            previous: Previous::default(),
            stats: ObserverStats::default(),
            clock: Clock::now(),
        })
    }

    /// Decodes everything the ring buffer holds now; returns how many.
    pub fn drain_events(&mut self) -> usize {
        let mut drained = 0;
        loop {
            // Decode inside the borrow of the ring buffer, apply after it.
            let decoded = match self.probes.events.next() {
                Some(record) => decode(&record),
                None => break,
            };
            drained += 1;
            match decoded {
                Ok(event) => {
                    self.stats.events += 1;
                    self.apply(event);
                }
                Err(error) => {
                    self.stats.malformed += 1;
                    log_malformed(&error);
                }
            }
        }
        drained
    }

    /// Reads and discards everything the ring buffer holds, counting the
    /// records: the raw read rate the benchmark compares the pipeline with.
    pub fn drain_raw(&mut self) -> usize {
        let mut drained = 0;
        while let Some(record) = self.probes.events.next() {
            drained += usize::from(!record.is_empty());
        }
        drained
    }

    fn apply(&mut self, event: KernelEvent) {
        let task = &event.task;
        match &event.what {
            Happening::Exited => {
                self.processes
                    .exited(task.pid, task.ppid, &task.comm, event.ts_ns)
            }
            Happening::Connected { end, ret, path } => {
                self.processes.see(task.pid, task.ppid, &task.comm);
                if connect_failed(*ret) {
                    self.failures.push(ConnectFailure {
                        pid: task.pid,
                        ppid: task.ppid,
                        comm: task.comm.clone(),
                        kind: end.kind,
                        path: path.clone(),
                        ret: *ret,
                        ts_ns: event.ts_ns,
                    });
                }
            }
            Happening::FlowStarted { end, dir } => {
                self.processes.see(task.pid, task.ppid, &task.comm);
                *self
                    .starts
                    .entry((task.pid, end.kind, *dir, end.id))
                    .or_default() += 1;
                if *dir == Direction::Send {
                    self.pending_starts.push(PendingStart {
                        event: event.clone(),
                        interval: self.intervals,
                    });
                }
            }
            Happening::Bound { end, path } => {
                self.processes.see(task.pid, task.ppid, &task.comm);
                if let Some(path) = path {
                    self.addressed.bound(path.clone(), end.id);
                }
            }
            Happening::Addressed { end, path } => {
                self.processes.see(task.pid, task.ppid, &task.comm);
                if let Some(path) = path {
                    self.addressed
                        .sends_to(end.id, path.clone(), monotonic_ns());
                }
            }
            Happening::PipeFull {
                end,
                dir,
                fd,
                bytes,
            } => {
                self.processes.see(task.pid, task.ppid, &task.comm);
                if self.pipe_full.len() < MAX_PIPE_FULL {
                    self.pipe_full.push(PipeFull {
                        ts_ns: event.ts_ns,
                        pid: task.pid,
                        dir: *dir,
                        fd: *fd,
                        end: *end,
                        bytes: *bytes,
                    });
                } else {
                    self.stats.pipe_full_dropped += 1;
                }
            }
            Happening::Created { .. } | Happening::Accepted { .. } | Happening::Closed { .. } => {
                self.processes.see(task.pid, task.ppid, &task.comm);
            }
        }
    }

    /// Send-side flow starts, each joined to the processes reading the end
    /// it writes to, as soon as those are known: at once for an end whose
    /// readers an earlier [`Observer::interval`] saw (a request on a
    /// long-lived connection), else after the next interval has read the
    /// maps (a new pipeline), then with the readers found, possibly none.
    /// Each start is returned once. Times are Unix epoch ns.
    pub fn interaction_starts(&mut self) -> Vec<InteractionStart> {
        let mut out = Vec::new();
        let mut waiting = Vec::new();
        for pending in std::mem::take(&mut self.pending_starts) {
            let Happening::FlowStarted { end, .. } = &pending.event.what else {
                continue;
            };
            let pid = pending.event.task.pid;
            let writer = self
                .previous
                .flows
                .get(&(pid, end.kind, Direction::Send, end.id));
            let peer = writer.map_or(end.peer, |w| w.peer);
            let readers = self.previous.readers.get(&(end.kind, peer));
            if readers.is_none() && pending.interval == self.intervals {
                waiting.push(pending);
                continue;
            }
            let Some(src) = self.processes.get(pid).cloned() else {
                continue;
            };
            let dst = readers
                .into_iter()
                .flatten()
                .filter(|reader| **reader != pid)
                .filter_map(|reader| self.processes.get(*reader).cloned())
                .collect();
            out.push(InteractionStart {
                ts_ns: self.clock.to_epoch_ns(pending.event.ts_ns),
                src,
                dst,
                kind: end.kind,
            });
        }
        self.pending_starts = waiting;
        out
    }

    /// The full-pipe reports drained since the last call, oldest first.
    pub fn take_pipe_full(&mut self) -> Vec<PipeFull> {
        std::mem::take(&mut self.pipe_full)
    }

    /// A tokio handle that becomes readable when the kernel has written to
    /// the ring buffer (a duplicate of its fd).
    pub fn ring_readiness(&self) -> Result<AsyncFd<std::os::fd::OwnedFd>> {
        let fd = self
            .probes
            .events
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating the ring-buffer fd")?;
        // SAFETY: `fd` is our own duplicate, owned by the AsyncFd and closed
        // only when it is dropped.
        unsafe { AsyncFd::register(fd) }.context("registering the ring buffer with tokio")
    }

    /// Passes the programs' aya-log records on to the `log` crate.
    pub fn flush_kernel_logs(&mut self) {
        if let Some(logger) = self.probes.logger.as_mut() {
            logger.flush();
        }
    }

    /// A tokio handle that becomes readable when the programs have logged
    /// something; `None` when they cannot log.
    pub fn log_readiness(&self) -> Result<Option<AsyncFd<std::os::fd::OwnedFd>>> {
        let Some(logger) = self.probes.logger.as_ref() else {
            return Ok(None);
        };
        let fd = logger
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating the log fd")?;
        // SAFETY: our own duplicate, owned by the AsyncFd.
        let readiness =
            unsafe { AsyncFd::register(fd) }.context("registering the log buffer with tokio")?;
        Ok(Some(readiness))
    }

    /// Drains events as they come until `duration` has passed, and moves
    /// the counts waiting in descriptor entries every second, so that a
    /// long watch leaves no more in them than a tick of the agent does
    /// (what the LRU evicts from there is lost).
    pub async fn watch(&mut self, duration: Duration) -> Result<()> {
        let fd = self
            .probes
            .events
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating the ring-buffer fd")?;
        // SAFETY: `fd` is our own duplicate, owned by the AsyncFd and closed
        // only when it is dropped.
        let readiness =
            unsafe { AsyncFd::register(fd) }.context("registering the ring buffer with tokio")?;
        let deadline = tokio::time::Instant::now() + duration;
        let mut moves = tokio::time::interval(Duration::from_secs(1));
        loop {
            self.drain_events();
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                _ = moves.tick() => self.move_fd_counts(),
                guard = readiness.readable() => {
                    let mut guard = guard.context("waiting for the ring buffer")?;
                    guard.clear_ready();
                }
            }
        }
        self.drain_events();
        self.flush_kernel_logs();
        Ok(())
    }

    /// Reads the flow maps. A datagram end without a peer that sent to a
    /// Unix address gets the socket bound there as its peer.
    pub fn flows(&mut self) -> Vec<FlowRecord> {
        self.move_fd_counts();
        let mut flows = Vec::new();
        self.addressed.start_reading();
        for entry in self.probes.flows.iter() {
            let Ok((key, stats)) = entry else { continue };
            let (Some(kind), Some(dir)) =
                (ChannelKind::from_u8(key.kind), Direction::from_u8(key.dir))
            else {
                continue;
            };
            flows.push(FlowRecord {
                pid: key.tgid,
                ppid: stats.ppid,
                comm: c_string(&stats.comm),
                kind,
                dir,
                end: key.end,
                peer: if stats.peer == 0 && kind == ChannelKind::UnixDgram {
                    self.addressed.receiver(key.end).unwrap_or(0)
                } else {
                    stats.peer
                },
                ops: stats.ops,
                bytes: stats.bytes,
                errors: stats.errors,
                blocked: stats.blocked,
                first_ns: stats.first_ns,
                last_ns: stats.last_ns,
                syscall: Histogram::from_buckets(&stats.syscall_hist),
                starts: self
                    .starts
                    .get(&(key.tgid, kind, dir, key.end))
                    .copied()
                    .unwrap_or(0),
            });
        }
        self.stats.flows = flows.len() as u64;
        flows
    }

    /// Brings the counts the hot path keeps in descriptor entries into
    /// `FLOWS` (see `Probes::move_fd_counts`).
    fn move_fd_counts(&mut self) {
        match self.probes.move_fd_counts() {
            None => {}
            Some(Ok(report)) => self.stats.retired_fd_entries += report.retired,
            Some(Err(error)) => {
                log::warn!("moving descriptor counts failed, counting in the flow map: {error}");
            }
        }
    }

    /// Drops the `FLOWS` entries of processes that are gone and whose flows
    /// have been silent for [`FORGET_AFTER_NS`]: no syscall can count into
    /// them any more, every interval since their last syscall has read
    /// them, and no writer still waits for them to pair with. Left in, they
    /// would fill the LRU map on a host whose processes come and go, until
    /// it forgot the counts of live but idle flows to make room.
    ///
    /// The candidates come from the snapshot this interval just took, so
    /// the map is not walked a second time.
    fn forget_gone_processes(&mut self) {
        let now = monotonic_ns();
        // The thread group's /proc entry goes with its last thread (an exit
        // event comes with its leader's, and may have been dropped).
        let mut gone_tgids: HashMap<u32, bool> = HashMap::new();
        let gone: Vec<FlowKey> = self
            .previous
            .flows
            .iter()
            .filter(|(_, flow)| now.saturating_sub(flow.last_ns) > FORGET_AFTER_NS)
            .filter(|((pid, ..), _)| {
                *gone_tgids
                    .entry(*pid)
                    .or_insert_with(|| !std::path::Path::new(&format!("/proc/{pid}")).exists())
            })
            .map(|(&(tgid, kind, dir, end), _)| FlowKey {
                tgid,
                kind: kind as u8,
                dir: dir as u8,
                pad: 0,
                end,
            })
            .collect();
        for key in gone {
            // Already gone (the LRU evicted it meanwhile) is as good.
            let _ = self.probes.flows.remove(&key);
        }
    }

    /// Reads the per-end latency map.
    pub fn end_latency(&self) -> EndLatency {
        self.probes
            .ends
            .iter()
            .filter_map(Result::ok)
            .map(|(end, state)| (end, Histogram::from_kernel(&state.hist, state.sum_ns)))
            .collect()
    }

    /// Everything observed so far, joined into interactions. Times are
    /// converted to Unix epoch ns.
    pub fn interactions(&mut self) -> Vec<Interaction> {
        self.drain_events();
        let flows = self.flows();
        let latency = self.end_latency();
        let mut interactions = join(&flows, &latency, &self.failures, &mut self.processes);
        for interaction in &mut interactions {
            interaction.first_ns = self.clock.to_epoch_ns(interaction.first_ns);
            interaction.last_ns = self.clock.to_epoch_ns(interaction.last_ns);
        }
        interactions
    }

    /// What happened since the previous call (the first call: since start),
    /// joined into interactions. Flows without new activity are left out.
    /// Times are Unix epoch ns.
    pub fn interval(&mut self) -> Vec<Interaction> {
        self.drain_events();
        let flows = self.flows();
        let latency = self.end_latency();
        // Writers contribute what they sent since the last tick; readers are
        // all those the kernel knows (cumulative, for pairing and shares),
        // with only this tick's errors and times.
        let readable: std::collections::HashSet<(ChannelKind, u64)> = flows
            .iter()
            .filter(|f| f.dir == Direction::Recv)
            .map(|f| (f.kind, f.end))
            .collect();
        let now = monotonic_ns();
        let mut pairing = Vec::with_capacity(flows.len());
        let mut seen = HashMap::with_capacity(flows.len());
        for flow in flows {
            let id = (flow.pid, flow.kind, flow.dir, flow.end);
            let before = self.previous.flows.get(&id).filter(|b| flow.ops >= b.ops);
            let delta = match before {
                Some(before) => FlowRecord {
                    ops: flow.ops - before.ops,
                    bytes: flow.bytes.saturating_sub(before.bytes),
                    errors: flow.errors.saturating_sub(before.errors),
                    blocked: flow.blocked.saturating_sub(before.blocked),
                    syscall: flow.syscall.delta_since(&before.syscall),
                    starts: flow.starts.saturating_sub(before.starts),
                    ..flow.clone()
                },
                // New, or evicted and recreated: everything is new.
                None => flow.clone(),
            };
            match flow.dir {
                Direction::Send if delta.ops > 0 => {
                    // A writer whose reader has not read yet (the tick fell
                    // between the first write and the first read) is held
                    // back, its baseline kept, for up to READER_GRACE_NS;
                    // after that it counts as sent to nobody seen.
                    let unread = flow.peer == 0 || !readable.contains(&(flow.kind, flow.peer));
                    if unread && now.saturating_sub(flow.first_ns) < READER_GRACE_NS {
                        if let Some(before) = before {
                            seen.insert(id, before.clone());
                        }
                        continue;
                    }
                    pairing.push(delta);
                }
                Direction::Send => {}
                Direction::Recv => {
                    let active = delta.ops > 0;
                    pairing.push(FlowRecord {
                        errors: delta.errors,
                        syscall: delta.syscall,
                        first_ns: if active { flow.last_ns } else { u64::MAX },
                        last_ns: if active { flow.last_ns } else { 0 },
                        ..flow.clone()
                    });
                }
            }
            seen.insert(id, flow);
        }
        let latency_delta: EndLatency = latency
            .iter()
            .map(|(end, hist)| {
                let delta = match self.previous.ends.get(end) {
                    Some(before) => hist.delta_since(before),
                    None => hist.clone(),
                };
                (*end, delta)
            })
            .collect();
        // The agent calls only this, so failures are handed out once.
        let new_failures: Vec<ConnectFailure> = self.failures.drain(..).collect();
        let mut interactions = join(&pairing, &latency_delta, &new_failures, &mut self.processes);
        // Bounded memory for a long-running agent: forget what the kernel
        // maps forgot, and processes gone for a minute.
        self.starts.retain(|id, _| seen.contains_key(id));
        let sending: std::collections::HashSet<u64> = seen
            .keys()
            .filter(|(_, kind, dir, _)| *kind == ChannelKind::UnixDgram && *dir == Direction::Send)
            .map(|(_, _, _, end)| *end)
            .collect();
        self.addressed.retain(|end| sending.contains(&end));
        self.processes
            .forget_exited_before(monotonic_ns().saturating_sub(60_000_000_000));
        let mut readers: HashMap<(ChannelKind, u64), Vec<u32>> = HashMap::new();
        for flow in seen.values().filter(|f| f.dir == Direction::Recv) {
            readers
                .entry((flow.kind, flow.end))
                .or_default()
                .push(flow.pid);
        }
        self.previous = Previous {
            flows: seen,
            ends: latency,
            readers,
        };
        self.forget_gone_processes();
        self.intervals += 1;
        // Starts nobody asked for within an interval of being resolvable
        // are dropped: observing alone must not grow without bound.
        let intervals = self.intervals;
        self.pending_starts
            .retain(|pending| pending.interval + 1 >= intervals);
        for interaction in &mut interactions {
            interaction.first_ns = self.clock.to_epoch_ns(interaction.first_ns);
            interaction.last_ns = self.clock.to_epoch_ns(interaction.last_ns);
        }
        interactions
    }

    /// What the probes saw on `watched` channels, from the snapshot the
    /// last [`Observer::interval`] read (so it costs no map walk of its own).
    pub fn measure_channels(
        &self,
        watched: &[crate::aggregate::channels::Watched],
    ) -> HashMap<u64, crate::aggregate::channels::ChannelMeasure> {
        crate::aggregate::channels::measure(
            watched,
            self.previous.flows.values(),
            &self.previous.ends,
        )
    }

    /// Counters about the observer, with the kernel's drop count.
    pub fn stats(&mut self) -> ObserverStats {
        self.stats.dropped = self
            .probes
            .event_drops
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0);
        self.stats
    }

    /// The process table.
    pub fn processes(&self) -> &ProcessTable {
        &self.processes
    }

    /// Converts a monotonic kernel timestamp to Unix epoch ns.
    pub fn epoch_ns(&self, monotonic_ns: u64) -> u64 {
        self.clock.to_epoch_ns(monotonic_ns)
    }

    /// How many tracepoints are attached.
    pub fn attached(&self) -> usize {
        self.probes.attached.len()
    }

    /// What is attached where.
    pub fn attach_status(&self) -> &[crate::probe::AttachStatus] {
        &self.probes.attached
    }

    /// The mode the probes run in.
    pub fn mode(&self) -> ProbeMode {
        self.probes.mode
    }

    /// Whether followed syscalls count in their descriptor's cache entry
    /// (the mover loaded and has not failed), rather than each in `FLOWS`.
    pub fn counts_in_entries(&self) -> bool {
        self.probes.counts_in_entries()
    }

    /// Descriptor walks the hot path has made on cache misses so far, over
    /// all CPUs (0 in the classic mode, which walks at every syscall).
    pub fn fd_walks(&self) -> u64 {
        self.probes
            .fd_walks
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }
}

/// A failed connect, as opposed to one still in progress or interrupted.
fn connect_failed(ret: i32) -> bool {
    const EINPROGRESS: i32 = 115;
    const EAGAIN: i32 = 11;
    const EINTR: i32 = 4;
    ret < 0 && ![EINPROGRESS, EAGAIN, EINTR].contains(&-ret)
}

fn log_malformed(error: &DecodeError) {
    log::warn!("skipping a malformed ring-buffer record: {error}");
}

/// Monotonic (kernel `bpf_ktime_get_ns`) to wall-clock conversion, fixed at
/// start so that times within one session stay consistent.
#[derive(Clone, Copy, Debug)]
struct Clock {
    offset_ns: i128,
}

impl Clock {
    fn now() -> Self {
        let monotonic = monotonic_ns();
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        Self {
            offset_ns: wall - i128::from(monotonic),
        }
    }

    fn to_epoch_ns(self, monotonic_ns: u64) -> u64 {
        if monotonic_ns == 0 {
            return 0;
        }
        u64::try_from(i128::from(monotonic_ns) + self.offset_ns).unwrap_or(0)
    }
}

pub use crate::sys::monotonic_ns;
