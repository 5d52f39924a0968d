//! What a connection's callers and its reader share: pushed requester ends
//! waiting to be taken, responder ends waiting to be accepted, replies to
//! requests, and claims not yet reported to the broker. The blocking
//! client's reader thread and the async client's reader task apply the
//! broker's frames here with [`State::apply`].
//!
//! [`State::take_prepared`] is the hit path of `open()`: it runs after the
//! process may have slept for a while, so every cache line it touches is
//! likely cold. It therefore scans a short list instead of hashing into a
//! map, and appends to a claim list whose capacity survives every flush, so
//! a hit neither allocates nor makes a system call.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    os::fd::{AsRawFd, OwnedFd},
};

use crate::{
    client::{Channel, ClientError, ClientStats},
    proto::{Message, Role},
};

/// The broker's answer to `Hello`: the connection id and the credentials
/// it saw, or why it refused.
pub(crate) fn welcome_of(
    frame: (Message, Option<OwnedFd>),
) -> Result<(u64, u32, u32, u32), ClientError> {
    match frame {
        (
            Message::Welcome {
                client,
                pid,
                uid,
                gid,
            },
            None,
        ) => Ok((client, pid, uid, gid)),
        (Message::Error { code, message, .. }, None) => Err(ClientError::Refused { code, message }),
        (other, _) => Err(ClientError::Wire(format!(
            "expected Welcome, got {other:?}"
        ))),
    }
}

/// Claims a flush normally carries; the lists start with this capacity so
/// that the hit path does not allocate.
const CLAIM_BATCH: usize = 32;

/// Pushed requester ends for one service.
struct Slot {
    service: Box<str>,
    ends: VecDeque<Channel>,
}

/// A reply to a request, as the waiting caller receives it.
pub(crate) type Reply = Result<Option<Channel>, ClientError>;

/// The shared queues of one broker connection.
pub(crate) struct State {
    /// Pushed requester ends by service. A process talks to few services,
    /// and a linear scan touches fewer (cold) cache lines than a hash map.
    inbox: Vec<Slot>,
    /// Ends in the inbox, all services together.
    waiting: usize,
    /// Responder ends not yet accepted.
    pub incoming: VecDeque<Channel>,
    replies: HashMap<u64, Reply>,
    /// Requests whose caller stopped waiting (a dropped future): their
    /// replies are dropped on arrival instead of kept forever.
    abandoned: HashSet<u64>,
    /// Ids of pushed ends taken and not yet reported.
    claims: Vec<u64>,
    /// Why the connection ended, once it has.
    pub closed: Option<String>,
    /// Hits, misses and revocations so far.
    pub stats: ClientStats,
}

impl Default for State {
    fn default() -> Self {
        Self {
            inbox: Vec::new(),
            waiting: 0,
            incoming: VecDeque::new(),
            replies: HashMap::new(),
            abandoned: HashSet::new(),
            claims: Vec::with_capacity(CLAIM_BATCH),
            closed: None,
            stats: ClientStats::default(),
        }
    }
}

/// What applying a frame asks of the reader beyond the state change.
#[derive(Default)]
pub(crate) struct Effect {
    /// A reply or an incoming end arrived: wake the callers waiting.
    pub wake: bool,
    /// An incoming end arrived: signal the epoll-able event.
    pub incoming: bool,
    /// A message to send back (a revocation's acknowledgement).
    pub answer: Option<Message>,
}

impl State {
    /// Takes a pushed end for `service` and records the claim; no system
    /// call, no allocation (see the module doc).
    pub fn take_prepared(&mut self, service: &str) -> Option<Channel> {
        let slot = self.inbox.iter_mut().find(|s| &*s.service == service)?;
        let channel = slot.ends.pop_front()?;
        self.waiting -= 1;
        self.claims.push(channel.id);
        self.stats.hits += 1;
        Some(channel)
    }

    /// Pushed ends waiting for `service`.
    pub fn prepared(&self, service: &str) -> usize {
        self.inbox
            .iter()
            .find(|s| &*s.service == service)
            .map_or(0, |s| s.ends.len())
    }

    /// Moves the pending claims into `out` (empty, with capacity; the two
    /// lists trade buffers so neither reallocates) and says whether pushed
    /// ends still wait, i.e. whether a claim can appear without the broker
    /// sending anything.
    pub fn swap_claims(&mut self, out: &mut Vec<u64>) -> bool {
        debug_assert!(out.is_empty());
        std::mem::swap(&mut self.claims, out);
        self.waiting > 0
    }

    /// The reply to request `req`, if it arrived.
    pub fn take_reply(&mut self, req: u64) -> Option<Reply> {
        self.replies.remove(&req)
    }

    /// The caller of `req` stopped waiting: drop its reply now or when it
    /// arrives. (Only async callers can stop waiting.)
    #[cfg(feature = "tokio")]
    pub fn abandon(&mut self, req: u64) {
        if self.replies.remove(&req).is_none() {
            self.abandoned.insert(req);
        }
    }

    /// Applies one frame from the broker. An error is why the connection
    /// must end.
    pub fn apply(&mut self, message: Message, fd: Option<OwnedFd>) -> Result<Effect, String> {
        let mut effect = Effect::default();
        match (message, fd) {
            (
                Message::Channel {
                    channel,
                    req,
                    role,
                    service,
                    peer,
                    config,
                },
                Some(fd),
            ) => {
                let end = Channel {
                    fd,
                    id: channel,
                    service,
                    role,
                    peer,
                    config,
                    prepared: req == 0,
                };
                match (req, role) {
                    (0, Role::Requester) => self.push_prepared(end),
                    (req, Role::Requester) => self.reply(req, Ok(Some(end))),
                    (_, Role::Responder) => {
                        self.incoming.push_back(end);
                        effect.incoming = true;
                    }
                }
                effect.wake = true;
            }
            (Message::Ok { req }, None) => {
                self.reply(req, Ok(None));
                effect.wake = true;
            }
            (
                Message::Error {
                    req: 0,
                    code,
                    message,
                },
                None,
            ) => return Err(format!("broker error {code}: {message}")),
            (Message::Error { req, code, message }, None) => {
                self.reply(req, Err(ClientError::Refused { code, message }));
                effect.wake = true;
            }
            (Message::Revoke { channel }, None) => {
                let dropped = self.revoke(channel);
                effect.answer = Some(Message::RevokeAck { channel, dropped });
            }
            (other, _) => return Err(format!("unexpected message from the broker: {other:?}")),
        }
        Ok(effect)
    }

    /// Ends the connection's life: every waiter must see `why`.
    pub fn close(&mut self, why: String) {
        self.closed.get_or_insert(why);
    }

    fn push_prepared(&mut self, end: Channel) {
        self.waiting += 1;
        if let Some(slot) = self.inbox.iter_mut().find(|s| *s.service == end.service) {
            slot.ends.push_back(end);
            return;
        }
        let service = end.service.clone().into_boxed_str();
        self.inbox.push(Slot {
            service,
            ends: VecDeque::from([end]),
        });
    }

    fn reply(&mut self, req: u64, reply: Reply) {
        // An abandoned request's channel closes here.
        if !self.abandoned.remove(&req) {
            self.replies.insert(req, reply);
        }
    }

    /// Drops pushed end `id` if it is still unused: in the inbox (or the
    /// incoming queue) and with no data waiting in it (a channel that
    /// carries data is never revoked).
    fn revoke(&mut self, id: u64) -> bool {
        let carries_data = |channel: &Channel| {
            let mut pending: libc::c_int = 0;
            // libc rather than nix: nix has no FIONREAD wrapper, only the
            // ioctl macros, which would generate an unsafe function anyway.
            // SAFETY: FIONREAD writes one int to a live variable.
            let rc = unsafe { libc::ioctl(channel.fd.as_raw_fd(), libc::FIONREAD, &mut pending) };
            rc == 0 && pending > 0
        };
        for slot in &mut self.inbox {
            if let Some(pos) = slot.ends.iter().position(|c| c.id == id) {
                if carries_data(&slot.ends[pos]) {
                    return false;
                }
                slot.ends.remove(pos);
                self.waiting -= 1;
                self.stats.revoked += 1;
                return true;
            }
        }
        if let Some(pos) = self.incoming.iter().position(|c| c.id == id)
            && !carries_data(&self.incoming[pos])
        {
            self.incoming.remove(pos);
            self.stats.revoked += 1;
            return true;
        }
        false
    }
}
