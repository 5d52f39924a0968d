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
//! Not seen, and documented as limits: descriptors closed by io_uring, and
//! processes that share one descriptor table without being threads of one
//! process (`clone(CLONE_FILES)` without `CLONE_THREAD`).

use aya_ebpf::helpers::bpf_get_smp_processor_id;
use resonance_common::ChannelKind;

use crate::{
    fdwalk::{Object, Resolved, walk},
    maps::{FD_WALKS, FDS, FdEntry, GEN_NEXT, GEN_SLOTS, GENS},
};

#[inline(always)]
fn key(tgid: u32, fd: u32) -> u64 {
    ((tgid as u64) << 32) | fd as u64
}

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
/// can answer, else walked and remembered. `None`: not followed.
#[inline(always)]
pub fn lookup(tgid: u32, fd: u32) -> Option<Object> {
    if let Some(entry) = FDS.get_ptr_mut(&key(tgid, fd)) {
        // SAFETY: `entry` points at a live map value for this call.
        let cached = unsafe { *entry };
        if generation(tgid) == Some(cached.generation) {
            let mut object = cached.object()?;
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
            return Some(object);
        }
    }
    count_walk();
    let resolved = walk(fd as i64);
    remember(tgid, fd, resolved);
    match resolved {
        Resolved::Followed(object) => Some(object),
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
    let entry = FdEntry {
        end,
        peer,
        pipe,
        generation,
        slots,
        kind,
        pad: [0; 7],
    };
    let _ = FDS.insert(&key(tgid, fd), &entry, 0);
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
    entry.object()
}

impl FdEntry {
    /// The channel end this entry remembers; `None` for a descriptor that
    /// is not followed.
    #[inline(always)]
    fn object(&self) -> Option<Object> {
        Some(Object {
            kind: ChannelKind::from_u8(self.kind)?,
            end: self.end,
            peer: self.peer,
            pipe: self.pipe,
            slots: self.slots,
        })
    }
}

/// `fd` was freed or now refers to something else.
#[inline(always)]
pub fn forget(tgid: u32, fd: u32) {
    let _ = FDS.remove(&key(tgid, fd));
}

#[inline(always)]
fn count_walk() {
    if let Some(counter) = FD_WALKS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *counter += 1 };
    }
}
