//! read/write, readv/writev, sendto/recvfrom, sendmsg/recvmsg on the classic
//! syscall tracepoints (the fallback mode): one enter program per direction
//! and one shared exit program. The fd is resolved at enter, so syscalls on
//! files and devices cost one walk and nothing else; the syscall is timed
//! from enter to exit.
//!
//! [`completed`] is the same accounting for the exit-only hot path
//! (`dispatch`), which has no enter.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use resonance_common::{ChannelKind, Direction};

use super::{arg, observed_task, ret};
use crate::{
    emit::count_in_flight_full,
    fdwalk::{Object, pipe_would_block, resolve},
    flows::{EAGAIN, FullPipe, account},
    maps::{IN_FLIGHT, InFlight, Op},
};

/// `sys_enter_{write,writev,sendto,sendmsg}`.
#[tracepoint]
#[inline(always)]
pub fn io_send_enter(ctx: TracePointContext) -> u32 {
    enter(&ctx, Op::Send);
    0
}

/// `sys_enter_{read,readv,recvfrom,recvmsg}`.
#[tracepoint]
#[inline(always)]
pub fn io_recv_enter(ctx: TracePointContext) -> u32 {
    enter(&ctx, Op::Recv);
    0
}

/// `sys_exit_*` of all of the above.
#[tracepoint]
#[inline(always)]
pub fn io_exit(ctx: TracePointContext) -> u32 {
    exit(&ctx);
    0
}

#[inline(always)]
fn enter(ctx: &TracePointContext, op: Op) {
    let Some((pid_tgid, _)) = observed_task() else {
        return;
    };
    let Some(fd) = arg(ctx, 0) else { return };
    let Some(object) = resolve(fd as i64) else {
        return;
    };
    // SAFETY: the helper has no preconditions.
    let start_ns = unsafe { bpf_ktime_get_ns() };
    let mut blocked = 0;
    if op == Op::Send && object.kind.is_one_way() {
        // write's count, or writev's buffer count (see pipe_would_block).
        blocked = u8::from(pipe_would_block(object.pipe, arg(ctx, 2).unwrap_or(0)));
    }
    let in_flight = InFlight {
        op,
        kind: object.kind as u8,
        blocked,
        pad: 0,
        fd: fd as i32,
        start_ns,
        end: object.end,
        peer: object.peer,
        arg: 0,
    };
    if IN_FLIGHT.insert(&pid_tgid, &in_flight, 0).is_err() {
        count_in_flight_full();
    }
}

#[inline(always)]
fn exit(ctx: &TracePointContext) {
    let Some((pid_tgid, tgid)) = observed_task() else {
        return;
    };
    // SAFETY: the value is copied out before the entry is removed.
    let Some(in_flight) = (unsafe { IN_FLIGHT.get(&pid_tgid) }).copied() else {
        return;
    };
    let _ = IN_FLIGHT.remove(&pid_tgid);
    let dir = match in_flight.op {
        Op::Send => Direction::Send,
        Op::Recv => Direction::Recv,
        _ => return,
    };
    let Some(kind) = ChannelKind::from_u8(in_flight.kind) else {
        return;
    };
    let Some(ret) = ret(ctx) else { return };
    let mut object = Object {
        kind,
        end: in_flight.end,
        peer: in_flight.peer,
        pipe: 0,
        slots: 0,
    };
    // A stream socket's peer can change while the syscall blocks (the
    // client went away); take the latest view for sends that succeeded.
    if object.peer == 0
        && kind != ChannelKind::TcpLoopback
        && let Some(now_object) = resolve(in_flight.fd as i64)
    {
        object.peer = now_object.peer;
    }
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    account(
        tgid,
        object,
        dir,
        ret,
        if in_flight.blocked != 0 {
            FullPipe::Yes
        } else {
            FullPipe::No
        },
        in_flight.start_ns,
        now,
    );
}

/// The exit-only hot path's accounting of a completed read-like or
/// write-like syscall on `object`. `count` is write()'s byte count (0 when
/// the syscall has none, e.g. writev), to tell a short write.
#[inline(always)]
pub fn completed(tgid: u32, object: Object, dir: Direction, ret: i64, count: u64) {
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let full = if dir != Direction::Send || !object.kind.is_one_way() {
        FullPipe::No
    } else if ret == -EAGAIN || (ret >= 0 && count != 0 && (ret as u64) < count) {
        FullPipe::Yes
    } else {
        FullPipe::CheckAfter
    };
    // No enter time: the syscall itself is not timed on this path.
    account(tgid, object, dir, ret, full, 0, now);
}
