//! Preallocation simulated over a trace, in event time. [`replay`] drives
//! three strategies over the same events and clock ticks and returns a
//! [`Report`] of [`Figures`] for each:
//! - the predictive [`Model`] ([`predictive::Predictive`]): when
//!   [`Model::due`] names a pair with no channel ready, one is created; a
//!   start of that pair within the TTL consumes it (a hit), otherwise it
//!   expires as waste, and is replaced at that moment if the pair is still
//!   due;
//! - [`baseline::StaticPool`]: one idle channel per pair seen in the last
//!   five minutes, replaced on use and on expiry;
//! - [`baseline::RatioPreconnect`]: Envoy-style, channels per pair in
//!   proportion to its recent rate, topped up on traffic.
//!
//! With [`ReplayConfig::retrain`], the model is also retrained as the agent
//! retrains its own (see [`crate::predict::retrain`]): trials start on the
//! schedule or when the rolling hit rate of the model's starts falls, in
//! event time, and every decision is in [`Report::retrains`].
//!
//! Everything is ordered by event time and pair order of first appearance,
//! so the same trace and settings give the same report.

pub mod baseline;
pub mod predictive;

use std::collections::HashMap;

use serde::Serialize;

use crate::{
    plan::{PlanSettings, Planner},
    predict::{
        Model, ModelConfig, PairKey,
        budget::BudgetSettings,
        retrain::{self, Decision, Reason, RetrainConfig, Trigger},
    },
    trace::TraceEvent,
};
use baseline::{RatioPreconnect, StaticPool};
use predictive::Predictive;

/// Settings of a replay.
#[derive(Clone, Debug)]
pub struct ReplayConfig {
    /// Probability at which a channel is created.
    pub threshold: f64,
    /// Lifetime of an unused channel; also the prediction horizon.
    pub ttl_ns: u64,
    /// Model tuning.
    pub model: ModelConfig,
    /// Retraining, when enabled.
    pub retrain: Option<RetrainConfig>,
    /// Waste budget: with it, `threshold` is the ceiling and the budget
    /// lowers the threshold while the waste ratio stays under its target.
    pub budget: Option<BudgetSettings>,
}

/// The kernel buffer memory a default channel holds (a socketpair at the
/// broker's default capacity, both directions): what a ready channel costs
/// while it waits.
pub fn channel_bytes() -> u64 {
    let default = crate::config::BrokerSettings::default();
    let limits = crate::alloc::Limits {
        default_capacity: default.default_capacity,
        max_capacity: default.default_capacity,
        nonblocking: default.nonblocking,
    };
    crate::alloc::memory(&crate::alloc::plan(Default::default(), &limits))
}

/// Default creation threshold: the agent's.
pub const DEFAULT_THRESHOLD: f64 = crate::plan::DEFAULT_THRESHOLD;
/// Default channel TTL: the agent's.
pub const DEFAULT_TTL_NS: u64 = crate::plan::DEFAULT_TTL_NS;

impl ReplayConfig {
    /// The planner these settings describe (the agent's, with a
    /// replacement that is instant in event time).
    pub fn plan_settings(&self) -> PlanSettings {
        PlanSettings {
            ttl_ns: self.ttl_ns,
            threshold: self.threshold,
            budget: self.budget.clone(),
            replacement_ns: 0,
            ..PlanSettings::default()
        }
    }
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            threshold: DEFAULT_THRESHOLD,
            ttl_ns: DEFAULT_TTL_NS,
            model: ModelConfig::default(),
            retrain: None,
            budget: Some(BudgetSettings::default()),
        }
    }
}

/// Outcome of one strategy.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Figures {
    /// Interaction starts in the trace.
    pub interactions: u64,
    /// Starts that found a prepared channel.
    pub hits: u64,
    /// hits / interactions.
    pub hit_rate: f64,
    /// Channels prepared.
    pub created: u64,
    /// Channels that expired unused.
    pub wasted: u64,
    /// wasted / created.
    pub waste_ratio: f64,
    /// Channels still alive when the trace ends (neither hit nor waste).
    pub pending: u64,
    /// Median time between preparing a channel and its use.
    pub lead_time_p50_ms: f64,
    /// Time channels sat ready, summed over channels: from creation to
    /// their use, their expiry, or the end of the trace.
    pub idle_channel_seconds: f64,
    /// The same weighed by the kernel buffer memory a channel holds (a
    /// default channel's, [`channel_bytes`]), byte-seconds.
    pub idle_buffer_byte_seconds: f64,
    /// Mean squared error of the start-within-TTL probability, sampled
    /// every second for every pair seen so far.
    pub brier_score: f64,
}

/// The model's outcome in one 30-second slice of the trace.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Bucket {
    /// Offset of the slice from the first event, in seconds.
    pub start_s: u64,
    /// Starts in the slice.
    pub interactions: u64,
    /// Of which hits.
    pub hits: u64,
    /// Channels that expired unused in the slice.
    pub wasted: u64,
    /// Threshold in force at the slice's last start.
    pub threshold: f64,
}

/// Width of a timeline slice.
pub const BUCKET_NS: u64 = 30_000_000_000;

/// The replay's result.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    /// Threshold configured (with a waste budget, the highest it goes).
    pub threshold: f64,
    /// The waste budget's target ratio, if one moved the threshold.
    pub waste_budget: Option<f64>,
    /// The threshold in force when the trace ended.
    pub threshold_end: f64,
    /// TTL used, in milliseconds.
    pub ttl_ms: f64,
    /// The model's figures.
    #[serde(flatten)]
    pub model: Figures,
    /// Baseline: one idle channel per pair seen in the last 5 minutes.
    pub static_pool: Figures,
    /// Baseline: channels in proportion to each pair's recent rate.
    pub ratio_preconnect: Figures,
    /// The model's hits per 30-second slice.
    pub timeline: Vec<Bucket>,
    /// The model's figures per pair, in order of first appearance.
    pub pairs: Vec<PairFigures>,
    /// Reliability of the model's probabilities (the Brier samples, binned).
    pub calibration: Vec<CalibrationBin>,
    /// Retraining decisions in order (empty unless retraining is enabled).
    pub retrains: Vec<Decision>,
}

/// The model's outcome for one pair.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PairFigures {
    /// Initiating service.
    pub src: String,
    /// Receiving service.
    pub dst: String,
    /// Channel kind.
    pub kind: String,
    /// Starts of this pair.
    pub interactions: u64,
    /// Of which served by a channel.
    pub hits: u64,
    /// Channels prepared for it.
    pub created: u64,
    /// Of which expired unused.
    pub wasted: u64,
    /// Time its channels sat ready, summed, seconds.
    pub idle_channel_seconds: f64,
}

/// Running counts of one strategy.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Starts seen.
    pub interactions: u64,
    /// Starts served by a channel.
    pub hits: u64,
    /// Channels prepared.
    pub created: u64,
    /// Channels expired unused.
    pub wasted: u64,
    /// Lead time of every hit.
    pub leads: Vec<u64>,
    /// Time channels sat ready, summed, ns.
    pub idle_ns: u128,
    brier_sum: f64,
    brier_count: u64,
    /// Per tenth of probability: forecasts, their summed probability, and
    /// how many came true.
    bins: [(u64, f64, u64); CALIBRATION_BINS],
}

/// Number of probability bins in [`Report::calibration`].
pub const CALIBRATION_BINS: usize = 10;

/// Forecasts of the model whose probability fell in `[from, to)`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CalibrationBin {
    /// Lower bound of the bin.
    pub from: f64,
    /// Upper bound (1.0 is included in the last bin).
    pub to: f64,
    /// Forecasts in the bin.
    pub forecasts: u64,
    /// Their mean probability.
    pub mean_probability: f64,
    /// How often the pair did start within the TTL.
    pub observed_rate: f64,
}

impl Tally {
    /// Scores one probabilistic forecast against what happened.
    pub fn brier(&mut self, probability: f64, happened: bool) {
        let outcome = if happened { 1.0 } else { 0.0 };
        self.brier_sum += (probability - outcome).powi(2);
        self.brier_count += 1;
        let bin = ((probability * CALIBRATION_BINS as f64) as usize).min(CALIBRATION_BINS - 1);
        self.bins[bin].0 += 1;
        self.bins[bin].1 += probability;
        self.bins[bin].2 += u64::from(happened);
    }

    /// Records a start, served by a channel made `lead` earlier (and idle
    /// since) or not.
    pub fn start(&mut self, lead: Option<u64>) {
        self.interactions += 1;
        if let Some(lead) = lead {
            self.hits += 1;
            self.leads.push(lead);
            self.idle_ns += u128::from(lead);
        }
    }

    /// Records a channel that expired unused after `idle_ns` ready.
    pub fn waste(&mut self, idle_ns: u64) {
        self.wasted += 1;
        self.idle_ns += u128::from(idle_ns);
    }

    fn calibration(&self) -> Vec<CalibrationBin> {
        self.bins
            .iter()
            .enumerate()
            .filter(|(_, (forecasts, _, _))| *forecasts > 0)
            .map(|(index, &(forecasts, sum, came_true))| CalibrationBin {
                from: index as f64 / CALIBRATION_BINS as f64,
                to: (index + 1) as f64 / CALIBRATION_BINS as f64,
                forecasts,
                mean_probability: sum / forecasts as f64,
                observed_rate: came_true as f64 / forecasts as f64,
            })
            .collect()
    }

    /// The figures, with `pending` channels still ready at the end, idle
    /// `pending_idle_ns` in all.
    fn figures(mut self, pending: u64, pending_idle_ns: u128) -> Figures {
        let idle_s = (self.idle_ns + pending_idle_ns) as f64 / 1e9;
        self.leads.sort_unstable();
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let p50 = if self.leads.is_empty() {
            0.0
        } else {
            self.leads[(self.leads.len() - 1) / 2] as f64 / 1e6
        };
        Figures {
            interactions: self.interactions,
            hits: self.hits,
            hit_rate: ratio(self.hits, self.interactions),
            created: self.created,
            wasted: self.wasted,
            waste_ratio: ratio(self.wasted, self.created),
            pending,
            lead_time_p50_ms: p50,
            idle_channel_seconds: idle_s,
            idle_buffer_byte_seconds: idle_s * channel_bytes() as f64,
            brier_score: if self.brier_count == 0 {
                0.0
            } else {
                self.brier_sum / self.brier_count as f64
            },
        }
    }
}

/// The pairs of the trace, numbered by first appearance, with the times
/// each one starts (to score forecasts against the future).
struct Pairs {
    keys: Vec<PairKey>,
    index: HashMap<PairKey, usize>,
    starts: Vec<Vec<u64>>,
    /// Per pair: index of the first start after the current time.
    cursor: Vec<usize>,
}

impl Pairs {
    fn new(events: &[TraceEvent]) -> (Self, Vec<usize>) {
        let mut pairs = Self {
            keys: Vec::new(),
            index: HashMap::new(),
            starts: Vec::new(),
            cursor: Vec::new(),
        };
        let ids = events
            .iter()
            .map(|event| {
                let key = PairKey::of(event);
                let id = match pairs.index.get(&key) {
                    Some(&id) => id,
                    None => {
                        let id = pairs.keys.len();
                        pairs.index.insert(key.clone(), id);
                        pairs.keys.push(key);
                        pairs.starts.push(Vec::new());
                        pairs.cursor.push(0);
                        id
                    }
                };
                pairs.starts[id].push(event.ts_ns);
                id
            })
            .collect();
        (pairs, ids)
    }

    /// Whether the pair starts in `(now, now + horizon]`.
    fn starts_within(&mut self, pair: usize, now: u64, horizon: u64) -> bool {
        let starts = &self.starts[pair];
        let cursor = &mut self.cursor[pair];
        while *cursor < starts.len() && starts[*cursor] <= now {
            *cursor += 1;
        }
        starts
            .get(*cursor)
            .is_some_and(|&next| next <= now.saturating_add(horizon))
    }
}

/// Retraining of the replayed model, in event time.
struct Retraining {
    config: RetrainConfig,
    trigger: Trigger,
    /// The running trial: why, when it started, the model as it was then.
    trial: Option<(Reason, u64, Model)>,
    decisions: Vec<Decision>,
}

impl Retraining {
    fn new(config: RetrainConfig) -> Self {
        Self {
            trigger: Trigger::new(&config),
            config,
            trial: None,
            decisions: Vec::new(),
        }
    }

    /// At `now`, with `events` the whole trace: finishes the running trial
    /// once its holdout has passed (swapping the model if the candidate is
    /// not worse, both played with a copy of `planner` as it stands), or
    /// starts one if due.
    fn step(&mut self, now: u64, events: &[TraceEvent], model: &mut Model, planner: &Planner) {
        let slice = |from: u64, to: u64| {
            let start = events.partition_point(|e| e.ts_ns < from);
            let end = events.partition_point(|e| e.ts_ns <= to);
            &events[start..end.max(start)]
        };
        if let Some((reason, started, _)) = &self.trial {
            let (reason, started) = (*reason, *started);
            if now < started.saturating_add(self.config.holdout_ns) {
                return;
            }
            let Some((_, _, baseline)) = self.trial.take() else {
                return;
            };
            let (from, to) = retrain::training_span(&self.config, reason, started);
            let history = slice(from, to.saturating_sub(1));
            let trial = retrain::Trial {
                reason,
                started_ns: started,
                end_ns: now,
                waste_cost: planner.waste_cost(),
                min_holdout: self.config.min_holdout,
            };
            let play = |model: &mut Model, holdout: &[&TraceEvent], from: u64, to: u64| {
                evaluate(planner, model, holdout, from, to)
            };
            let verdict = retrain::run_trial(baseline, history, slice(started, now), &trial, play);
            if let Some(candidate) = verdict.candidate {
                *model = candidate;
            }
            self.decisions.push(verdict.decision);
            return;
        }
        if let Some((reason, _)) = self.trigger.check(now) {
            self.trial = Some((reason, now, model.clone()));
        }
    }
}

/// Plays `model` with a copy of `planner` over `events` (in time order,
/// within `[from, to]`) exactly as the replay plays the whole trace: on a
/// clock of a twentieth of the TTL and after every event the planner's
/// channels are made, a start consumes its pair's channel (a hit), an
/// unused one expires after the TTL (waste) and is replaced if still due,
/// and the model learns every event as it goes. Channels still alive at
/// `to` count as neither. This is how a retraining trial judges a model.
pub fn evaluate(
    planner: &Planner,
    model: &mut Model,
    events: &[&TraceEvent],
    from: u64,
    to: u64,
) -> retrain::Evaluation {
    // Every pair the model may prepare for, not only those the holdout
    // has: a channel for a pair that never comes is waste.
    let mut keys: Vec<PairKey> = Vec::new();
    let mut index: HashMap<PairKey, usize> = HashMap::new();
    let known: Vec<PairKey> = model.keys().cloned().collect();
    for key in known
        .into_iter()
        .chain(events.iter().map(|e| PairKey::of(e)))
    {
        if !index.contains_key(&key) {
            index.insert(key.clone(), keys.len());
            keys.push(key);
        }
    }
    let waste_cost = planner.waste_cost();
    let ttl = planner.settings().ttl_ns.max(1);
    let tick = (ttl / 20).max(1_000_000);
    let mut predictive = Predictive::with_planner(std::mem::take(model), &keys, planner.clone());
    let lookup = |key: &PairKey| index.get(key).copied();
    let mut next_tick = from;
    let clock = |predictive: &mut Predictive, at: u64| {
        predictive.expire(&keys, at);
        predictive.model.tick(at);
        predictive.create_due(&lookup, at);
    };
    for event in events {
        let now = event.ts_ns;
        while next_tick < now {
            clock(&mut predictive, next_tick);
            next_tick += tick;
        }
        predictive.expire(&keys, now);
        if let Some(pair) = lookup(&PairKey::of(event)) {
            predictive.start(pair, &keys[pair], now);
        }
        predictive.model.observe(event);
        predictive.create_due(&lookup, now);
    }
    while next_tick <= to {
        clock(&mut predictive, next_tick);
        next_tick += tick;
    }
    predictive.expire(&keys, to);
    let tally = &predictive.tally;
    let mut eval = retrain::Evaluation {
        interactions: tally.interactions,
        hits: tally.hits,
        created: tally.created,
        wasted: tally.wasted,
        ..retrain::Evaluation::default()
    };
    if eval.interactions > 0 {
        let n = eval.interactions as f64;
        eval.hit_rate = eval.hits as f64 / n;
        eval.score = (eval.hits as f64 - waste_cost * eval.wasted as f64) / n;
    }
    *model = predictive.model;
    eval
}

/// Runs the model and both baselines over `events` (sorted by time).
pub fn replay(events: &[TraceEvent], config: &ReplayConfig) -> Report {
    let ttl = config.ttl_ns.max(1);
    let (mut pairs, ids) = Pairs::new(events);
    let count = pairs.keys.len();
    let model = Model::new(ModelConfig {
        calibration_horizon_ns: ttl,
        ..config.model.clone()
    });
    let mut predictive = Predictive::new(model, &pairs.keys, config);
    let mut static_pool = StaticPool::new(count, ttl);
    let mut ratio = RatioPreconnect::new(count, ttl);
    let mut timeline: Vec<Bucket> = Vec::new();
    let mut retraining = config.retrain.clone().map(Retraining::new);

    let first = events.first().map_or(0, |event| event.ts_ns);
    let last = events.last().map_or(0, |event| event.ts_ns);
    let tick = (ttl / 20).max(1_000_000);
    let brier_every = 1_000_000_000u64.max(tick);
    let mut next_tick = first;
    let mut next_brier = first;
    let mut seen = 0usize;

    let clock = |now: u64,
                 seen: usize,
                 pairs: &mut Pairs,
                 predictive: &mut Predictive,
                 static_pool: &mut StaticPool,
                 ratio: &mut RatioPreconnect,
                 next_brier: &mut u64| {
        predictive.expire(&pairs.keys, now);
        predictive.model.tick(now);
        predictive.create_due(&|key| pairs.index.get(key).copied(), now);
        if now >= *next_brier {
            *next_brier = now + brier_every;
            let scores = predictive.model.scores(now, ttl);
            for pair in 0..seen {
                let happened = pairs.starts_within(pair, now, ttl);
                let probability = predictive
                    .model
                    .pair_id(&pairs.keys[pair])
                    .and_then(|id| scores.get(id as usize))
                    .map_or(0.0, |score| score.probability);
                predictive.tally.brier(probability, happened);
                static_pool.brier(pair, now, happened);
                ratio.brier(pair, now, happened);
            }
        }
    };

    for (event, &pair) in events.iter().zip(&ids) {
        let now = event.ts_ns;
        while next_tick < now {
            clock(
                next_tick,
                seen,
                &mut pairs,
                &mut predictive,
                &mut static_pool,
                &mut ratio,
                &mut next_brier,
            );
            if let Some(retraining) = &mut retraining {
                retraining.step(
                    next_tick,
                    events,
                    &mut predictive.model,
                    &predictive.planner,
                );
            }
            next_tick += tick;
        }
        seen = seen.max(pair + 1);
        predictive.expire(&pairs.keys, now);
        let lead = predictive.start(pair, &pairs.keys[pair], now);
        let slot = ((now - first) / BUCKET_NS) as usize;
        if timeline.len() <= slot {
            timeline.resize_with(slot + 1, Bucket::default);
            for (index, bucket) in timeline.iter_mut().enumerate() {
                bucket.start_s = index as u64 * BUCKET_NS / 1_000_000_000;
            }
        }
        timeline[slot].interactions += 1;
        timeline[slot].hits += u64::from(lead.is_some());
        timeline[slot].threshold = predictive.threshold();
        predictive.model.observe(event);
        if let Some(retraining) = &mut retraining {
            retraining.trigger.drift.record(now, lead.is_some());
        }
        predictive.create_due(&|key| pairs.index.get(key).copied(), now);
        static_pool.interaction(pair, now);
        ratio.interaction(pair, now);
    }
    predictive.expire(&pairs.keys, last);
    for &at in &predictive.wasted_at {
        let slot = (at.saturating_sub(first) / BUCKET_NS) as usize;
        if let Some(bucket) = timeline.get_mut(slot) {
            bucket.wasted += 1;
        }
    }
    let calibration = predictive.tally.calibration();
    Report {
        threshold: config.threshold,
        waste_budget: config.budget.as_ref().map(|budget| budget.target),
        threshold_end: predictive.threshold(),
        ttl_ms: ttl as f64 / 1e6,
        model: predictive.figures(last),
        static_pool: static_pool.finish(last),
        ratio_preconnect: ratio.finish(last),
        timeline,
        pairs: predictive.per_pair,
        calibration,
        retrains: retraining.map(|r| r.decisions).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests;
