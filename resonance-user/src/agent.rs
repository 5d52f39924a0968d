//! `resonance run`: the long-running agent.
//!
//! One loop owns the observer and everything downstream of it: it drains
//! the ring buffer whenever the kernel writes to it, and every tick turns
//! the flows' deltas into per-service-pair figures, scores them and
//! publishes them to the metrics and the control socket. SIGTERM/SIGINT stop
//! it cleanly (probes detached, last tick published, sockets removed);
//! SIGHUP reloads the config. With the broker on, [`learn::Learning`]
//! keeps the broker's model retrained and saved in the state folder.

pub mod learn;
pub mod notify;
pub mod state_lock;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    aggregate::{OwnExecutable, ServiceNamer},
    config::Config,
    control::{self, Shared},
    grow::{LEARNED_FILE_NAME, PipeGrower},
    http,
    metrics::Metrics,
    observer::{Observer, ObserverOptions, ObserverStats},
    score::{IntervalFigures, PairKey, Scorer, pair_figures},
    store::{PairSample, Store},
    trace::{StartDetector, named_starts},
};

/// How often retention (roll-up and deletion of old buckets) runs.
const MAINTAIN_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Where the config came from, for reloads.
#[derive(Clone, Debug)]
pub struct ConfigSource {
    /// The file.
    pub path: PathBuf,
    /// Whether the user named it (then it must exist).
    pub explicit: bool,
}

/// The running agent.
pub struct Agent {
    config: Config,
    source: ConfigSource,
    observer: Observer,
    namer: ServiceNamer,
    scorer: Scorer,
    metrics: Arc<Metrics>,
    shared: Arc<Mutex<Shared>>,
    store: Store,
    last_tick: Instant,
    last_stats: ObserverStats,
    /// The broker's model upkeep, when the broker runs.
    learning: Option<learn::Learning>,
    /// Held for the agent's life: one agent per state folder.
    _state_lock: state_lock::StateLock,
    /// The agent's executable, whose other processes (the CLI) are left out.
    own: OwnExecutable,
    /// One observed start per pair and idle gap, for the model.
    detector: StartDetector,
    /// Grows the pipes writers block on.
    grower: PipeGrower,
}

impl Agent {
    /// Loads the probes and prepares everything; nothing listens yet.
    pub fn new(config: Config, source: ConfigSource) -> Result<Self> {
        let state_lock = state_lock::StateLock::take(&config.state_dir)?;
        let store = Store::open(&config.database_path(), config.store.clone())
            .context("opening the history store")?;
        let mut scorer = Scorer::new(config.score.half_life);
        match restore_scores(&store, &mut scorer, 3 * config.score.half_life) {
            Ok(0) => {}
            Ok(pairs) => log::info!("scores of {pairs} pairs carried on from the history store"),
            Err(error) => log::warn!("scores start afresh: reading the history failed: {error:#}"),
        }
        let observer = Observer::start(&ObserverOptions {
            idle_gap: config.idle_gap,
            latency: config.measure_latency,
            ..ObserverOptions::default()
        })?;
        if !config.measure_latency {
            log::info!("latency is not measured (measure_latency = false)");
        }
        let metrics = Metrics::new(config.metrics.max_pairs).context("registering metrics")?;
        let grower = PipeGrower::new(
            &config.grow,
            metrics.registry(),
            Some(config.state_dir.join(LEARNED_FILE_NAME)),
        )
        .context("registering the pipe growth metrics")?;
        for status in observer.attach_status() {
            metrics
                .probe_attached
                .with_label_values(&[status.tracepoint.as_str(), status.mode.as_str()])
                .set(1);
        }
        Ok(Self {
            namer: ServiceNamer::new(config.services.clone()),
            scorer,
            metrics: Arc::new(metrics),
            shared: Arc::new(Mutex::new(Shared {
                half_life: config.score.half_life,
                ..Shared::default()
            })),
            store,
            last_tick: Instant::now(),
            last_stats: ObserverStats::default(),
            learning: None,
            _state_lock: state_lock,
            own: OwnExecutable::current(),
            detector: StartDetector::new(
                u64::try_from(config.idle_gap.as_nanos()).unwrap_or(u64::MAX),
            ),
            grower,
            config,
            source,
            observer,
        })
    }

    /// Serves until SIGTERM or SIGINT.
    pub async fn run(mut self) -> Result<()> {
        // Before anything can answer: a SIGTERM that comes as soon as the
        // control socket answers must stop the agent cleanly, not kill it.
        let mut terminate =
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut interrupt =
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        // Publish once before anything answers, so the first `pairs` already
        // shows the scores restored from the store (the loop's first tick
        // could come after it).
        self.tick();
        let control_listener = bind_control(&self.config.control_socket)?;
        let metrics_listener = tokio::net::TcpListener::bind(self.config.metrics_listen)
            .await
            .with_context(|| {
                format!("listening for Prometheus on {}", self.config.metrics_listen)
            })?;
        let web = match &self.config.metrics.web_config_file {
            Some(path) => http::WebSource::from_file(path.clone())?,
            None => http::WebSource::plain(),
        };
        log::info!(
            "serving metrics on {}://{}/metrics and control on {}",
            if web.uses_tls() { "https" } else { "http" },
            self.config.metrics_listen,
            self.config.control_socket.display()
        );
        let control_task = tokio::spawn(control::serve(control_listener, Arc::clone(&self.shared)));
        let metrics_task = tokio::spawn(http::serve(
            metrics_listener,
            Arc::clone(&self.metrics),
            Arc::new(web),
            self.config.metrics.max_connections,
        ));
        let broker_task = self.start_broker();
        let ring = self.observer.ring_readiness()?;
        let kernel_log = self.observer.log_readiness()?;
        if self.config.drop_capabilities {
            drop_capabilities();
        }
        let notifier = notify::Notifier::from_env();
        notifier.ready(&self.status_line());
        // Without a watchdog the arm below never fires.
        let mut watchdog = tokio::time::interval(
            notifier
                .watchdog_interval()
                .unwrap_or(std::time::Duration::from_secs(3600)),
        );
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flush = tokio::time::interval(self.config.flush_interval);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut maintain = tokio::time::interval(MAINTAIN_EVERY);
        maintain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                guard = ring.readable() => {
                    let mut guard = guard.context("waiting for the ring buffer")?;
                    self.observer.drain_events();
                    guard.clear_ready();
                    // At once, not on the tick: a herald leaves little time,
                    // and a blocked writer waits for every write.
                    self.grow_pipes();
                    self.learn_observed_starts();
                }
                guard = readable(kernel_log.as_ref()) => {
                    let mut guard = guard.context("waiting for the kernel log buffer")?;
                    self.observer.flush_kernel_logs();
                    guard.clear_ready();
                }
                _ = tick.tick() => self.tick(),
                _ = flush.tick() => self.flush(),
                _ = maintain.tick() => self.maintain(),
                _ = watchdog.tick(), if notifier.watchdog_interval().is_some() => {
                    notifier.watchdog();
                }
                _ = terminate.recv() => {
                    log::info!("SIGTERM: stopping");
                    notifier.stopping();
                    break;
                }
                _ = interrupt.recv() => {
                    log::info!("SIGINT: stopping");
                    notifier.stopping();
                    break;
                }
                _ = hangup.recv() => {
                    notifier.reloading();
                    self.reload();
                    notifier.ready(&self.status_line());
                }
            }
        }
        self.tick();
        self.flush();
        self.grower.save();
        control_task.abort();
        metrics_task.abort();
        if let Some(task) = broker_task {
            task.abort();
            let _ = task.await;
        }
        if let Some(learning) = &self.learning {
            match learning.save() {
                Ok(()) => log::info!(
                    "saved the broker model to {} and its per-pair feedback beside it",
                    learning.model_path().display()
                ),
                Err(error) => log::error!("saving the broker model failed: {error:#}"),
            }
        }
        let _ = std::fs::remove_file(&self.config.control_socket);
        log::info!("stopped; probes detached");
        Ok(())
    }

    /// Starts the channel broker when the config enables it, with the model
    /// saved in the state folder if there is a usable one. A broker that
    /// cannot bind is logged and skipped: observing must not depend on it.
    fn start_broker(&mut self) -> Option<tokio::task::JoinHandle<()>> {
        if !self.config.broker.enabled {
            return None;
        }
        match crate::handout::Broker::bind(&self.config.broker, self.metrics.registry()) {
            Ok(broker) => {
                log::info!("serving the channel broker on {}", broker.path().display());
                self.shared.lock().unwrap_or_else(|p| p.into_inner()).broker = Some(broker.view());
                let view = broker.view();
                view.set_namer(self.namer.clone());
                let path = self.config.state_dir.join(learn::MODEL_FILE_NAME);
                if let Some(mut model) = learn::load_model(&path) {
                    // What was learnt comes from the file; how to use it
                    // (horizon, heralds) from this run's settings.
                    view.with_model(|serving| {
                        model.set_config(serving.config().clone());
                        *serving = model;
                    });
                }
                let feedback_path = self.config.state_dir.join(learn::FEEDBACK_FILE_NAME);
                if let Some(saved) = learn::load_feedback(&feedback_path) {
                    let pairs = view.restore(saved);
                    log::info!(
                        "broker feedback of {pairs} pairs carried on from {}",
                        feedback_path.display()
                    );
                }
                match learn::Learning::new(
                    view,
                    broker.opens(),
                    &self.config.predict,
                    &self.config.state_dir,
                    self.metrics.registry(),
                ) {
                    Ok(learning) => self.learning = Some(learning),
                    Err(error) => {
                        log::error!("the broker's model will not be retrained or saved: {error:#}")
                    }
                }
                Some(tokio::spawn(broker.run()))
            }
            Err(error) => {
                log::error!("channel broker disabled: {error}");
                None
            }
        }
    }

    /// Reads this tick's traffic, scores it and publishes it.
    fn tick(&mut self) {
        let interval = self.last_tick.elapsed();
        self.last_tick = Instant::now();
        if let Some(broker) = self.broker_view() {
            self.namer.set_introduced(broker.introduced());
        }
        let interactions = self.observer.interval();
        self.grow_pipes();
        self.grower.tick();
        let left_out = (!self.config.include_own_processes).then_some(&self.own);
        let figures = pair_figures(&interactions, &self.namer, left_out);
        let now_ns = epoch_ns();
        // Starts whose readers this interval found.
        self.learn_observed_starts();
        self.detector.prune(now_ns);
        for (key, f) in &figures {
            self.store.add(&PairSample {
                at_ns: now_ns,
                src: key.src.clone(),
                dst: key.dst.clone(),
                kind: key.kind.clone(),
                interactions: f.interactions,
                messages: f.messages,
                bytes: f.bytes,
                errors: f.errors,
                latency: f.latency.buckets().to_vec(),
            });
        }
        self.feed_back_channels();
        self.scorer.update(interval, &figures);
        let scores = self.scorer.scores();
        self.metrics.record_traffic(&figures);
        self.metrics.record_scores(&scores);
        if let Some(broker) = self.broker_view() {
            broker.set_priors(crate::predict::priors_from_scores(&scores));
        }
        self.publish_health();
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        shared.scores = scores;
        shared.half_life = self.config.score.half_life;
        drop(shared);
        if let Some(learning) = &mut self.learning {
            learning.step(&mut self.store, now_ns);
        }
    }

    /// Acts on the full-pipe reports drained so far.
    fn grow_pipes(&mut self) {
        let reports = self.observer.take_pipe_full();
        if reports.is_empty() {
            return;
        }
        for report in &reports {
            let at = self.observer.epoch_ns(report.ts_ns);
            self.grower
                .handle(report, &self.namer, self.observer.processes(), at);
        }
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).growth = self.grower.view();
    }

    /// Hands the interaction starts the probes saw to the broker's model
    /// (named as the pairs are, the agent's own CLI left out), unless the
    /// config turns that off.
    fn learn_observed_starts(&mut self) {
        let starts = self.observer.interaction_starts();
        if starts.is_empty() || !self.config.predict.observed_starts {
            return;
        }
        let Some(broker) = self.broker_view() else {
            return;
        };
        let left_out = (!self.config.include_own_processes).then_some(&self.own);
        let events = named_starts(starts, &self.namer, left_out, &mut self.detector);
        broker.observed(&events);
    }

    /// Hands the broker what the probes saw on its channels, and takes the
    /// pairs' measured performance into their scores.
    fn feed_back_channels(&mut self) {
        let Some(broker) = self.broker_view() else {
            return;
        };
        let watched = broker.watched();
        let measures = self.observer.measure_channels(&watched);
        broker.measured(&measures, crate::sys::monotonic_ns());
        let factors = broker
            .performance()
            .into_iter()
            .map(|(pair, performance)| (pair, performance.factor))
            .collect();
        self.scorer.set_performance(factors);
    }

    fn broker_view(&self) -> Option<crate::handout::BrokerView> {
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .broker
            .clone()
    }

    /// Writes the ticks since the last flush; a failure keeps them in
    /// memory for the next try.
    fn flush(&mut self) {
        match self.store.flush() {
            Ok(stats) => self
                .metrics
                .flush_duration
                .observe(stats.duration.as_secs_f64()),
            Err(error) => {
                self.metrics.flush_failures.inc();
                log::error!("writing history failed (kept for the next flush): {error}");
            }
        }
    }

    /// Rolls up and deletes old history.
    fn maintain(&mut self) {
        match self.store.maintain(epoch_ns()) {
            Ok(stats) => log::debug!("retention: {stats:?}"),
            Err(error) => log::error!("history retention failed: {error}"),
        }
    }

    fn publish_health(&mut self) {
        let stats = self.observer.stats();
        let before = self.last_stats;
        self.metrics
            .events
            .inc_by(stats.events.saturating_sub(before.events));
        self.metrics
            .events_malformed
            .inc_by(stats.malformed.saturating_sub(before.malformed));
        if stats.dropped > before.dropped {
            log::warn!(
                "{} events lost to a full ring buffer (byte counts are unaffected)",
                stats.dropped - before.dropped
            );
        }
        self.metrics
            .event_drops
            .inc_by(stats.dropped.saturating_sub(before.dropped));
        if stats.pipe_full_dropped > before.pipe_full_dropped {
            log::warn!(
                "{} full-pipe reports left out: more came between two ticks than are kept",
                stats.pipe_full_dropped - before.pipe_full_dropped
            );
        }
        self.metrics.flow_map_entries.set(stats.flows as i64);
        self.metrics
            .processes
            .set(self.observer.processes().len() as i64);
        self.last_stats = stats;
    }

    /// What `systemctl status` shows: the probe mode and what listens.
    fn status_line(&self) -> String {
        let broker = if self.broker_view().is_some() {
            format!(", broker on {}", self.config.broker.socket.display())
        } else {
            String::new()
        };
        format!(
            "{} hooks attached in {} mode; metrics on {}, control on {}{broker}",
            self.observer.attached(),
            self.observer.mode(),
            self.config.metrics_listen,
            self.config.control_socket.display()
        )
    }

    /// SIGHUP: re-read the config; settings that need a restart say so.
    fn reload(&mut self) {
        match Config::load(&self.source.path, self.source.explicit) {
            Ok(new) => {
                if new.metrics_listen != self.config.metrics_listen
                    || new.control_socket != self.config.control_socket
                    || new.state_dir != self.config.state_dir
                {
                    log::warn!(
                        "SIGHUP: listen addresses and the state folder change only on restart"
                    );
                }
                self.namer = ServiceNamer::new(new.services.clone());
                if let Some(broker) = self.broker_view() {
                    broker.set_namer(self.namer.clone());
                }
                self.scorer.set_half_life(new.score.half_life);
                self.grower.configure(&new.grow);
                if let Some(learning) = &mut self.learning {
                    learning.reconfigure(&new.predict);
                }
                if self.source.path.exists() {
                    log::info!("SIGHUP: reloaded {}", self.source.path.display());
                } else {
                    log::info!(
                        "SIGHUP: no config file at {}; the defaults stay in force",
                        self.source.path.display()
                    );
                }
                self.config = Config {
                    metrics_listen: self.config.metrics_listen,
                    control_socket: self.config.control_socket.clone(),
                    state_dir: self.config.state_dir.clone(),
                    ..new
                };
            }
            Err(error) => log::error!("SIGHUP: keeping the old config: {error}"),
        }
    }
}

/// Waits until `fd` is readable; forever when there is none.
async fn readable(
    fd: Option<&tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, std::os::fd::OwnedFd>> {
    match fd {
        Some(fd) => fd.readable().await,
        None => std::future::pending().await,
    }
}

/// Replays the store's last `window` of buckets into `scorer`, oldest
/// first, then the silence since: a restarted agent's scores go on from
/// where the last one's stopped instead of starting empty while `history`
/// still has the pairs. Returns how many pairs it restored.
fn restore_scores(
    store: &Store,
    scorer: &mut Scorer,
    window: std::time::Duration,
) -> Result<usize> {
    let now = epoch_ns();
    let since = now.saturating_sub(u64::try_from(window.as_nanos()).unwrap_or(u64::MAX));
    let mut buckets: BTreeMap<(u64, u64), BTreeMap<PairKey, IntervalFigures>> = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for (src, dst, _) in store.pairs()? {
        if !seen.insert((src.clone(), dst.clone())) {
            continue;
        }
        for row in store.history(&src, &dst, since, now)? {
            // Only what the probes measure has a score (broker opens do not).
            if resonance_common::ChannelKind::from_name(&row.kind).is_none() {
                continue;
            }
            let key = PairKey {
                src: row.src.clone(),
                dst: row.dst.clone(),
                kind: row.kind.clone(),
            };
            let figures = IntervalFigures {
                interactions: row.interactions,
                messages: row.messages,
                bytes: row.bytes,
                errors: row.errors,
                latency: row.latency.clone(),
            };
            buckets
                .entry((row.start_ns, row.width_ns))
                .or_default()
                .insert(key, figures);
        }
    }
    let mut pairs = std::collections::BTreeSet::new();
    let mut end = since;
    for ((start, width), figures) in &buckets {
        // A gap between buckets was silence; the bucket itself one tick.
        if *start > end {
            scorer.update(
                std::time::Duration::from_nanos(start - end),
                &BTreeMap::new(),
            );
        }
        scorer.update(std::time::Duration::from_nanos(*width), figures);
        pairs.extend(figures.keys().cloned());
        end = end.max(start + width);
    }
    if !buckets.is_empty() && now > end {
        scorer.update(std::time::Duration::from_nanos(now - end), &BTreeMap::new());
    }
    Ok(pairs.len())
}

/// Binds the control socket, replacing a stale one left by a crash but
/// refusing to steal one a live agent answers on.
fn bind_control(path: &std::path::Path) -> Result<tokio::net::UnixListener> {
    crate::listen::listen(path).map_err(|error| match error {
        crate::listen::ListenError::Busy(path) => {
            anyhow::anyhow!("another agent is already serving {}", path.display())
        }
        error => anyhow::Error::new(error).context("binding the control socket"),
    })
}

fn epoch_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// What the agent still needs once its probes are attached and its sockets
/// listen: `bpf()` to read its maps (kernels with unprivileged BPF
/// disabled refuse every command without it), reading other users'
/// `/proc/PID` to name processes, and resource limits for pipes. Not
/// PERFMON, SYS_ADMIN, CHOWN, NET_BIND_SERVICE, DAC_OVERRIDE or anything
/// else root holds: a compromised agent keeps only these.
pub const KEPT_CAPABILITIES: &[u32] = &[
    crate::sys::cap::BPF,
    crate::sys::cap::SYS_PTRACE,
    crate::sys::cap::DAC_READ_SEARCH,
    crate::sys::cap::SYS_RESOURCE,
];

/// Drops what [`KEPT_CAPABILITIES`] leaves out, for the calling thread
/// (capabilities are per thread), and says so.
fn drop_capabilities() {
    match crate::sys::drop_capabilities_except(KEPT_CAPABILITIES) {
        Ok(held) => log::info!(
            "dropped every capability but BPF, SYS_PTRACE, DAC_READ_SEARCH and \
             SYS_RESOURCE (effective now {held:#x})"
        ),
        Err(error) => log::warn!("could not drop capabilities, keeping them: {error}"),
    }
}

/// [`drop_capabilities`] for a runtime thread as it starts: quiet unless it
/// fails.
pub fn drop_thread_capabilities() {
    if let Err(error) = crate::sys::drop_capabilities_except(KEPT_CAPABILITIES) {
        log::warn!("a runtime thread could not drop capabilities: {error}");
    }
}
