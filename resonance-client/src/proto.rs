//! The broker's wire protocol, version 2 (version 1 lacked
//! [`Message::Report`]; a version-1 broker closes the connection of a
//! client that sends one, so the version says which side speaks it).
//!
//! Every message is one frame:
//!
//! ```text
//! offset  size  field
//! 0       4     length of the rest of the frame (header remainder + body), u32 LE
//! 4       1     protocol version (2)
//! 5       1     message type
//! 6       1     file descriptors carried (0 or 1), sent with SCM_RIGHTS in
//!               the same sendmsg as the frame's first byte
//! 7       1     reserved, 0
//! 8       ...   body: fields in order; integers little-endian, strings as a
//!               u16 length then UTF-8 bytes
//! ```
//!
//! A frame is at most [`MAX_FRAME`] bytes, so a receiver can size its buffer
//! once and never truncate. [`Message::encode`] and [`decode`] are the only
//! ways in and out; anything malformed is a [`ProtoError`], never a panic.

use std::fmt;

/// The protocol version this crate speaks.
pub const VERSION: u8 = 2;
/// Bytes before the body.
pub const HEADER_LEN: usize = 8;
/// Largest frame, header included.
pub const MAX_FRAME: usize = 4096;
/// Longest service or client name.
pub const MAX_NAME: usize = 255;

/// What a frame could not be decoded into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtoError {
    /// The length prefix announces more than [`MAX_FRAME`].
    TooLarge(usize),
    /// A version this side does not speak.
    Version(u8),
    /// A message type nobody defined.
    UnknownType(u8),
    /// The body ended early, had bytes left over or held invalid values.
    Malformed(&'static str),
    /// The frame's fd count does not match what its type carries.
    FdCount {
        /// Message type.
        kind: u8,
        /// Fds announced.
        announced: u8,
    },
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge(n) => write!(f, "frame of {n} bytes exceeds the {MAX_FRAME}-byte limit"),
            Self::Version(v) => write!(
                f,
                "protocol version {v} is not supported (this side speaks {VERSION})"
            ),
            Self::UnknownType(t) => write!(f, "unknown message type {t}"),
            Self::Malformed(what) => write!(f, "malformed message: {what}"),
            Self::FdCount { kind, announced } => {
                write!(
                    f,
                    "message type {kind} cannot carry {announced} file descriptors"
                )
            }
        }
    }
}

impl std::error::Error for ProtoError {}

/// Error codes the broker sends in [`Message::Error`].
pub mod code {
    /// The frame could not be decoded.
    pub const MALFORMED: u16 = 1;
    /// The frame exceeded [`super::MAX_FRAME`].
    pub const TOO_LARGE: u16 = 2;
    /// Unsupported protocol version.
    pub const VERSION: u16 = 3;
    /// File descriptors arrived where none were expected.
    pub const UNEXPECTED_FDS: u16 = 4;
    /// The policy forbids it.
    pub const DENIED: u16 = 5;
    /// Nobody serves that service.
    pub const UNKNOWN_SERVICE: u16 = 6;
    /// A message out of order (e.g. anything before `Hello`).
    pub const PROTOCOL: u16 = 7;
    /// The agent failed (out of fds, ...).
    pub const INTERNAL: u16 = 8;
}

/// Kernel object behind a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    /// A pipe: one way, requester writes, responder reads.
    Pipe = 1,
    /// A pipe in packet mode (`O_DIRECT`): one way, one message per read.
    PacketPipe = 2,
    /// A `SOCK_STREAM` socketpair: two way.
    Stream = 3,
    /// A `SOCK_SEQPACKET` socketpair: two way, message boundaries kept.
    SeqPacket = 4,
}

impl ChannelKind {
    fn from_u8(v: u8) -> Result<Self, ProtoError> {
        Ok(match v {
            1 => Self::Pipe,
            2 => Self::PacketPipe,
            3 => Self::Stream,
            4 => Self::SeqPacket,
            _ => return Err(ProtoError::Malformed("unknown channel kind")),
        })
    }

    /// The name used in configs, metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pipe => "pipe",
            Self::PacketPipe => "packet_pipe",
            Self::Stream => "stream",
            Self::SeqPacket => "seqpacket",
        }
    }

    /// Whether both ends can write.
    pub fn two_way(self) -> bool {
        matches!(self, Self::Stream | Self::SeqPacket)
    }
}

/// Which end of a channel a process holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The opener's end (the write end of a pipe).
    Requester = 0,
    /// The served service's end (the read end of a pipe).
    Responder = 1,
}

/// What the requester expects of the traffic; the agent remembers it per
/// pair and configures later pre-created channels from it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Want {
    /// Preferred kind; `None` lets the agent choose (two-way stream).
    pub kind: Option<ChannelKind>,
    /// Largest burst expected in one direction, bytes (0 = unknown).
    pub burst: u32,
}

/// How the agent configured a channel, delivered with each end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelConfig {
    /// Kernel object.
    pub kind: ChannelKind,
    /// Buffer capacity set (`F_SETPIPE_SZ` or `SO_SNDBUF`/`SO_RCVBUF`), bytes.
    pub capacity: u32,
    /// Whether the end was handed out with `O_NONBLOCK`.
    pub nonblocking: bool,
    /// Suggested write size, bytes (writes above it may split).
    pub write_size: u32,
    /// Suggested flush interval for batching writers, microseconds.
    pub flush_us: u32,
}

/// How one channel was used, as its requester measured it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelUsage {
    /// Bytes the requester wrote into it.
    pub bytes: u64,
    /// Most bytes seen buffered in it at once (e.g. `FIONREAD`), 0 if
    /// unknown.
    pub max_fill: u32,
    /// Whether a write found the buffer full (blocked, or `EAGAIN` on a
    /// non-blocking end).
    pub writer_blocked: bool,
}

/// Who holds the other end, as the agent saw it through `SO_PEERCRED`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The peer's service (registered name, or its client name).
    pub service: String,
    /// Its process id.
    pub pid: u32,
    /// Its user id.
    pub uid: u32,
    /// Its group id.
    pub gid: u32,
}

/// Every message of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Client, first message: who is speaking (used as the requester's
    /// service name in pair statistics when it registers nothing).
    Hello {
        /// Client name.
        name: String,
    },
    /// Client: this process serves `service`.
    Register {
        /// Request id echoed in the answer.
        req: u64,
        /// Service name.
        service: String,
    },
    /// Client: a channel to `service` now, please (a miss).
    Open {
        /// Request id echoed in the answer.
        req: u64,
        /// Service name.
        service: String,
        /// Traffic expectations.
        want: Want,
    },
    /// Client: a pushed channel was taken by `open()` (a hit). Sent in the
    /// background, after the fact.
    Claimed {
        /// Channel id.
        channel: u64,
    },
    /// Client: answer to [`Message::Revoke`].
    RevokeAck {
        /// Channel id.
        channel: u64,
        /// Whether the end was still unused and is now closed.
        dropped: bool,
    },
    /// Client: how a channel it held was used, measured by the
    /// application (see [`ChannelUsage`]); the broker sizes the pair's next
    /// channels from it. Sent by the requester, after use, at most once per
    /// channel; reports for pairs the broker never served are ignored.
    Report {
        /// Channel id (for logs: the pair is the sender and `service`).
        channel: u64,
        /// The service the channel went to.
        service: String,
        /// What was measured.
        usage: ChannelUsage,
    },
    /// Broker: answer to `Hello`.
    Welcome {
        /// Connection id.
        client: u64,
        /// The client's credentials as the broker sees them.
        pid: u32,
        /// User id.
        uid: u32,
        /// Group id.
        gid: u32,
    },
    /// Broker: request `req` succeeded.
    Ok {
        /// Request id.
        req: u64,
    },
    /// Broker: request `req` (0: the connection itself) failed.
    Error {
        /// Request id or 0.
        req: u64,
        /// One of [`code`].
        code: u16,
        /// Human-readable reason.
        message: String,
    },
    /// Broker: one end of a channel; carries exactly one fd.
    Channel {
        /// Channel id (unique per agent run).
        channel: u64,
        /// The `Open` it answers, or 0 when pushed ahead of time.
        req: u64,
        /// Which end this is.
        role: Role,
        /// The service the channel is to (the requester's target, or the
        /// responder's own registered name).
        service: String,
        /// Who holds the other end.
        peer: Peer,
        /// Configuration.
        config: ChannelConfig,
    },
    /// Broker: drop pushed channel `channel` if unused.
    Revoke {
        /// Channel id.
        channel: u64,
    },
}

mod ty {
    pub const HELLO: u8 = 1;
    pub const REGISTER: u8 = 2;
    pub const OPEN: u8 = 3;
    pub const CLAIMED: u8 = 4;
    pub const REVOKE_ACK: u8 = 5;
    pub const REPORT: u8 = 6;
    pub const WELCOME: u8 = 64;
    pub const OK: u8 = 65;
    pub const ERROR: u8 = 66;
    pub const CHANNEL: u8 = 67;
    pub const REVOKE: u8 = 68;
}

impl Message {
    /// File descriptors this message travels with.
    pub fn fds(&self) -> u8 {
        u8::from(matches!(self, Self::Channel { .. }))
    }

    fn type_code(&self) -> u8 {
        match self {
            Self::Hello { .. } => ty::HELLO,
            Self::Register { .. } => ty::REGISTER,
            Self::Open { .. } => ty::OPEN,
            Self::Claimed { .. } => ty::CLAIMED,
            Self::RevokeAck { .. } => ty::REVOKE_ACK,
            Self::Report { .. } => ty::REPORT,
            Self::Welcome { .. } => ty::WELCOME,
            Self::Ok { .. } => ty::OK,
            Self::Error { .. } => ty::ERROR,
            Self::Channel { .. } => ty::CHANNEL,
            Self::Revoke { .. } => ty::REVOKE,
        }
    }

    /// The whole frame. Names longer than [`MAX_NAME`] and error texts are
    /// cut (at a character boundary) so the frame always fits.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&[0, 0, 0, 0, VERSION, self.type_code(), self.fds(), 0]);
        match self {
            Self::Hello { name } => put_str(&mut out, name),
            Self::Register { req, service } => {
                put_u64(&mut out, *req);
                put_str(&mut out, service);
            }
            Self::Open { req, service, want } => {
                put_u64(&mut out, *req);
                put_str(&mut out, service);
                out.push(want.kind.map_or(0, |k| k as u8));
                put_u32(&mut out, want.burst);
            }
            Self::Claimed { channel } => put_u64(&mut out, *channel),
            Self::RevokeAck { channel, dropped } => {
                put_u64(&mut out, *channel);
                out.push(u8::from(*dropped));
            }
            Self::Report {
                channel,
                service,
                usage,
            } => {
                put_u64(&mut out, *channel);
                put_str(&mut out, service);
                put_u64(&mut out, usage.bytes);
                put_u32(&mut out, usage.max_fill);
                out.push(u8::from(usage.writer_blocked));
            }
            Self::Welcome {
                client,
                pid,
                uid,
                gid,
            } => {
                put_u64(&mut out, *client);
                put_u32(&mut out, *pid);
                put_u32(&mut out, *uid);
                put_u32(&mut out, *gid);
            }
            Self::Ok { req } => put_u64(&mut out, *req),
            Self::Error { req, code, message } => {
                put_u64(&mut out, *req);
                out.extend_from_slice(&code.to_le_bytes());
                put_str(&mut out, message);
            }
            Self::Channel {
                channel,
                req,
                role,
                service,
                peer,
                config,
            } => {
                put_u64(&mut out, *channel);
                put_u64(&mut out, *req);
                out.push(*role as u8);
                put_str(&mut out, service);
                put_str(&mut out, &peer.service);
                put_u32(&mut out, peer.pid);
                put_u32(&mut out, peer.uid);
                put_u32(&mut out, peer.gid);
                out.push(config.kind as u8);
                put_u32(&mut out, config.capacity);
                out.push(u8::from(config.nonblocking));
                put_u32(&mut out, config.write_size);
                put_u32(&mut out, config.flush_us);
            }
            Self::Revoke { channel } => put_u64(&mut out, *channel),
        }
        let len = (out.len() - 4) as u32;
        out[..4].copy_from_slice(&len.to_le_bytes());
        out
    }
}

/// Checks a frame's length prefix: `Ok(Some(total frame length))` once the
/// prefix is in `buf`, `Ok(None)` when fewer than 4 bytes are there.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, ProtoError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let rest = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    let total = rest.saturating_add(4);
    if total > MAX_FRAME {
        return Err(ProtoError::TooLarge(total));
    }
    if total < HEADER_LEN {
        return Err(ProtoError::Malformed("frame shorter than its header"));
    }
    Ok(Some(total))
}

/// Decodes one whole frame (as delimited by [`frame_len`]).
pub fn decode(frame: &[u8]) -> Result<Message, ProtoError> {
    let total = frame_len(frame)?.ok_or(ProtoError::Malformed("frame shorter than its header"))?;
    if frame.len() != total {
        return Err(ProtoError::Malformed(
            "frame length does not match its prefix",
        ));
    }
    let (version, kind, fds) = (frame[4], frame[5], frame[6]);
    if version != VERSION {
        return Err(ProtoError::Version(version));
    }
    let mut r = Reader(&frame[HEADER_LEN..]);
    let message = match kind {
        ty::HELLO => Message::Hello { name: r.name()? },
        ty::REGISTER => Message::Register {
            req: r.u64()?,
            service: r.name()?,
        },
        ty::OPEN => Message::Open {
            req: r.u64()?,
            service: r.name()?,
            want: Want {
                kind: match r.u8()? {
                    0 => None,
                    k => Some(ChannelKind::from_u8(k)?),
                },
                burst: r.u32()?,
            },
        },
        ty::CLAIMED => Message::Claimed { channel: r.u64()? },
        ty::REVOKE_ACK => Message::RevokeAck {
            channel: r.u64()?,
            dropped: r.bool()?,
        },
        ty::REPORT => Message::Report {
            channel: r.u64()?,
            service: r.name()?,
            usage: ChannelUsage {
                bytes: r.u64()?,
                max_fill: r.u32()?,
                writer_blocked: r.bool()?,
            },
        },
        ty::WELCOME => Message::Welcome {
            client: r.u64()?,
            pid: r.u32()?,
            uid: r.u32()?,
            gid: r.u32()?,
        },
        ty::OK => Message::Ok { req: r.u64()? },
        ty::ERROR => Message::Error {
            req: r.u64()?,
            code: r.u16()?,
            message: r.string()?,
        },
        ty::CHANNEL => Message::Channel {
            channel: r.u64()?,
            req: r.u64()?,
            role: match r.u8()? {
                0 => Role::Requester,
                1 => Role::Responder,
                _ => return Err(ProtoError::Malformed("unknown role")),
            },
            service: r.name()?,
            peer: Peer {
                service: r.name()?,
                pid: r.u32()?,
                uid: r.u32()?,
                gid: r.u32()?,
            },
            config: ChannelConfig {
                kind: ChannelKind::from_u8(r.u8()?)?,
                capacity: r.u32()?,
                nonblocking: r.bool()?,
                write_size: r.u32()?,
                flush_us: r.u32()?,
            },
        },
        ty::REVOKE => Message::Revoke { channel: r.u64()? },
        other => return Err(ProtoError::UnknownType(other)),
    };
    if !r.0.is_empty() {
        return Err(ProtoError::Malformed("trailing bytes after the body"));
    }
    if fds != message.fds() {
        return Err(ProtoError::FdCount {
            kind,
            announced: fds,
        });
    }
    Ok(message)
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(MAX_NAME * 4);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], ProtoError> {
        if self.0.len() < n {
            return Err(ProtoError::Malformed("body ends early"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.take(1)?[0])
    }

    fn bool(&mut self) -> Result<bool, ProtoError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(ProtoError::Malformed("boolean not 0 or 1")),
        }
    }

    fn u16(&mut self) -> Result<u16, ProtoError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, ProtoError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, ProtoError> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn string(&mut self) -> Result<String, ProtoError> {
        let n = self.u16()? as usize;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| ProtoError::Malformed("string not UTF-8"))
    }

    /// A service or client name: non-empty, at most [`MAX_NAME`] bytes,
    /// printable (names end up in logs and metric labels).
    fn name(&mut self) -> Result<String, ProtoError> {
        let s = self.string()?;
        if s.is_empty() || s.len() > MAX_NAME || s.chars().any(|c| c.is_control()) {
            return Err(ProtoError::Malformed(
                "name empty, too long or not printable",
            ));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello { name: "web".into() },
            Message::Register {
                req: 7,
                service: "db".into(),
            },
            Message::Open {
                req: u64::MAX,
                service: "db".into(),
                want: Want {
                    kind: Some(ChannelKind::SeqPacket),
                    burst: 65536,
                },
            },
            Message::Open {
                req: 1,
                service: "db".into(),
                want: Want::default(),
            },
            Message::Claimed { channel: 3 },
            Message::RevokeAck {
                channel: 3,
                dropped: true,
            },
            Message::Report {
                channel: 3,
                service: "db".into(),
                usage: ChannelUsage {
                    bytes: u64::MAX,
                    max_fill: 65536,
                    writer_blocked: true,
                },
            },
            Message::Welcome {
                client: 1,
                pid: 2,
                uid: 3,
                gid: 4,
            },
            Message::Ok { req: 9 },
            Message::Error {
                req: 0,
                code: code::DENIED,
                message: "nope ✓".into(),
            },
            Message::Channel {
                channel: 10,
                req: 0,
                role: Role::Responder,
                service: "db".into(),
                peer: Peer {
                    service: "web".into(),
                    pid: 1,
                    uid: 1000,
                    gid: 100,
                },
                config: ChannelConfig {
                    kind: ChannelKind::PacketPipe,
                    capacity: 1 << 20,
                    nonblocking: true,
                    write_size: 4096,
                    flush_us: 50,
                },
            },
            Message::Revoke { channel: 10 },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for message in samples() {
            let frame = message.encode();
            assert!(frame.len() <= MAX_FRAME);
            assert_eq!(frame_len(&frame), Ok(Some(frame.len())));
            assert_eq!(decode(&frame), Ok(message));
        }
    }

    #[test]
    fn every_truncation_and_extension_is_an_error() {
        for message in samples() {
            let frame = message.encode();
            for cut in 0..frame.len() {
                assert!(decode(&frame[..cut]).is_err(), "{message:?} cut at {cut}");
                // A consistent prefix with a short body is malformed too.
                if cut >= HEADER_LEN {
                    let mut short = frame[..cut].to_vec();
                    short[..4].copy_from_slice(&((cut - 4) as u32).to_le_bytes());
                    assert!(decode(&short).is_err(), "{message:?} body cut at {cut}");
                }
            }
            let mut long = frame.clone();
            long.push(0);
            let rest = (long.len() - 4) as u32;
            long[..4].copy_from_slice(&rest.to_le_bytes());
            assert!(matches!(decode(&long), Err(ProtoError::Malformed(_))));
        }
    }

    #[test]
    fn oversized_unknown_version_type_and_fd_count_are_errors() {
        let mut big = vec![0u8; 8];
        big[..4].copy_from_slice(&(u32::MAX).to_le_bytes());
        assert!(matches!(frame_len(&big), Err(ProtoError::TooLarge(_))));
        let mut frame = Message::Ok { req: 1 }.encode();
        frame[4] = 1;
        assert_eq!(decode(&frame), Err(ProtoError::Version(1)));
        frame[4] = VERSION;
        frame[5] = 200;
        assert_eq!(decode(&frame), Err(ProtoError::UnknownType(200)));
        frame[5] = ty::OK;
        frame[6] = 1;
        assert!(matches!(decode(&frame), Err(ProtoError::FdCount { .. })));
    }

    #[test]
    fn garbage_never_panics() {
        // A small deterministic generator: every byte pattern must decode or
        // fail cleanly.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 64) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|i| (x >> (i % 8 * 8)) as u8).collect();
            if bytes.len() >= 8 {
                bytes[..4].copy_from_slice(&((len - 4) as u32).to_le_bytes());
                bytes[4] = VERSION;
            }
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn bad_names_are_rejected() {
        for name in ["", "a\nb", &"x".repeat(MAX_NAME + 1)] {
            let frame = Message::Hello { name: name.into() }.encode();
            assert!(decode(&frame).is_err(), "{name:?}");
        }
    }
}
