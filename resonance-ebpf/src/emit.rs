//! Reserve, fill and submit ring-buffer events; count the ones that do not
//! fit instead of blocking or retrying.

use aya_ebpf::helpers::{bpf_get_current_comm, bpf_ktime_get_ns};
use resonance_common::{Event, EventKind};

use crate::{
    fdwalk::{Object, current_ppid},
    maps::{EVENT_DROPS, EVENTS, IN_FLIGHT_FULL},
};

/// The fields an event carries besides who and when.
pub struct Happening {
    /// What happened.
    pub event: EventKind,
    /// The channel end, if one is involved.
    pub object: Option<Object>,
    /// Flow direction (`FlowStarted`).
    pub dir: u8,
    /// Syscall result.
    pub ret: i32,
    /// Descriptors involved.
    pub fds: [i32; 2],
}

/// Sends one event for the current task (or counts a drop).
#[inline(always)]
pub fn emit(tgid: u32, happening: Happening) {
    if let Some(entry) = reserve(tgid, &happening) {
        entry.submit(0);
    }
}

/// Reserves and fills an event; `None` (and a counted drop) when full.
#[inline(always)]
pub fn reserve(
    tgid: u32,
    happening: &Happening,
) -> Option<aya_ebpf::maps::ring_buf::RingBufEntry<Event>> {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count_drop();
        return None;
    };
    let event = entry.as_mut_ptr();
    let (kind, end, peer) = match happening.object {
        Some(object) => (object.kind as u8, object.end, object.peer),
        None => (0, 0, 0),
    };
    // SAFETY: `event` points at reserved ring-buffer memory of the right
    // size; every field is written before submit.
    unsafe {
        (*event).event = happening.event as u8;
        (*event).kind = kind;
        (*event).dir = happening.dir;
        (*event).pad = 0;
        (*event).tgid = tgid;
        (*event).ppid = current_ppid();
        (*event).ret = happening.ret;
        (*event).ts_ns = bpf_ktime_get_ns();
        (*event).end = end;
        (*event).peer = peer;
        (*event).fds = happening.fds;
        (*event).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*event).path = [0; resonance_common::UNIX_PATH_LEN];
        (*event).pad2 = [0; 4];
    }
    Some(entry)
}

#[inline(always)]
fn count_drop() {
    if let Some(counter) = EVENT_DROPS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        let dropped = unsafe {
            *counter += 1;
            *counter
        };
        // Say so in the agent's log, but only at 1, 2, 4, 8, ... drops so a
        // full ring buffer does not also flood the log buffer.
        if dropped.is_power_of_two() {
            // aya-log-ebpf 0.2 ignores its context argument.
            aya_log_ebpf::warn!(
                &(),
                "ring buffer full: {} events dropped on this CPU so far",
                dropped
            );
        }
    }
}

/// Counts a syscall the programs could not follow because the in-flight
/// table was full, logging at powers of two like [`count_drop`].
#[inline(always)]
pub fn count_in_flight_full() {
    if let Some(counter) = IN_FLIGHT_FULL.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        let missed = unsafe {
            *counter += 1;
            *counter
        };
        if missed.is_power_of_two() {
            aya_log_ebpf::error!(
                &(),
                "in-flight table full: {} syscalls not followed on this CPU so far",
                missed
            );
        }
    }
}
