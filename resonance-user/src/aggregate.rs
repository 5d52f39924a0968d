//! Flows → interactions.
//!
//! The kernel counts per flow (one process, one channel end, one
//! direction). `join` pairs each writer with the readers of the end it
//! writes to and folds the result into one [`Interaction`] per (source
//! process, destination process, kind); `processes` attributes each pid to
//! a comm, executable and cgroup; `histogram` holds the latency buckets;
//! `channels` picks the flows of the channels the broker handed out;
//! `unix_names` finds the receiver of a datagram sent to a path.

pub mod channels;
pub mod histogram;
pub mod join;
pub mod pattern;
pub mod processes;
pub mod services;
pub mod unix_names;

pub use histogram::Histogram;
pub use join::{ConnectFailure, EndLatency, FlowRecord, Interaction, join};
pub use pattern::Pattern;
pub use processes::{ProcessInfo, ProcessTable};
pub use services::{OwnExecutable, ServiceNamer, ServiceRule};
