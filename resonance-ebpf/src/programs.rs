//! The programs, one file per syscall family, and `dispatch`: the exit-only
//! hot path on the raw `sys_exit` tracepoint that serves them all.
//!
//! Syscall tracepoints lay out their arguments as 8-byte slots from offset
//! 16 (`struct syscall_trace_enter`), and `sys_exit_*` has `ret` at 16. That
//! layout is ABI, the same on every kernel we run on.
//!
//! Every program function is `#[inline(always)]`: the `tracepoint` macro
//! wraps it in an outer function, and if the body stays a separate BPF
//! subprogram taking `TracePointContext` by value, the 6.1 verifier rejects
//! it ("reg type unsupported for arg#0").

mod connect;
mod create;
mod dispatch;
mod drain;
mod io;
mod lifecycle;
mod moved;

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, programs::TracePointContext};

use crate::globals::agent_tgid;

/// Argument `index` of a `sys_enter_*` tracepoint.
#[inline(always)]
fn arg(ctx: &TracePointContext, index: usize) -> Option<u64> {
    // SAFETY: the tracepoint context is at least this long for syscalls
    // that take this many arguments; reads are bounds-checked by the helper.
    unsafe { ctx.read_at::<u64>(16 + 8 * index).ok() }
}

/// `ret` of a `sys_exit_*` tracepoint.
#[inline(always)]
fn ret(ctx: &TracePointContext) -> Option<i64> {
    // SAFETY: as in `arg`.
    unsafe { ctx.read_at::<i64>(16).ok() }
}

/// pid_tgid of the current task, or `None` for the agent itself.
#[inline(always)]
fn observed_task() -> Option<(u64, u32)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == agent_tgid() {
        return None;
    }
    Some((pid_tgid, tgid))
}

/// Does nothing: attached in place of the real programs, it measures what
/// the tracepoint hooks alone cost (the benchmark's floor).
#[aya_ebpf::macros::tracepoint]
#[inline(always)]
pub fn hook_floor(_ctx: TracePointContext) -> u32 {
    0
}
