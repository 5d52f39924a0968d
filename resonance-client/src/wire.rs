//! Frames and file descriptors over a Unix stream socket.
//!
//! [`send`] writes one frame with `sendmsg`, attaching its fd (if any) with
//! `SCM_RIGHTS` to the frame's first byte. [`FrameReader`] reads with
//! `recvmsg` into a buffer of [`MAX_FRAME`] bytes plus room for
//! [`MAX_FDS_PER_READ`] descriptors (more than the kernel ever delivers in
//! one read here: a stream read stops after a message carrying fds), takes
//! ownership of every descriptor received (`MSG_CMSG_CLOEXEC`, `OwnedFd`) and
//! hands out whole frames with the descriptors they announced.

use std::{
    collections::VecDeque,
    io::{self, IoSlice, IoSliceMut},
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
};

use nix::{
    errno::Errno,
    sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr, recvmsg, sendmsg},
};

use crate::proto::{self, MAX_FRAME, Message, ProtoError};

/// Descriptors a single `recvmsg` has room for.
pub const MAX_FDS_PER_READ: usize = 8;

/// What went wrong reading or writing a frame.
#[derive(Debug)]
pub enum WireError {
    /// The socket failed.
    Io(io::Error),
    /// The peer closed the connection.
    Closed,
    /// The bytes were not a valid frame.
    Proto(ProtoError),
    /// Descriptors arrived that no frame announced, or a frame announced
    /// descriptors that did not arrive, or the kernel truncated them.
    Fds(&'static str),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "socket error: {e}"),
            Self::Closed => write!(f, "connection closed"),
            Self::Proto(e) => write!(f, "{e}"),
            Self::Fds(what) => write!(f, "file descriptors: {what}"),
        }
    }
}

impl std::error::Error for WireError {}

impl From<ProtoError> for WireError {
    fn from(e: ProtoError) -> Self {
        Self::Proto(e)
    }
}

/// Sends `message`, with `fd` when the message carries one. Blocks (or
/// returns `WouldBlock` on a non-blocking socket) until the whole frame is
/// queued; a partial write of a frame is completed in a loop.
pub fn send(
    socket: BorrowedFd<'_>,
    message: &Message,
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    if (message.fds() == 1) != fd.is_some() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "descriptor count does not match the message",
        ));
    }
    send_raw(socket, &message.encode(), fd)
}

/// Sends raw bytes, the first sendmsg carrying `fd`. Public so tests can
/// send malformed frames with descriptors attached.
pub fn send_raw(
    socket: BorrowedFd<'_>,
    bytes: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let mut sent = 0;
    let mut first = true;
    while sent < bytes.len() {
        let n = sendmsg_once(
            socket.as_raw_fd(),
            &bytes[sent..],
            if first { fd } else { None },
        )?;
        first = false;
        sent += n;
    }
    Ok(())
}

/// One `sendmsg` of (a prefix of) `bytes`, with `fd` attached: returns the
/// bytes queued. For non-blocking writers that must resume mid-frame.
pub fn send_once(
    socket: BorrowedFd<'_>,
    bytes: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<usize> {
    sendmsg_once(socket.as_raw_fd(), bytes, fd)
}

/// Shuts a socket down both ways, so the peer (and a thread of ours
/// blocked reading it) sees EOF even while another holder keeps it open.
pub fn shutdown(socket: impl AsFd) -> io::Result<()> {
    // nix 0.32 takes the raw number here; the borrow keeps it open.
    Ok(nix::sys::socket::shutdown(
        socket.as_fd().as_raw_fd(),
        nix::sys::socket::Shutdown::Both,
    )?)
}

fn sendmsg_once(socket: RawFd, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<usize> {
    let iov = [IoSlice::new(bytes)];
    let fds = fd.map(|fd| [fd.as_raw_fd()]);
    let rights;
    let control: &[ControlMessage<'_>] = match &fds {
        Some(fds) => {
            rights = [ControlMessage::ScmRights(fds)];
            &rights
        }
        None => &[],
    };
    loop {
        match sendmsg::<UnixAddr>(socket, &iov, control, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(errno.into()),
        }
    }
}

/// Reassembles frames from a stream socket.
pub struct FrameReader {
    buf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self {
            buf: Vec::with_capacity(MAX_FRAME * 2),
            fds: VecDeque::new(),
        }
    }

    /// The next complete frame already buffered, with its descriptor.
    pub fn next_frame(&mut self) -> Result<Option<(Message, Option<OwnedFd>)>, WireError> {
        let Some(total) = proto::frame_len(&self.buf)? else {
            return self.no_frame();
        };
        if self.buf.len() < total {
            return Ok(None);
        }
        let message = proto::decode(&self.buf[..total]);
        self.buf.drain(..total);
        let message = message?;
        let fd = if message.fds() == 1 {
            Some(self.fds.pop_front().ok_or(WireError::Fds(
                "a channel frame arrived without its descriptor",
            ))?)
        } else {
            None
        };
        if self.buf.is_empty() && !self.fds.is_empty() {
            return Err(WireError::Fds(
                "descriptors arrived that no frame announced",
            ));
        }
        Ok(Some((message, fd)))
    }

    fn no_frame(&self) -> Result<Option<(Message, Option<OwnedFd>)>, WireError> {
        // Descriptors ride on a frame's first byte, so with nothing buffered
        // there is no frame they could belong to.
        if self.buf.is_empty() && !self.fds.is_empty() {
            return Err(WireError::Fds(
                "descriptors arrived that no frame announced",
            ));
        }
        Ok(None)
    }

    /// Descriptors received and not yet handed out (the broker expects none).
    pub fn pending_fds(&self) -> usize {
        self.fds.len()
    }

    /// One `recvmsg`: appends bytes and takes ownership of descriptors;
    /// with `dont_wait`, `WouldBlock` instead of blocking. `Ok(0)` never
    /// happens: a closed peer is [`WireError::Closed`].
    pub fn fill(&mut self, socket: BorrowedFd<'_>, dont_wait: bool) -> Result<usize, WireError> {
        let start = self.buf.len();
        self.buf.resize(start + MAX_FRAME, 0);
        let mut flags = MsgFlags::MSG_CMSG_CLOEXEC;
        flags.set(MsgFlags::MSG_DONTWAIT, dont_wait);
        let mut control = nix::cmsg_space!([RawFd; MAX_FDS_PER_READ]);
        let received = loop {
            let mut iov = [IoSliceMut::new(&mut self.buf[start..])];
            match recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut control), flags) {
                Ok(message) => {
                    let mut fds = Vec::new();
                    // Take every descriptor first so none leaks, whatever
                    // follows.
                    if let Ok(cmsgs) = message.cmsgs() {
                        for cmsg in cmsgs {
                            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                                fds.extend(raw);
                            }
                        }
                    }
                    break (message.bytes, fds, message.flags);
                }
                Err(Errno::EINTR) => {}
                Err(errno) => {
                    self.buf.truncate(start);
                    return Err(WireError::Io(errno.into()));
                }
            }
        };
        let (n, fds, msg_flags) = received;
        for raw in fds {
            // SAFETY: the kernel installed these descriptors in this
            // process for this message; nothing else knows their numbers.
            self.fds.push_back(unsafe { OwnedFd::from_raw_fd(raw) });
        }
        self.buf.truncate(start + n);
        if msg_flags.contains(MsgFlags::MSG_CTRUNC) {
            return Err(WireError::Fds(
                "too many descriptors in one read (truncated)",
            ));
        }
        if n == 0 {
            return Err(WireError::Closed);
        }
        Ok(n)
    }

    /// Blocks until a whole frame is available and returns it.
    pub fn read_frame(
        &mut self,
        socket: BorrowedFd<'_>,
    ) -> Result<(Message, Option<OwnedFd>), WireError> {
        loop {
            if let Some(frame) = self.next_frame()? {
                return Ok(frame);
            }
            self.fill(socket, false)?;
        }
    }
}
