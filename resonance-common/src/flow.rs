//! Per-flow counters and per-end latency state, as kept in the kernel maps.

use crate::histogram::HIST_BUCKETS;

/// Length of a task's `comm`, including the trailing NUL.
pub const COMM_LEN: usize = 16;

/// Which way data moved in a flow.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// write, writev, sendto, sendmsg.
    Send = 0,
    /// read, readv, recvfrom, recvmsg.
    Recv = 1,
}

impl Direction {
    /// Decodes the byte the kernel side stores.
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::Send),
            1 => Some(Self::Recv),
            _ => None,
        }
    }
}

/// The end id of a FIFO: its inode number is unique only within its
/// filesystem, so the filesystem's device (the kernel's `s_dev` encoding,
/// major << 20 | minor) is folded in, and bit 62 keeps it apart from the
/// pipefs and sockfs inode numbers other ends use.
pub const fn fifo_end(dev: u32, ino: u64) -> u64 {
    (1 << 62) | (((dev as u64) << 40) ^ ino)
}

/// One flow: a process moving data through one end of a channel one way.
///
/// `end` identifies the channel end the process used: the inode number of a
/// pipe or FIFO (both ends share it), the socket inode for Unix sockets, a
/// hash of the local→remote 4-tuple for loopback TCP.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Thread-group id (the process id userspace sees).
    pub tgid: u32,
    /// [`crate::ChannelKind`] as a byte.
    pub kind: u8,
    /// [`Direction`] as a byte.
    pub dir: u8,
    /// Explicit padding so the key hashes the same on both sides.
    pub pad: u16,
    /// Channel end id (see the type doc).
    pub end: u64,
}

/// Counters of one flow. Written by the kernel, read by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FlowStats {
    /// Completed syscalls, successful or not.
    pub ops: u64,
    /// Bytes moved by the successful ones.
    pub bytes: u64,
    /// Failed ones, not counting EAGAIN/EINTR/restarts.
    pub errors: u64,
    /// Pipe writes that met a full pipe: in the classic tracepoint mode,
    /// writes that found too few free slots at entry; on the exit-only hot
    /// path, writes that got EAGAIN, wrote less than asked, were larger
    /// than the pipe, or left it full. On a pipe's read flow: reads that
    /// took a full pipe's worth (the pipe limited them, not the reader).
    pub blocked: u64,
    /// Monotonic ns of the first completed syscall.
    pub first_ns: u64,
    /// Monotonic ns of the latest completed syscall.
    pub last_ns: u64,
    /// The end data goes to (send) or comes from (recv); equal to `end` for
    /// pipes, the peer socket's id for sockets, 0 when not (yet) known.
    pub peer: u64,
    /// Parent's tgid when the flow was first seen.
    pub ppid: u32,
    /// Explicit padding.
    pub pad: u32,
    /// The task's comm when the flow was first seen.
    pub comm: [u8; COMM_LEN],
    /// Syscall duration (enter→exit) histogram, see [`crate::histogram`].
    /// Only the classic tracepoint mode times syscalls: the exit-only hot
    /// path has no enter to time from, and leaves it empty.
    pub syscall_hist: [u64; HIST_BUCKETS],
}

/// Writes remembered per pipe for [`EndState`]: enough for a pipe of 16
/// slots filled by page-sized writes to be read in the order written; more
/// unread writes than this share the newest entry (see `EndState`).
pub const PIPE_CHECKPOINTS: usize = 8;

/// Latency state of one channel end, shared by every process using it.
///
/// For pipes and FIFOs (`end` = inode) it measures how long the data a
/// reader takes waited in the pipe: from the completion of the write that
/// put the oldest byte of that read into the pipe. Writes are remembered as
/// checkpoints (bytes written so far, when), oldest first; a read of bytes
/// `(read, read + n]` finds the first checkpoint past `read`. When more
/// writes are unread than [`PIPE_CHECKPOINTS`], the newest entry absorbs
/// the later ones and keeps its time, so those reads are timed from an
/// earlier write: a wait is never under-stated by more than nothing and
/// over-stated by at most the span of the absorbed writes. For sockets it
/// measures the turnaround of requests *sent from this end*: the time from
/// the first unanswered send to the next data received at this end (the
/// answer's arrival).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EndState {
    /// Sockets: when the oldest unanswered send happened (0 = none).
    pub waiting_since_ns: u64,
    /// Pipes: bytes the probes saw written into this end so far (moved by
    /// writers only).
    pub written: u64,
    /// Pipes: bytes the probes saw read from it so far (moved by readers
    /// only).
    pub read: u64,
    /// Pipes: `written` after each remembered write, in a ring of
    /// [`PIPE_CHECKPOINTS`] slots.
    pub checkpoint_bytes: [u64; PIPE_CHECKPOINTS],
    /// Pipes: when each remembered write completed.
    pub checkpoint_ns: [u64; PIPE_CHECKPOINTS],
    /// Pipes: checkpoints appended so far (the writers' count; slot
    /// `next % PIPE_CHECKPOINTS` is the next one).
    pub next: u32,
    /// Pipes: checkpoints consumed so far (the readers' count). Writers and
    /// readers each move only their own count, and may run at once on
    /// two CPUs: a shared count moved by both lost updates and left a wait
    /// open for good.
    pub consumed: u32,
    /// Latency samples taken.
    pub samples: u64,
    /// Sum of all samples, ns.
    pub sum_ns: u64,
    /// Latency histogram, see [`crate::histogram`].
    pub hist: [u64; HIST_BUCKETS],
}
