//! The hot path: one program on the raw `sys_exit` tracepoint that sees
//! every syscall's exit, reads the syscall number and arguments from the
//! saved registers, and returns at once for syscalls it does not follow.
//!
//! Exit-only, because a second hook on `sys_enter` costs every syscall on
//! the host as much again; the arguments are still in `pt_regs` at exit
//! (only `ax` holds the result by then). What that costs: syscalls are not
//! timed, and full pipes are judged after the write (`fdwalk::pipe_left_full`).
//! Descriptors are looked up in `fdcache`, so a read on a regular file costs
//! a hash lookup, and one on a followed channel a lookup, its latency state
//! and atomic adds into the cache entry (`FLOWS` only on a flow's first
//! syscall, after an idle gap or on a full pipe: [`ExitPath::Flow`]).
//!
//! The program itself follows only the read/write family; the rarer
//! families (descriptor life cycle, splice/tee/sendfile, sendmmsg/recvmmsg)
//! are tail calls to programs of their own (`resonance_common::ExitPath`),
//! so that each is verified alone: together they outgrew what the 5.10 and
//! 6.1 verifiers accept.
//!
//! Two flavours of the same program: `tp_btf` (BTF-typed registers, read
//! with plain loads) where the kernel allows it, `raw_tp` (registers read
//! with `bpf_probe_read_kernel`) where it does not; the agent picks at load
//! time.

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_probe_read_kernel,
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use resonance_common::{Direction, EventKind, ExitPath};

use super::{
    connect::{report_bound, report_connect},
    create::{report_new_fd, report_pair},
    io::{completed, count_left_flow, mmsg_bytes},
    lifecycle::report_close,
    moved::{Move, moved_exit_only},
    observed_task,
};
use crate::{
    emit::Destination, fdcache, fdwalk::Resolved, globals::offset, maps::EXIT_PATHS, opaque::opaque,
};

/// x86_64 syscall numbers: ABI, the same on every kernel.
mod nr {
    pub const READ: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const CLOSE: u64 = 3;
    pub const READV: u64 = 19;
    pub const SENDFILE: u64 = 40;
    pub const WRITEV: u64 = 20;
    pub const PIPE: u64 = 22;
    pub const DUP2: u64 = 33;
    pub const SOCKET: u64 = 41;
    pub const CONNECT: u64 = 42;
    pub const BIND: u64 = 49;
    pub const ACCEPT: u64 = 43;
    pub const SENDTO: u64 = 44;
    pub const RECVFROM: u64 = 45;
    pub const SENDMSG: u64 = 46;
    pub const RECVMSG: u64 = 47;
    pub const SOCKETPAIR: u64 = 53;
    pub const EXECVE: u64 = 59;
    pub const SPLICE: u64 = 275;
    pub const TEE: u64 = 276;
    pub const ACCEPT4: u64 = 288;
    pub const RECVMMSG: u64 = 299;
    pub const SENDMMSG: u64 = 307;
    pub const DUP3: u64 = 292;
    pub const PIPE2: u64 = 293;
    pub const EXECVEAT: u64 = 322;
    pub const CLOSE_RANGE: u64 = 436;
}

/// `__USER_CS`, the code segment of 64-bit user mode (x86_64 ABI). A
/// syscall entered from any other is an ia32 one, with other numbers.
const USER64_CS: u64 = 0x33;

/// How a flavour reads the saved user registers.
trait Regs {
    /// The word at byte `offset` of `pt_regs`.
    fn word(&self, offset: u64) -> u64;
}

/// `tp_btf`: `pt_regs` is a BTF-typed pointer; the verifier turns plain
/// loads at constant offsets (the offsets are read-only globals) into
/// checked kernel reads without a helper call.
struct BtfRegs(*const u8);

impl Regs for BtfRegs {
    #[inline(always)]
    fn word(&self, offset: u64) -> u64 {
        // SAFETY: a BTF-typed pointer; the verifier checks the access
        // against the kernel's own `struct pt_regs`.
        unsafe { *(self.0.add(offset as usize) as *const u64) }
    }
}

/// `raw_tp`: an untyped pointer, read through the helper.
struct RawRegs(u64);

impl Regs for RawRegs {
    #[inline(always)]
    fn word(&self, offset: u64) -> u64 {
        // SAFETY: the helper checks the address; a bad one reads as 0.
        unsafe { bpf_probe_read_kernel((self.0 + offset) as *const u64).unwrap_or(0) }
    }
}

/// `tp_btf/sys_exit`: the default hot path.
#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit_btf(ctx: BtfTracePointContext) -> i32 {
    let regs: *const u8 = ctx.arg(0);
    let ret: i64 = ctx.arg(1);
    if let Some(path) = dispatch(&BtfRegs(regs), ret) {
        hand_off(&ctx, path);
    }
    0
}

/// `raw_tp/sys_exit`: the same where tp_btf cannot be loaded.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_raw(ctx: RawTracePointContext) -> i32 {
    let regs: u64 = ctx.arg(0);
    let ret: i64 = ctx.arg(1);
    if let Some(path) = dispatch(&RawRegs(regs), ret) {
        hand_off(&ctx, path);
    }
    0
}

/// [`ExitPath::Rare`], tp_btf flavour: tail-called, never attached.
#[btf_tracepoint(function = "sys_exit")]
pub fn exit_rare_btf(ctx: BtfTracePointContext) -> i32 {
    let regs: *const u8 = ctx.arg(0);
    rare(&BtfRegs(regs), ctx.arg(1));
    0
}

/// [`ExitPath::Rare`], raw_tp flavour.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn exit_rare_raw(ctx: RawTracePointContext) -> i32 {
    let regs: u64 = ctx.arg(0);
    rare(&RawRegs(regs), ctx.arg(1));
    0
}

/// [`ExitPath::Moved`], tp_btf flavour.
#[btf_tracepoint(function = "sys_exit")]
pub fn exit_moved_btf(ctx: BtfTracePointContext) -> i32 {
    let regs: *const u8 = ctx.arg(0);
    moved(&BtfRegs(regs), ctx.arg(1));
    0
}

/// [`ExitPath::Moved`], raw_tp flavour.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn exit_moved_raw(ctx: RawTracePointContext) -> i32 {
    let regs: u64 = ctx.arg(0);
    moved(&RawRegs(regs), ctx.arg(1));
    0
}

/// [`ExitPath::Mmsg`], tp_btf flavour.
#[btf_tracepoint(function = "sys_exit")]
pub fn exit_mmsg_btf(ctx: BtfTracePointContext) -> i32 {
    let regs: *const u8 = ctx.arg(0);
    if let Some(path) = mmsg(&BtfRegs(regs), ctx.arg(1)) {
        hand_off(&ctx, path);
    }
    0
}

/// [`ExitPath::Mmsg`], raw_tp flavour.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn exit_mmsg_raw(ctx: RawTracePointContext) -> i32 {
    let regs: u64 = ctx.arg(0);
    if let Some(path) = mmsg(&RawRegs(regs), ctx.arg(1)) {
        hand_off(&ctx, path);
    }
    0
}

/// [`ExitPath::Flow`], tp_btf flavour.
#[btf_tracepoint(function = "sys_exit")]
pub fn exit_flow_btf(_ctx: BtfTracePointContext) -> i32 {
    count_left_flow();
    0
}

/// [`ExitPath::Flow`], raw_tp flavour.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn exit_flow_raw(_ctx: RawTracePointContext) -> i32 {
    count_left_flow();
    0
}

/// Empty `tp_btf/sys_exit`: what the hook alone costs (the benchmark's
/// floor for this mode).
#[btf_tracepoint(function = "sys_exit")]
pub fn hook_floor_btf(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// Tail-calls the program of `path`. Returns only if that cannot happen
/// (an empty slot): those syscalls then go unobserved, nothing else.
#[inline(always)]
fn hand_off<C: EbpfContext>(ctx: &C, path: ExitPath) {
    // SAFETY: the context is this program's own, of the type every program
    // in the array was loaded for (the agent fills each flavour's slots
    // with that flavour's programs).
    unsafe { EXIT_PATHS.tail_call(ctx, path as u32) };
}

/// Follows a read/write-family syscall here; says which program to hand
/// any other followed syscall to.
#[inline(always)]
fn dispatch(regs: &impl Regs, ret: i64) -> Option<ExitPath> {
    let number = regs.word(offset!(regs_orig_ax));
    let dir = match number {
        nr::WRITE | nr::WRITEV | nr::SENDTO | nr::SENDMSG => Direction::Send,
        nr::READ | nr::READV | nr::RECVFROM | nr::RECVMSG => Direction::Recv,
        _ => {
            let path = match number {
                nr::SPLICE | nr::TEE | nr::SENDFILE => ExitPath::Moved,
                nr::SENDMMSG | nr::RECVMMSG => ExitPath::Mmsg,
                nr::CLOSE
                | nr::PIPE
                | nr::PIPE2
                | nr::SOCKETPAIR
                | nr::SOCKET
                | nr::CONNECT
                | nr::BIND
                | nr::ACCEPT
                | nr::ACCEPT4
                | nr::DUP2
                | nr::DUP3
                | nr::CLOSE_RANGE
                | nr::EXECVE
                | nr::EXECVEAT => ExitPath::Rare,
                _ => return None,
            };
            return is_64bit(regs).then_some(path);
        }
    };
    if !is_64bit(regs) {
        return None;
    }
    let (_, tgid) = observed_task()?;
    let fd = regs.word(offset!(regs_di));
    if fd > i32::MAX as u64 {
        return None;
    }
    let (object, entry) = fdcache::lookup(tgid, fd as u32)?;
    let count = if number == nr::WRITE {
        regs.word(offset!(regs_dx))
    } else {
        0
    };
    // A datagram without a peer: where it went (sendto's fifth argument,
    // or the msg_name of sendmsg's header), read only if the send starts
    // a flow.
    let to = match number {
        nr::SENDTO => Destination {
            address: regs.word(offset!(regs_r8)),
            header: 0,
        },
        nr::SENDMSG => Destination {
            address: 0,
            header: regs.word(offset!(regs_si)),
        },
        _ => Destination::NONE,
    };
    completed(tgid, fd as i32, object, entry, dir, ret, count, to)
}

/// sendmmsg/recvmmsg (64-bit, as [`dispatch`] checked): they return
/// messages; the bytes are in the vector. Counted in `FLOWS`, never in the
/// cache entry: they are rare enough, and one count path is simpler.
#[inline(always)]
fn mmsg(regs: &impl Regs, ret: i64) -> Option<ExitPath> {
    let (_, tgid) = observed_task()?;
    let fd = regs.word(offset!(regs_di));
    if fd > i32::MAX as u64 {
        return None;
    }
    let (object, _) = fdcache::lookup(tgid, fd as u32)?;
    let dir = if regs.word(offset!(regs_orig_ax)) == nr::SENDMMSG {
        Direction::Send
    } else {
        Direction::Recv
    };
    // Each way the descriptor was resolved (a cache hit, or a walk to a
    // pipe, a FIFO, a Unix or TCP socket) would walk the loop again.
    let object = opaque(object);
    let ret = if ret > 0 {
        mmsg_bytes(regs.word(offset!(regs_si)), ret)?
    } else {
        ret
    };
    let entry = core::ptr::null_mut();
    completed(
        tgid,
        fd as i32,
        object,
        entry,
        dir,
        ret,
        0,
        Destination::NONE,
    )
}

/// splice(in, _, out), tee(in, out), sendfile(out, in) (64-bit, as
/// [`dispatch`] checked): see `moved`.
#[inline(always)]
fn moved(regs: &impl Regs, ret: i64) {
    let number = regs.word(offset!(regs_orig_ax));
    let Some((_, tgid)) = observed_task() else {
        return;
    };
    let (first, second) = (regs.word(offset!(regs_di)), regs.word(offset!(regs_si)));
    let (input, output, how) = match number {
        nr::SPLICE => (first, regs.word(offset!(regs_dx)), Move::ReadAndWrite),
        nr::TEE => (first, second, Move::WriteOnly),
        _ => (second, first, Move::ReadAndWrite),
    };
    moved_exit_only(tgid, input, output, how, ret);
}

/// Whether the syscall came from 64-bit code, so its number means what
/// [`nr`] says.
#[inline(always)]
fn is_64bit(regs: &impl Regs) -> bool {
    regs.word(offset!(regs_cs)) == USER64_CS
}

/// Syscalls that create, join or free descriptors (64-bit, as [`dispatch`]
/// checked): reported as the classic programs report them, and kept in
/// `fdcache`.
#[inline(always)]
fn rare(regs: &impl Regs, ret: i64) {
    let number = regs.word(offset!(regs_orig_ax));
    let Some((_, tgid)) = observed_task() else {
        return;
    };
    let fd = regs.word(offset!(regs_di)) as u32;
    match number {
        nr::CLOSE => {
            if let Some(object) = fdcache::cached(tgid, fd) {
                report_close(tgid, fd as i32, object);
            }
            // Freed even when close reports an error.
            fdcache::forget(tgid, fd);
        }
        nr::PIPE | nr::PIPE2 | nr::SOCKETPAIR if ret == 0 => {
            let fds_at = if number == nr::SOCKETPAIR {
                regs.word(offset!(regs_r10))
            } else {
                regs.word(offset!(regs_di))
            };
            if let Some((fds, object)) = report_pair(tgid, fds_at) {
                fdcache::remember(tgid, fds[0] as u32, Resolved::Followed(object));
            }
        }
        nr::SOCKET => {
            let resolved = report_new_fd(tgid, ret, EventKind::Created);
            fdcache::remember(tgid, ret as u32, resolved);
        }
        nr::ACCEPT | nr::ACCEPT4 => {
            let resolved = report_new_fd(tgid, ret, EventKind::Accepted);
            fdcache::remember(tgid, ret as u32, resolved);
        }
        nr::BIND if ret == 0 => report_bound(tgid, fd as i32, regs.word(offset!(regs_si))),
        nr::CONNECT => {
            let address = regs.word(offset!(regs_si));
            let resolved = report_connect(tgid, fd as i32, ret, address);
            fdcache::remember(tgid, fd, resolved);
        }
        // The old descriptor at the target was closed, whatever the result.
        nr::DUP2 | nr::DUP3 => fdcache::forget(tgid, regs.word(offset!(regs_si)) as u32),
        nr::CLOSE_RANGE => {
            fdcache::renew(tgid);
        }
        nr::EXECVE | nr::EXECVEAT if ret == 0 => {
            fdcache::renew(tgid);
        }
        _ => {}
    }
}

/// Empty `raw_tp/sys_exit`: the floor of the raw mode.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn hook_floor_raw(_ctx: RawTracePointContext) -> i32 {
    0
}
