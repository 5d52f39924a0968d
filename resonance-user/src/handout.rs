//! The broker: hands pre-created pipes and socketpairs to processes over a
//! Unix socket.
//!
//! [`Broker::bind`] opens the socket; [`Broker::run`] accepts clients, one
//! task pair per connection (a reader decoding frames, a writer sending
//! frames and descriptors), and every `prepare_interval` (and right after
//! every open or claim) runs a preparation pass over the shared [`Core`]:
//! the broker's own [`Model`] predicts which requester → service pairs
//! will open a channel within the TTL; for each, most probable first and
//! within the [`Budget`], [`crate::alloc`] creates a channel and both ends
//! are pushed (requester's to its inbox, responder's to its incoming
//! queue). Channels unclaimed after the TTL are revoked (the requester
//! confirms it dropped an unused end, then the responder is told) and
//! counted as waste. Every pair's outcomes (hits, waste, misses) and the
//! usage its requesters report feed its [`PairFeedback`]: the capacity of
//! its next channels and its preparation threshold follow
//! [`crate::feedback`]'s rules. [`policy`] decides who may register and open what;
//! [`metrics`] counts it all. The wire protocol is
//! [`resonance_client::proto`].

pub mod metrics;
pub mod pairs;
pub mod policy;

use std::{
    collections::HashMap,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use prometheus::Registry;
use resonance_client::{
    proto::{ChannelConfig, ChannelKind, ChannelUsage, Message, Peer, Role, Want, code},
    wire::{self, FrameReader, WireError},
};
use tokio::{io::unix::AsyncFd, sync::mpsc};

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
    plan::{PlanSettings, Planner, SavedPlanner},
    predict::{CHANNEL_KIND, Model, ModelConfig, PairKey, budget::BudgetSettings},
    sys::{self, Cred},
    trace::TraceEvent,
};
pub use metrics::BrokerMetrics;
use pairs::{Pair, PairMap};
use policy::{Identity, Policy};

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

enum Out {
    Frame(Message, Option<OwnedFd>),
    Close,
}

struct Conn {
    identity: Identity,
    /// The service the client is, once it said `Hello`: what a configured
    /// service rule names its process, else the name it introduced.
    name: Option<String>,
    /// The name it introduced itself with.
    introduced: Option<String>,
    tx: mpsc::UnboundedSender<Out>,
}

/// A handed-out channel the probes are watching.
struct Watch {
    watched: Watched,
    /// Blocked writes already acted on.
    blocked_seen: u64,
    /// The latest figures.
    measure: ChannelMeasure,
}

struct Idle {
    pair: Pair,
    requester: u64,
    responder: u64,
    created: Instant,
    memory: u64,
    revoking: bool,
}

/// The broker's shared state.
pub struct Core {
    settings: BrokerSettings,
    limits: Limits,
    budget: Budget,
    policy: Policy,
    metrics: BrokerMetrics,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    next_channel: u64,
    /// Registered connections per service, latest last.
    services: HashMap<String, Vec<u64>>,
    /// The latest connection that opened as each requester name.
    requesters: HashMap<String, u64>,
    idle: HashMap<u64, Idle>,
    usage: Usage<Pair>,
    /// What each pair's requester declared (bounded: `max_pairs`).
    wants: PairMap<Want>,
    /// Measurements and adapted settings per pair served (bounded:
    /// `max_pairs`, least recently updated forgotten first).
    feedback: PairMap<PairFeedback>,
    /// Channels handed out, until the probes' figures on them are final.
    watched: HashMap<u64, Watch>,
    model: Model,
    /// Which pairs get channels, at what threshold.
    planner: Planner,
    /// Names clients by the agent's service rules.
    namer: ServiceNamer,
    /// Where every open the model learns is also sent (the agent stores
    /// them and retrains the model from them), once [`Broker::opens`] asked.
    opens: Option<std::sync::mpsc::Sender<Open>>,
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
        let socket_error = |source| HandoutError::Socket {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(socket_error)?;
        }
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                return Err(HandoutError::Busy(path));
            }
            std::fs::remove_file(&path).map_err(socket_error)?;
        }
        let listener = tokio::net::UnixListener::bind(&path).map_err(socket_error)?;
        sys::set_socket_access(&path, mode, gid).map_err(socket_error)?;
        let metrics = BrokerMetrics::new(registry, settings.metric_pairs)?;
        let max_capacity =
            sys::pipe_max_size().min(u32::try_from(settings.max_buffer_memory).unwrap_or(u32::MAX));
        let core = Core {
            limits: Limits {
                default_capacity: settings.default_capacity,
                max_capacity,
                nonblocking: settings.nonblocking,
            },
            budget: Budget {
                max_idle: settings.max_idle,
                max_idle_per_pair: settings.max_idle_per_pair,
                max_fds: settings.max_fds,
                max_memory: settings.max_buffer_memory,
            },
            policy: Policy::new(settings.rules.clone()),
            metrics: metrics.clone(),
            conns: HashMap::new(),
            next_conn: 1,
            next_channel: 1,
            services: HashMap::new(),
            requesters: HashMap::new(),
            idle: HashMap::new(),
            usage: Usage::default(),
            wants: PairMap::new(settings.max_pairs),
            feedback: PairMap::new(settings.max_pairs),
            watched: HashMap::new(),
            model: Model::new(ModelConfig {
                // The calibration learns one horizon; the broker's is the TTL.
                calibrate: false,
                calibration_horizon_ns: settings.ttl.as_nanos() as u64,
                // A herald must leave the preparation pass time to run and
                // the channel time to reach the client.
                herald_min_lead_ns: 2 * settings.prepare_interval.as_nanos() as u64,
                herald_probability: settings.threshold.clamp(0.0, 1.0),
                ..ModelConfig::default()
            }),
            planner: Planner::new(plan_settings(settings)),
            namer: ServiceNamer::default(),
            opens: None,
            settings: settings.clone(),
        };
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

/// Reads the running broker's per-pair feedback and feeds it what the
/// agent learns (see [`Broker::view`]).
#[derive(Clone)]
pub struct BrokerView {
    core: Arc<Mutex<Core>>,
    wake: Arc<tokio::sync::Notify>,
}

/// The broker's state saved in the state folder.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SavedBroker {
    /// The waste budget and the pairs' margins.
    pub planner: SavedPlanner,
    /// Each pair's feedback, least recently updated first.
    pub pairs: Vec<SavedFeedback>,
}

/// One pair's feedback as saved in the state folder.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SavedFeedback {
    /// Requester.
    pub src: String,
    /// Service.
    pub dst: String,
    /// What the broker learnt of it.
    pub feedback: PairFeedback,
}

/// The model's view of one pair, of any kind, for `explain`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PairPrediction {
    /// The kind the model learnt it as ([`CHANNEL_KIND`] for broker opens).
    pub kind: String,
    /// Starts learnt.
    pub starts: u64,
    /// Probability of a start within the TTL.
    pub probability: f64,
    /// Expected time to it, ns.
    pub expected_lead_ns: u64,
    /// The chance a channel made now is the one the start uses.
    pub need: f64,
    /// The threshold the broker prepares this pair's channels at.
    pub threshold: f64,
    /// The resonance score in force as the pair's prior (0.5 neutral).
    pub prior: f64,
    /// Whether the broker can serve it (only its opens get channels).
    pub brokered: bool,
}

impl std::fmt::Debug for BrokerView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrokerView")
    }
}

impl BrokerView {
    /// Runs `f` on the broker's model under the broker's lock (a copy for
    /// retraining, a swap, a save); keep it short, opens wait meanwhile.
    pub fn with_model<R>(&self, f: impl FnOnce(&mut Model) -> R) -> R {
        f(&mut lock(&self.core).model)
    }

    /// The feedback of requester `src` → service `dst` with the broker
    /// model's current prediction for it; `None` if the broker never
    /// served the pair.
    pub fn pair(&self, src: &str, dst: &str) -> Option<Snapshot> {
        let core = lock(&self.core);
        let pair = (src.to_owned(), dst.to_owned());
        let mut snapshot = core.feedback.get(&pair)?.snapshot();
        let key = channel_key(&pair);
        snapshot.threshold = Some(core.planner.threshold_of(&key));
        snapshot.threshold_reason = Some(core.planner.reason_of(&key));
        if let Some(id) = core.model.pair_id(&key) {
            let ttl = core.settings.ttl.as_nanos() as u64;
            let score = core.model.score(id, now_ns(), ttl);
            snapshot.probability = Some(score.probability);
            snapshot.expected_lead_ns = Some(score.expected_lead_ns);
            snapshot.need = Some(core.model.need(id, now_ns(), ttl));
        }
        Some(snapshot)
    }

    /// The channels handed out whose traffic the probes should measure.
    pub fn watched(&self) -> Vec<Watched> {
        lock(&self.core)
            .watched
            .values()
            .map(|w| w.watched.clone())
            .collect()
    }

    /// What the probes measured on watched channels (cumulative, by
    /// channel id) as of `now_ns` (CLOCK_MONOTONIC): acts on full pipes at
    /// once and closes out channels that are done.
    pub fn measured(&self, measures: &HashMap<u64, ChannelMeasure>, now_ns: u64) {
        lock(&self.core).measured(measures, now_ns);
    }

    /// Every pair's score multiplier from measured channel performance.
    pub fn performance(&self) -> Vec<(Pair, Performance)> {
        lock(&self.core)
            .feedback
            .iter()
            .filter_map(|(pair, f)| Some((pair.clone(), f.performance()?)))
            .collect()
    }

    /// Pairs whose feedback the broker holds (at most `max_pairs`).
    pub fn pairs(&self) -> usize {
        lock(&self.core).feedback.len()
    }

    /// What the broker learnt of its pairs and its thresholds, to save.
    pub fn saved(&self) -> SavedBroker {
        let core = lock(&self.core);
        SavedBroker {
            planner: core.planner.saved(),
            pairs: core
                .feedback
                .oldest_first()
                .map(|(pair, feedback)| SavedFeedback {
                    src: pair.0.clone(),
                    dst: pair.1.clone(),
                    feedback: feedback.clone(),
                })
                .collect(),
        }
    }

    /// Takes back what [`BrokerView::saved`] returned (at start, before
    /// any client). Returns how many pairs it restored.
    pub fn restore(&self, saved: SavedBroker) -> usize {
        let mut core = lock(&self.core);
        core.planner.restore(saved.planner);
        let restored = saved.pairs.len();
        for SavedFeedback { src, dst, feedback } in saved.pairs {
            core.feedback.insert((src, dst), feedback);
        }
        restored
    }

    /// A copy of the planner as it stands (a retraining trial plays both
    /// models with it).
    pub fn planner(&self) -> Planner {
        lock(&self.core).planner.clone()
    }

    /// Interaction starts the probes saw: the model learns them as
    /// context (an observed request may herald a brokered open), they go
    /// where the broker's opens go ([`Broker::opens`]), and a preparation
    /// pass runs at once, since a herald leaves little time.
    pub fn observed(&self, events: &[TraceEvent]) {
        if events.is_empty() {
            return;
        }
        let mut core = lock(&self.core);
        for event in events {
            core.learn(event.clone(), None);
        }
        drop(core);
        self.wake.notify_one();
    }

    /// The model's priors from the resonance scores
    /// ([`crate::predict::priors_from_scores`]).
    pub fn set_priors(&self, priors: Vec<(PairKey, f64)>) {
        lock(&self.core).model.set_priors(priors);
    }

    /// Names clients from now on by these service rules.
    pub fn set_namer(&self, namer: ServiceNamer) {
        lock(&self.core).namer = namer;
    }

    /// The names live clients introduced themselves with, by pid, for the
    /// probes' side; a process whose clients gave different names is left
    /// out (the probes see one process, not which client spoke).
    pub fn introduced(&self) -> HashMap<u32, String> {
        let core = lock(&self.core);
        let mut names: HashMap<u32, Option<String>> = HashMap::new();
        for conn in core.conns.values() {
            let Some(name) = &conn.introduced else {
                continue;
            };
            names
                .entry(conn.identity.cred.pid)
                .and_modify(|known| {
                    if known.as_deref() != Some(name.as_str()) {
                        *known = None;
                    }
                })
                .or_insert_with(|| Some(name.clone()));
        }
        names
            .into_iter()
            .filter_map(|(pid, name)| Some((pid, name?)))
            .collect()
    }

    /// What the model predicts for every kind of pair `src` → `dst` it
    /// tracks, observed or brokered.
    pub fn predictions(&self, src: &str, dst: &str) -> Vec<PairPrediction> {
        let core = lock(&self.core);
        let now = now_ns();
        let ttl = core.settings.ttl.as_nanos() as u64;
        core.model
            .pairs_between(src, dst)
            .into_iter()
            .filter_map(|id| {
                let key = core.model.key(id)?;
                let score = core.model.score(id, now, ttl);
                Some(PairPrediction {
                    kind: key.kind.clone(),
                    starts: core.model.seen(id),
                    probability: score.probability,
                    expected_lead_ns: score.expected_lead_ns,
                    need: core.model.need(id, now, ttl),
                    threshold: core.planner.threshold_of(key),
                    prior: core.model.prior(key),
                    brokered: key.kind == CHANNEL_KIND,
                })
            })
            .collect()
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

/// A connection-level failure: the client is told, then disconnected.
struct Reject {
    code: u16,
    reason: &'static str,
    message: String,
}

impl Reject {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    fn wire(error: WireError) -> Self {
        let (code, reason) = match &error {
            WireError::Proto(resonance_client::proto::ProtoError::TooLarge(_)) => {
                (code::TOO_LARGE, "too_large")
            }
            WireError::Proto(resonance_client::proto::ProtoError::Version(_)) => {
                (code::VERSION, "version")
            }
            WireError::Proto(_) => (code::MALFORMED, "malformed"),
            WireError::Fds(_) => (code::UNEXPECTED_FDS, "unexpected_fds"),
            WireError::Io(_) | WireError::Closed => (code::PROTOCOL, "io"),
        };
        Self::new(code, reason, error.to_string())
    }
}

async fn serve_connection(
    core: Arc<Mutex<Core>>,
    wake: Arc<tokio::sync::Notify>,
    stream: tokio::net::UnixStream,
) {
    let Ok(stream) = stream.into_std() else {
        return;
    };
    let fd = OwnedFd::from(stream);
    let cred = match sys::peer_cred(fd.as_fd()) {
        Ok(cred) => cred,
        Err(error) => {
            log::warn!("broker: SO_PEERCRED failed, dropping the connection: {error}");
            return;
        }
    };
    // SAFETY: `fd` is a valid socket owned by the AsyncFd from here on.
    let Ok(socket) = (unsafe { AsyncFd::register(fd) }) else {
        return;
    };
    let socket = Arc::new(socket);
    let (tx, rx) = mpsc::unbounded_channel();
    let id = lock(&core).add_connection(cred, tx.clone());
    let writer = tokio::spawn(write_loop(Arc::clone(&socket), rx));
    let outcome = read_loop(&socket, id, &core, &wake).await;
    if let Err(reject) = outcome {
        log::warn!(
            "broker: closing connection of pid {} uid {}: {}",
            cred.pid,
            cred.uid,
            reject.message
        );
        lock(&core)
            .metrics
            .rejected
            .with_label_values(&[reject.reason])
            .inc();
        let _ = tx.send(Out::Frame(
            Message::Error {
                req: 0,
                code: reject.code,
                message: reject.message,
            },
            None,
        ));
    }
    let _ = tx.send(Out::Close);
    drop(tx);
    lock(&core).remove_connection(id);
    wake.notify_one();
    let _ = writer.await;
}

async fn read_loop(
    socket: &AsyncFd<OwnedFd>,
    id: u64,
    core: &Mutex<Core>,
    wake: &tokio::sync::Notify,
) -> Result<(), Reject> {
    let mut reader = FrameReader::new();
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        loop {
            match reader.next_frame() {
                Ok(Some((_, Some(_)))) => {
                    return Err(Reject::new(
                        code::UNEXPECTED_FDS,
                        "unexpected_fds",
                        "clients never send descriptors",
                    ));
                }
                Ok(Some((message, None))) => {
                    lock(core).handle(id, message)?;
                    wake.notify_one();
                }
                Ok(None) => break,
                Err(error) => return Err(Reject::wire(error)),
            }
        }
        if reader.pending_fds() > 0 {
            return Err(Reject::new(
                code::UNEXPECTED_FDS,
                "unexpected_fds",
                "clients never send descriptors",
            ));
        }
        let greeted = lock(core).conns.get(&id).is_some_and(|c| c.name.is_some());
        let readable = if greeted {
            socket.readable().await
        } else {
            match tokio::time::timeout_at(deadline, socket.readable()).await {
                Ok(readable) => readable,
                Err(_) => {
                    return Err(Reject::new(
                        code::PROTOCOL,
                        "handshake_timeout",
                        "no Hello in time",
                    ));
                }
            }
        };
        let mut guard = readable.map_err(|e| Reject::new(code::INTERNAL, "io", e.to_string()))?;
        match reader.fill(socket.get_ref().as_fd(), libc::MSG_DONTWAIT) {
            Ok(_) => {}
            Err(WireError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                guard.clear_ready()
            }
            // A client leaving is normal, even mid-frame: nothing to answer.
            Err(WireError::Closed) => return Ok(()),
            Err(WireError::Io(_)) => return Ok(()),
            Err(error) => return Err(Reject::wire(error)),
        }
    }
}

async fn write_loop(socket: Arc<AsyncFd<OwnedFd>>, mut rx: mpsc::UnboundedReceiver<Out>) {
    while let Some(out) = rx.recv().await {
        let (message, fd) = match out {
            Out::Frame(message, fd) => (message, fd),
            Out::Close => break,
        };
        let bytes = message.encode();
        let mut sent = 0;
        while sent < bytes.len() {
            let Ok(mut guard) = socket.writable().await else {
                return;
            };
            let attach = if sent == 0 {
                fd.as_ref().map(|f| f.as_fd())
            } else {
                None
            };
            match wire::send_once(socket.get_ref().as_fd(), &bytes[sent..], attach) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(_) => return,
            }
        }
        // The descriptor is the client's now (or lost with it): ours closes.
        drop(fd);
    }
    // SAFETY: shutting down our own socket so the client sees EOF even
    // while the reader task still holds the descriptor.
    unsafe { libc::shutdown(socket.get_ref().as_raw_fd(), libc::SHUT_RDWR) };
}

impl Core {
    fn add_connection(&mut self, cred: Cred, tx: mpsc::UnboundedSender<Out>) -> u64 {
        let id = self.next_conn;
        self.next_conn += 1;
        let identity = Identity::of(cred, self.policy.needs_units());
        self.conns.insert(
            id,
            Conn {
                identity,
                name: None,
                introduced: None,
                tx,
            },
        );
        self.metrics.connections.set(self.conns.len() as i64);
        id
    }

    fn remove_connection(&mut self, id: u64) {
        self.conns.remove(&id);
        self.metrics.connections.set(self.conns.len() as i64);
        for registrants in self.services.values_mut() {
            registrants.retain(|c| *c != id);
        }
        self.services
            .retain(|_, registrants| !registrants.is_empty());
        self.requesters.retain(|_, c| *c != id);
        let gone: Vec<u64> = self
            .idle
            .iter()
            .filter(|(_, idle)| idle.requester == id || idle.responder == id)
            .map(|(channel, _)| *channel)
            .collect();
        for channel in gone {
            if let Some(idle) = self.forget(channel) {
                // The unused end died with its process or lost its peer.
                self.count(&self.metrics.waste, &idle.pair);
                self.outcome(&idle.pair, Outcome::Waste, idle.memory);
                if idle.requester != id {
                    self.send(idle.requester, Message::Revoke { channel }, None);
                }
            }
        }
    }

    fn send(&self, conn: u64, message: Message, fd: Option<OwnedFd>) {
        if let Some(c) = self.conns.get(&conn) {
            let _ = c.tx.send(Out::Frame(message, fd));
        }
    }

    fn count(&self, vec: &prometheus::IntCounterVec, pair: &Pair) {
        self.metrics.count(vec, &pair.0, &pair.1);
    }

    fn count_by(&self, vec: &prometheus::IntCounterVec, pair: &Pair, n: u64) {
        vec.with_label_values(&self.metrics.pair_labels(&pair.0, &pair.1))
            .inc_by(n);
    }

    fn forget(&mut self, channel: u64) -> Option<Idle> {
        let idle = self.idle.remove(&channel)?;
        self.usage.remove(&idle.pair, idle.memory);
        self.metrics.idle.set(self.idle.len() as i64);
        Some(idle)
    }

    /// Learns a broker open of `pair`, served by a prepared channel or not.
    fn observe(&mut self, pair: &Pair, hit: bool) {
        let event = TraceEvent {
            ts_ns: now_ns(),
            src: pair.0.clone(),
            dst: pair.1.clone(),
            kind: CHANNEL_KIND.to_owned(),
            bytes: 0,
            latency_ns: 0,
            error: false,
        };
        self.learn(event, Some(hit));
    }

    /// The model learns a start, and the agent hears of it.
    fn learn(&mut self, event: TraceEvent, hit: Option<bool>) {
        self.model.observe(&event);
        if let Some(opens) = &self.opens
            && opens.send(Open { event, hit }).is_err()
        {
            // The agent stopped listening: stop sending.
            self.opens = None;
        }
    }

    /// The service a client is: what a configured rule names its process
    /// (so it has the name the probes give it), else what it introduced
    /// itself as.
    fn client_name(&self, pid: u32, introduced: &str) -> String {
        let process = ProcessInfo::read(pid, 0, "");
        let process = ProcessInfo {
            comm: process.main_comm.clone().unwrap_or_default(),
            ..process
        };
        match self.namer.rule_name(&process) {
            Some(name) => {
                if name != introduced {
                    log::debug!(
                        "broker: client pid {pid} introduced as {introduced:?} is {name:?} by the service rules"
                    );
                }
                name.to_owned()
            }
            None => introduced.to_owned(),
        }
    }

    fn handle(&mut self, id: u64, message: Message) -> Result<(), Reject> {
        let Some(conn) = self.conns.get(&id) else {
            return Ok(());
        };
        let name = conn.name.clone();
        let identity = conn.identity.clone();
        match (message, name) {
            (Message::Hello { name }, None) => {
                let cred = identity.cred;
                let service = self.client_name(cred.pid, &name);
                if let Some(conn) = self.conns.get_mut(&id) {
                    conn.name = Some(service);
                    conn.introduced = Some(name);
                }
                self.send(
                    id,
                    Message::Welcome {
                        client: id,
                        pid: cred.pid,
                        uid: cred.uid,
                        gid: cred.gid,
                    },
                    None,
                );
            }
            (Message::Hello { .. }, Some(_)) => {
                return Err(Reject::new(code::PROTOCOL, "protocol", "Hello sent twice"));
            }
            (_, None) => {
                return Err(Reject::new(
                    code::PROTOCOL,
                    "protocol",
                    "the first message must be Hello",
                ));
            }
            (Message::Register { req, service }, Some(_)) => {
                let owner = self
                    .services
                    .get(&service)
                    .and_then(|r| r.first())
                    .and_then(|c| self.conns.get(c))
                    .map(|c| c.identity.cred.uid);
                match self.policy.check_register(&identity, &service, owner) {
                    Ok(()) => {
                        let registrants = self.services.entry(service).or_default();
                        registrants.retain(|c| *c != id);
                        registrants.push(id);
                        self.send(id, Message::Ok { req }, None);
                    }
                    Err(why) => self.deny(id, req, "register", &service, why),
                }
            }
            (Message::Open { req, service, want }, Some(name)) => {
                self.open(id, req, name, service, want)?
            }
            (Message::Claimed { channel }, Some(_)) => {
                if self.idle.get(&channel).is_some_and(|i| i.requester == id)
                    && let Some(idle) = self.forget(channel)
                {
                    self.count(&self.metrics.hits, &idle.pair);
                    self.observe(&idle.pair, true);
                    self.outcome(&idle.pair, Outcome::Hit, idle.memory);
                }
            }
            (Message::RevokeAck { channel, dropped }, Some(_)) => {
                // Not dropped: it was claimed meanwhile (its Claimed follows)
                // or it already carries data; either way it stays.
                if dropped
                    && self
                        .idle
                        .get(&channel)
                        .is_some_and(|i| i.requester == id && i.revoking)
                    && let Some(idle) = self.forget(channel)
                {
                    self.count(&self.metrics.waste, &idle.pair);
                    self.outcome(&idle.pair, Outcome::Waste, idle.memory);
                    self.send(idle.responder, Message::Revoke { channel }, None);
                }
            }
            (
                Message::Report {
                    channel,
                    service,
                    usage,
                },
                Some(name),
            ) => self.report(channel, (name, service), usage),
            (other, Some(_)) => {
                return Err(Reject::new(
                    code::PROTOCOL,
                    "protocol",
                    format!("clients may not send {other:?}"),
                ));
            }
        }
        Ok(())
    }

    fn deny(&mut self, id: u64, req: u64, action: &str, service: &str, why: String) {
        log::warn!("broker: denied: {why}");
        self.metrics.denied(action, service);
        self.send(
            id,
            Message::Error {
                req,
                code: code::DENIED,
                message: why,
            },
            None,
        );
    }

    /// The serving connection of `service` and its owner uid.
    fn responder_of(&self, service: &str) -> Option<(u64, &Conn)> {
        let id = *self.services.get(service)?.last()?;
        Some((id, self.conns.get(&id)?))
    }

    fn open(
        &mut self,
        id: u64,
        req: u64,
        name: String,
        service: String,
        want: Want,
    ) -> Result<(), Reject> {
        let Some((responder, responder_conn)) = self.responder_of(&service) else {
            // A request that cannot be served, not a client that
            // misbehaves: that open fails, the connection stays.
            log::debug!("broker: open of {service:?}, which no process serves");
            self.send(
                id,
                Message::Error {
                    req,
                    code: code::UNKNOWN_SERVICE,
                    message: format!("no process serves {service:?}"),
                },
                None,
            );
            return Ok(());
        };
        let owner = responder_conn.identity.cred.uid;
        let identity = self.conns.get(&id).map(|c| c.identity.clone());
        let Some(identity) = identity else {
            return Ok(());
        };
        if let Err(why) = self.policy.check_open(&identity, &service, owner) {
            self.deny(id, req, "open", &service, why);
            return Ok(());
        }
        let pair = (name, service);
        self.requesters.insert(pair.0.clone(), id);
        self.wants.insert(pair.clone(), want);
        self.count(&self.metrics.misses, &pair);
        self.observe(&pair, false);
        let memory = alloc::memory(&self.config_for(&pair, want));
        self.outcome(&pair, Outcome::Miss, memory);
        if let Err(error) = self.hand_out(&pair, id, responder, req, want) {
            log::warn!(
                "broker: creating a channel for {} -> {}: {error}",
                pair.0,
                pair.1
            );
            self.send(
                id,
                Message::Error {
                    req,
                    code: code::INTERNAL,
                    message: error.to_string(),
                },
                None,
            );
        }
        Ok(())
    }

    /// Creates a channel for `pair` and sends both ends; returns the
    /// channel id and its buffer memory.
    fn hand_out(
        &mut self,
        pair: &Pair,
        requester: u64,
        responder: u64,
        req: u64,
        want: Want,
    ) -> Result<(u64, u64), alloc::AllocError> {
        let created = alloc::create(&self.config_for(pair, want))?;
        let channel = self.next_channel;
        self.next_channel += 1;
        self.watch(channel, pair, &created);
        let peer_of = |conn: u64, service: &str| {
            let cred = self
                .conns
                .get(&conn)
                .map(|c| c.identity.cred)
                .unwrap_or(Cred {
                    pid: 0,
                    uid: 0,
                    gid: 0,
                });
            Peer {
                service: service.to_owned(),
                pid: cred.pid,
                uid: cred.uid,
                gid: cred.gid,
            }
        };
        let config = created.config;
        log::debug!(
            "broker: channel {channel} {} -> {} ({}): {:?}",
            pair.0,
            pair.1,
            if req == 0 { "prepared" } else { "on demand" },
            config
        );
        let to_responder = Message::Channel {
            channel,
            req: 0,
            role: Role::Responder,
            service: pair.1.clone(),
            peer: peer_of(requester, &pair.0),
            config,
        };
        let to_requester = Message::Channel {
            channel,
            req,
            role: Role::Requester,
            service: pair.1.clone(),
            peer: peer_of(responder, &pair.1),
            config,
        };
        self.send(responder, to_responder, Some(created.responder));
        self.send(requester, to_requester, Some(created.requester));
        self.count(&self.metrics.created, pair);
        self.pair_feedback(pair).created(config.capacity);
        Ok((channel, alloc::memory(&config)))
    }

    /// Starts watching a channel about to be handed out. A channel whose
    /// inodes cannot be read is simply not watched.
    fn watch(&mut self, channel: u64, pair: &Pair, created: &alloc::Created) {
        let kind = match created.config.kind {
            ChannelKind::Pipe | ChannelKind::PacketPipe => resonance_common::ChannelKind::Pipe,
            ChannelKind::Stream => resonance_common::ChannelKind::UnixStream,
            ChannelKind::SeqPacket => resonance_common::ChannelKind::UnixSeqpacket,
        };
        let (Ok(requester_end), Ok(responder_end)) = (
            sys::inode(created.requester.as_fd()),
            sys::inode(created.responder.as_fd()),
        ) else {
            return;
        };
        if self.watched.len() >= MAX_WATCHED
            && let Some(oldest) = self.watched.keys().min().copied()
        {
            self.close_out(oldest);
        }
        self.watched.insert(
            channel,
            Watch {
                watched: Watched {
                    channel,
                    pair: pair.clone(),
                    kind,
                    requester_end,
                    responder_end,
                    delivered_ns: crate::observer::monotonic_ns(),
                    capacity: created.config.capacity,
                },
                blocked_seen: 0,
                measure: ChannelMeasure::default(),
            },
        );
    }

    /// Takes in the probes' figures (see [`BrokerView::measured`]).
    fn measured(&mut self, measures: &HashMap<u64, ChannelMeasure>, now_ns: u64) {
        let (default, max) = (self.limits.default_capacity, self.limits.max_capacity);
        let mut done = Vec::new();
        let mut full = Vec::new();
        for (channel, watch) in &mut self.watched {
            if let Some(measure) = measures.get(channel) {
                watch.measure = *measure;
            }
            let m = watch.measure;
            if m.blocked_writes > watch.blocked_seen {
                full.push((
                    watch.watched.pair.clone(),
                    m,
                    m.blocked_writes - watch.blocked_seen,
                    watch.blocked_seen == 0,
                ));
                watch.blocked_seen = m.blocked_writes;
            }
            let age = now_ns.saturating_sub(watch.watched.delivered_ns);
            let silent = now_ns.saturating_sub(m.last_use_ns);
            let idle_limit = self.settings.ttl + DONE_AFTER_SILENCE;
            let finished = if m.used() {
                silent >= DONE_AFTER_SILENCE.as_nanos() as u64
            } else {
                age >= idle_limit.as_nanos() as u64
            };
            if finished || age >= WATCH_AT_MOST.as_nanos() as u64 {
                done.push(*channel);
            }
        }
        for (pair, measure, new_blocks, first) in full {
            self.count_by(&self.metrics.blocked_writes, &pair, new_blocks);
            // One decision per channel: a writer that keeps hitting the
            // same full pipe is one piece of evidence, not many.
            if !first {
                continue;
            }
            let before = self.pair_feedback(&pair).current_capacity(default);
            if let Some(decision) = self
                .pair_feedback(&pair)
                .probed_full_pipe(&measure, default, max)
            {
                self.adjusted(
                    &pair,
                    "capacity",
                    decision.capacity > before,
                    &decision.reason,
                );
            }
        }
        for channel in done {
            self.close_out(channel);
        }
    }

    /// Stops watching a channel and files its figures with its pair.
    fn close_out(&mut self, channel: u64) {
        let Some(watch) = self.watched.remove(&channel) else {
            return;
        };
        let (default, max) = (self.limits.default_capacity, self.limits.max_capacity);
        let pair = watch.watched.pair.clone();
        let measure = watch.measure;
        let first_use = measure.time_to_first_use_ns(watch.watched.delivered_ns);
        if let Some(ns) = first_use {
            self.metrics.first_use.observe(ns as f64 / 1e9);
            self.count(&self.metrics.used, &pair);
        } else {
            self.count(&self.metrics.unused, &pair);
        }
        let record = MeasuredChannel {
            channel,
            capacity: watch.watched.capacity,
            measure,
            time_to_first_use_ns: first_use,
            throughput_bytes_per_s: measure.throughput_bytes_per_s(),
        };
        let before = self.pair_feedback(&pair).current_capacity(default);
        if let Some(decision) = self.pair_feedback(&pair).channel_done(record, default, max) {
            self.adjusted(
                &pair,
                "capacity",
                decision.capacity > before,
                &decision.reason,
            );
        }
    }

    /// Logs and counts a feedback adjustment.
    fn adjusted(&self, pair: &Pair, what: &str, up: bool, reason: &str) {
        log::info!("broker: {} -> {} {what}: {reason}", pair.0, pair.1);
        self.metrics
            .adjusted(&pair.0, &pair.1, what, if up { "up" } else { "down" });
    }

    /// Revokes expired channels, then makes the channels the planner asks
    /// for, for pairs whose requester and service are connected and may
    /// talk, within the budget.
    fn pass(&mut self) {
        self.expire();
        if self.settings.threshold > 1.0 {
            return;
        }
        let now = now_ns();
        self.model.tick(now);
        // Observed pairs are context only: the broker serves its own opens.
        let usage = &self.usage;
        let plans = self.planner.plan(&self.model, now, |key| {
            (key.kind == CHANNEL_KIND).then(|| usage.of(&(key.src.clone(), key.dst.clone())))
        });
        for plan in plans {
            let Some(key) = self.model.key(plan.pair) else {
                continue;
            };
            let pair = (key.src.clone(), key.dst.clone());
            let Some(&requester) = self.requesters.get(&pair.0) else {
                continue;
            };
            let Some((responder, responder_conn)) = self.responder_of(&pair.1) else {
                continue;
            };
            let owner = responder_conn.identity.cred.uid;
            let Some(identity) = self.conns.get(&requester).map(|c| c.identity.clone()) else {
                continue;
            };
            if self.policy.check_open(&identity, &pair.1, owner).is_err() {
                continue;
            }
            let want = self.wants.get(&pair).copied().unwrap_or_default();
            let memory = alloc::memory(&self.config_for(&pair, want));
            for _ in 0..plan.count {
                if self.budget.admit(&self.usage, &pair, memory).is_err() {
                    self.count(&self.metrics.skipped, &pair);
                    break;
                }
                match self.hand_out(&pair, requester, responder, 0, want) {
                    Ok((channel, memory)) => {
                        self.usage.add(&pair, memory);
                        self.idle.insert(
                            channel,
                            Idle {
                                pair: pair.clone(),
                                requester,
                                responder,
                                created: Instant::now(),
                                memory,
                                revoking: false,
                            },
                        );
                        self.metrics.idle.set(self.idle.len() as i64);
                    }
                    Err(error) => {
                        log::warn!("broker: preparing {} -> {}: {error}", pair.0, pair.1);
                        break;
                    }
                }
            }
        }
    }

    fn pair_feedback(&mut self, pair: &Pair) -> &mut PairFeedback {
        self.feedback.get_or_insert_with(pair, PairFeedback::new)
    }

    /// The configuration of the pair's next channel: planned from what the
    /// requester declared, with the capacity the pair's feedback decided.
    fn config_for(&self, pair: &Pair, want: Want) -> ChannelConfig {
        let mut config = alloc::plan(want, &self.limits);
        if let Some(decision) = self.feedback.get(pair).and_then(|f| f.capacity.as_ref()) {
            config.capacity = decision.capacity.min(self.limits.max_capacity);
            config.write_size = config.write_size.min(config.capacity);
        }
        config
    }

    /// Records a channel outcome with the pair and with the planner, which
    /// adapts the thresholds; `memory` is the channel's buffer memory (its
    /// cost relative to a default one scales a pair's step up).
    fn outcome(&mut self, pair: &Pair, outcome: Outcome, memory: u64) {
        let default = alloc::memory(&alloc::plan(Want::default(), &self.limits)).max(1);
        let cost = memory as f64 / default as f64;
        self.pair_feedback(pair).outcome(outcome);
        if let Some(change) = self.planner.outcome(&channel_key(pair), outcome, cost) {
            self.adjusted(pair, "threshold", change.raised, &change.reason);
        }
    }

    /// A requester's usage report: sizes the pair's next channels. Pairs
    /// the broker never created a channel for are ignored (so reports
    /// cannot invent metric labels).
    fn report(&mut self, channel: u64, pair: Pair, usage: ChannelUsage) {
        let (default, max) = (self.limits.default_capacity, self.limits.max_capacity);
        let Some(feedback) = self.feedback.get_mut(&pair) else {
            return;
        };
        let before = feedback.current_capacity(default);
        let Some(decision) = feedback.report(usage, default, max) else {
            return;
        };
        let reason = format!("reported on channel {channel}: {}", decision.reason);
        self.adjusted(&pair, "capacity", decision.capacity > before, &reason);
    }

    fn expire(&mut self) {
        let ttl = self.settings.ttl;
        let expired: Vec<(u64, u64, Pair)> = self
            .idle
            .iter_mut()
            .filter(|(_, idle)| !idle.revoking && idle.created.elapsed() >= ttl)
            .map(|(channel, idle)| {
                idle.revoking = true;
                (*channel, idle.requester, idle.pair.clone())
            })
            .collect();
        for (channel, requester, pair) in expired {
            self.count(&self.metrics.revocations, &pair);
            self.send(requester, Message::Revoke { channel }, None);
        }
    }
}
