//! close() of a followed descriptor, and process exit.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use resonance_common::EventKind;

use super::{arg, observed_task};
use crate::{
    emit::{Happening, emit},
    fdwalk::resolve,
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
        emit(
            tgid,
            Happening {
                event: EventKind::Closed,
                object: Some(object),
                dir: 0,
                ret: 0,
                fds: [fd as i32, -1],
            },
        );
    }
    0
}

/// `sched:sched_process_exit`, once per exiting thread: frees the thread's
/// in-flight slot (it may have died inside a read), and reports the process
/// once, from its leader thread.
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
