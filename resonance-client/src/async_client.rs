//! The tokio form of the client (feature `tokio`).
//!
//! [`AsyncClient`] talks to the broker on the runtime itself: the socket is
//! non-blocking and registered with tokio ([`AsyncFd`]), a reader task
//! spawned on the runtime receives frames with the same `recvmsg` as the
//! blocking client ([`FrameReader::fill`]: a full frame's room plus room
//! for [`crate::wire::MAX_FDS_PER_READ`] descriptors, `MSG_CMSG_CLOEXEC`,
//! truncation is an error), decodes them and applies them to the same
//! shared state. No thread of its own and no blocking pool: a hit is the
//! same local lookup as in the blocking client, a miss awaits the broker's
//! answer without holding a thread.
//!
//! Must be created inside a tokio runtime with I/O enabled (the reader task
//! is spawned on it; tokio's timers are not needed). Dropping the last
//! clone shuts the socket down, which ends the task.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    pin::pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{io::unix::AsyncFd, sync::Notify};

use crate::{
    client::{
        CLAIM_FLUSH, Channel, ClientError, ClientStats, DEFAULT_SOCKET, SOCKET_ENV, default_name,
    },
    proto::{ChannelUsage, Message, Want},
    state::{Reply, State, welcome_of},
    wire::{self, FrameReader, WireError},
};

/// The connection, shared by the handles and the reader task.
struct Shared {
    socket: AsyncFd<OwnedFd>,
    /// Frames must not interleave: one writer at a time.
    write: tokio::sync::Mutex<()>,
    state: Mutex<State>,
    /// Notified whenever a reply or an incoming end arrives, or the
    /// connection ends.
    changed: Notify,
    next_req: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends one frame (client frames carry no descriptor), resuming after
    /// partial writes.
    async fn send(&self, message: &Message) -> io::Result<()> {
        let bytes = message.encode();
        let _guard = self.write.lock().await;
        let mut sent = 0;
        while sent < bytes.len() {
            let mut ready = self.socket.writable().await?;
            match ready.try_io(|fd| wire::send_once(fd.as_fd(), &bytes[sent..], None)) {
                Ok(result) => sent += result?,
                // Not writable after all; readiness was cleared, wait again.
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Reads once from the socket into `reader`, waiting until readable.
    async fn fill(&self, reader: &mut FrameReader) -> Result<(), WireError> {
        loop {
            let mut ready = self.socket.readable().await.map_err(WireError::Io)?;
            match reader.fill(ready.get_inner().as_fd(), true) {
                Err(WireError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready.clear_ready();
                }
                other => return other.map(drop),
            }
        }
    }

    /// The whole next frame, waiting for it.
    async fn read_frame(
        &self,
        reader: &mut FrameReader,
    ) -> Result<(Message, Option<OwnedFd>), WireError> {
        loop {
            if let Some(frame) = reader.next_frame()? {
                return Ok(frame);
            }
            self.fill(reader).await?;
        }
    }

    /// Waits until `check` finds something in the state, or the connection
    /// ends (`check` sees `closed` too).
    async fn wait_for<T>(&self, mut check: impl FnMut(&mut State) -> Option<T>) -> T {
        loop {
            // Registered before looking, so a notification between the look
            // and the await is not lost.
            let mut notified = pin!(self.changed.notified());
            notified.as_mut().enable();
            if let Some(found) = check(&mut self.lock()) {
                return found;
            }
            notified.await;
        }
    }
}

/// Shuts the socket down when the last handle goes, which wakes the reader
/// task with an end of file.
struct Handle {
    shared: Arc<Shared>,
    welcome: (u64, u32, u32, u32),
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = crate::wire::shutdown(self.shared.socket.get_ref());
    }
}

/// Forgets a request whose caller stopped waiting (its future dropped), so
/// its reply does not stay in the state forever.
struct Pending<'a> {
    shared: &'a Shared,
    req: u64,
    done: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.shared.lock().abandon(self.req);
        }
    }
}

/// An async handle to a broker connection; cheap to clone.
#[derive(Clone)]
pub struct AsyncClient {
    handle: Arc<Handle>,
}

impl AsyncClient {
    /// Connects to `$RESONANCE_BROKER_SOCKET` or [`DEFAULT_SOCKET`], named
    /// after this executable.
    pub async fn connect() -> Result<Self, ClientError> {
        let path = std::env::var_os(SOCKET_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        Self::connect_to(&path, &default_name()).await
    }

    /// Connects to the broker at `path` as `name`.
    pub async fn connect_to(path: &Path, name: &str) -> Result<Self, ClientError> {
        let stream = tokio::net::UnixStream::connect(path).await?;
        // tokio left it non-blocking, as AsyncFd needs.
        let socket = OwnedFd::from(stream.into_std()?);
        // SAFETY: an OwnedFd always returns the descriptor it owns, which
        // stays open until the AsyncFd drops it.
        let socket = unsafe { AsyncFd::register(socket) }.map_err(|e| e.into_parts().1)?;
        let shared = Arc::new(Shared {
            socket,
            write: tokio::sync::Mutex::new(()),
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            next_req: AtomicU64::new(1),
        });
        shared
            .send(&Message::Hello {
                name: name.to_owned(),
            })
            .await?;
        let mut reader = FrameReader::new();
        let welcome = welcome_of(shared.read_frame(&mut reader).await?)?;
        let timer = FlushTimer::new()?;
        tokio::spawn(read_loop(Arc::clone(&shared), reader, timer));
        Ok(Self {
            handle: Arc::new(Handle { shared, welcome }),
        })
    }

    /// The client id, pid, uid and gid the broker saw.
    pub fn welcome(&self) -> (u64, u32, u32, u32) {
        self.handle.welcome
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// See [`crate::Client::register`].
    pub async fn register(&self, service: &str) -> Result<(), ClientError> {
        let req = self.shared().next_req.fetch_add(1, Ordering::Relaxed);
        self.request(
            req,
            &Message::Register {
                req,
                service: service.to_owned(),
            },
        )
        .await
        .map(drop)
    }

    /// See [`crate::Client::open_with`]: a hit returns without waiting.
    pub async fn open(&self, service: &str, want: Want) -> Result<Channel, ClientError> {
        if let Some(channel) = self.take_prepared(service) {
            return Ok(channel);
        }
        self.open_on_demand(service, want).await
    }

    /// Takes a pushed end for `service` if one waits in the inbox.
    pub fn take_prepared(&self, service: &str) -> Option<Channel> {
        self.shared().lock().take_prepared(service)
    }

    /// Asks the broker for a new channel, ignoring the inbox.
    pub async fn open_on_demand(&self, service: &str, want: Want) -> Result<Channel, ClientError> {
        let req = self.shared().next_req.fetch_add(1, Ordering::Relaxed);
        self.shared().lock().stats.misses += 1;
        let message = Message::Open {
            req,
            service: service.to_owned(),
            want,
        };
        self.request(req, &message)
            .await?
            .ok_or_else(|| ClientError::Wire("Open answered without a channel".into()))
    }

    /// See [`crate::Client::report`].
    pub async fn report(&self, channel: &Channel, usage: ChannelUsage) -> Result<(), ClientError> {
        self.shared()
            .send(&Message::Report {
                channel: channel.id,
                service: channel.service.clone(),
                usage,
            })
            .await?;
        Ok(())
    }

    /// Pushed ends waiting in the inbox for `service`.
    pub fn prepared(&self, service: &str) -> usize {
        self.shared().lock().prepared(service)
    }

    /// The next channel opened to this process; `None` once the connection
    /// is gone.
    pub async fn accept(&self) -> Option<Channel> {
        self.shared()
            .wait_for(|state| match state.incoming.pop_front() {
                Some(channel) => Some(Some(channel)),
                None => state.closed.is_some().then_some(None),
            })
            .await
    }

    /// A channel opened to this process, if one is waiting.
    pub fn try_incoming(&self) -> Option<Channel> {
        self.shared().lock().incoming.pop_front()
    }

    /// Why the connection ended, once it has.
    pub fn closed(&self) -> Option<String> {
        self.shared().lock().closed.clone()
    }

    /// Hits, misses and revocations so far.
    pub fn stats(&self) -> ClientStats {
        self.shared().lock().stats
    }

    /// Sends request `req` and waits for its reply.
    async fn request(&self, req: u64, message: &Message) -> Reply {
        let shared = self.shared();
        let mut pending = Pending {
            shared,
            req,
            done: false,
        };
        shared.send(message).await?;
        let reply = shared
            .wait_for(|state| {
                state.take_reply(req).or_else(|| {
                    state
                        .closed
                        .as_ref()
                        .map(|why| Err(ClientError::Wire(format!("connection closed: {why}"))))
                })
            })
            .await;
        pending.done = true;
        reply
    }
}

/// The claim flush timer: a timerfd on the runtime rather than
/// `tokio::time`, so the client also works on a runtime built without
/// `enable_time` (tokio's timers panic there, which would kill the reader
/// task and leave every waiter hanging).
struct FlushTimer(AsyncFd<Timer>);

/// A timerfd as tokio's `AsyncFd` takes it (nix's `TimerFd` lends its
/// descriptor only as `AsFd`).
struct Timer(nix::sys::timerfd::TimerFd);

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl FlushTimer {
    fn new() -> io::Result<Self> {
        use nix::sys::timerfd::{ClockId, TimerFd, TimerFlags};
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        // SAFETY: `Timer` owns its descriptor and returns that one, open
        // until the AsyncFd drops it.
        unsafe { AsyncFd::register(Timer(timer)) }
            .map(Self)
            .map_err(|e| e.into_parts().1)
    }

    /// Fires once, `after` from now (re-arming resets it).
    fn arm(&self, after: Duration) -> io::Result<()> {
        use nix::sys::{
            time::TimeSpec,
            timerfd::{Expiration, TimerSetTimeFlags},
        };
        self.0.get_ref().0.set(
            Expiration::OneShot(TimeSpec::from_duration(after)),
            TimerSetTimeFlags::empty(),
        )?;
        Ok(())
    }

    /// Waits until the timer fired since it was last armed.
    async fn expired(&self) -> io::Result<()> {
        loop {
            let mut ready = self.0.readable().await?;
            match self.0.get_ref().0.wait() {
                Ok(()) => return Ok(()),
                Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
                Err(errno) => return Err(errno.into()),
            }
        }
    }
}

/// The reader task: the async twin of the blocking client's reader thread
/// (same claim rule: with no pushed end waiting it only waits for the
/// socket; while some wait it also wakes every [`CLAIM_FLUSH`], on a
/// [`FlushTimer`], to report the ones taken, so a hit wakes nobody).
async fn read_loop(shared: Arc<Shared>, mut reader: FrameReader, timer: FlushTimer) {
    let mut claims = Vec::with_capacity(32);
    let why = 'connection: loop {
        let stocked = shared.lock().swap_claims(&mut claims);
        for channel in claims.drain(..) {
            // A failed send means the connection broke; the read below
            // notices and ends the loop.
            if shared.send(&Message::Claimed { channel }).await.is_err() {
                break;
            }
        }
        let filled = if stocked {
            if let Err(error) = timer.arm(CLAIM_FLUSH) {
                break format!("claim timer: {error}");
            }
            // Cancelling `fill` loses nothing: it only reads synchronously,
            // after readiness, within one poll.
            tokio::select! {
                filled = shared.fill(&mut reader) => filled,
                expired = timer.expired() => match expired {
                    Ok(()) => continue,
                    Err(error) => break format!("claim timer: {error}"),
                },
            }
        } else {
            shared.fill(&mut reader).await
        };
        if let Err(error) = filled {
            break error.to_string();
        }
        loop {
            let (message, fd) = match reader.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => break 'connection error.to_string(),
            };
            let effect = match shared.lock().apply(message, fd) {
                Ok(effect) => effect,
                Err(why) => break 'connection why,
            };
            if effect.wake {
                shared.changed.notify_waiters();
            }
            if let Some(answer) = effect.answer
                && let Err(error) = shared.send(&answer).await
            {
                break 'connection error.to_string();
            }
        }
    };
    shared.lock().close(why);
    // Waiters must not hang: every pending request fails.
    shared.changed.notify_waiters();
}
