//! The blocking client.
//!
//! [`Client`] owns the connection to the broker and a reader thread. The
//! thread moves every end the agent pushes into local queues: requester ends
//! into the inbox (keyed by the target service, taken by [`Client::open`]),
//! responder ends into the incoming queue ([`Client::incoming`],
//! [`Client::try_incoming`], with [`Client::incoming_fd`] for epoll loops).
//! It also answers revocations and tells the agent which pushed ends were
//! taken, at most [`CLAIM_FLUSH`] later: that notice is kept off the
//! `open()` path so a hit costs no system call. With no pushed end waiting
//! the thread sleeps until the broker speaks (see `read_loop`).

use std::{
    io,
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        unix::net::UnixStream,
    },
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::{
    proto::{ChannelConfig, ChannelUsage, Message, Peer, Role, Want, code},
    state::{State, welcome_of},
    wire::{self, FrameReader, WireError},
};

/// Where the agent's broker listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/resonance/broker.sock";
/// Environment variable overriding [`DEFAULT_SOCKET`].
pub const SOCKET_ENV: &str = "RESONANCE_BROKER_SOCKET";
/// Longest delay before the agent hears of a hit (the reader wakes this
/// often only while pushed ends wait in the inbox).
pub const CLAIM_FLUSH: Duration = Duration::from_millis(5);

/// What a client call can fail with.
#[derive(Debug)]
pub enum ClientError {
    /// Connecting or talking to the broker failed.
    Io(io::Error),
    /// The broker's bytes made no sense, or the connection broke.
    Wire(String),
    /// The broker refused: `code` is one of [`crate::proto::code`].
    Refused {
        /// Error code.
        code: u16,
        /// The broker's explanation.
        message: String,
    },
}

impl ClientError {
    /// Whether the policy denied the request.
    pub fn is_denied(&self) -> bool {
        matches!(self, Self::Refused { code, .. } if *code == code::DENIED)
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "broker connection: {e}"),
            Self::Wire(e) => write!(f, "broker protocol: {e}"),
            Self::Refused { code, message } => write!(f, "broker refused (code {code}): {message}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<WireError> for ClientError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Io(e) => Self::Io(e),
            other => Self::Wire(other.to_string()),
        }
    }
}

/// One end of a channel, owned by this process.
#[derive(Debug)]
pub struct Channel {
    /// The descriptor: a pipe end or a socketpair end.
    pub fd: OwnedFd,
    /// Channel id (unique per agent run).
    pub id: u64,
    /// The service the channel is to.
    pub service: String,
    /// Which end this is.
    pub role: Role,
    /// Who holds the other end.
    pub peer: Peer,
    /// How the agent configured it (kind, capacity, batching hints).
    pub config: ChannelConfig,
    /// Whether the agent pushed it ahead of time (a hit) rather than
    /// creating it on request.
    pub prepared: bool,
}

/// Hits and misses of this client's `open()` calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Opens served from the inbox.
    pub hits: u64,
    /// Opens that asked the broker.
    pub misses: u64,
    /// Pushed ends dropped on the agent's request.
    pub revoked: u64,
}

struct Inner {
    socket: OwnedFd,
    write: Mutex<()>,
    state: Mutex<State>,
    changed: Condvar,
    /// Readable while the incoming queue is not empty.
    event: nix::sys::eventfd::EventFd,
    next_req: AtomicU64,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, message: &Message) -> io::Result<()> {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        wire::send(self.socket.as_fd(), message, None)
    }

    fn signal_event(&self) {
        // Only a counter at its maximum refuses an add; it is readable then.
        let _ = self.event.write(1);
    }

    fn reset_event(&self) {
        // EAGAIN: it was not signalled, which is what a reset wants.
        let _ = self.event.read();
    }
}

/// A connection to the broker. Dropping it closes the connection; ends
/// already taken stay open.
pub struct Client {
    inner: Arc<Inner>,
    reader: Option<JoinHandle<()>>,
    /// The client id, pid, uid and gid the broker saw.
    pub welcome: (u64, u32, u32, u32),
}

impl Client {
    /// Connects to `$RESONANCE_BROKER_SOCKET` or [`DEFAULT_SOCKET`], named
    /// after this executable.
    pub fn connect() -> Result<Self, ClientError> {
        let path = std::env::var_os(SOCKET_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        Self::connect_to(&path, &default_name())
    }

    /// Connects to the broker at `path` as `name` (the requester's service
    /// name in the agent's pair statistics).
    pub fn connect_to(path: &Path, name: &str) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path)?;
        let socket = OwnedFd::from(stream);
        wire::send(
            socket.as_fd(),
            &Message::Hello {
                name: name.to_owned(),
            },
            None,
        )?;
        let mut reader = FrameReader::new();
        let welcome = welcome_of(reader.read_frame(socket.as_fd())?)?;
        use nix::sys::eventfd::{EfdFlags, EventFd};
        let event =
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(io::Error::from)?;
        let inner = Arc::new(Inner {
            socket,
            write: Mutex::new(()),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            event,
            next_req: AtomicU64::new(1),
        });
        let thread_inner = Arc::clone(&inner);
        let reader = std::thread::Builder::new()
            .name("resonance-client".into())
            .spawn(move || read_loop(&thread_inner, reader))?;
        Ok(Self {
            inner,
            reader: Some(reader),
            welcome,
        })
    }

    /// Declares that this process serves `service`; the policy may deny it.
    pub fn register(&self, service: &str) -> Result<(), ClientError> {
        let req = self.inner.next_req.fetch_add(1, Ordering::Relaxed);
        self.inner.send(&Message::Register {
            req,
            service: service.to_owned(),
        })?;
        self.wait_reply(req).map(drop)
    }

    /// A channel to `service`: a pushed end from the inbox when there is
    /// one (no system call), else one the broker creates now.
    pub fn open(&self, service: &str) -> Result<Channel, ClientError> {
        self.open_with(service, Want::default())
    }

    /// [`Client::open`] with traffic expectations for the agent.
    pub fn open_with(&self, service: &str, want: Want) -> Result<Channel, ClientError> {
        if let Some(channel) = self.take_prepared(service) {
            return Ok(channel);
        }
        self.open_on_demand(service, want)
    }

    /// Takes a pushed end for `service` if one waits in the inbox.
    pub fn take_prepared(&self, service: &str) -> Option<Channel> {
        self.inner.lock().take_prepared(service)
    }

    /// Asks the broker for a new channel, ignoring the inbox.
    pub fn open_on_demand(&self, service: &str, want: Want) -> Result<Channel, ClientError> {
        let req = self.inner.next_req.fetch_add(1, Ordering::Relaxed);
        self.inner.lock().stats.misses += 1;
        self.inner.send(&Message::Open {
            req,
            service: service.to_owned(),
            want,
        })?;
        self.wait_reply(req)?
            .ok_or_else(|| ClientError::Wire("Open answered without a channel".into()))
    }

    /// Tells the broker how `channel` (a requester end this client got) was
    /// used, so the pair's next channels are sized from it: a writer that
    /// found the buffer full gets a larger one. Fire and forget.
    pub fn report(&self, channel: &Channel, usage: ChannelUsage) -> Result<(), ClientError> {
        self.inner.send(&Message::Report {
            channel: channel.id,
            service: channel.service.clone(),
            usage,
        })?;
        Ok(())
    }

    /// Pushed ends waiting in the inbox for `service`.
    pub fn prepared(&self, service: &str) -> usize {
        self.inner.lock().prepared(service)
    }

    /// Blocks until a channel is opened to this process; `None` once the
    /// connection is gone.
    pub fn accept(&self) -> Option<Channel> {
        let mut state = self.inner.lock();
        loop {
            if let Some(channel) = state.incoming.pop_front() {
                if state.incoming.is_empty() {
                    self.inner.reset_event();
                }
                return Some(channel);
            }
            if state.closed.is_some() {
                return None;
            }
            state = self
                .inner
                .changed
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Channels opened to this process, blocking between them; ends when
    /// the connection does.
    pub fn incoming(&self) -> impl Iterator<Item = Channel> + '_ {
        std::iter::from_fn(|| self.accept())
    }

    /// A channel opened to this process, if one is waiting.
    pub fn try_incoming(&self) -> Option<Channel> {
        let mut state = self.inner.lock();
        let channel = state.incoming.pop_front();
        if state.incoming.is_empty() {
            self.inner.reset_event();
        }
        channel
    }

    /// A descriptor that is readable while [`Client::try_incoming`] has
    /// something: put it in an epoll set.
    pub fn incoming_fd(&self) -> BorrowedFd<'_> {
        self.inner.event.as_fd()
    }

    /// Why the connection ended, once it has.
    pub fn closed(&self) -> Option<String> {
        self.inner.lock().closed.clone()
    }

    /// Hits, misses and revocations so far.
    pub fn stats(&self) -> ClientStats {
        self.inner.lock().stats
    }

    fn wait_reply(&self, req: u64) -> Result<Option<Channel>, ClientError> {
        let mut state = self.inner.lock();
        loop {
            if let Some(reply) = state.take_reply(req) {
                return reply;
            }
            if let Some(why) = &state.closed {
                return Err(ClientError::Wire(format!("connection closed: {why}")));
            }
            state = self
                .inner
                .changed
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Wakes the reader thread out of poll with an EOF.
        let _ = crate::wire::shutdown(&self.inner.socket);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// This executable's file name: the agent names services the same way, so
/// broker pairs and observed pairs agree.
pub fn default_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "client".to_owned())
}

/// The reader thread: moves the broker's frames into the shared state and
/// reports claims.
///
/// While no pushed end waits in the inbox nothing can be claimed without the
/// broker speaking first, so the thread blocks in `poll` with no timeout: an
/// idle client costs nothing, and `Drop` wakes the thread by shutting the
/// socket down. While pushed ends wait, it wakes every [`CLAIM_FLUSH`] to
/// report the ones taken: waking it from `open()` instead would put a
/// system call and a cross-thread wake-up (tens of microseconds when the
/// woken thread preempts the caller) on the hit path.
fn read_loop(inner: &Inner, mut reader: FrameReader) {
    let mut claims = Vec::with_capacity(32);
    let why = 'connection: loop {
        let stocked = inner.lock().swap_claims(&mut claims);
        for channel in claims.drain(..) {
            // A failed send means the connection broke; the read below
            // notices and ends the loop.
            if inner.send(&Message::Claimed { channel }).is_err() {
                break;
            }
        }
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let timeout = if stocked {
            PollTimeout::try_from(CLAIM_FLUSH).unwrap_or(PollTimeout::MAX)
        } else {
            PollTimeout::NONE
        };
        let mut fds = [PollFd::new(inner.socket.as_fd(), PollFlags::POLLIN)];
        // Nothing ready (the flush timeout) or EINTR: round again.
        if !matches!(poll(&mut fds, timeout), Ok(n) if n > 0) {
            continue;
        }
        if let Err(error) = reader.fill(inner.socket.as_fd(), true) {
            match error {
                WireError::Io(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => break other.to_string(),
            }
        }
        loop {
            let (message, fd) = match reader.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => break 'connection error.to_string(),
            };
            let effect = match inner.lock().apply(message, fd) {
                Ok(effect) => effect,
                Err(why) => break 'connection why,
            };
            if effect.incoming {
                inner.signal_event();
            }
            if effect.wake {
                inner.changed.notify_all();
            }
            if let Some(answer) = effect.answer
                && let Err(error) = inner.send(&answer)
            {
                break 'connection error.to_string();
            }
        }
    };
    inner.lock().close(why);
    // Waiters must not hang: every pending request fails.
    inner.changed.notify_all();
    inner.signal_event();
}
