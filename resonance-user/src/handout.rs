//! The broker: hands pre-created pipes and socketpairs to processes over a
//! Unix socket.
//!
//! [`Broker::bind`] opens the socket; [`Broker::run`] accepts clients, one
//! task pair per connection (`connection`: a reader decoding frames, a
//! writer sending frames and descriptors), and every `prepare_interval`
//! (and right after every open, claim or observed start) runs a
//! preparation pass over the shared [`Core`] (`core`: the protocol, the
//! idle channels, watching, feedback; no socket in it, so its tests drive
//! it with decoded messages): [`crate::plan`]'s planner names the
//! requester → service pairs due a channel from the broker's [`Model`];
//! within the [`Budget`], [`crate::alloc`] creates each channel and both
//! ends are pushed (requester's to its inbox, responder's to its incoming
//! queue). Channels unclaimed after the TTL are revoked (the requester
//! confirms it dropped an unused end, then the responder is told) and
//! counted as waste. Every pair's outcomes (hits, waste, misses) go to the
//! planner and, with the usage its requesters report and what the probes
//! measure, to its [`PairFeedback`], which sizes its next channels.
//! [`policy`] decides who may register and open what; [`metrics`] counts
//! it all; [`BrokerView`] (`view`) is what the agent and the control
//! socket see. The wire protocol is [`resonance_client::proto`].

mod connection;
mod core;
pub mod metrics;
pub mod pairs;
pub mod policy;
mod view;

use std::{
    collections::HashMap,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use prometheus::Registry;
use resonance_client::{
    proto::{ChannelConfig, ChannelUsage, Message, Peer, Role, Want, code},
    wire::{self, FrameReader, WireError},
};
use tokio::{io::unix::AsyncFd, sync::mpsc};

pub use self::core::Core;
use self::core::{Out, Reject};
use crate::{
    aggregate::{ProcessInfo, ServiceNamer},
    alloc::{
        self, Limits,
        budget::{Budget, Usage},
    },
    config::BrokerSettings,
    feedback::{
        ChannelMeasure, MeasuredChannel, Outcome, PairFeedback, Performance, Snapshot, Watched,
    },
    listen::ListenError,
    plan::{PlanSettings, Planner, SavedPlanner},
    predict::{CHANNEL_KIND, Model, ModelConfig, PairKey, budget::BudgetSettings},
    sys::{self, Cred},
    trace::TraceEvent,
};
use connection::serve_connection;
pub use metrics::BrokerMetrics;
use pairs::{Pair, PairMap};
use policy::{Identity, Policy};
pub use view::{BrokerView, PairPrediction, SavedBroker, SavedFeedback};

/// A client has this long to say `Hello`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most channels watched for the probes at once; beyond it the oldest is
/// closed out with what was measured so far.
const MAX_WATCHED: usize = 4096;
/// A used channel silent this long is done.
const DONE_AFTER_SILENCE: Duration = Duration::from_secs(5);
/// No channel is watched longer than this.
const WATCH_AT_MOST: Duration = Duration::from_secs(120);

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum HandoutError {
    /// The socket could not be bound or set up.
    #[error("broker socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another broker answers on the socket.
    #[error("another broker is already serving {0}")]
    Busy(PathBuf),
    /// Settings that make no sense.
    #[error("broker settings: {0}")]
    Settings(String),
    /// Metrics could not be registered.
    #[error("registering broker metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The planner the broker runs: the configured TTL and thresholds, the
/// waste budget (`waste_budget` 0: a fixed threshold), and a replacement
/// that takes two preparation intervals to reach a client.
pub fn plan_settings(settings: &BrokerSettings) -> PlanSettings {
    let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    PlanSettings {
        ttl_ns: ns(settings.ttl).max(1),
        threshold: settings.threshold.min(1.0),
        threshold_max: settings.threshold_max,
        budget: (settings.waste_budget > 0.0).then(|| BudgetSettings {
            target: settings.waste_budget,
            floor: settings.threshold_min,
            ..BudgetSettings::default()
        }),
        replacement_ns: 2 * ns(settings.prepare_interval),
        max_pairs: settings.max_pairs,
    }
}

/// The model's key of a broker pair.
fn channel_key(pair: &Pair) -> PairKey {
    PairKey {
        src: pair.0.clone(),
        dst: pair.1.clone(),
        kind: CHANNEL_KIND.to_owned(),
    }
}

/// An interaction start the broker's model learnt: a broker open, or a
/// start the probes observed.
#[derive(Clone, Debug)]
pub struct Open {
    /// The start, as the model saw it (kind [`CHANNEL_KIND`] for opens).
    pub event: TraceEvent,
    /// For a broker open, whether a prepared channel served it; `None`
    /// for an observed start, which no channel could have served.
    pub hit: Option<bool>,
}

/// The running broker.
pub struct Broker {
    listener: tokio::net::UnixListener,
    path: PathBuf,
    core: Arc<Mutex<Core>>,
    wake: Arc<tokio::sync::Notify>,
    metrics: BrokerMetrics,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Broker {
    /// Binds the socket (replacing a stale one, refusing a live one), sets
    /// its mode and group, and registers the metrics into `registry`. Must
    /// be called inside a tokio runtime.
    pub fn bind(settings: &BrokerSettings, registry: &Registry) -> Result<Self, HandoutError> {
        // Checked before the socket exists, so a refusal leaves nothing behind.
        let (min, max) = (settings.threshold_min, settings.threshold_max);
        if !(0.0..=1.0).contains(&min) || !(0.0..=1.0).contains(&max) || min > max {
            return Err(HandoutError::Settings(format!(
                "threshold_min {min} and threshold_max {max} must satisfy 0 <= min <= max <= 1"
            )));
        }
        if !(0.0..1.0).contains(&settings.waste_budget) {
            return Err(HandoutError::Settings(format!(
                "waste_budget {} must be in [0, 1) (0: a fixed threshold)",
                settings.waste_budget
            )));
        }
        let path = settings.socket.clone();
        let mode = u32::from_str_radix(&settings.mode, 8).map_err(|_| {
            HandoutError::Settings(format!("mode {:?} is not octal", settings.mode))
        })?;
        let gid = match &settings.group {
            Some(group) => Some(
                sys::group_id(group)
                    .ok_or_else(|| HandoutError::Settings(format!("unknown group {group:?}")))?,
            ),
            None => None,
        };
        let listener = crate::listen::listen(&path).map_err(|error| match error {
            ListenError::Busy(path) => HandoutError::Busy(path),
            ListenError::Io { path, source } => HandoutError::Socket { path, source },
        })?;
        sys::set_socket_access(&path, mode, gid).map_err(|source| HandoutError::Socket {
            path: path.clone(),
            source,
        })?;
        let metrics = BrokerMetrics::new(registry, settings.metric_pairs)?;
        let max_capacity =
            sys::pipe_max_size().min(u32::try_from(settings.max_buffer_memory).unwrap_or(u32::MAX));
        let core = Core::new(settings, metrics.clone(), max_capacity);
        Ok(Self {
            listener,
            path,
            core: Arc::new(Mutex::new(core)),
            wake: Arc::new(tokio::sync::Notify::new()),
            metrics,
        })
    }

    /// The broker's counters.
    pub fn metrics(&self) -> BrokerMetrics {
        self.metrics.clone()
    }

    /// A read-only view of the broker's per-pair state, for the control
    /// socket.
    pub fn view(&self) -> BrokerView {
        BrokerView {
            core: Arc::clone(&self.core),
            wake: Arc::clone(&self.wake),
        }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// From now on, every open the broker's model learns is also sent to
    /// the returned receiver (replacing an earlier one). Nothing blocks if
    /// it is not read, but it grows: drain it.
    pub fn opens(&self) -> std::sync::mpsc::Receiver<Open> {
        let (tx, rx) = std::sync::mpsc::channel();
        lock(&self.core).opens = Some(tx);
        rx
    }

    /// Serves until the task is dropped or aborted; the socket file is
    /// removed then.
    pub async fn run(self) {
        let _remove = RemoveOnDrop(self.path.clone());
        let interval = lock(&self.core)
            .settings
            .prepare_interval
            .max(Duration::from_millis(1));
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let core = Arc::clone(&self.core);
                        let wake = Arc::clone(&self.wake);
                        tokio::spawn(serve_connection(core, wake, stream));
                    }
                    Err(error) => {
                        // Out of descriptors, typically: back off, keep serving.
                        log::warn!("broker accept failed: {error}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = tick.tick() => lock(&self.core).pass(),
                _ = self.wake.notified() => lock(&self.core).pass(),
            }
        }
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    core.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
