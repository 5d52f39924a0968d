//! What kind of kernel object a file descriptor leads to.

/// The channel kinds the observer follows; anything else is ignored early.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChannelKind {
    /// An anonymous pipe (pipefs inode).
    Pipe = 1,
    /// A named pipe (FIFO inode on a real filesystem).
    Fifo = 2,
    /// `AF_UNIX`, `SOCK_STREAM` (also socketpairs).
    UnixStream = 3,
    /// `AF_UNIX`, `SOCK_DGRAM`.
    UnixDgram = 4,
    /// `AF_UNIX`, `SOCK_SEQPACKET`.
    UnixSeqpacket = 5,
    /// TCP whose both ends are on this host (loopback).
    TcpLoopback = 6,
}

impl ChannelKind {
    /// Decodes the byte the kernel side stores; `None` for anything unknown.
    pub const fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::Pipe,
            2 => Self::Fifo,
            3 => Self::UnixStream,
            4 => Self::UnixDgram,
            5 => Self::UnixSeqpacket,
            6 => Self::TcpLoopback,
            _ => return None,
        })
    }

    /// The kind whose [`ChannelKind::as_str`] is `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        (1..=6)
            .filter_map(Self::from_u8)
            .find(|kind| kind.as_str() == name)
    }

    /// The stable name used in output (`pipe`, `unix_stream`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pipe => "pipe",
            Self::Fifo => "fifo",
            Self::UnixStream => "unix_stream",
            Self::UnixDgram => "unix_dgram",
            Self::UnixSeqpacket => "unix_seqpacket",
            Self::TcpLoopback => "tcp_loopback",
        }
    }

    /// Pipes and FIFOs carry data one way; latency there is the time data
    /// waits in the buffer. Sockets carry it both ways; latency there is the
    /// request→response turnaround.
    pub const fn is_one_way(self) -> bool {
        matches!(self, Self::Pipe | Self::Fifo)
    }
}
