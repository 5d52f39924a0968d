//! connect and accept/accept4: who joined whom, and failed connects.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::tracepoint,
    programs::TracePointContext,
};
use resonance_common::EventKind;

use super::{arg, create::report_new_fd, observed_task, ret};
use crate::{
    emit::count_in_flight_full,
    emit::{Happening, reserve},
    fdwalk::{Resolved, walk},
    maps::{IN_FLIGHT, InFlight, Op},
};

const AF_UNIX: u16 = 1;

/// `sys_enter_connect`: remember the fd and the address.
#[tracepoint]
#[inline(always)]
pub fn connect_enter(ctx: TracePointContext) -> u32 {
    let Some((pid_tgid, _)) = observed_task() else {
        return 0;
    };
    let (Some(fd), Some(address)) = (arg(&ctx, 0), arg(&ctx, 1)) else {
        return 0;
    };
    let in_flight = InFlight {
        op: Op::Connect,
        kind: 0,
        blocked: 0,
        pad: 0,
        fd: fd as i32,
        // SAFETY: the helper has no preconditions.
        start_ns: unsafe { bpf_ktime_get_ns() },
        end: 0,
        peer: 0,
        arg: address,
    };
    if IN_FLIGHT.insert(&pid_tgid, &in_flight, 0).is_err() {
        count_in_flight_full();
    }
    0
}

/// `sys_exit_connect`: report the outcome with the Unix path, if any.
#[tracepoint]
#[inline(always)]
pub fn connect_exit(ctx: TracePointContext) -> u32 {
    let Some((pid_tgid, tgid)) = observed_task() else {
        return 0;
    };
    // SAFETY: the value is copied out before the entry is removed.
    let Some(in_flight) = (unsafe { IN_FLIGHT.get(&pid_tgid) }).copied() else {
        return 0;
    };
    let _ = IN_FLIGHT.remove(&pid_tgid);
    if in_flight.op != Op::Connect {
        return 0;
    }
    let Some(result) = ret(&ctx) else { return 0 };
    report_connect(tgid, in_flight.fd, result, in_flight.arg);
    0
}

/// connect(`fd`, `address`) returned `result`: reports the outcome with the
/// Unix path, if any; returns what `fd` is now.
#[inline(always)]
pub fn report_connect(tgid: u32, fd: i32, result: i64, address: u64) -> Resolved {
    let resolved = walk(fd as i64);
    let Resolved::Followed(object) = resolved else {
        return resolved;
    };
    let happening = Happening {
        event: EventKind::Connected,
        object: Some(object),
        dir: 0,
        ret: result as i32,
        fds: [fd, -1],
    };
    let Some(mut entry) = reserve(tgid, &happening) else {
        return resolved;
    };
    // SAFETY: user pointers from the syscall's arguments; the helpers fail
    // cleanly on unreadable memory and the path then stays empty.
    unsafe {
        let family = bpf_probe_read_user(address as *const u16).unwrap_or(0);
        if family == AF_UNIX {
            let event = entry.as_mut_ptr();
            let _ = bpf_probe_read_user_buf((address + 2) as *const u8, &mut (*event).path);
        }
    }
    entry.submit(0);
    resolved
}

/// `sys_exit_accept` and `sys_exit_accept4`: the new fd is the return value.
#[tracepoint]
#[inline(always)]
pub fn accept_exit(ctx: TracePointContext) -> u32 {
    let Some((_, tgid)) = observed_task() else {
        return 0;
    };
    let Some(fd) = ret(&ctx) else { return 0 };
    report_new_fd(tgid, fd, EventKind::Accepted);
    0
}
