//! The broker's state and rules: connections and their protocol, the
//! idle channels, preparation passes, watching and feedback. No socket in
//! here: frames come in as decoded [`Message`]s, answers go out on each
//! connection's queue, so tests drive it directly.

use super::*;

/// A connection-level failure: the client is told, then disconnected.
#[derive(Debug)]
pub(super) struct Reject {
    pub(super) code: u16,
    pub(super) reason: &'static str,
    pub(super) message: String,
}

impl Reject {
    pub(super) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    pub(super) fn wire(error: WireError) -> Self {
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

pub(super) enum Out {
    Frame(Message, Option<OwnedFd>),
    Close,
}

pub(super) struct Conn {
    pub(super) identity: Identity,
    /// The service the client is, once it said `Hello`: what a configured
    /// service rule names its process, else the name it introduced.
    pub(super) name: Option<String>,
    /// The name it introduced itself with.
    pub(super) introduced: Option<String>,
    pub(super) tx: mpsc::UnboundedSender<Out>,
}

/// A handed-out channel the probes are watching.
pub(super) struct Watch {
    pub(super) watched: Watched,
    /// Blocked writes already acted on.
    pub(super) blocked_seen: u64,
    /// The latest figures.
    pub(super) measure: ChannelMeasure,
}

pub(super) struct Idle {
    pub(super) pair: Pair,
    pub(super) requester: u64,
    pub(super) responder: u64,
    pub(super) created: Instant,
    pub(super) memory: u64,
    pub(super) revoking: bool,
}

/// The broker's shared state.
pub struct Core {
    pub(super) settings: BrokerSettings,
    pub(super) limits: Limits,
    pub(super) budget: Budget,
    pub(super) policy: Policy,
    pub(super) metrics: BrokerMetrics,
    pub(super) conns: HashMap<u64, Conn>,
    pub(super) next_conn: u64,
    pub(super) next_channel: u64,
    /// Registered connections per service, latest last.
    pub(super) services: HashMap<String, Vec<u64>>,
    /// The latest connection that opened as each requester name.
    pub(super) requesters: HashMap<String, u64>,
    pub(super) idle: HashMap<u64, Idle>,
    pub(super) usage: Usage<Pair>,
    /// What each pair's requester declared (bounded: `max_pairs`).
    pub(super) wants: PairMap<Want>,
    /// Measurements and adapted settings per pair served (bounded:
    /// `max_pairs`, least recently updated forgotten first).
    pub(super) feedback: PairMap<PairFeedback>,
    /// Channels handed out, until the probes' figures on them are final.
    pub(super) watched: HashMap<u64, Watch>,
    pub(super) model: Model,
    /// Which pairs get channels, at what threshold.
    pub(super) planner: Planner,
    /// Names clients by the agent's service rules.
    pub(super) namer: ServiceNamer,
    /// Where every open the model learns is also sent (the agent stores
    /// them and retrains the model from them), once [`Broker::opens`] asked.
    pub(super) opens: Option<std::sync::mpsc::Sender<Open>>,
}

impl Core {
    /// A broker's state with no client yet: what [`Broker::bind`] puts
    /// behind its socket, and what the unit tests drive directly.
    pub fn new(settings: &BrokerSettings, metrics: BrokerMetrics, max_capacity: u32) -> Self {
        Self {
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
            metrics,
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
        }
    }

    pub(super) fn add_connection(&mut self, cred: Cred, tx: mpsc::UnboundedSender<Out>) -> u64 {
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

    pub(super) fn remove_connection(&mut self, id: u64) {
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

    pub(super) fn send(&self, conn: u64, message: Message, fd: Option<OwnedFd>) {
        if let Some(c) = self.conns.get(&conn) {
            let _ = c.tx.send(Out::Frame(message, fd));
        }
    }

    pub(super) fn count(&self, vec: &prometheus::IntCounterVec, pair: &Pair) {
        self.metrics.count(vec, &pair.0, &pair.1);
    }

    pub(super) fn count_by(&self, vec: &prometheus::IntCounterVec, pair: &Pair, n: u64) {
        vec.with_label_values(&self.metrics.pair_labels(&pair.0, &pair.1))
            .inc_by(n);
    }

    pub(super) fn forget(&mut self, channel: u64) -> Option<Idle> {
        let idle = self.idle.remove(&channel)?;
        self.usage.remove(&idle.pair, idle.memory);
        self.metrics.idle.set(self.idle.len() as i64);
        Some(idle)
    }

    /// Learns a broker open of `pair`, served by a prepared channel or not.
    pub(super) fn observe(&mut self, pair: &Pair, hit: bool) {
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
    pub(super) fn learn(&mut self, event: TraceEvent, hit: Option<bool>) {
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
    pub(super) fn client_name(&self, pid: u32, introduced: &str) -> String {
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

    pub(super) fn handle(&mut self, id: u64, message: Message) -> Result<(), Reject> {
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

    pub(super) fn deny(&mut self, id: u64, req: u64, action: &str, service: &str, why: String) {
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
    pub(super) fn responder_of(&self, service: &str) -> Option<(u64, &Conn)> {
        let id = *self.services.get(service)?.last()?;
        Some((id, self.conns.get(&id)?))
    }

    pub(super) fn open(
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
    pub(super) fn hand_out(
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
    pub(super) fn watch(&mut self, channel: u64, pair: &Pair, created: &alloc::Created) {
        let kind = created.observed_kind();
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
                    delivered_ns: crate::sys::monotonic_ns(),
                    capacity: created.config.capacity,
                },
                blocked_seen: 0,
                measure: ChannelMeasure::default(),
            },
        );
    }

    /// Takes in the probes' figures (see [`BrokerView::measured`]).
    pub(super) fn measured(&mut self, measures: &HashMap<u64, ChannelMeasure>, now_ns: u64) {
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
    pub(super) fn close_out(&mut self, channel: u64) {
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
    pub(super) fn adjusted(&self, pair: &Pair, what: &str, up: bool, reason: &str) {
        log::info!("broker: {} -> {} {what}: {reason}", pair.0, pair.1);
        self.metrics
            .adjusted(&pair.0, &pair.1, what, if up { "up" } else { "down" });
    }

    /// Revokes expired channels, then makes the channels the planner asks
    /// for, for pairs whose requester and service are connected and may
    /// talk, within the budget.
    pub(super) fn pass(&mut self) {
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

    pub(super) fn pair_feedback(&mut self, pair: &Pair) -> &mut PairFeedback {
        self.feedback.get_or_insert_with(pair, PairFeedback::new)
    }

    /// The configuration of the pair's next channel: planned from what the
    /// requester declared, with the capacity the pair's feedback decided.
    pub(super) fn config_for(&self, pair: &Pair, want: Want) -> ChannelConfig {
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
    pub(super) fn outcome(&mut self, pair: &Pair, outcome: Outcome, memory: u64) {
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
    pub(super) fn report(&mut self, channel: u64, pair: Pair, usage: ChannelUsage) {
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

    pub(super) fn expire(&mut self) {
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
