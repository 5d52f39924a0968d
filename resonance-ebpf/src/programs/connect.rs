//! connect and accept/accept4: who joined whom, and failed connects.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use resonance_common::{ChannelKind, EventKind};

use super::{arg, create::report_new_fd, observed_task, ret};
use crate::{
    emit::count_in_flight_full,
    emit::{Happening, copy_unix_path, emit_with_path, reserve},
    fdwalk::{Resolved, walk},
    maps::{IN_FLIGHT, InFlight, Op},
};

/// `sys_enter_connect`: remember the fd and the address.
#[tracepoint]
#[inline(always)]
pub fn connect_enter(ctx: TracePointContext) -> u32 {
    remember(&ctx, Op::Connect);
    0
}

/// `sys_enter_bind`: likewise, for a Unix datagram socket's address.
#[tracepoint]
#[inline(always)]
pub fn bind_enter(ctx: TracePointContext) -> u32 {
    remember(&ctx, Op::Bind);
    0
}

#[inline(always)]
fn remember(ctx: &TracePointContext, op: Op) {
    let Some((pid_tgid, _)) = observed_task() else {
        return;
    };
    let (Some(fd), Some(address)) = (arg(ctx, 0), arg(ctx, 1)) else {
        return;
    };
    let in_flight = InFlight {
        op,
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
}

/// `sys_exit_connect` and `sys_exit_bind`: report the outcome with the
/// Unix path, if any.
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
    let Some(result) = ret(&ctx) else { return 0 };
    match in_flight.op {
        Op::Connect => {
            report_connect(tgid, in_flight.fd, result, in_flight.arg);
        }
        Op::Bind if result == 0 => report_bound(tgid, in_flight.fd, in_flight.arg),
        _ => {}
    }
    0
}

/// bind(`fd`, `address`) succeeded: a Unix datagram socket reports its
/// path, so that peerless senders naming it join it even when it is gone
/// by the time the agent reads the flows.
#[inline(always)]
pub fn report_bound(tgid: u32, fd: i32, address: u64) {
    let Resolved::Followed(object) = walk(fd as i64) else {
        return;
    };
    if object.kind == ChannelKind::UnixDgram {
        emit_with_path(tgid, EventKind::Bound, fd, object, address);
    }
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
    copy_unix_path(&mut entry, address);
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
