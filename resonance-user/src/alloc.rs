//! Channel allocation: what kind of kernel channel a pair gets, how big,
//! and whether the budget allows preparing it.
//!
//! [`plan`] turns what is known of a pair's traffic ([`Want`]: the
//! requester's declared kind and burst, remembered per pair) into a
//! [`ChannelConfig`] within [`Limits`]; [`create`] makes the channel with
//! those settings through [`crate::sys`] and returns both ends
//! ([`Created`]); [`budget::Budget`] decides which predicted preparations
//! fit the configured memory and descriptor budgets.

pub mod budget;

use std::os::fd::{AsFd, OwnedFd};

use resonance_client::proto::{ChannelConfig, ChannelKind, Want};

use crate::sys;

/// Bounds on what a channel may be given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Capacity when the traffic's burst is unknown.
    pub default_capacity: u32,
    /// Largest capacity: `pipe-max-size` (without `CAP_SYS_RESOURCE`
    /// `F_SETPIPE_SZ` above it fails with `EPERM`) and the memory budget.
    pub max_capacity: u32,
    /// Whether ends are handed out with `O_NONBLOCK`.
    pub nonblocking: bool,
}

/// Why a channel could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    /// pipe2/socketpair failed (typically out of descriptors).
    #[error("creating a {kind} channel: {source}")]
    Create {
        /// Kind asked for.
        kind: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// Sizing or flags failed.
    #[error("configuring a {kind} channel: {source}")]
    Configure {
        /// Kind asked for.
        kind: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// Both ends of a new channel and how it was configured.
#[derive(Debug)]
pub struct Created {
    /// As configured (capacity is what the kernel granted).
    pub config: ChannelConfig,
    /// The opener's end (a pipe's write end).
    pub requester: OwnedFd,
    /// The served end (a pipe's read end).
    pub responder: OwnedFd,
}

impl Created {
    /// The kind the probes see this channel as (the one conversion from
    /// the protocol's channel kinds to the kernel's).
    pub fn observed_kind(&self) -> resonance_common::ChannelKind {
        match self.config.kind {
            ChannelKind::Pipe | ChannelKind::PacketPipe => resonance_common::ChannelKind::Pipe,
            ChannelKind::Stream => resonance_common::ChannelKind::UnixStream,
            ChannelKind::SeqPacket => resonance_common::ChannelKind::UnixSeqpacket,
        }
    }
}

/// PIPE_BUF: writes up to this are atomic, and packet-mode pipes split
/// larger writes into several packets.
const PACKET: u32 = 4096;

/// The configuration a channel with traffic `want` gets.
///
/// Kind: as declared, else a stream socketpair (two-way is the safe
/// default: a request/response pair needs it). Capacity: the burst rounded
/// up to a page (so one burst never blocks the writer), else the default,
/// within the limits. Batching hints: message-shaped kinds suggest one
/// message per write (4096 for packet pipes, the burst for seqpacket);
/// streams suggest the burst as write size and, for small bursts, a short
/// flush interval so a writer may coalesce them.
pub fn plan(want: Want, limits: &Limits) -> ChannelConfig {
    let kind = want.kind.unwrap_or(ChannelKind::Stream);
    let wanted = if want.burst == 0 {
        limits.default_capacity
    } else {
        want.burst.saturating_add(PACKET - 1) / PACKET * PACKET
    };
    let capacity = wanted.clamp(PACKET, limits.max_capacity.max(PACKET));
    let write_size = match kind {
        ChannelKind::PacketPipe => PACKET,
        _ if want.burst > 0 => want.burst.min(capacity),
        _ => capacity.min(64 * 1024),
    };
    let flush_us = if want.burst > 0
        && want.burst < PACKET
        && !matches!(kind, ChannelKind::PacketPipe | ChannelKind::SeqPacket)
    {
        50
    } else {
        0
    };
    ChannelConfig {
        kind,
        capacity,
        nonblocking: limits.nonblocking,
        write_size,
        flush_us,
    }
}

/// Creates a channel configured as `config` says; the returned config
/// holds the capacity actually granted.
pub fn create(config: &ChannelConfig) -> Result<Created, AllocError> {
    let kind = config.kind.name();
    let configure = |source| AllocError::Configure { kind, source };
    let mut granted = *config;
    let (requester, responder) = match config.kind {
        ChannelKind::Pipe | ChannelKind::PacketPipe => {
            let packet = config.kind == ChannelKind::PacketPipe;
            let (read, write) = sys::pipe(packet, config.nonblocking)
                .map_err(|source| AllocError::Create { kind, source })?;
            granted.capacity =
                sys::set_pipe_size(write.as_fd(), config.capacity).map_err(configure)?;
            (write, read)
        }
        ChannelKind::Stream | ChannelKind::SeqPacket => {
            let ty = if config.kind == ChannelKind::Stream {
                sys::SockType::Stream
            } else {
                sys::SockType::SeqPacket
            };
            let (a, b) = sys::socketpair(ty, config.nonblocking)
                .map_err(|source| AllocError::Create { kind, source })?;
            for end in [&a, &b] {
                sys::set_socket_buffers(end.as_fd(), config.capacity).map_err(configure)?;
            }
            (a, b)
        }
    };
    Ok(Created {
        config: granted,
        requester,
        responder,
    })
}

/// Kernel buffer memory a channel of this configuration may pin: one
/// buffer for a pipe, one per direction for a socketpair.
pub fn memory(config: &ChannelConfig) -> u64 {
    let buffers = if config.kind.two_way() { 2 } else { 1 };
    u64::from(config.capacity) * buffers
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        default_capacity: 65536,
        max_capacity: 1 << 20,
        nonblocking: false,
    };

    #[test]
    fn plans_follow_the_traffic_within_limits() {
        let c = plan(Want::default(), &LIMITS);
        assert_eq!((c.kind, c.capacity), (ChannelKind::Stream, 65536));
        let c = plan(
            Want {
                kind: Some(ChannelKind::Pipe),
                burst: 5000,
            },
            &LIMITS,
        );
        assert_eq!(
            (c.kind, c.capacity, c.write_size),
            (ChannelKind::Pipe, 8192, 5000)
        );
        let c = plan(
            Want {
                kind: Some(ChannelKind::Pipe),
                burst: u32::MAX,
            },
            &LIMITS,
        );
        assert_eq!(c.capacity, 1 << 20);
        let c = plan(
            Want {
                kind: Some(ChannelKind::PacketPipe),
                burst: 100,
            },
            &LIMITS,
        );
        assert_eq!((c.capacity, c.write_size, c.flush_us), (4096, 4096, 0));
        let c = plan(
            Want {
                kind: None,
                burst: 100,
            },
            &LIMITS,
        );
        assert_eq!(c.flush_us, 50);
    }

    #[test]
    fn every_kind_is_created_with_its_capacity() {
        for kind in [
            ChannelKind::Pipe,
            ChannelKind::PacketPipe,
            ChannelKind::Stream,
            ChannelKind::SeqPacket,
        ] {
            let config = plan(
                Want {
                    kind: Some(kind),
                    burst: 200_000,
                },
                &LIMITS,
            );
            let created = create(&config).unwrap();
            assert_eq!(created.config.kind, kind);
            assert!(
                created.config.capacity >= 200_000,
                "{kind:?}: {:?}",
                created.config
            );
        }
    }

    /// Whether this process holds CAP_SYS_RESOURCE (bit 24 of CapEff).
    fn has_cap_sys_resource() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
                u64::from_str_radix(hex.trim(), 16).ok()
            })
            .is_some_and(|caps| caps & (1 << 24) != 0)
    }

    #[test]
    fn a_pipe_above_pipe_max_size_is_refused_without_cap_sys_resource_so_limits_must_clamp() {
        let config = ChannelConfig {
            kind: ChannelKind::Pipe,
            capacity: sys::pipe_max_size().saturating_mul(4),
            nonblocking: false,
            write_size: 4096,
            flush_us: 0,
        };
        // Without CAP_SYS_RESOURCE (root on these hosts) the kernel says
        // EPERM; with it, it may grant the pipe or refuse it for memory,
        // so only the first case has one answer. plan() never asks for it.
        let result = create(&config);
        if !has_cap_sys_resource() {
            match result {
                Err(AllocError::Configure { source, .. }) => {
                    assert_eq!(
                        source.kind(),
                        std::io::ErrorKind::PermissionDenied,
                        "{source}"
                    )
                }
                Err(other) => panic!("expected EPERM from F_SETPIPE_SZ, got {other}"),
                Ok(_) => panic!("a pipe above pipe-max-size was granted without CAP_SYS_RESOURCE"),
            }
        }
        let clamped = plan(
            Want {
                kind: Some(ChannelKind::Pipe),
                burst: u32::MAX,
            },
            &Limits {
                max_capacity: sys::pipe_max_size(),
                ..LIMITS
            },
        );
        assert!(create(&clamped).is_ok());
    }
}
