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
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
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

fn sendmsg_once(socket: RawFd, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as usize;
        msg.msg_control = control.as_mut_ptr().cast();
        // `as _`: socklen_t on musl, size_t on glibc.
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` bytes we own, enough for
        // one cmsghdr with one int, so CMSG_FIRSTHDR is non-null and in
        // bounds.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd.as_raw_fd());
        }
    }
    loop {
        // SAFETY: msg points at live buffers for the duration of the call.
        let n = unsafe { libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
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

    /// One `recvmsg`: appends bytes and takes ownership of descriptors.
    /// `Ok(0)` never happens: a closed peer is [`WireError::Closed`].
    pub fn fill(&mut self, socket: BorrowedFd<'_>, flags: libc::c_int) -> Result<usize, WireError> {
        let start = self.buf.len();
        self.buf.resize(start + MAX_FRAME, 0);
        let mut iov = libc::iovec {
            iov_base: self.buf[start..].as_mut_ptr().cast(),
            iov_len: MAX_FRAME,
        };
        let mut control = [0u64; 16];
        // SAFETY: pure size computation.
        let space = unsafe { libc::CMSG_SPACE((MAX_FDS_PER_READ * size_of::<RawFd>()) as u32) };
        debug_assert!(space as usize <= size_of_val(&control));
        // SAFETY: zeroed msghdr is a valid empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let n = loop {
            // SAFETY: every pointer in msg refers to a live buffer.
            let n = unsafe {
                libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC | flags)
            };
            if n >= 0 {
                break n as usize;
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                self.buf.truncate(start);
                return Err(WireError::Io(error));
            }
        };
        self.buf.truncate(start + n);
        // Take every descriptor first so none leaks, whatever follows.
        // SAFETY: the kernel filled msg_control; the CMSG macros walk it
        // within msg_controllen.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg);
                    let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    for i in 0..len / size_of::<RawFd>() {
                        let raw = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                        self.fds.push_back(OwnedFd::from_raw_fd(raw));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
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
            self.fill(socket, 0)?;
        }
    }
}
