//! The move of the counts the hot path keeps in descriptor cache entries
//! into their flows (see `resonance_common::fd_entry`): a program the agent
//! runs with `BPF_PROG_TEST_RUN` just before it reads `FLOWS`, which walks
//! `FDS` with `bpf_for_each_map_elem` (5.13 and later; where it does not
//! load, the hot path counts in `FLOWS` directly).
//!
//! Each count is read, subtracted from the entry with an atomic add and
//! added to the flow, so a hot-path add that races with the move stays in
//! the entry for the next one: never lost, never counted twice. Retired
//! entries (see `fdcache::retire_counts`) come out empty and are deleted.
//!
//! Why not a `bpf_map_elem` iterator (5.9): some hosts refuse that iterator
//! type while they allow a raw tracepoint program to be run.

use aya_ebpf::{
    helpers::generated::bpf_for_each_map_elem, macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use resonance_common::{ChannelKind, Direction, FdCounts, FdEntry, FlowKey, is_retired};

use crate::{
    flows::add,
    maps::{FDS, FLOWS, ZERO_FLOW},
};

const BPF_NOEXIST: u64 = 1;

/// Run by the agent, never attached: moves every entry's counts and
/// returns how many retired entries it deleted.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn move_fd_counts(_ctx: RawTracePointContext) -> i32 {
    let mut retired: u64 = 0;
    // SAFETY: the map pointer is `FDS`'s definition, the callback has the
    // signature the helper calls it with, and `retired` outlives the call.
    unsafe {
        bpf_for_each_map_elem(
            (&raw const FDS).cast_mut().cast(),
            move_entry as *mut core::ffi::c_void,
            (&raw mut retired).cast(),
            0,
        );
    }
    retired.min(i32::MAX as u64) as i32
}

/// One element of `FDS`; returns 0 to go on to the next.
#[inline(never)]
extern "C" fn move_entry(
    _map: *mut core::ffi::c_void,
    key: *const u64,
    entry: *mut FdEntry,
    retired: *mut u64,
) -> u64 {
    // SAFETY: the helper passes the element's key and value, live for this
    // call, and our `retired`.
    unsafe {
        let key = *key;
        let tgid = (key >> 32) as u32;
        move_counts(tgid, entry, &raw mut (*entry).counts[0], Direction::Send);
        move_counts(tgid, entry, &raw mut (*entry).counts[1], Direction::Recv);
        if is_retired(key) && FDS.remove(&key).is_ok() {
            *retired += 1;
        }
    }
    0
}

/// Moves one direction's counts of `entry` into its flow.
#[inline(always)]
unsafe fn move_counts(tgid: u32, entry: *mut FdEntry, counts: *mut FdCounts, dir: Direction) {
    // SAFETY: the caller's pointers are live for this call.
    unsafe {
        let read = |field: *const u64| core::ptr::read_volatile(field);
        let ops = read(&raw const (*counts).ops);
        let bytes = read(&raw const (*counts).bytes);
        let errors = read(&raw const (*counts).errors);
        if ops == 0 && bytes == 0 && errors == 0 {
            return;
        }
        let kind = (*entry).kind;
        if ChannelKind::from_u8(kind).is_none() {
            return;
        }
        let key = FlowKey {
            tgid,
            kind,
            dir: dir as u8,
            pad: 0,
            end: (*entry).end,
        };
        let last_ns = read(&raw const (*counts).last_ns);
        let stats = match FLOWS.get_ptr_mut(&key) {
            Some(stats) => stats,
            None => {
                // The flow was evicted since its first syscall made it
                // (its name and parent are gone with it). Written out
                // rather than shared with `flows::count_flow` as a helper
                // returning (entry, made now): with that, the verifier
                // walked `exit_moved` 459,458 instructions instead of
                // 101,733 on 6.18.
                let Some(zero) = ZERO_FLOW.get_ptr(0) else {
                    return;
                };
                let _ = FLOWS.insert(&key, &*zero, BPF_NOEXIST);
                let Some(stats) = FLOWS.get_ptr_mut(&key) else {
                    return;
                };
                (*stats).first_ns = last_ns;
                stats
            }
        };
        add(&raw mut (*counts).ops, ops.wrapping_neg());
        add(&raw mut (*stats).ops, ops);
        add(&raw mut (*counts).bytes, bytes.wrapping_neg());
        add(&raw mut (*stats).bytes, bytes);
        add(&raw mut (*counts).errors, errors.wrapping_neg());
        add(&raw mut (*stats).errors, errors);
        if last_ns > (*stats).last_ns {
            (*stats).last_ns = last_ns;
        }
        let peer = (*entry).peer;
        if peer != 0 {
            (*stats).peer = peer;
        }
    }
}
