//! The descriptor cache's entries (`FDS`), which also hold the counts of
//! the flow a descriptor carries until the agent moves them into `FLOWS`.
//!
//! The hot path has already looked an entry up to learn what the
//! descriptor is; adding its syscall's counts there instead of to the
//! flow's own `FLOWS` entry saves a second hash lookup on every message.
//! Before it reads `FLOWS`, the agent runs a program that walks `FDS` and
//! moves every entry's counts into its flow with atomic adds (a count added
//! while it runs stays for the next move), so what the agent reads stays
//! exact.

/// Counts of one direction of one descriptor, not yet moved to its flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdCounts {
    /// Completed syscalls.
    pub ops: u64,
    /// Bytes the successful ones moved.
    pub bytes: u64,
    /// Failed ones, as `FlowStats::errors`.
    pub errors: u64,
    /// Monotonic ns of the latest syscall in this direction (0 = none yet).
    /// Never reset by a move: it is how the hot path tells a flow waking
    /// from an idle gap, which goes through `FLOWS` to be announced.
    pub last_ns: u64,
}

impl FdCounts {
    /// Whether anything is waiting to be moved.
    pub const fn is_empty(&self) -> bool {
        self.ops == 0 && self.bytes == 0 && self.errors == 0
    }
}

/// One cached descriptor: what it refers to, and its counts per direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdEntry {
    /// Channel end id, as `fdwalk::Object::end`.
    pub end: u64,
    /// Peer end id (0 = not known yet).
    pub peer: u64,
    /// `pipe_inode_info` address for pipes and FIFOs, else 0.
    pub pipe: u64,
    /// The process's generation when this was stored.
    pub generation: u32,
    /// The pipe's size in slots when resolved (`fdwalk::Object::slots`).
    pub slots: u32,
    /// `ChannelKind` as a byte; 0 for an open file that is not followed.
    pub kind: u8,
    /// Explicit padding.
    pub pad: [u8; 7],
    /// Counts not yet moved, indexed by `Direction`.
    pub counts: [FdCounts; 2],
}

impl FdEntry {
    /// Whether either direction holds counts not yet moved.
    pub const fn holds_counts(&self) -> bool {
        !self.counts[0].is_empty() || !self.counts[1].is_empty()
    }
}

/// The `FDS` key of descriptor `fd` of process `tgid`.
pub const fn fd_key(tgid: u32, fd: u32) -> u64 {
    ((tgid as u64) << 32) | fd as u64
}

/// Descriptor numbers from here up never name a descriptor (they are
/// above `INT_MAX`): an entry that still holds counts when its descriptor
/// is freed is kept under such a number, its *retired* key, until the
/// agent's next move, which then deletes it.
pub const RETIRED_FD: u32 = 1 << 31;

/// Whether an `FDS` key is a retired one (see [`RETIRED_FD`]).
pub const fn is_retired(key: u64) -> bool {
    key as u32 >= RETIRED_FD
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_numbers_above_int_max_are_retired() {
        assert!(!is_retired(fd_key(7, 0)));
        assert!(!is_retired(fd_key(7, i32::MAX as u32)));
        assert!(is_retired(fd_key(7, RETIRED_FD)));
        assert!(is_retired(fd_key(u32::MAX, u32::MAX)));
    }

    #[test]
    fn an_entry_holds_counts_until_both_directions_are_empty() {
        let mut entry = FdEntry::default();
        assert!(!entry.holds_counts());
        entry.counts[1].last_ns = 5;
        assert!(!entry.holds_counts(), "a time alone is nothing to move");
        entry.counts[1].errors = 1;
        assert!(entry.holds_counts());
    }
}
