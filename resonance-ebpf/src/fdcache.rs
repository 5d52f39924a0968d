//! (process, fd) → channel end, remembered so that a syscall on a followed
//! or an ignored descriptor costs one lookup instead of a file-table walk.
//!
//! An entry is a cache of [`fdwalk::walk`], never the only truth: what is
//! not cached is walked, and only answers the walk was sure of are stored
//! (an open file that is or is not a channel, never "no such fd"). It stays
//! right because a descriptor number changes meaning only when it is
//! freed, and every way of freeing one voids the entry first:
//! - `close(fd)` and `dup2`/`dup3` onto `fd` remove that entry;
//! - a successful exec (close-on-exec descriptors), `close_range` and the
//!   process's exit bump the process's generation, which voids all its
//!   entries at once (the hot path compares generations on every hit; an
//!   array slot, inlined by the verifier).
//!
//! New descriptors need nothing: their number was freed (and its entry
//! voided) before it could be handed out again. A forked child has a new
//! tgid and so no entries; its inherited descriptors are walked on first
//! use, as are descriptors opened before the agent started, received with
//! SCM_RIGHTS or opened on a FIFO.
//!
//! An entry also holds the counts of the syscalls on it not yet moved to
//! their flow (`resonance_common::fd_entry`). Those must survive the entry
//! being voided: `close`, `dup2`/`dup3` and a refill over an entry that
//! holds counts keep it under a retired key instead ([`retire_counts`]), which the
//! agent's next move empties and deletes; a generation bump leaves entries
//! in place, where the move finds them. Only the move takes counts out of
//! an entry: a second mover would race with it (both reading one count
//! before either subtracts it), and atomic exchange, which would settle
//! that, came only in 5.12.
//!
//! Not seen, and documented as limits: descriptors closed by io_uring, and
//! processes that share one descriptor table without being threads of one
//! process (`clone(CLONE_FILES)` without `CLONE_THREAD`).

use aya_ebpf::helpers::bpf_get_smp_processor_id;
use resonance_common::{ChannelKind, FdEntry, RETIRED_FD, fd_key as key};

use crate::{
    fdwalk::{Object, Resolved, walk},
    maps::{FD_WALKS, FDS, GEN_NEXT, GEN_SLOTS, GENS, RETIRED_NEXT},
};

/// The process's current generation, if its slot is its own.
#[inline(always)]
fn generation(tgid: u32) -> Option<u32> {
    let slot = GENS.get_ptr(tgid & (GEN_SLOTS - 1))?;
    // SAFETY: `slot` points into the array map for the rest of this call.
    let value = unsafe { core::ptr::read_volatile(slot) };
    ((value >> 32) as u32 == tgid).then_some(value as u32)
}

/// Gives the process a generation no entry carries yet (taking the slot
/// over from another tgid that shares it, whose entries are then walked
/// again on their next use: slower, never wrong).
///
/// Generations are this CPU's own count with the CPU number in the low
/// byte, so CPUs never hand out the same one without an atomic
/// fetch-and-add (which 5.10 lacks). A CPU's count repeats after 2^24
/// renewals; an entry would have to outlive that many, for the same tgid,
/// to be mistaken for current.
#[inline(always)]
pub fn renew(tgid: u32) -> Option<u32> {
    let next = GEN_NEXT.get_ptr_mut(0)?;
    let slot = GENS.get_ptr_mut(tgid & (GEN_SLOTS - 1))?;
    // SAFETY: the helper has no preconditions; `next` is this CPU's own
    // slot of a per-CPU array, and `slot` one 8-byte store into an array.
    unsafe {
        let cpu = bpf_get_smp_processor_id() & 0xff;
        *next += 1;
        let generation = ((*next as u32) << 8) | cpu;
        core::ptr::write_volatile(slot, ((tgid as u64) << 32) | generation as u64);
        Some(generation)
    }
}

/// What `fd` of the current process (`tgid`) is: from the cache when it
/// can answer, else walked and remembered. `None`: not followed. With the
/// object comes its cache entry, to count into; null when it was walked
/// (its first syscall counts in `FLOWS` anyway).
#[inline(always)]
pub fn lookup(tgid: u32, fd: u32) -> Option<(Object, *mut FdEntry)> {
    if let Some(entry) = FDS.get_ptr_mut(&key(tgid, fd)) {
        // SAFETY: `entry` points at a live map value for this call.
        let cached = unsafe { *entry };
        if generation(tgid) == Some(cached.generation) {
            let mut object = object_of(&cached)?;
            let kind = object.kind;
            // A socket cached before it was connected (or accepted on) has
            // no peer yet; look again until it has one.
            if object.peer == 0
                && matches!(kind, ChannelKind::UnixStream | ChannelKind::UnixSeqpacket)
                && let Resolved::Followed(now) = walk(fd as i64)
            {
                object.peer = now.peer;
                // SAFETY: as above.
                unsafe { (*entry).peer = now.peer };
            }
            return Some((object, entry));
        }
    }
    count_walk();
    let resolved = walk(fd as i64);
    remember(tgid, fd, resolved);
    match resolved {
        Resolved::Followed(object) => Some((object, core::ptr::null_mut())),
        Resolved::Ignored | Resolved::Unknown => None,
    }
}

/// Stores what a walk found (nothing for [`Resolved::Unknown`]).
#[inline(always)]
pub fn remember(tgid: u32, fd: u32, resolved: Resolved) {
    let (kind, end, peer, pipe, slots) = match resolved {
        Resolved::Followed(o) => (o.kind as u8, o.end, o.peer, o.pipe, o.slots),
        Resolved::Ignored => (0, 0, 0, 0, 0),
        Resolved::Unknown => return,
    };
    let Some(generation) = generation(tgid).or_else(|| renew(tgid)) else {
        return;
    };
    let key = key(tgid, fd);
    // A stale entry (its generation voided) may still hold counts.
    retire_counts(tgid, key);
    let entry = FdEntry {
        end,
        peer,
        pipe,
        generation,
        slots,
        kind,
        pad: [0; 7],
        counts: Default::default(),
    };
    let _ = FDS.insert(&key, &entry, 0);
}

/// The cached channel end behind `fd`, without walking (for `close`, at
/// whose exit the descriptor is already gone).
#[inline(always)]
pub fn cached(tgid: u32, fd: u32) -> Option<Object> {
    // SAFETY: the value is copied out at once.
    let entry = unsafe { *FDS.get_ptr(&key(tgid, fd))? };
    if generation(tgid) != Some(entry.generation) {
        return None;
    }
    object_of(&entry)
}

/// The channel end `entry` remembers; `None` for a descriptor that is not
/// followed.
#[inline(always)]
fn object_of(entry: &FdEntry) -> Option<Object> {
    Some(Object {
        kind: ChannelKind::from_u8(entry.kind)?,
        end: entry.end,
        peer: entry.peer,
        pipe: entry.pipe,
        slots: entry.slots,
    })
}

/// `fd` was freed or now refers to something else.
#[inline(always)]
pub fn forget(tgid: u32, fd: u32) {
    let key = key(tgid, fd);
    retire_counts(tgid, key);
    let _ = FDS.remove(&key);
}

/// Keeps the entry at `at`, if it holds counts not yet moved, under a
/// retired key of `tgid` (see [`RETIRED_FD`]), where the agent's next move
/// finds them. A syscall on another thread that adds to the entry between
/// the copy and its removal is lost: that needs a descriptor used while
/// another thread closes it.
///
/// Retired numbers are this CPU's own count with the CPU number in the low
/// byte, as generations are (see [`renew`]): 2^23 per CPU before one
/// repeats, and every move deletes the ones it emptied.
#[inline(always)]
fn retire_counts(tgid: u32, at: u64) {
    let Some(entry) = FDS.get_ptr(&at) else {
        return;
    };
    // SAFETY: copied out at once from a live map value.
    let entry = unsafe { *entry };
    if !entry.holds_counts() {
        return;
    }
    let Some(next) = RETIRED_NEXT.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's own slot of a per-CPU array; the helper has no
    // preconditions.
    let number = unsafe {
        *next = (*next).wrapping_add(1);
        let cpu = bpf_get_smp_processor_id() & 0xff;
        RETIRED_FD | ((*next << 8) & (RETIRED_FD - 1)) | cpu
    };
    let _ = FDS.insert(&key(tgid, number), &entry, 0);
}

#[inline(always)]
fn count_walk() {
    if let Some(counter) = FD_WALKS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *counter += 1 };
    }
}
