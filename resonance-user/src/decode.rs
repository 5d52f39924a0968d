//! Ring-buffer bytes → typed kernel events.
//!
//! The kernel writes [`resonance_common::Event`] records; this module checks
//! their size and discriminants and turns them into [`KernelEvent`], so that
//! nothing downstream touches raw bytes.

use resonance_common::{ChannelKind, Direction, Event, EventKind};

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than an [`Event`].
    #[error("ring-buffer record of {got} bytes, expected {expected}")]
    Short {
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        expected: usize,
    },
    /// Unknown event discriminant.
    #[error("unknown event kind {0}")]
    UnknownEvent(u8),
}

/// A process as the kernel saw it when the event fired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    /// Process id (tgid).
    pub pid: u32,
    /// Parent's process id.
    pub ppid: u32,
    /// The task's comm.
    pub comm: String,
}

/// A channel end an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct End {
    /// Kind of channel.
    pub kind: ChannelKind,
    /// This end's id.
    pub id: u64,
    /// The peer end's id (0 = unknown).
    pub peer: u64,
}

/// One decoded happening.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelEvent {
    /// Monotonic ns.
    pub ts_ns: u64,
    /// Who.
    pub task: Task,
    /// What.
    pub what: Happening,
}

/// The kinds of happening.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Happening {
    /// A pipe, socketpair or socket was created.
    Created {
        /// The new end (for pairs: the first fd's end).
        end: End,
        /// The fds returned.
        fds: [i32; 2],
    },
    /// connect() returned.
    Connected {
        /// The connecting end.
        end: End,
        /// 0 or -errno.
        ret: i32,
        /// The Unix path connected to (`@name` for abstract), if any.
        path: Option<String>,
    },
    /// accept() returned a connected socket.
    Accepted {
        /// The accepted end.
        end: End,
    },
    /// A flow became active after an idle gap.
    FlowStarted {
        /// The end used.
        end: End,
        /// Which way.
        dir: Direction,
    },
    /// A followed descriptor was closed.
    Closed {
        /// The end closed.
        end: End,
    },
    /// The process exited.
    Exited,
    /// A Unix datagram socket was bound to an address.
    Bound {
        /// The bound end.
        end: End,
        /// The address (`@name` for abstract).
        path: Option<String>,
    },
    /// A datagram socket without a peer started a flow by sending to a
    /// Unix address.
    Addressed {
        /// The sending end.
        end: End,
        /// The address (`@name` for abstract), if it was a Unix one.
        path: Option<String>,
    },
    /// A write found the pipe or FIFO full, or a read took a full one's
    /// worth, for the 1st, 2nd, 4th, ... time in its flow.
    PipeFull {
        /// The pipe.
        end: End,
        /// Send: a writer waited; Recv: a reader found it full.
        dir: Direction,
        /// The process's descriptor for it.
        fd: i32,
        /// Bytes that write or read moved.
        bytes: u32,
    },
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    let expected = size_of::<Event>();
    if bytes.len() < expected {
        return Err(DecodeError::Short {
            got: bytes.len(),
            expected,
        });
    }
    // SAFETY: length checked above; `Event` is plain old data, valid for
    // any bit pattern, and read_unaligned needs no alignment.
    let raw: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let kind = EventKind::from_u8(raw.event).ok_or(DecodeError::UnknownEvent(raw.event))?;
    let end = ChannelKind::from_u8(raw.kind).map(|kind| End {
        kind,
        id: raw.end,
        peer: raw.peer,
    });
    let task = Task {
        pid: raw.tgid,
        ppid: raw.ppid,
        comm: c_string(&raw.comm),
    };
    let what = match (kind, end) {
        (EventKind::Created, Some(end)) => Happening::Created { end, fds: raw.fds },
        (EventKind::Connected, Some(end)) => Happening::Connected {
            end,
            ret: raw.ret,
            path: unix_path(&raw.path),
        },
        (EventKind::Accepted, Some(end)) => Happening::Accepted { end },
        (EventKind::FlowStarted, Some(end)) => Happening::FlowStarted {
            end,
            dir: Direction::from_u8(raw.dir).unwrap_or(Direction::Send),
        },
        (EventKind::Closed, Some(end)) => Happening::Closed { end },
        (EventKind::Exited, _) => Happening::Exited,
        (EventKind::Bound, Some(end)) => Happening::Bound {
            end,
            path: unix_path(&raw.path),
        },
        (EventKind::Addressed, Some(end)) => Happening::Addressed {
            end,
            path: unix_path(&raw.path),
        },
        (EventKind::PipeFull, Some(end)) if end.kind.is_one_way() => Happening::PipeFull {
            end,
            dir: Direction::from_u8(raw.dir).unwrap_or(Direction::Send),
            fd: raw.fds[0],
            bytes: u32::try_from(raw.ret).unwrap_or(0),
        },
        (EventKind::PipeFull, Some(_)) => return Err(DecodeError::UnknownEvent(raw.event)),
        // Events about a channel without a valid kind are malformed.
        (_, None) => return Err(DecodeError::UnknownEvent(raw.event)),
    };
    Ok(KernelEvent {
        ts_ns: raw.ts_ns,
        task,
        what,
    })
}

/// Text up to the first NUL.
pub fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// `sun_path`: a filesystem path, or `@name` for the abstract namespace.
fn unix_path(bytes: &[u8]) -> Option<String> {
    match bytes.first() {
        None => None,
        Some(0) => {
            let name = c_string(&bytes[1..]);
            (!name.is_empty()).then(|| format!("@{name}"))
        }
        Some(_) => Some(c_string(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use resonance_common::{COMM_LEN, UNIX_PATH_LEN};

    fn raw(event: u8, kind: u8) -> Event {
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"curl");
        let mut path = [0u8; UNIX_PATH_LEN];
        path[..9].copy_from_slice(b"/run/sock");
        Event {
            event,
            kind,
            dir: 1,
            pad: 0,
            tgid: 42,
            ppid: 1,
            ret: -2,
            ts_ns: 7,
            end: 100,
            peer: 200,
            fds: [3, -1],
            comm,
            path,
            pad2: [0; 4],
        }
    }

    fn bytes(event: &Event) -> Vec<u8> {
        // SAFETY: Event is plain old data.
        unsafe {
            std::slice::from_raw_parts((event as *const Event).cast::<u8>(), size_of::<Event>())
        }
        .to_vec()
    }

    #[test]
    fn a_failed_connect_decodes_with_its_path_and_errno() {
        let event = decode(&bytes(&raw(
            EventKind::Connected as u8,
            ChannelKind::UnixStream as u8,
        )))
        .unwrap();
        assert_eq!(event.task.comm, "curl");
        assert_eq!(
            event.what,
            Happening::Connected {
                end: End {
                    kind: ChannelKind::UnixStream,
                    id: 100,
                    peer: 200
                },
                ret: -2,
                path: Some("/run/sock".into())
            }
        );
    }

    #[test]
    fn short_and_unknown_records_are_errors_not_panics() {
        assert!(matches!(
            decode(&[0u8; 10]),
            Err(DecodeError::Short { got: 10, .. })
        ));
        assert_eq!(
            decode(&bytes(&raw(99, 3))),
            Err(DecodeError::UnknownEvent(99))
        );
        assert_eq!(
            decode(&bytes(&raw(EventKind::Closed as u8, 0))),
            Err(DecodeError::UnknownEvent(5))
        );
    }

    #[test]
    fn abstract_unix_names_get_an_at_sign() {
        let mut path = [0u8; UNIX_PATH_LEN];
        path[1..5].copy_from_slice(b"bus1");
        assert_eq!(unix_path(&path).as_deref(), Some("@bus1"));
        assert_eq!(unix_path(&[0u8; UNIX_PATH_LEN]), None);
    }
}
