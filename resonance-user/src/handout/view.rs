//! What the agent and the control socket see of the running broker, and
//! what the agent feeds it (measurements, observed starts, priors).

use super::*;

/// Reads the running broker's per-pair feedback and feeds it what the
/// agent learns (see [`Broker::view`]).
#[derive(Clone)]
pub struct BrokerView {
    pub(super) core: Arc<Mutex<Core>>,
    pub(super) wake: Arc<tokio::sync::Notify>,
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
