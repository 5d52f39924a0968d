//! Client of the resonance broker.
//!
//! A process connects to the agent's broker socket ([`Client::connect`]),
//! says which service it serves ([`Client::register`]) and then either
//! receives channels others opened to it ([`Client::incoming`]) or opens
//! channels to other services ([`Client::open`]). Every channel is a pipe or
//! socketpair end the agent created, passed with `SCM_RIGHTS`, plus the
//! configuration the agent chose and the peer's identity ([`Channel`]).
//!
//! The agent pushes ends ahead of time for pairs it predicts will talk: a
//! background reader (a thread, or a task for the async client) moves them
//! from the socket into a local inbox, so `open()` on a hit is a local
//! lookup without any system call or allocation. On a miss `open()` asks
//! the broker and waits for the end.
//!
//! [`proto`] is the wire protocol (shared with the agent), [`wire`] moves
//! frames and file descriptors over a Unix socket, [`client`] is the
//! blocking client and `async_client` (feature `tokio`) the async one.

pub mod client;
pub mod proto;
mod state;
pub mod wire;

#[cfg(feature = "tokio")]
pub mod async_client;

#[cfg(feature = "tokio")]
pub use async_client::AsyncClient;
pub use client::{Channel, Client, ClientError, ClientStats, DEFAULT_SOCKET, SOCKET_ENV};
pub use proto::{ChannelConfig, ChannelKind, ChannelUsage, Peer, Role, Want};
