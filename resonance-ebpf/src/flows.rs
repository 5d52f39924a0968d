//! Counting a completed syscall into its flow, and latency into its end.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::helpers::bpf_get_current_comm;
use resonance_common::{
    ChannelKind, Direction, EndState, EventKind, FdEntry, FlowKey, HIST_BUCKETS, PIPE_CHECKPOINTS,
    bucket_index,
};

use crate::{
    emit::{Destination, Happening, emit, report_addressed},
    fdwalk::{Object, current_ppid, pipe_left_full, pipe_read_full},
    globals::{idle_gap_ns, latency, page_size},
    maps::{ENDS, ENTRY_COUNTS, FLOWS, ZERO_END, ZERO_FLOW},
};

const BPF_NOEXIST: u64 = 1;
const EINTR: i64 = 4;
/// Resource temporarily unavailable: a full pipe for a non-blocking writer.
pub const EAGAIN: i64 = 11;
/// Kernel-internal restart codes (ERESTARTSYS..ERESTART_RESTARTBLOCK).
const ERESTART_FIRST: i64 = 512;
const ERESTART_LAST: i64 = 516;

/// Whether a negative syscall result is a real error rather than "try again".
#[inline(always)]
pub fn is_error(ret: i64) -> bool {
    if ret >= 0 {
        return false;
    }
    let errno = -ret;
    errno != EAGAIN && errno != EINTR && !(ERESTART_FIRST..=ERESTART_LAST).contains(&errno)
}

/// The histogram bucket of `value_ns`, bounds-checked where the verifier
/// can see it. LLVM proves the index is below HIST_BUCKETS and drops the
/// check, but older verifiers (6.1) lose that bound through the bit
/// arithmetic and refuse the map-value pointer math; a volatile round trip
/// makes the index opaque, so the explicit check stays in the program.
#[inline(always)]
fn checked_bucket(value_ns: u64) -> Option<usize> {
    let index = bucket_index(value_ns);
    // SAFETY: reading a local through a valid reference.
    let index = unsafe { core::ptr::read_volatile(&index) };
    (index < HIST_BUCKETS).then_some(index)
}

/// Adds `value` to a counter other CPUs may move at the same time.
#[inline(always)]
pub fn add(counter: *mut u64, value: u64) {
    // SAFETY: `counter` points into a map value that outlives this call;
    // other CPUs may update it at the same time, hence the atomic. The bpf
    // target has no `AtomicU64::fetch_add`; the intrinsic lowers to the BPF
    // atomic add instruction.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, value) };
}

/// Whether a pipe write met a full pipe, as far as the caller can tell.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum FullPipe {
    /// It did not (or it is no pipe write).
    No,
    /// It did.
    Yes,
    /// Judge after the write (the exit-only path): only when the bytes the
    /// probes see waiting come near the pipe's size is the pipe itself read
    /// (`fdwalk::pipe_left_full`), which saves a kernel read on every other
    /// write.
    CheckAfter,
}

/// Accounts one completed read-like or write-like syscall on descriptor
/// `fd`: [`judge`], then [`count_flow`]. `full`: whether a pipe write met a
/// full pipe; `start_ns`: when the syscall entered, 0 when not known (the
/// exit-only path), which leaves it untimed; `to`: where a send named an
/// address, reported when it starts the flow of a datagram socket without
/// a peer.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn account(
    tgid: u32,
    fd: i32,
    object: Object,
    dir: Direction,
    ret: i64,
    full: FullPipe,
    start_ns: u64,
    now: u64,
    to: Destination,
) {
    let blocked = judge(object, dir, ret, full, now);
    count_flow(tgid, fd, object, dir, ret, blocked, start_ns, now, to);
}

/// Takes the syscall's latency sample into its end's state (unless the
/// agent turned latency off), and tells whether it met a full pipe: a
/// write that did (see [`FullPipe`]), or a read that took a full pipe's
/// worth. Without latency the probes do not know what a pipe holds, so
/// every pipe write reads the pipe's own fill level instead.
#[inline(always)]
pub fn judge(object: Object, dir: Direction, ret: i64, full: FullPipe, now: u64) -> bool {
    let mut pending = None;
    if ret > 0 && latency() {
        if object.kind.is_one_way() {
            pending = pipe_latency(object.end, dir, ret as u64, now);
        } else {
            turnaround(object.end, dir, now);
        }
    }
    let blocked = match full {
        FullPipe::No => false,
        FullPipe::Yes => true,
        FullPipe::CheckAfter => {
            let size = object.slots as u64 * page_size();
            let near_full = pending.is_none_or(|p| p + page_size() as i64 >= size as i64);
            // `size` is what the pipe held when its descriptor was cached;
            // the agent may have grown it since, so a write larger than
            // that is judged on the pipe's own size.
            (ret > size as i64 || near_full) && pipe_left_full(object.pipe, ret as u64)
        }
    };
    // The reader's view of the same thing: a read that took all the pipe
    // held when it was full. Seen from the exit alone more reliably than a
    // writer's wait, which leaves no trace once the write has completed.
    // `slots` may be stale (the agent may have grown the pipe), so only
    // reads as large as it said read the pipe's own size.
    let full_read = dir == Direction::Recv
        && object.kind.is_one_way()
        && ret > 0
        && ret as u64 >= object.slots as u64 * page_size()
        && pipe_read_full(object.pipe, ret as u64);
    blocked || full_read
}

/// Counts a syscall into its descriptor's cache entry when that is all it
/// needs: the entry's direction was used within the idle gap, and the
/// agent moves entry counts (see `resonance_common::fd_entry`). `false`:
/// count it with [`count_flow`] instead, which makes the flow known and
/// announces a start; the entry's direction is then marked used, so the
/// next syscall counts here. A syscall that met a full pipe never comes
/// here: `FLOWS` counts those, and reports the first of them.
#[inline(always)]
pub fn count_in_entry(entry: *mut FdEntry, dir: Direction, ret: i64, now: u64) -> bool {
    if entry.is_null() || !entry_counts() {
        return false;
    }
    // SAFETY: `entry` points at a live `FDS` value for this call; the
    // agent's move subtracts from the counts on another CPU, hence the
    // atomic adds.
    unsafe {
        let Some(counts) = (*entry).counts.get_mut(dir as usize) else {
            return false;
        };
        let last = counts.last_ns;
        counts.last_ns = now;
        if last == 0 || now.saturating_sub(last) > idle_gap_ns() {
            return false;
        }
        add(&raw mut counts.ops, 1);
        if ret >= 0 {
            add(&raw mut counts.bytes, ret as u64);
        } else if is_error(ret) {
            add(&raw mut counts.errors, 1);
        }
    }
    true
}

/// Whether the agent moves the counts kept in cache entries.
#[inline(always)]
fn entry_counts() -> bool {
    ENTRY_COUNTS
        .get_ptr(0)
        // SAFETY: one 4-byte load from an array slot.
        .is_some_and(|slot| unsafe { core::ptr::read_volatile(slot) } == 1)
}

/// Counts a judged syscall (`blocked`: see [`judge`]) in its flow's
/// `FLOWS` entry, making the flow known and announcing its start (its
/// first syscall, or the first after an idle gap).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn count_flow(
    tgid: u32,
    fd: i32,
    object: Object,
    dir: Direction,
    ret: i64,
    blocked: bool,
    start_ns: u64,
    now: u64,
    to: Destination,
) {
    let key = FlowKey {
        tgid,
        kind: object.kind as u8,
        dir: dir as u8,
        pad: 0,
        end: object.end,
    };
    let (stats, fresh) = match FLOWS.get_ptr_mut(&key) {
        Some(stats) => (stats, false),
        None => {
            let Some(zero) = ZERO_FLOW.get_ptr(0) else {
                return;
            };
            // SAFETY: `zero` points at a map value of the right type.
            let _ = FLOWS.insert(&key, unsafe { &*zero }, BPF_NOEXIST);
            let Some(stats) = FLOWS.get_ptr_mut(&key) else {
                return;
            };
            // SAFETY: just looked up; the map owns the memory.
            unsafe {
                (*stats).first_ns = now;
                (*stats).ppid = current_ppid();
                (*stats).comm = bpf_get_current_comm().unwrap_or([0; 16]);
            }
            (stats, true)
        }
    };
    // SAFETY: `stats` points at a live map value for the rest of this call.
    unsafe {
        let idle = now.saturating_sub((*stats).last_ns) > idle_gap_ns();
        if fresh || idle {
            emit(
                tgid,
                Happening {
                    event: EventKind::FlowStarted,
                    object: Some(object),
                    dir: dir as u8,
                    ret: 0,
                    fds: [-1, -1],
                },
            );
            if to.is_some() && object.kind == ChannelKind::UnixDgram && object.peer == 0 {
                report_addressed(tgid, fd, object, to);
            }
        }
        add(&raw mut (*stats).ops, 1);
        if blocked {
            add(&raw mut (*stats).blocked, 1);
            let times = (*stats).blocked;
            if times & times.wrapping_sub(1) == 0 {
                emit(
                    tgid,
                    Happening {
                        event: EventKind::PipeFull,
                        object: Some(object),
                        dir: dir as u8,
                        ret: ret.min(i32::MAX as i64) as i32,
                        fds: [fd, -1],
                    },
                );
            }
        }
        if ret >= 0 {
            add(&raw mut (*stats).bytes, ret as u64);
        } else if is_error(ret) {
            add(&raw mut (*stats).errors, 1);
        }
        (*stats).last_ns = now;
        if object.peer != 0 {
            (*stats).peer = object.peer;
        }
        if start_ns != 0
            && let Some(bucket) = checked_bucket(now.saturating_sub(start_ns))
            && let Some(slot) = (*stats).syscall_hist.get_mut(bucket)
        {
            add(slot, 1);
        }
    }
}

#[inline(always)]
fn end_state(end: u64) -> Option<*mut EndState> {
    if let Some(state) = ENDS.get_ptr_mut(&end) {
        return Some(state);
    }
    let zero = ZERO_END.get_ptr(0)?;
    // SAFETY: `zero` points at a map value of the right type.
    let _ = ENDS.insert(&end, unsafe { &*zero }, BPF_NOEXIST);
    ENDS.get_ptr_mut(&end)
}

/// One latency sample into an end's histogram. Plain adds, not atomic
/// ones (three locked instructions on every message): only the end's
/// reader (pipes) or requester (sockets) samples it, so two CPUs update one
/// end at once only when two processes read one pipe together, and then a
/// sample may be lost; byte counts stay exact.
#[inline(always)]
fn sample(state: *mut EndState, latency_ns: u64) {
    // SAFETY: `state` points at a live map value.
    unsafe {
        (*state).samples += 1;
        (*state).sum_ns += latency_ns;
        if let Some(bucket) = checked_bucket(latency_ns)
            && let Some(slot) = (*state).hist.get_mut(bucket)
        {
            *slot += 1;
        }
    }
}

/// Pipes: how long the data a reader takes waited in the pipe, timed from
/// the write that put its oldest byte there (see `EndState`). Returns the
/// bytes waiting after this syscall, as far as the probes saw.
///
/// Both sides are accounted at syscall exit, and a reader woken by a write
/// can finish (on another CPU, or by preempting the writer) before the
/// writer's exit is accounted: it is then ahead of the writes by at most
/// that write, whose bytes were taken before they could be timed, and
/// only what is left of it gets a checkpoint. A reader ahead by more than
/// the write being accounted read data written before the probes saw the
/// pipe; the count is resynchronised so that old data is not mistaken for
/// this write's.
#[inline(always)]
fn pipe_latency(end: u64, dir: Direction, bytes: u64, now: u64) -> Option<i64> {
    let state = end_state(end)?;
    // SAFETY: `state` points at a live map value for this call. A writer
    // and a reader of the pipe can run this at once on two CPUs: each
    // changes only its own fields (written/next, read/consumed) and reads
    // the other's, so a stale read costs at most one sample, never a wait
    // left open.
    unsafe {
        let volatile = |field: *const u64| core::ptr::read_volatile(field);
        match dir {
            Direction::Send => {
                let read = volatile(&raw const (*state).read);
                let mut before = volatile(&raw const (*state).written);
                if read > before.saturating_add(bytes) {
                    before = read - bytes;
                    core::ptr::write_volatile(&raw mut (*state).written, before);
                }
                add(&raw mut (*state).written, bytes);
                let written = before + bytes;
                if written > read {
                    remember_write(state, written, now);
                }
                Some(written as i64 - read as i64)
            }
            Direction::Recv => {
                let before = volatile(&raw const (*state).read);
                add(&raw mut (*state).read, bytes);
                let read = before + bytes;
                let next = core::ptr::read_volatile(&raw const (*state).next);
                let mut consumed = (*state).consumed;
                consumed = consume(state, consumed, next, before);
                if consumed != next {
                    let slot = (consumed as usize) % PIPE_CHECKPOINTS;
                    if let Some(&written_at) = (*state).checkpoint_ns.get(slot) {
                        sample(state, now.saturating_sub(written_at));
                    }
                }
                (*state).consumed = consume(state, consumed, next, read);
                Some(volatile(&raw const (*state).written) as i64 - read as i64)
            }
        }
    }
}

/// Appends a checkpoint (`written` bytes so far at `now`), or lets the
/// newest one absorb it when the ring is full. Writers only.
#[inline(always)]
unsafe fn remember_write(state: *mut EndState, written: u64, now: u64) {
    // SAFETY: the caller's `state` is live; indices are masked.
    unsafe {
        let next = (*state).next;
        let consumed = core::ptr::read_volatile(&raw const (*state).consumed);
        if (next.wrapping_sub(consumed) as usize) < PIPE_CHECKPOINTS {
            let slot = (next as usize) % PIPE_CHECKPOINTS;
            if let (Some(bytes), Some(at)) = (
                (*state).checkpoint_bytes.get_mut(slot),
                (*state).checkpoint_ns.get_mut(slot),
            ) {
                core::ptr::write_volatile(bytes, written);
                core::ptr::write_volatile(at, now);
                // After the slot: a reader that sees the count sees the slot.
                core::ptr::write_volatile(&raw mut (*state).next, next.wrapping_add(1));
            }
        } else {
            let newest = (next.wrapping_sub(1) as usize) % PIPE_CHECKPOINTS;
            if let Some(bytes) = (*state).checkpoint_bytes.get_mut(newest) {
                core::ptr::write_volatile(bytes, written);
            }
        }
    }
}

/// Steps `consumed` past the checkpoints whose writes were all read once
/// `read` bytes were; returns the new count. Readers only.
#[inline(always)]
unsafe fn consume(state: *mut EndState, mut consumed: u32, next: u32, read: u64) -> u32 {
    // SAFETY: the caller's `state` is live; indices are masked.
    unsafe {
        for _ in 0..PIPE_CHECKPOINTS {
            if consumed == next {
                break;
            }
            let slot = (consumed as usize) % PIPE_CHECKPOINTS;
            match (*state).checkpoint_bytes.get(slot) {
                Some(upto) if core::ptr::read_volatile(upto) <= read => {
                    consumed = consumed.wrapping_add(1);
                }
                _ => break,
            }
        }
        consumed
    }
}

/// Sockets: a send opens a request at this end unless one is open, and
/// the next data received at this end answers it: one turnaround sample,
/// from the first unanswered send to the answer's arrival. Both happen in
/// the requester's own syscalls, one after the other, so no wake-up of the
/// peer can overtake the bookkeeping (as it could if the peer's reply
/// answered it: the woken requester may read the reply and send again
/// before the replier's own exit is accounted).
#[inline(always)]
fn turnaround(end: u64, dir: Direction, now: u64) {
    let Some(state) = end_state(end) else {
        return;
    };
    // SAFETY: `state` points at a live map value.
    unsafe {
        let since = (*state).waiting_since_ns;
        match dir {
            Direction::Send if since == 0 => (*state).waiting_since_ns = now,
            Direction::Recv if since != 0 => {
                sample(state, now.saturating_sub(since));
                (*state).waiting_since_ns = 0;
            }
            _ => {}
        }
    }
}
