//! pipe/pipe2, socketpair and socket: report new channels with both ends.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use resonance_common::EventKind;

use super::{arg, observed_task, ret};
use crate::{
    emit::count_in_flight_full,
    emit::{Happening, emit},
    fdwalk::{Object, Resolved, resolve, walk},
    maps::{IN_FLIGHT, InFlight, Op},
};

/// `sys_enter_pipe` and `sys_enter_pipe2`: remember where the fds go.
#[tracepoint]
#[inline(always)]
pub fn pipe_enter(ctx: TracePointContext) -> u32 {
    remember(&ctx, Op::Pipe, 0);
    0
}

/// `sys_exit_pipe` and `sys_exit_pipe2`.
#[tracepoint]
#[inline(always)]
pub fn pipe_exit(ctx: TracePointContext) -> u32 {
    created(&ctx, Op::Pipe);
    0
}

/// `sys_enter_socketpair`: the fd vector is argument 3.
#[tracepoint]
#[inline(always)]
pub fn socketpair_enter(ctx: TracePointContext) -> u32 {
    remember(&ctx, Op::Socketpair, 3);
    0
}

/// `sys_exit_socketpair`.
#[tracepoint]
#[inline(always)]
pub fn socketpair_exit(ctx: TracePointContext) -> u32 {
    created(&ctx, Op::Socketpair);
    0
}

/// `sys_exit_socket`: the new fd is the return value.
#[tracepoint]
#[inline(always)]
pub fn socket_exit(ctx: TracePointContext) -> u32 {
    let Some((_, tgid)) = observed_task() else {
        return 0;
    };
    let Some(fd) = ret(&ctx) else { return 0 };
    report_new_fd(tgid, fd, EventKind::Created);
    0
}

/// A syscall returned a new descriptor `fd` (socket: `Created`, accept:
/// `Accepted`): reports it if it is followed; returns what it is.
#[inline(always)]
pub fn report_new_fd(tgid: u32, fd: i64, event: EventKind) -> Resolved {
    if fd < 0 {
        return Resolved::Unknown;
    }
    let resolved = walk(fd);
    if let Resolved::Followed(object) = resolved {
        emit(
            tgid,
            Happening {
                event,
                object: Some(object),
                dir: 0,
                ret: 0,
                fds: [fd as i32, -1],
            },
        );
    }
    resolved
}

#[inline(always)]
fn remember(ctx: &TracePointContext, op: Op, pointer_arg: usize) {
    let Some((pid_tgid, _)) = observed_task() else {
        return;
    };
    let Some(pointer) = arg(ctx, pointer_arg) else {
        return;
    };
    let in_flight = InFlight {
        op,
        kind: 0,
        blocked: 0,
        pad: 0,
        fd: -1,
        // SAFETY: the helper has no preconditions.
        start_ns: unsafe { bpf_ktime_get_ns() },
        end: 0,
        peer: 0,
        arg: pointer,
    };
    if IN_FLIGHT.insert(&pid_tgid, &in_flight, 0).is_err() {
        count_in_flight_full();
    }
}

#[inline(always)]
fn created(ctx: &TracePointContext, op: Op) {
    let Some((pid_tgid, tgid)) = observed_task() else {
        return;
    };
    // SAFETY: the value is copied out before the entry is removed.
    let Some(in_flight) = (unsafe { IN_FLIGHT.get(&pid_tgid) }).copied() else {
        return;
    };
    let _ = IN_FLIGHT.remove(&pid_tgid);
    if in_flight.op != op || ret(ctx) != Some(0) {
        return;
    }
    report_pair(tgid, in_flight.arg);
}

/// pipe/pipe2/socketpair succeeded and wrote two descriptors to the user
/// address `fds_at`: reports the new channel; returns the descriptors and
/// what the first one is.
#[inline(always)]
pub fn report_pair(tgid: u32, fds_at: u64) -> Option<([i32; 2], Object)> {
    // SAFETY: a user pointer the syscall just wrote two ints to; the helper
    // fails cleanly if it is not readable.
    let fds = unsafe { bpf_probe_read_user(fds_at as *const [i32; 2]) }.ok()?;
    let object = resolve(fds[0] as i64)?;
    emit(
        tgid,
        Happening {
            event: EventKind::Created,
            object: Some(object),
            dir: 0,
            ret: 0,
            fds,
        },
    );
    Some((fds, object))
}
