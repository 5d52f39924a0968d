//! The maps shared with the agent, and the kernel-only bookkeeping ones.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use resonance_common::{EndState, FlowKey, FlowStats};

/// Flows the agent drains periodically. LRU: a full map forgets the flow
/// unused longest instead of failing the syscall path.
#[map(name = "FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, FlowStats> = LruHashMap::with_max_entries(16_384, 0);

/// Latency state per channel end (see `EndState`).
#[map(name = "ENDS")]
pub static ENDS: LruHashMap<u64, EndState> = LruHashMap::with_max_entries(16_384, 0);

/// Discrete happenings for the agent; 1 MiB holds ~5,000 events.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Ring-buffer reservations that failed (buffer full), per CPU.
#[map(name = "EVENT_DROPS")]
pub static EVENT_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Syscalls not followed because `IN_FLIGHT` was full, per CPU.
#[map(name = "IN_FLIGHT_FULL")]
pub static IN_FLIGHT_FULL: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Syscalls between enter and exit, keyed by pid_tgid. A plain hash, not an
/// LRU: this map is touched twice per observed syscall and LRU updates cost
/// several times more. A thread that dies inside a syscall has its slot
/// removed by `thread_exit`.
#[map(name = "IN_FLIGHT")]
pub static IN_FLIGHT: HashMap<u64, InFlight> = HashMap::with_max_entries(16_384, 0);

/// All-zero templates to insert new entries from: the values are too large
/// for the 512-byte BPF stack. Never written.
#[map(name = "ZERO_FLOW")]
pub static ZERO_FLOW: PerCpuArray<FlowStats> = PerCpuArray::with_max_entries(1, 0);

/// See [`ZERO_FLOW`].
#[map(name = "ZERO_END")]
pub static ZERO_END: PerCpuArray<EndState> = PerCpuArray::with_max_entries(1, 0);

/// What a syscall's enter program leaves for its exit program.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct InFlight {
    /// Which syscall family (checked by the exit program).
    pub op: Op,
    /// Channel kind of the resolved fd (0 if not resolved at enter).
    pub kind: u8,
    /// 1 when a pipe write found the pipe too full (see
    /// `fdwalk::pipe_would_block`).
    pub blocked: u8,
    /// Explicit padding.
    pub pad: u8,
    /// The fd argument.
    pub fd: i32,
    /// Monotonic ns at enter.
    pub start_ns: u64,
    /// Resolved channel end.
    pub end: u64,
    /// Resolved peer end.
    pub peer: u64,
    /// A user pointer argument (pipe fds, socketpair vector, sockaddr).
    pub arg: u64,
}

/// Syscall families, so an exit never consumes another family's slot.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// write-like.
    Send = 1,
    /// read-like.
    Recv = 2,
    /// pipe/pipe2.
    Pipe = 3,
    /// socketpair.
    Socketpair = 4,
    /// connect.
    Connect = 5,
}
