//! Discrete happenings sent through the ring buffer.
//!
//! Byte counts never travel this way: they stay in the flow maps. Only rare,
//! discrete happenings do, so a busy pipe costs no ring-buffer traffic.

use crate::flow::COMM_LEN;

/// Room for a Unix socket path (`sun_path`).
pub const UNIX_PATH_LEN: usize = 108;

/// What an [`Event`] reports.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// pipe/pipe2/socketpair/socket returned: `end`, `peer`, `fds`.
    Created = 1,
    /// connect returned (`ret` 0 or -errno); `path` holds a Unix address.
    Connected = 2,
    /// accept/accept4 returned a connected socket: `end`, `peer`, `fds[0]`.
    Accepted = 3,
    /// A flow became active after an idle gap (or for the first time).
    FlowStarted = 4,
    /// close() of a pipe or socket descriptor.
    Closed = 5,
    /// A process (thread-group leader) exited.
    Exited = 6,
    /// A write met a full pipe or FIFO, or a read took a full one's worth,
    /// for the 1st, 2nd, 4th, 8th, ... time in its flow (powers of two: a
    /// writer that always blocks costs a logarithmic number of events):
    /// `end`, `dir`, `fds[0]` the process's descriptor for it, `ret` the
    /// bytes moved (saturated).
    PipeFull = 7,
    /// A datagram socket without a peer started a flow by sending to an
    /// address (sendto/sendmsg with one): `end`, `path` the Unix address.
    Addressed = 8,
    /// bind() of a Unix datagram socket succeeded: `end`, `path` its
    /// address (what peerless senders name to reach it).
    Bound = 9,
}

impl EventKind {
    /// Decodes the byte the kernel side stores.
    pub const fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::Created,
            2 => Self::Connected,
            3 => Self::Accepted,
            4 => Self::FlowStarted,
            5 => Self::Closed,
            6 => Self::Exited,
            7 => Self::PipeFull,
            8 => Self::Addressed,
            9 => Self::Bound,
            _ => return None,
        })
    }
}

/// One ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// [`EventKind`] as a byte.
    pub event: u8,
    /// [`crate::ChannelKind`] as a byte (0 when not applicable).
    pub kind: u8,
    /// [`crate::Direction`] for `FlowStarted`.
    pub dir: u8,
    /// Explicit padding.
    pub pad: u8,
    /// Thread-group id of the process.
    pub tgid: u32,
    /// Parent's thread-group id.
    pub ppid: u32,
    /// Syscall result (0 or -errno) where one applies.
    pub ret: i32,
    /// Monotonic ns.
    pub ts_ns: u64,
    /// Channel end id (see [`crate::FlowKey`]).
    pub end: u64,
    /// Peer end id (0 = unknown).
    pub peer: u64,
    /// File descriptors involved (-1 = none).
    pub fds: [i32; 2],
    /// The task's comm.
    pub comm: [u8; COMM_LEN],
    /// Unix socket address for `Connected` (NUL-padded; abstract names keep
    /// their leading NUL).
    pub path: [u8; UNIX_PATH_LEN],
    /// Explicit padding to a multiple of 8.
    pub pad2: [u8; 4],
}
