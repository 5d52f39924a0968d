//! Reserve, fill and submit ring-buffer events; count the ones that do not
//! fit instead of blocking or retrying.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_buf,
    },
    maps::ring_buf::RingBufEntry,
};
use resonance_common::{Event, EventKind};

use crate::{
    fdwalk::{Object, current_ppid},
    globals::offset,
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

/// A datagram socket without a peer started a flow sending to `to`:
/// reports the Unix path there, for the agent to find the receiver.
#[inline(always)]
pub fn report_addressed(tgid: u32, fd: i32, object: Object, to: Destination) {
    let address = to.resolve();
    if address != 0 {
        emit_with_path(tgid, EventKind::Addressed, fd, object, address);
    }
}

/// Emits `event` about `object` (descriptor `fd`) with the Unix path of
/// the `sockaddr` at user `address`.
#[inline(always)]
pub fn emit_with_path(tgid: u32, event: EventKind, fd: i32, object: Object, address: u64) {
    let happening = Happening {
        event,
        object: Some(object),
        dir: 0,
        ret: 0,
        fds: [fd, -1],
    };
    let Some(mut entry) = reserve(tgid, &happening) else {
        return;
    };
    copy_unix_path(&mut entry, address);
    entry.submit(0);
}

/// Copies the path of the Unix `sockaddr` at user `address` into the
/// event; other families leave it empty.
#[inline(always)]
pub fn copy_unix_path(entry: &mut RingBufEntry<Event>, address: u64) {
    // SAFETY: user pointers from the syscall's arguments; the helpers fail
    // cleanly on unreadable memory and the path then stays empty.
    unsafe {
        let family = bpf_probe_read_user(address as *const u16).unwrap_or(0);
        if family == AF_UNIX {
            let event = entry.as_mut_ptr();
            let _ = bpf_probe_read_user_buf((address + 2) as *const u8, &mut (*event).path);
        }
    }
}

/// Where a send went, when it named an address: sendto's, or the one in
/// sendmsg's message header. Read only when a flow starts.
#[derive(Clone, Copy)]
pub struct Destination {
    /// sendto's `dest_addr` (a user pointer), or 0.
    pub address: u64,
    /// sendmsg's `user_msghdr` (a user pointer), or 0.
    pub header: u64,
}

impl Destination {
    /// No address (every other syscall).
    pub const NONE: Self = Self {
        address: 0,
        header: 0,
    };

    /// Whether there may be an address to read.
    #[inline(always)]
    pub fn is_some(self) -> bool {
        (self.address | self.header) != 0
    }

    /// The user address of the `sockaddr`, 0 when none or unreadable.
    #[inline(always)]
    fn resolve(self) -> u64 {
        if self.address != 0 {
            return self.address;
        }
        if self.header == 0 {
            return 0;
        }
        let at = self.header + offset!(user_msghdr_name);
        // SAFETY: a user pointer from the syscall's arguments; the helper
        // fails cleanly on unreadable memory.
        unsafe { bpf_probe_read_user(at as *const u64) }.unwrap_or(0)
    }
}

const AF_UNIX: u16 = 1;

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
