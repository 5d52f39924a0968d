//! close() of a followed descriptor, and process exit.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use resonance_common::EventKind;

use super::{arg, observed_task};
use crate::{
    emit::{Happening, emit},
    fdcache,
    fdwalk::{Object, resolve},
    maps::IN_FLIGHT,
};

/// `sys_enter_close`: resolved before the fd goes away.
#[tracepoint]
#[inline(always)]
pub fn close_enter(ctx: TracePointContext) -> u32 {
    let Some((_, tgid)) = observed_task() else {
        return 0;
    };
    let Some(fd) = arg(&ctx, 0) else { return 0 };
    if let Some(object) = resolve(fd as i64) {
        report_close(tgid, fd as i32, object);
    }
    0
}

/// `fd`, a followed channel end, is being closed.
#[inline(always)]
pub fn report_close(tgid: u32, fd: i32, object: Object) {
    emit(
        tgid,
        Happening {
            event: EventKind::Closed,
            object: Some(object),
            dir: 0,
            ret: 0,
            fds: [fd, -1],
        },
    );
}

/// `sched:sched_process_exit`, once per exiting thread: frees the thread's
/// in-flight slot (it may have died inside a read), and reports the process
/// once, from its leader thread, whose descriptor cache it voids (its tgid
/// may be handed out again).
#[tracepoint]
#[inline(always)]
pub fn process_exit(_ctx: TracePointContext) -> u32 {
    let Some((pid_tgid, tgid)) = observed_task() else {
        return 0;
    };
    let _ = IN_FLIGHT.remove(&pid_tgid);
    if pid_tgid as u32 != tgid {
        return 0;
    }
    fdcache::renew(tgid);
    emit(
        tgid,
        Happening {
            event: EventKind::Exited,
            object: None,
            dir: 0,
            ret: 0,
            fds: [-1, -1],
        },
    );
    0
}
