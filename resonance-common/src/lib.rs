//! The `#[repr(C)]` types the eBPF programs and the agent share.
//!
//! One definition of each type serves both sides: the kernel programs write
//! [`FlowKey`]/[`FlowStats`] into LRU maps and [`Event`]s into the ring buffer;
//! the agent reads the same bytes back. [`Offsets`] and [`ProbeConfig`] travel
//! the other way, as globals set at load time.
#![no_std]

pub mod event;
pub mod exit_path;
pub mod fd_entry;
pub mod flow;
pub mod histogram;
pub mod kind;
pub mod offsets;

pub use event::{Event, EventKind, UNIX_PATH_LEN};
pub use exit_path::ExitPath;
pub use fd_entry::{FdCounts, FdEntry, RETIRED_FD, fd_key, is_retired};
pub use flow::{COMM_LEN, Direction, EndState, FlowKey, FlowStats, PIPE_CHECKPOINTS, fifo_end};
pub use histogram::{HIST_BUCKETS, bucket_index, bucket_lower_bound, bucket_upper_bound};
pub use kind::ChannelKind;
pub use offsets::{Offsets, ProbeConfig};

/// Names of the maps and globals, so both sides spell them the same way.
pub mod names {
    /// Per-flow counters: `LruHashMap<FlowKey, FlowStats>`.
    pub const FLOWS: &str = "FLOWS";
    /// Per-end latency state: `LruHashMap<u64, EndState>`.
    pub const ENDS: &str = "ENDS";
    /// Discrete happenings: `RingBuf` of [`crate::Event`].
    pub const EVENTS: &str = "EVENTS";
    /// Failed ring-buffer reservations, one slot per CPU: `PerCpuArray<u64>`.
    pub const EVENT_DROPS: &str = "EVENT_DROPS";
    /// Descriptor walks on the hot path's cache misses, one slot per CPU:
    /// `PerCpuArray<u64>`.
    pub const FD_WALKS: &str = "FD_WALKS";
    /// The descriptor cache, with counts not yet moved to `FLOWS`:
    /// `LruHashMap<u64, FdEntry>` keyed by [`crate::fd_key`].
    pub const FDS: &str = "FDS";
    /// One slot, set to 1 by the agent once it can move the counts the hot
    /// path keeps in `FDS` entries (its mover loaded): `Array<u32>`.
    /// Until then every syscall counts in `FLOWS` directly.
    pub const ENTRY_COUNTS: &str = "ENTRY_COUNTS";
    /// The program the agent runs (`BPF_PROG_TEST_RUN`) to move the counts
    /// in `FDS` entries into `FLOWS` and delete the retired entries it
    /// emptied.
    pub const MOVE_FD_COUNTS: &str = "move_fd_counts";
    /// Syscalls in flight, keyed by pid_tgid: `HashMap<u64, InFlight>`.
    pub const IN_FLIGHT: &str = "IN_FLIGHT";
    /// The programs the exit-only hot path tail-calls, indexed by
    /// [`crate::ExitPath`]: `ProgramArray`.
    pub const EXIT_PATHS: &str = "EXIT_PATHS";
    /// Global holding [`crate::Offsets`].
    pub const OFFSETS: &str = "OFFSETS";
    /// Global holding [`crate::ProbeConfig`].
    pub const CONFIG: &str = "CONFIG";
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all these types are `#[repr(C)]`, `Copy`, contain only integers
    // and arrays of integers, and have explicit padding fields, so every bit
    // pattern is valid.
    unsafe impl aya::Pod for crate::FlowKey {}
    unsafe impl aya::Pod for crate::FlowStats {}
    unsafe impl aya::Pod for crate::FdEntry {}
    unsafe impl aya::Pod for crate::EndState {}
    unsafe impl aya::Pod for crate::Offsets {}
    unsafe impl aya::Pod for crate::ProbeConfig {}
    unsafe impl aya::Pod for crate::Event {}
}
