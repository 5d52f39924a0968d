//! read/write, readv/writev, sendto/recvfrom, sendmsg/recvmsg,
//! sendmmsg/recvmmsg on the classic
//! syscall tracepoints (the fallback mode): one enter program per direction
//! and one shared exit program. The fd is resolved at enter, so syscalls on
//! files and devices cost one walk and nothing else; the syscall is timed
//! from enter to exit.
//!
//! [`completed`] is the same accounting for the exit-only hot path
//! (`dispatch`), which has no enter, and counts most syscalls in the
//! descriptor's cache entry.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use resonance_common::{ChannelKind, Direction, ExitPath, FdEntry};

use super::{arg, observed_task, ret};
use crate::{
    emit::{Destination, count_in_flight_full},
    fdwalk::{Object, pipe_would_block, resolve},
    flows::{EAGAIN, FullPipe, account, count_flow, count_in_entry, judge},
    globals::offset,
    maps::{FLOW_ARGS, FlowArgs, IN_FLIGHT, InFlight, Op},
    opaque::opaque,
};

/// What `InFlight.arg` holds for the exit (kept in `InFlight.pad`).
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kept {
    /// Nothing, or a pipe's `pipe_inode_info` (to tell a full read).
    Plain = 0,
    /// sendmmsg/recvmmsg's message vector (argument 1).
    Vector = 1,
    /// sendto's destination address (argument 4).
    Address = 2,
    /// sendmsg's `user_msghdr` (argument 1), which holds the address.
    Header = 3,
}

/// `sys_enter_{write,writev}`.
#[tracepoint]
#[inline(always)]
pub fn io_send_enter(ctx: TracePointContext) -> u32 {
    enter(&ctx, Op::Send, Kept::Plain);
    0
}

/// `sys_enter_sendto`: the destination address kept, for a datagram
/// socket without a peer.
#[tracepoint]
#[inline(always)]
pub fn io_sendto_enter(ctx: TracePointContext) -> u32 {
    enter(&ctx, Op::Send, Kept::Address);
    0
}

/// `sys_enter_sendmsg`: likewise through its message header.
#[tracepoint]
#[inline(always)]
pub fn io_sendmsg_enter(ctx: TracePointContext) -> u32 {
    enter(&ctx, Op::Send, Kept::Header);
    0
}

/// `sys_enter_{read,readv,recvfrom,recvmsg}`.
#[tracepoint]
#[inline(always)]
pub fn io_recv_enter(ctx: TracePointContext) -> u32 {
    enter(&ctx, Op::Recv, Kept::Plain);
    0
}

/// `sys_enter_sendmmsg`: as a send, with the message vector kept for the
/// exit to count its bytes.
#[tracepoint]
#[inline(always)]
pub fn io_send_mmsg_enter(ctx: TracePointContext) -> u32 {
    enter(&ctx, Op::Send, Kept::Vector);
    0
}

/// `sys_enter_recvmmsg`: likewise.
#[tracepoint]
#[inline(always)]
pub fn io_recv_mmsg_enter(ctx: TracePointContext) -> u32 {
    enter(&ctx, Op::Recv, Kept::Vector);
    0
}

/// The most messages one sendmmsg/recvmmsg moves (`UIO_MAXIOV`: the
/// kernel caps the vector there), so every one is counted.
const MAX_MMSG: i64 = 1024;

/// Bytes a sendmmsg/recvmmsg of `messages` messages moved: the sum of
/// `msg_len` over the first `messages` entries of the vector at `vector`
/// (the kernel wrote them just before returning). `None` when the
/// kernel's BTF gave no `struct mmsghdr` layout.
#[inline(always)]
pub fn mmsg_bytes(vector: u64, messages: i64) -> Option<i64> {
    let stride = offset!(mmsghdr_size);
    let len_at = offset!(mmsghdr_msg_len);
    if stride == 0 || vector == 0 {
        return None;
    }
    let mut total = 0i64;
    let mut i = 0i64;
    while i < MAX_MMSG && i < messages {
        let at = vector + i as u64 * stride + len_at;
        // SAFETY: the helper checks the user address; a bad one reads 0.
        let len = unsafe { bpf_probe_read_user(at as *const u32) }.unwrap_or(0);
        total += i64::from(len);
        i += 1;
    }
    // What follows would be verified once per way out of the loop, each
    // with its own bounds on `total` (see `opaque`).
    Some(opaque(total))
}

/// `sys_exit_*` of all of the above.
#[tracepoint]
#[inline(always)]
pub fn io_exit(ctx: TracePointContext) -> u32 {
    exit(&ctx);
    0
}

#[inline(always)]
fn enter(ctx: &TracePointContext, op: Op, kept: Kept) {
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
        pad: kept as u8,
        fd: fd as i32,
        start_ns,
        end: object.end,
        peer: object.peer,
        // See `Kept`; a pipe's pipe_inode_info, so that the exit can tell
        // a read that found it full.
        arg: match kept {
            Kept::Vector | Kept::Header => arg(ctx, 1).unwrap_or(0),
            Kept::Address => arg(ctx, 4).unwrap_or(0),
            Kept::Plain if object.kind.is_one_way() => object.pipe,
            Kept::Plain => 0,
        },
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
    let Some(mut ret) = ret(ctx) else { return };
    let one_way = kind.is_one_way();
    if in_flight.pad == Kept::Vector as u8 && ret > 0 {
        let Some(bytes) = mmsg_bytes(in_flight.arg, ret) else {
            return;
        };
        ret = bytes;
    }
    let mut object = Object {
        kind,
        end: in_flight.end,
        peer: in_flight.peer,
        pipe: if one_way && in_flight.pad == Kept::Plain as u8 {
            in_flight.arg
        } else {
            0
        },
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
    let to = match in_flight.pad {
        p if p == Kept::Address as u8 => Destination {
            address: in_flight.arg,
            header: 0,
        },
        p if p == Kept::Header as u8 => Destination {
            address: 0,
            header: in_flight.arg,
        },
        _ => Destination::NONE,
    };
    account(
        tgid,
        in_flight.fd,
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
        to,
    );
}

/// The exit-only hot path's accounting of a completed read-like or
/// write-like syscall on `object`, descriptor `fd` (cache entry `entry`,
/// null when it was just walked). `count` is write()'s byte count (0 when
/// the syscall has none, e.g. writev), to tell a short write; `to` where a
/// send named an address.
///
/// Most syscalls end here, counted in the entry; the rest are left in
/// `FLOW_ARGS` for [`ExitPath::Flow`], whose path the caller takes: the
/// `FLOWS` accounting is verified there alone, not in every state of the
/// hot program.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn completed(
    tgid: u32,
    fd: i32,
    object: Object,
    entry: *mut FdEntry,
    dir: Direction,
    ret: i64,
    count: u64,
    to: Destination,
) -> Option<ExitPath> {
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let blocked = judge(object, dir, ret, full_pipe(object, dir, ret, count), now);
    if !blocked && count_in_entry(entry, dir, ret, now) {
        return None;
    }
    let args = FLOW_ARGS.get_ptr_mut(0)?;
    // SAFETY: this CPU's own slot; the tail call that reads it runs next,
    // on this CPU.
    unsafe {
        *args = FlowArgs {
            tgid,
            fd,
            kind: object.kind as u8,
            dir: dir as u8,
            blocked: u8::from(blocked),
            pad: [0],
            slots: object.slots,
            end: object.end,
            peer: object.peer,
            pipe: object.pipe,
            ret,
            now,
            to_address: to.address,
            to_header: to.header,
        };
    }
    Some(ExitPath::Flow)
}

/// [`completed`] counted in `FLOWS` at once, for a program that accounts
/// two syscalls' worth (a move is a read and a write) and so cannot hand
/// either off.
#[inline(always)]
pub fn completed_in_flows(tgid: u32, fd: i32, object: Object, dir: Direction, ret: i64) {
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let full = full_pipe(object, dir, ret, 0);
    account(tgid, fd, object, dir, ret, full, 0, now, Destination::NONE);
}

/// What the exit alone tells of a full pipe (see [`FullPipe`]).
#[inline(always)]
fn full_pipe(object: Object, dir: Direction, ret: i64, count: u64) -> FullPipe {
    if dir != Direction::Send || !object.kind.is_one_way() {
        FullPipe::No
    } else if ret == -EAGAIN || (ret >= 0 && count != 0 && (ret as u64) < count) {
        FullPipe::Yes
    } else {
        FullPipe::CheckAfter
    }
}

/// [`ExitPath::Flow`]: counts in `FLOWS` what [`completed`] left in
/// `FLOW_ARGS`. No enter time: the exit-only path does not time syscalls.
#[inline(always)]
pub fn count_left_flow() {
    let Some(args) = FLOW_ARGS.get_ptr(0) else {
        return;
    };
    // SAFETY: this CPU's own slot, copied out at once.
    let args = unsafe { *args };
    let (Some(kind), Some(dir)) = (
        ChannelKind::from_u8(args.kind),
        Direction::from_u8(args.dir),
    ) else {
        return;
    };
    let object = Object {
        kind,
        end: args.end,
        peer: args.peer,
        pipe: args.pipe,
        slots: args.slots,
    };
    let to = Destination {
        address: args.to_address,
        header: args.to_header,
    };
    count_flow(
        args.tgid,
        args.fd,
        object,
        dir,
        args.ret,
        args.blocked != 0,
        0,
        args.now,
        to,
    );
}
