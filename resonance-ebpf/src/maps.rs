//! The maps shared with the agent, and the kernel-only bookkeeping ones.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use resonance_common::{EndState, ExitPath, FdEntry, FlowKey, FlowStats};

/// Flows the agent drains periodically. LRU: a full map forgets the flow
/// unused longest instead of failing the syscall path.
#[map(name = "FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, FlowStats> = LruHashMap::with_max_entries(16_384, 0);

/// Latency state per channel end (see `EndState`).
#[map(name = "ENDS")]
pub static ENDS: LruHashMap<u64, EndState> = LruHashMap::with_max_entries(16_384, 0);

/// Discrete happenings for the agent; 4 MiB holds about 20,000 events,
/// 50 ms of the fastest stream `cargo xtask bench agent` makes (every
/// syscall an event) while the agent ticks.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

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

/// What each (process, fd) the hot path met refers to: a cache of
/// `fdwalk::resolve`, kept valid by `fdcache` (see there). LRU: a full map
/// forgets the descriptor unused longest, which then costs one walk again.
#[map(name = "FDS")]
pub static FDS: LruHashMap<u64, FdEntry> = LruHashMap::with_max_entries(FD_SLOTS, 0);

/// Descriptor-table generations, indexed by tgid modulo [`GEN_SLOTS`]: each
/// slot holds `tgid << 32 | generation`. Bumping a process's generation
/// voids every [`FDS`] entry it has at once (exec, close_range, exit).
/// An array, so the lookup on every hit is inlined by the verifier.
#[map(name = "GENS")]
pub static GENS: Array<u64> = Array::with_max_entries(GEN_SLOTS, 0);

/// Slot 0 is 1 once the agent moves the counts kept in [`FDS`] entries
/// (see `resonance_common::fd_entry`); until then, and on kernels where its
/// mover does not load, every syscall counts in [`FLOWS`] directly.
/// An array, so the check on every hit is inlined.
#[map(name = "ENTRY_COUNTS")]
pub static ENTRY_COUNTS: Array<u32> = Array::with_max_entries(1, 0);

/// Each CPU's count of retired keys handed out (see `fdcache::retire`).
#[map(name = "RETIRED_NEXT")]
pub static RETIRED_NEXT: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// What the hot path hands [`resonance_common::ExitPath::Flow`] (a tail
/// call passes nothing but the context), per CPU: the tail call runs at
/// once on the same CPU, with preemption off.
#[map(name = "FLOW_ARGS")]
pub static FLOW_ARGS: PerCpuArray<FlowArgs> = PerCpuArray::with_max_entries(1, 0);

/// A syscall to count in [`FLOWS`], judged already (latency taken, full
/// pipe told). Plain integers only: the tail-called program checks every
/// byte it decodes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FlowArgs {
    /// The process.
    pub tgid: u32,
    /// The descriptor.
    pub fd: i32,
    /// `Object::kind` as a byte.
    pub kind: u8,
    /// `Direction` as a byte.
    pub dir: u8,
    /// 1 when it met a full pipe (see `flows::judge`).
    pub blocked: u8,
    /// Explicit padding.
    pub pad: [u8; 1],
    /// `Object::slots`.
    pub slots: u32,
    /// `Object::end`.
    pub end: u64,
    /// `Object::peer`.
    pub peer: u64,
    /// `Object::pipe`.
    pub pipe: u64,
    /// The syscall's result (bytes, or -errno).
    pub ret: i64,
    /// When it completed.
    pub now: u64,
    /// `Destination::address`.
    pub to_address: u64,
    /// `Destination::header`.
    pub to_header: u64,
}

/// Each CPU's count of generations handed out (see `fdcache::renew`).
#[map(name = "GEN_NEXT")]
pub static GEN_NEXT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Descriptor walks the hot path made because [`FDS`] could not answer,
/// per CPU: what the cache saves shows here.
#[map(name = "FD_WALKS")]
pub static FD_WALKS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Room for this many cached descriptors.
pub const FD_SLOTS: u32 = 65_536;
/// Generation slots; a power of two, so the index is a mask.
pub const GEN_SLOTS: u32 = 65_536;

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
    /// splice, tee, sendfile.
    Move = 6,
    /// bind.
    Bind = 7,
}

/// The programs `programs::dispatch` hands rarer syscalls to, indexed by
/// `resonance_common::ExitPath`; filled by the agent after loading them. An
/// empty slot makes the tail call fall through: those syscalls go
/// unobserved rather than anything failing.
#[map(name = "EXIT_PATHS")]
pub static EXIT_PATHS: ProgramArray = ProgramArray::with_max_entries(ExitPath::SLOTS, 0);
