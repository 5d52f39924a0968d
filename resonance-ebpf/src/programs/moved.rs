//! splice, tee and sendfile: data moved between two descriptors without
//! passing through the caller's memory. Each is a read on its input and a
//! write on its output, counted on whichever of the two the probes follow;
//! tee copies without consuming, so only its output counts.
//!
//! The classic mode resolves both descriptors at exit (the fds are still
//! open then, and these syscalls are rare enough that the walk is cheap);
//! the exit-only hot path looks both up in `fdcache`.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use resonance_common::Direction;

use super::{arg, io::completed_in_flows, observed_task, ret};
use crate::{
    emit::{Destination, count_in_flight_full},
    fdcache,
    fdwalk::{Object, resolve},
    flows::{FullPipe, account},
    maps::{IN_FLIGHT, InFlight, Op},
};

/// Which descriptors a move reads and writes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// splice(in, _, out, ...) and sendfile(out, in, ...): both count.
    ReadAndWrite,
    /// tee(in, out, ...): the input keeps its data; only the output counts.
    WriteOnly,
}

impl Move {
    fn from_u8(value: u8) -> Self {
        if value == 1 {
            Self::WriteOnly
        } else {
            Self::ReadAndWrite
        }
    }
}

/// Invalid argument: what splice and sendfile return for descriptors
/// (or flags) they cannot move between.
const EINVAL: i64 = 22;

/// Whether a move's result is the kernel declining these descriptors, which
/// is counted nowhere: nothing moved and nothing failed on the channel.
/// Programs try a move first and fall back to read and write (busybox's
/// `cat` calls sendfile, which kernels before 5.12 refuse from a pipe);
/// counted as an error, every such pipeline would show one.
#[inline(always)]
fn declined(ret: i64) -> bool {
    ret == -EINVAL
}

/// The exit-only hot path's accounting of a move of `ret` bytes.
#[inline(always)]
pub fn moved_exit_only(tgid: u32, input: u64, output: u64, how: Move, ret: i64) {
    if declined(ret) {
        return;
    }
    if how == Move::ReadAndWrite
        && input <= i32::MAX as u64
        && let Some((object, _)) = fdcache::lookup(tgid, input as u32)
    {
        completed_in_flows(tgid, input as i32, object, Direction::Recv, ret);
    }
    if output <= i32::MAX as u64
        && let Some((object, _)) = fdcache::lookup(tgid, output as u32)
    {
        completed_in_flows(tgid, output as i32, object, Direction::Send, ret);
    }
}

/// `sys_enter_splice`: splice(fd_in, off_in, fd_out, off_out, len, flags).
#[tracepoint]
#[inline(always)]
pub fn splice_enter(ctx: TracePointContext) -> u32 {
    enter(&ctx, 0, 2, Move::ReadAndWrite);
    0
}

/// `sys_enter_tee`: tee(fd_in, fd_out, len, flags).
#[tracepoint]
#[inline(always)]
pub fn tee_enter(ctx: TracePointContext) -> u32 {
    enter(&ctx, 0, 1, Move::WriteOnly);
    0
}

/// `sys_enter_sendfile64`: sendfile(out_fd, in_fd, offset, count).
#[tracepoint]
#[inline(always)]
pub fn sendfile_enter(ctx: TracePointContext) -> u32 {
    enter(&ctx, 1, 0, Move::ReadAndWrite);
    0
}

/// `sys_exit_{splice,tee,sendfile64}`.
#[tracepoint]
#[inline(always)]
pub fn move_exit(ctx: TracePointContext) -> u32 {
    exit(&ctx);
    0
}

#[inline(always)]
fn enter(ctx: &TracePointContext, input_arg: usize, output_arg: usize, how: Move) {
    let Some((pid_tgid, _)) = observed_task() else {
        return;
    };
    let (Some(input), Some(output)) = (arg(ctx, input_arg), arg(ctx, output_arg)) else {
        return;
    };
    // SAFETY: the helper has no preconditions.
    let start_ns = unsafe { bpf_ktime_get_ns() };
    let in_flight = InFlight {
        op: Op::Move,
        kind: 0,
        blocked: 0,
        pad: how as u8,
        fd: input as i32,
        start_ns,
        end: 0,
        peer: 0,
        arg: output,
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
    if in_flight.op != Op::Move {
        return;
    }
    let _ = IN_FLIGHT.remove(&pid_tgid);
    let Some(ret) = ret(ctx).filter(|&ret| !declined(ret)) else {
        return;
    };
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let count = |fd: i32, object: Object, dir: Direction| {
        let full = if dir == Direction::Send && object.kind.is_one_way() {
            FullPipe::CheckAfter
        } else {
            FullPipe::No
        };
        account(
            tgid,
            fd,
            object,
            dir,
            ret,
            full,
            in_flight.start_ns,
            now,
            Destination::NONE,
        );
    };
    if Move::from_u8(in_flight.pad) == Move::ReadAndWrite
        && let Some(object) = resolve(i64::from(in_flight.fd))
    {
        count(in_flight.fd, object, Direction::Recv);
    }
    if let Some(object) = resolve(in_flight.arg as i64) {
        count(in_flight.arg as i32, object, Direction::Send);
    }
}
