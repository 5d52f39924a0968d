//! Counting a completed syscall into its flow, and latency into its end.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::helpers::bpf_get_current_comm;
use resonance_common::{Direction, EndState, EventKind, FlowKey, HIST_BUCKETS, bucket_index};

use crate::{
    emit::{Happening, emit},
    fdwalk::{Object, current_ppid},
    globals::idle_gap_ns,
    maps::{ENDS, FLOWS, ZERO_END, ZERO_FLOW},
};

const BPF_NOEXIST: u64 = 1;
const EINTR: i64 = 4;
const EAGAIN: i64 = 11;
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

#[inline(always)]
fn add(counter: *mut u64, value: u64) {
    // SAFETY: `counter` points into a map value that outlives this call;
    // other CPUs may update it at the same time, hence the atomic. The bpf
    // target has no `AtomicU64::fetch_add`; the intrinsic lowers to the BPF
    // atomic add instruction.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, value) };
}

/// Accounts one completed read-like or write-like syscall; `blocked`: a
/// pipe write that found the pipe too full at entry.
#[inline(always)]
pub fn account(
    tgid: u32,
    object: Object,
    dir: Direction,
    ret: i64,
    blocked: bool,
    start_ns: u64,
    now: u64,
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
        }
        add(&raw mut (*stats).ops, 1);
        if blocked {
            add(&raw mut (*stats).blocked, 1);
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
        if let Some(bucket) = checked_bucket(now.saturating_sub(start_ns))
            && let Some(slot) = (*stats).syscall_hist.get_mut(bucket)
        {
            add(slot, 1);
        }
    }
    // Sockets are timed at send entry instead (`turnaround`), where no
    // wake-up of the peer can overtake the bookkeeping.
    if ret > 0 && object.kind.is_one_way() {
        pipe_latency(object.end, dir, ret as u64, now);
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

#[inline(always)]
fn sample(state: *mut EndState, latency_ns: u64) {
    // SAFETY: `state` points at a live map value.
    unsafe {
        add(&raw mut (*state).samples, 1);
        add(&raw mut (*state).sum_ns, latency_ns);
        if let Some(bucket) = checked_bucket(latency_ns)
            && let Some(slot) = (*state).hist.get_mut(bucket)
        {
            add(slot, 1);
        }
    }
}

/// Pipes: how long data waits before a reader takes it. The age is taken
/// from when the pipe last went from empty to holding data.
#[inline(always)]
fn pipe_latency(end: u64, dir: Direction, bytes: u64, now: u64) {
    let Some(state) = end_state(end) else { return };
    // SAFETY: `state` points at a live map value.
    unsafe {
        match dir {
            Direction::Send => {
                if (*state).pending_bytes == 0 {
                    (*state).waiting_since_ns = now;
                }
                (*state).pending_bytes += bytes;
            }
            Direction::Recv => {
                let since = (*state).waiting_since_ns;
                if since != 0 {
                    sample(state, now.saturating_sub(since));
                }
                (*state).pending_bytes = (*state).pending_bytes.saturating_sub(bytes);
                if (*state).pending_bytes == 0 {
                    (*state).waiting_since_ns = 0;
                }
            }
        }
    }
}

/// Sockets: a send answers the peer's oldest unanswered send (one turnaround
/// sample for the peer's end) and opens a request of its own. Called at
/// send *entry*: at exit the peer may already have been woken, read the
/// reply and sent its next request, and that request's start would be lost.
#[inline(always)]
pub fn turnaround(object: Object, now: u64) {
    if object.peer != 0
        && let Some(peer) = ENDS.get_ptr_mut(&object.peer)
    {
        // SAFETY: `peer` points at a live map value.
        unsafe {
            let since = (*peer).waiting_since_ns;
            if since != 0 {
                sample(peer, now.saturating_sub(since));
                (*peer).waiting_since_ns = 0;
            }
        }
    }
    let Some(own) = end_state(object.end) else {
        return;
    };
    // SAFETY: `own` points at a live map value.
    unsafe {
        if (*own).waiting_since_ns == 0 {
            (*own).waiting_since_ns = now;
        }
    }
}
