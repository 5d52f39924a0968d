//! resonance: which process talks to which, seen from the kernel, and what
//! it will say next.
//!
//! Data flows one way through the modules: `probe` loads the kernel
//! programs that count traffic per flow; `decode` turns ring-buffer records
//! into typed events; `aggregate` joins writers to readers and names the
//! services; `observer` drives one observation session; `score` rates each
//! service pair and `store` keeps its history; `trace` and `predict` learn
//! which pair starts next; `plan` decides which pairs get a channel now,
//! for the broker and, in event time, for `replay`, which scores that on
//! recorded traces (`scenario` makes synthetic ones); `alloc` makes and
//! sizes the kernel channels the broker in `handout` pushes to processes
//! (raw calls in `sys`), and `feedback` turns what the probes measured on
//! them into the next ones; `grow` resizes the pipes of programs that
//! block on them; `agent` runs it all as a daemon, publishing
//! through `metrics` (`http`) and `control` and keeping its state files
//! with `persist`; `cli` is the front end.

pub mod agent;
pub mod aggregate;
pub mod alloc;
pub mod cli;
pub mod config;
pub mod control;
pub mod decode;
pub mod feedback;
pub mod grow;
pub mod handout;
pub mod http;
pub mod listen;
pub mod metrics;
pub mod observer;
pub mod pair;
pub mod persist;
pub mod plan;
pub mod predict;
pub mod probe;
pub mod replay;
pub mod report;
pub mod scenario;
pub mod score;
pub mod store;
pub mod sys;
pub mod trace;
pub mod units;

/// Channel kinds and flow directions as the probes report them.
pub use resonance_common::{ChannelKind, Direction};
