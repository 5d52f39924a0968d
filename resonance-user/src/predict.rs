//! The predictive engine. [`Model`] learns from [`TraceEvent`]s online
//! ([`Model::observe`]) and answers "which (src, dst, kind) starts within
//! the next horizon, with what probability, and how soon"
//! ([`Model::predict`], [`Model::due`]). The threshold it is asked at may
//! follow a waste budget ([`budget::WasteBudget`]).
//!
//! Three components each give a probability per pair; the model keeps the
//! largest (each is calibrated on its own, and they mostly see the same
//! causes, so adding them up would double count):
//! - sliding-window patterns: every interaction is a context whose
//!   [`table::Table`] counts which interactions follow it within
//!   [`ModelConfig::window_ns`], with their delays ([`samples::Samples`]);
//! - a [`markov::Markov`] chain (orders 1 and 2) over the interaction stream;
//! - per-pair timing: the inter-arrival gaps of each pair, so periodic and
//!   steady pairs are predicted with no trigger at all; gaps longer than
//!   the horizon are also kept apart, so the think time between bursts is
//!   still known at the end of a long burst.
//!
//! Which of those pairs deserve a channel now is [`Model::need`]: a pair
//! that a *herald* announces shortly before it starts (an interaction it
//! follows within the horizon with at least
//! [`ModelConfig::herald_probability`], nine times in ten within an eighth
//! of the horizon) gets its channel when the herald comes, not earlier on
//! its timing, where the channel could expire first; how often the pair's
//! starts were heralded decides how much an early channel is still worth.
//! [`Model::due`] adds when: it waits for a better moment only for pairs
//! whose gaps are sharp enough for that moment to be knowable.
//!
//! Follower probabilities are Dirichlet-smoothed with a prior share scaled
//! by the pair's resonance score ([`Model::set_prior`]). Memory is bounded by
//! [`ModelConfig::max_contexts`] tracked pairs (least recently seen evicted).
//! The model serialises to JSON ([`Model::save`], [`Model::load`]).

pub mod budget;
pub mod calibrate;
pub mod markov;
pub mod recurrence;
pub mod retrain;
pub mod samples;
pub mod table;

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::trace::TraceEvent;
use calibrate::Calibrator;
use markov::{ChainParams, Markov};
use recurrence::Recurrence;
use samples::Samples;
use table::{Table, conditional, smoothed};

/// How many steps ahead [`Model::due`] looks for a better moment.
pub const LOOKAHEAD_STEPS: u64 = 4;
/// How much more likely a later moment must be for [`Model::due`] to wait.
pub const PEAK_MARGIN: f64 = 0.02;

/// Gaps a pair needs before its own timing is trusted: until then it is
/// young, and how the host's young pairs recur ([`Recurrence`]) speaks
/// for it too.
pub const YOUNG_GAPS: usize = recurrence::CLASSES;

/// Gaps a pair needs before its timing can be judged sharp.
pub const SHARP_GAPS: usize = samples::CAPACITY / 2;

/// Variation of gaps (standard deviation over mean) up to which a pair's
/// starts are regular enough for waiting to pay, however wide its jitter:
/// the chance of a start then rises as the silence lasts (for gamma-shaped
/// gaps, variation below 1 means a rising hazard; half leaves room for
/// sampling noise), so a later channel covers more of it.
pub const REGULAR_VARIATION: f64 = 0.5;

/// Starts each pair remembers, to match overlapping occurrences of a
/// context with their followers.
pub const RECENT_STARTS: usize = 8;

/// Decay per start of a pair's count of heralded starts.
pub const HERALD_DECAY: f64 = 0.99;

/// A herald's follower comes within the horizon divided by this (for nine
/// in ten of its recent delays).
pub const HERALD_DELAY_DIVISOR: u64 = 8;

/// Which contexts [`Model::accumulate`] consults when only heralds count.
#[derive(Clone, Copy, Debug)]
struct Heralds {
    /// Chance of the follower within the horizon a herald must give.
    floor: f64,
    /// Judge each herald as of its occurrence rather than as of now.
    as_announced: bool,
}

/// The kind the model gives the broker's opens: a brokered channel is one
/// kind of interaction whatever pipe or socket carries it.
pub const CHANNEL_KIND: &str = "channel";

/// Index of an interned pair inside a model.
pub type PairId = u32;

pub use crate::pair::PairKey;

/// The model's priors from the resonance scores ([`Model::set_priors`]):
/// an observed pair takes the score of the same (src, dst, kind); a
/// brokered pair ([`CHANNEL_KIND`]) takes the highest score of its (src,
/// dst) over the kinds the probes measured, since its channels' traffic is
/// measured as the pipe or socket that carries it.
pub fn priors_from_scores(scores: &[crate::score::PairScore]) -> Vec<(PairKey, f64)> {
    let mut priors: BTreeMap<PairKey, f64> = BTreeMap::new();
    for score in scores {
        priors.insert(score.key.clone(), score.score);
        let channel = PairKey {
            src: score.key.src.clone(),
            dst: score.key.dst.clone(),
            kind: CHANNEL_KIND.to_owned(),
        };
        let best = priors.entry(channel).or_insert(score.score);
        *best = best.max(score.score);
    }
    priors.into_iter().collect()
}

/// Tuning of the model. The defaults are the ones the replay targets were
/// measured with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelConfig {
    /// Sliding window W: how long after an interaction a follower counts.
    pub window_ns: u64,
    /// Decay of counts per occurrence of their context (0..1).
    pub decay: f64,
    /// Dirichlet prior mass (pseudo-occurrences).
    pub alpha: f64,
    /// Prior share of any follower for a neutral resonance score.
    pub base_prior: f64,
    /// Order-2 evidence at which the chain trusts order 2 as much as order 1.
    pub order2_support: f64,
    /// Pseudo-samples shrinking timing predictions made from few gaps.
    pub timing_shrink: f64,
    /// Most pairs (and order-2 contexts) tracked at once.
    pub max_contexts: usize,
    /// Most followers kept per context.
    pub max_followers: usize,
    /// Whether the sliding-window follower tables are consulted.
    pub use_window: bool,
    /// Whether the Markov chain is consulted.
    pub use_markov: bool,
    /// Whether per-pair inter-arrival timing is consulted.
    pub use_timing: bool,
    /// Whether raw probabilities are mapped onto observed frequencies.
    pub calibrate: bool,
    /// Horizon the calibration learns (the channel TTL it serves).
    pub calibration_horizon_ns: u64,
    /// Event time between two samples of forecasts for calibration.
    pub calibration_every_ns: u64,
    /// Chance of being followed within the horizon that makes an
    /// interaction a herald of its follower (the threshold channels are
    /// prepared at).
    pub herald_probability: f64,
    /// Shortest delay at which a herald still leaves time to prepare the
    /// channel (nine in ten of its delays at least this): the broker
    /// prepares on a clock and needs its preparation interval; a replay
    /// prepares at once.
    pub herald_min_lead_ns: u64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            window_ns: 30_000_000_000,
            decay: 0.9,
            alpha: 1.0,
            base_prior: 0.05,
            order2_support: 2.0,
            timing_shrink: 1.0,
            max_contexts: 1024,
            max_followers: 32,
            use_window: true,
            use_markov: true,
            use_timing: true,
            calibrate: true,
            calibration_horizon_ns: 5_000_000_000,
            calibration_every_ns: 1_000_000_000,
            herald_probability: 0.6,
            herald_min_lead_ns: 0,
        }
    }
}

/// One predicted interaction start.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prediction {
    /// Initiating service.
    pub src: String,
    /// Receiving service.
    pub dst: String,
    /// Channel kind.
    pub kind: String,
    /// Probability that the pair starts within the horizon.
    pub probability: f64,
    /// Expected time from now to the start, if it happens in the horizon.
    pub expected_lead_ns: u64,
    /// The chance a channel made now is the one the start uses
    /// ([`Model::need`]): lower than `probability` for a pair that a
    /// herald announces shortly before it starts.
    pub need: f64,
}

/// A pair worth preparing a channel for now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Due {
    /// The pair ([`Model::key`] names it).
    pub pair: PairId,
    /// Probability of a start within the horizon.
    pub probability: f64,
    /// Expected lead time.
    pub expected_lead_ns: u64,
}

/// Probability and expected lead of one pair, as computed by
/// [`Model::scores`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Score {
    /// Probability of a start within the horizon.
    pub probability: f64,
    /// Expected lead time.
    pub expected_lead_ns: u64,
}

impl Score {
    fn raise(&mut self, probability: f64, expected_lead_ns: u64) {
        if probability > self.probability {
            self.probability = probability;
            self.expected_lead_ns = expected_lead_ns;
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct PairState {
    key: PairKey,
    /// Multiplier of the Dirichlet prior share (1 = neutral).
    prior: f64,
    last_ts: Option<u64>,
    seen: u64,
    /// Inter-arrival gaps.
    gaps: Samples,
    /// Inter-arrival gaps longer than the calibration horizon (pauses):
    /// kept apart so a burst of short gaps does not push the think time
    /// between bursts out of memory.
    #[serde(default)]
    pauses: Samples,
    /// What follows this pair within the window.
    follow: Table,
    /// Followers already credited since this pair's latest occurrence.
    credited: Vec<PairId>,
    /// Decayed count of starts a herald announced in time.
    #[serde(default)]
    heralded: f64,
    /// Decayed count of starts.
    #[serde(default)]
    starts: f64,
    /// The latest starts, oldest first (at most [`RECENT_STARTS`]).
    #[serde(default)]
    recent: Vec<u64>,
}

/// The online predictor.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Model {
    config: ModelConfig,
    pairs: Vec<Option<PairState>>,
    free: Vec<PairId>,
    markov: Markov,
    /// Resonance scores in [0, 1] by pair; 0.5 is neutral. Not saved: the
    /// agent hands them over every tick, and a JSON map cannot have these
    /// keys.
    #[serde(skip)]
    priors: BTreeMap<PairKey, f64>,
    calibrator: Calibrator,
    /// How young pairs recur on this host.
    #[serde(default)]
    recurrence: Recurrence,
    #[serde(skip)]
    index: HashMap<PairKey, PairId>,
}

impl Default for Model {
    fn default() -> Self {
        Self::new(ModelConfig::default())
    }
}

/// How a resonance score in [0, 1] scales the prior share (0.5 -> 1).
fn prior_multiplier(score: f64) -> f64 {
    2.0 * score.clamp(0.0, 1.0)
}

impl Model {
    /// An empty model.
    pub fn new(config: ModelConfig) -> Self {
        Self {
            config,
            pairs: Vec::new(),
            free: Vec::new(),
            markov: Markov::default(),
            priors: BTreeMap::new(),
            calibrator: Calibrator::default(),
            recurrence: Recurrence::default(),
            index: HashMap::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Replaces the configuration, keeping what was learnt (a model loaded
    /// from disk takes the running agent's settings).
    pub fn set_config(&mut self, config: ModelConfig) {
        self.config = config;
    }

    /// Sets the resonance score of a pair (in [0, 1], 0.5 neutral): it
    /// scales the Dirichlet prior share of that pair as a follower.
    pub fn set_prior(&mut self, key: PairKey, score: f64) {
        if let Some(&id) = self.index.get(&key)
            && let Some(Some(state)) = self.pairs.get_mut(id as usize)
        {
            state.prior = prior_multiplier(score);
        }
        self.priors.insert(key, score);
    }

    /// Sets every pair's resonance score at once (see [`Model::set_prior`]);
    /// a tracked pair not named goes back to neutral (0.5): the scores
    /// forgot it, so there is no evidence either way. Memory stays bounded
    /// by what the caller names.
    pub fn set_priors(&mut self, scores: impl IntoIterator<Item = (PairKey, f64)>) {
        self.priors = scores
            .into_iter()
            .map(|(key, score)| (key, score.clamp(0.0, 1.0)))
            .collect();
        for state in self.pairs.iter_mut().flatten() {
            state.prior = prior_multiplier(self.priors.get(&state.key).copied().unwrap_or(0.5));
        }
    }

    /// The resonance score in force for `key` (0.5, neutral, when none).
    pub fn prior(&self, key: &PairKey) -> f64 {
        self.priors.get(key).copied().unwrap_or(0.5)
    }

    /// Every tracked pair's key.
    pub fn keys(&self) -> impl Iterator<Item = &PairKey> {
        self.pairs.iter().flatten().map(|state| &state.key)
    }

    /// The tracked pairs from `src` to `dst`, of any kind.
    pub fn pairs_between(&self, src: &str, dst: &str) -> Vec<PairId> {
        let mut pairs: Vec<PairId> = self
            .index
            .iter()
            .filter(|(key, _)| key.src == src && key.dst == dst)
            .map(|(_, id)| *id)
            .collect();
        pairs.sort_unstable();
        pairs
    }

    /// The median of `pair`'s recent gaps between starts, once it has
    /// [`YOUNG_GAPS`] of them.
    pub fn typical_gap(&self, pair: PairId) -> Option<u64> {
        let state = self.state(pair)?;
        (state.gaps.len() >= YOUNG_GAPS).then(|| state.gaps.quantile(0.5))
    }

    /// How many young starts' outcomes the model has learnt, per class
    /// (first start, second start).
    pub fn young_outcomes(&self) -> [usize; recurrence::CLASSES] {
        self.recurrence.outcomes()
    }

    /// How many starts of `pair` the model has learnt.
    pub fn seen(&self, pair: PairId) -> u64 {
        self.state(pair).map_or(0, |state| state.seen)
    }

    /// Number of pairs currently tracked.
    pub fn tracked(&self) -> usize {
        self.index.len()
    }

    /// The id of a tracked pair.
    pub fn pair_id(&self, key: &PairKey) -> Option<PairId> {
        self.index.get(key).copied()
    }

    /// The key of a tracked pair.
    pub fn key(&self, pair: PairId) -> Option<&PairKey> {
        self.state(pair).map(|state| &state.key)
    }

    fn state(&self, pair: PairId) -> Option<&PairState> {
        self.pairs.get(pair as usize).and_then(Option::as_ref)
    }

    fn chain_params(&self) -> ChainParams {
        ChainParams {
            decay: self.config.decay,
            alpha: self.config.alpha,
            order2_support: self.config.order2_support,
            max_entries: self.config.max_followers,
            max_contexts: self.config.max_contexts,
            window_ns: self.config.window_ns,
        }
    }

    /// Online update with one interaction start. Events are expected in
    /// time order; an event older than what was seen counts as simultaneous.
    pub fn observe(&mut self, event: &TraceEvent) {
        let id = self.intern(PairKey::of(event));
        let ts = event.ts_ns;
        let heralded = self.heralded(id, ts);
        let window = self.config.window_ns;
        let decay = self.config.decay;
        let max_followers = self.config.max_followers;
        for state in self.pairs.iter_mut().flatten() {
            let Some(last) = state.last_ts else { continue };
            let delay = ts.saturating_sub(last);
            if delay <= window && !state.credited.contains(&id) {
                state.follow.credit(id, delay, decay, max_followers);
                state.credited.push(id);
            }
        }
        if let Some(Some(state)) = self.pairs.get_mut(id as usize) {
            let gap = state.last_ts.map(|last| ts.saturating_sub(last));
            self.recurrence
                .on_start(&state.key, id, state.seen, gap, ts, window);
            if let Some(gap) = gap {
                state.gaps.push(gap);
                if gap > self.config.calibration_horizon_ns {
                    state.pauses.push(gap);
                }
            }
            state.last_ts = Some(ts.max(state.last_ts.unwrap_or(0)));
            state.seen += 1;
            if state.recent.len() >= RECENT_STARTS {
                state.recent.remove(0);
            }
            state.recent.push(ts);
            state.starts = state.starts * HERALD_DECAY + 1.0;
            state.heralded = state.heralded * HERALD_DECAY + f64::from(u8::from(heralded));
            state.follow.occur(decay);
            state.credited.clear();
        }
        let params = self.chain_params();
        self.markov.observe(id, ts, &params);
        if self.config.calibrate {
            self.calibrator.on_start(id, ts);
        }
        self.tick(ts);
    }

    /// Lets time pass with no event: samples the model's own forecasts for
    /// calibration once per [`ModelConfig::calibration_every_ns`]. Calling
    /// it on a clock (the replay does, every tick) keeps the calibration
    /// true between events, not just right after them.
    pub fn tick(&mut self, now: u64) {
        let pairs = &self.pairs;
        self.recurrence
            .tick(now, self.config.window_ns, |pair, key| {
                pairs
                    .get(pair as usize)
                    .and_then(Option::as_ref)
                    .filter(|state| state.key == *key)
                    .map(|state| state.seen)
            });
        if !self.config.calibrate || !self.calibrator.wants_sample(now) {
            return;
        }
        let horizon = self.config.calibration_horizon_ns;
        let mut raw = vec![Score::default(); self.pairs.len()];
        self.accumulate(now, horizon, None, None, &mut raw);
        let every = self.config.calibration_every_ns;
        self.calibrator.sample(now, horizon, every, &raw);
    }

    /// Periodic retraining: forgets what was learnt (keeping configuration
    /// and resonance priors) and relearns from a slice of history in order.
    pub fn retrain<'a>(&mut self, events: impl IntoIterator<Item = &'a TraceEvent>) {
        self.pairs.clear();
        self.free.clear();
        self.index.clear();
        self.markov = Markov::default();
        self.calibrator = Calibrator::default();
        self.recurrence = Recurrence::default();
        for event in events {
            self.observe(event);
        }
    }

    fn intern(&mut self, key: PairKey) -> PairId {
        if let Some(&id) = self.index.get(&key) {
            return id;
        }
        if self.index.len() >= self.config.max_contexts.max(1) {
            self.evict_least_recent();
        }
        let prior = prior_multiplier(self.priors.get(&key).copied().unwrap_or(0.5));
        let state = PairState {
            key: key.clone(),
            prior,
            last_ts: None,
            seen: 0,
            gaps: Samples::default(),
            pauses: Samples::default(),
            follow: Table::default(),
            credited: Vec::new(),
            heralded: 0.0,
            starts: 0.0,
            recent: Vec::new(),
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.pairs[id as usize] = Some(state);
                id
            }
            None => {
                self.pairs.push(Some(state));
                (self.pairs.len() - 1) as PairId
            }
        };
        self.index.insert(key, id);
        id
    }

    /// The least useful pair is the one seen least recently (fewest
    /// occurrences breaking ties): its predictions are the stalest.
    fn evict_least_recent(&mut self) {
        let victim = self
            .pairs
            .iter()
            .enumerate()
            .filter_map(|(id, state)| state.as_ref().map(|state| (id, state)))
            .min_by_key(|(id, state)| (state.last_ts, state.seen, *id))
            .map(|(id, _)| id as PairId);
        let Some(victim) = victim else { return };
        if let Some(state) = self.pairs[victim as usize].take() {
            self.index.remove(&state.key);
        }
        for state in self.pairs.iter_mut().flatten() {
            state.follow.remove(victim);
            state.credited.retain(|pair| *pair != victim);
        }
        self.markov.remove(victim);
        self.calibrator.forget(victim);
        self.free.push(victim);
    }

    /// Probability and expected lead for every pair slot (indexed by
    /// [`PairId`]) of a start in `(now, now + horizon]`.
    pub fn scores(&self, now: u64, horizon: u64) -> Vec<Score> {
        let mut scores = vec![Score::default(); self.pairs.len()];
        self.accumulate(now, horizon, None, None, &mut scores);
        if self.config.calibrate {
            for score in &mut scores {
                score.probability = self.calibrator.map(score.probability);
            }
        }
        scores
    }

    /// Probability and expected lead of one pair (cheaper than
    /// [`Model::scores`] when only a few pairs matter).
    pub fn score(&self, pair: PairId, now: u64, horizon: u64) -> Score {
        let mut scores = [Score::default()];
        self.accumulate(now, horizon, Some(pair), None, &mut scores);
        if self.config.calibrate {
            scores[0].probability = self.calibrator.map(scores[0].probability);
        }
        scores[0]
    }

    /// Probability of a start of `pair` within `horizon` according to its
    /// heralds alone: interactions after which it follows within the
    /// horizon with at least [`ModelConfig::herald_probability`], so that a
    /// channel made when they occur is rarely wasted.
    fn near(&self, pair: PairId, now: u64, horizon: u64) -> Score {
        let mut scores = [Score::default()];
        let heralds = Heralds {
            floor: self.config.herald_probability,
            as_announced: false,
        };
        self.accumulate(now, horizon, Some(pair), Some(heralds), &mut scores);
        if self.config.calibrate {
            scores[0].probability = self.calibrator.map(scores[0].probability);
        }
        scores[0]
    }

    /// Whether a herald of `pair` announced a start at `now` in time: it
    /// occurred within the horizon before, and when it did, it gave the
    /// start at least [`ModelConfig::herald_probability`].
    fn heralded(&self, pair: PairId, now: u64) -> bool {
        let mut scores = [Score::default()];
        let heralds = Heralds {
            floor: self.config.herald_probability,
            as_announced: true,
        };
        let horizon = self.config.calibration_horizon_ns;
        self.accumulate(now, horizon, Some(pair), Some(heralds), &mut scores);
        scores[0].probability >= self.config.herald_probability
    }

    /// Share of a pair's recent starts that a herald announced in time.
    fn herald_share(&self, state: &PairState) -> f64 {
        // One pseudo-start unannounced, so a young pair is not taken as
        // heralded on its first few starts.
        state.heralded / (state.starts + 1.0)
    }

    /// The chance that a channel made for `pair` now is the one its next
    /// start uses: its heralds' prediction, or the whole prediction for the
    /// starts nothing announces shortly before. A pair that something
    /// reliably announces gets its channel then, not earlier, when it could
    /// expire waiting.
    pub fn need(&self, pair: PairId, now: u64, horizon: u64) -> f64 {
        let Some(state) = self.state(pair) else {
            return 0.0;
        };
        let all = self.score(pair, now, horizon).probability;
        self.need_given(state, pair, all, now, horizon)
    }

    /// Whether [`Model::need`] reaches `threshold`, with the whole
    /// prediction `all` already computed: the heralds are consulted only
    /// when the early channel's worth falls short.
    fn needs_at_least(
        &self,
        state: &PairState,
        pair: PairId,
        all: f64,
        now: u64,
        horizon: u64,
        threshold: f64,
    ) -> bool {
        self.early_worth(state, all) >= threshold
            || self.near(pair, now, horizon).probability >= threshold
    }

    /// What an early channel is worth: `all` for a pair nothing heralds;
    /// less for one whose starts a herald usually announces, weighing the
    /// starts nothing announced against the waste as the threshold weighs
    /// a hit against a waste.
    fn early_worth(&self, state: &PairState, all: f64) -> f64 {
        let share = self.herald_share(state);
        if share <= 0.0 {
            return all;
        }
        let gain = all * (1.0 - share);
        gain / (gain + (1.0 - all)).max(f64::EPSILON)
    }

    /// [`Model::need`] with the whole prediction `all` already computed.
    fn need_given(&self, state: &PairState, pair: PairId, all: f64, now: u64, horizon: u64) -> f64 {
        let early = self.early_worth(state, all);
        if early >= all {
            return all;
        }
        self.near(pair, now, horizon).probability.max(early)
    }

    /// Raises `scores` with every component's opinion. With `only`, just
    /// that pair is scored, into `scores[0]`. With `heralds`, only
    /// contexts followed by the pair within the horizon with at least that
    /// probability count, while a channel made when they occurred would
    /// still wait, and timing not at all.
    fn accumulate(
        &self,
        now: u64,
        horizon: u64,
        only: Option<PairId>,
        heralds: Option<Heralds>,
        scores: &mut [Score],
    ) {
        let config = &self.config;
        let use_timing = config.use_timing && heralds.is_none();
        let too_old = |elapsed: u64| heralds.is_some() && elapsed > horizon;
        let weak = |p: f64, delays: &Samples| {
            heralds.is_some_and(|heralds| {
                delays.quantile(0.9) > horizon / HERALD_DELAY_DIVISOR
                    || delays.quantile(0.1) < config.herald_min_lead_ns
                    || conditional(p, delays, 0, horizon).0 < heralds.floor
            })
        };
        // What a herald said when it occurred, not what is left of it now.
        let as_announced = heralds.is_some_and(|heralds| heralds.as_announced);
        let judge = |p: f64, delays: &Samples, elapsed: u64| {
            let elapsed = if as_announced { 0 } else { elapsed };
            conditional(p, delays, elapsed, horizon)
        };
        let share =
            |pair: PairId| config.base_prior * self.state(pair).map_or(1.0, |state| state.prior);
        let slot = |pair: PairId| match only {
            None => Some(pair as usize),
            Some(target) if target == pair => Some(0),
            Some(_) => None,
        };
        if let Some(target) = only
            && use_timing
            && let Some(state) = self.state(target)
        {
            let (p, lead) = self.timing(state, now, horizon);
            scores[0].raise(p, lead);
        }
        for (id, state) in self.pairs.iter().enumerate() {
            let Some(state) = state else { continue };
            if only.is_none() && use_timing {
                let (p, lead) = self.timing(state, now, horizon);
                scores[id].raise(p, lead);
            }
            if !config.use_window {
                continue;
            }
            // Window patterns: this pair as a context still open at `now`.
            let Some(last) = state.last_ts else { continue };
            let elapsed = now.saturating_sub(last);
            if elapsed >= config.window_ns || too_old(elapsed) {
                continue;
            }
            // A pair does not herald itself: that is its timing.
            if heralds.is_some() && only == Some(id as PairId) {
                continue;
            }
            // The open occurrence has not had its chance yet: judge the
            // followers on the closed ones only.
            let closed = (state.follow.weight - 1.0).max(0.0);
            for entry in &state.follow.entries {
                let Some(index) = slot(entry.pair) else {
                    continue;
                };
                // Overlapping occurrences (two requests in flight): the
                // follower that came may have been the earlier one's, and
                // the latest still waits for its own (occurrences up to
                // twice the usual delay old count, as a late follower is
                // still expected that long).
                if state.credited.contains(&entry.pair)
                    && !self.unmatched(state, entry.pair, entry.delays.quantile(0.9) * 2, now)
                {
                    continue;
                }
                // With timing on, a context that tells no more than the
                // follower's own gaps is left to them.
                if use_timing && self.uninformative(&entry.delays, entry.pair) {
                    continue;
                }
                let count = state.follow.count(entry, config.decay);
                let p_follow = smoothed(count, closed, config.alpha, share(entry.pair));
                if weak(p_follow, &entry.delays) {
                    continue;
                }
                let (p, lead) = judge(p_follow, &entry.delays, elapsed);
                if let Some(score) = scores.get_mut(index) {
                    score.raise(p, lead);
                }
            }
        }
        if let Some((last, last_ts)) = self.markov.last.filter(|_| config.use_markov)
            && !too_old(now.saturating_sub(last_ts))
            && !(heralds.is_some() && only == Some(last))
        {
            let elapsed = now.saturating_sub(last_ts);
            let params = self.chain_params();
            self.markov
                .candidates(&params, only, share, |pair, p_next, table, index| {
                    let Some(index_out) = slot(pair) else { return };
                    let delays = &table.entries[index].delays;
                    if weak(p_next, delays) {
                        return;
                    }
                    let (p, lead) = judge(p_next, delays, elapsed);
                    if let Some(score) = scores.get_mut(index_out) {
                        score.raise(p, lead);
                    }
                });
        }
    }

    /// Whether a context's delays to `follower` are spread at least as
    /// widely as the follower's own gaps: the context then says nothing
    /// the follower's timing does not, and its chance alignments would only
    /// prepare channels that expire.
    fn uninformative(&self, delays: &Samples, follower: PairId) -> bool {
        let Some(state) = self.state(follower) else {
            return false;
        };
        state.gaps.len() >= SHARP_GAPS
            && delays.len() >= SHARP_GAPS
            && delays.spread() >= state.gaps.spread()
    }

    /// Whether `context` started more often within the last `span` than
    /// `follower` did since the first of those starts: an occurrence still
    /// waits for its follower.
    fn unmatched(&self, context: &PairState, follower: PairId, span: u64, now: u64) -> bool {
        let from = now.saturating_sub(span);
        let mut contexts = context
            .recent
            .iter()
            .copied()
            .filter(|&at| at > from && at <= now);
        let Some(first) = contexts.next() else {
            return false;
        };
        let count = 1 + contexts.count();
        let followers = self.state(follower).map_or(0, |state| {
            state
                .recent
                .iter()
                .filter(|&&at| at >= first && at <= now)
                .count()
        });
        count > followers
    }

    /// Timing component: the chance the pair's next gap ends inside the
    /// horizon, given how long it has been quiet; for a young pair, also
    /// how the host's young pairs went on after as long a silence.
    fn timing(&self, state: &PairState, now: u64, horizon: u64) -> (f64, u64) {
        let own = self.own_timing(state, now, horizon);
        let Some(last) = state.last_ts else {
            return own;
        };
        let elapsed = now.saturating_sub(last);
        match self
            .recurrence
            .chance(state.seen, elapsed, horizon, self.config.window_ns)
        {
            Some((p, lead)) if p > own.0 => (p, lead),
            _ => own,
        }
    }

    /// The pair's own gaps' opinion (see [`Model::timing`]).
    fn own_timing(&self, state: &PairState, now: u64, horizon: u64) -> (f64, u64) {
        let Some(last) = state.last_ts else {
            return (0.0, 0);
        };
        let n = state.gaps.len();
        if n == 0 {
            return (0.0, 0);
        }
        let elapsed = now.saturating_sub(last);
        let mass = state.gaps.window(elapsed, horizon);
        // Quiet for longer than every recent gap: a burst of short gaps may
        // have pushed the think time between bursts out of them, so the
        // pauses, kept apart, say how long this silence lasts.
        let pauses = state.pauses.window(elapsed, horizon);
        let in_pause = mass.above == 0 && pauses.above > 0;
        let mass = if in_pause { pauses } else { mass };
        let shrink = self.config.timing_shrink;
        let (late, late_lead) = self.lateness(state, elapsed, horizon);
        if mass.above > 0 {
            // Once the silence is as long as the pair's shortest gap, the
            // few gaps still longer than it say little: they are shrunk
            // toward the lateness estimate. Before, or within a pause
            // (which the lateness of short gaps says nothing about), they
            // are shrunk toward zero.
            let above = mass.above as f64;
            let prior = if !in_pause && elapsed >= state.gaps.min() {
                late
            } else {
                0.0
            };
            let p = (mass.within as f64 + shrink * prior) / (above + shrink);
            return (p, mass.mean_lead_ns);
        }
        (late, late_lead)
    }

    /// The chance a pair quiet for `elapsed` starts within `horizon` if its
    /// next start is expected within about one spread of its gaps (a sharp
    /// periodic job merely late by its jitter) or one mean gap (random
    /// starts), whichever is shorter. Past twice its longest gap, and a
    /// horizon beyond it, the pair is taken to have stopped, so no more
    /// channels are wasted on it; until the pair has shown a pause longer
    /// than the horizon, not before the window has passed either: a first
    /// think time after a burst is no sign of a stop.
    fn lateness(&self, state: &PairState, elapsed: u64, horizon: u64) -> (f64, u64) {
        let n = state.gaps.len();
        let longest = state.gaps.max();
        let mut stopped_after = longest
            .saturating_mul(2)
            .max(longest.saturating_add(horizon));
        if state.pauses.is_empty() {
            stopped_after = stopped_after.max(self.config.window_ns);
        }
        if n == 0 || elapsed > stopped_after {
            return (0.0, 0);
        }
        let mean = (state.gaps.sum() as f64 + elapsed as f64) / n as f64;
        // One gap has no spread to be late by: it says nothing of jitter,
        // so such a pair is taken to start at random.
        let scale = if n >= YOUNG_GAPS {
            mean.min((longest - state.gaps.min()) as f64)
        } else {
            mean
        }
        .max(1.0);
        let shrink = self.config.timing_shrink;
        let p = (1.0 - (-(horizon as f64) / scale).exp()) * n as f64 / (n as f64 + shrink);
        (p, (scale as u64).min(horizon / 2))
    }

    /// Whether the pair's recent gaps (at least [`SHARP_GAPS`] of them: a
    /// few gaps of random starts can fall close together by chance) are
    /// sharp enough for a later, better moment to prepare its channel to be
    /// knowable: all within half the horizon of each other, or regular
    /// (variation at most [`REGULAR_VARIATION`]) and all longer than the
    /// horizon, as a job every few minutes whose start jitter is wider than
    /// a TTL: one channel placed where most of its starts came beats one
    /// at the earliest moment and a second after it expires. Between
    /// broadly spread gaps a start can come at any time, and a few samples
    /// leave holes a wait would fall into.
    fn sharp(&self, pair: PairId, horizon: u64) -> bool {
        self.state(pair).is_some_and(|state| {
            state.gaps.len() >= SHARP_GAPS
                && (state.gaps.max() - state.gaps.min() <= horizon / 2
                    || state.gaps.min() > horizon && state.gaps.variation() <= REGULAR_VARIATION)
        })
    }

    /// Whether waiting until `later` cannot miss a start of a regular pair
    /// (variation of its gaps at most [`REGULAR_VARIATION`], from its
    /// second gap on): none of its recent gaps was that short, with room
    /// for the next to be shorter than them all (their range over their
    /// number). A job every few minutes with seconds of jitter is not
    /// sharp, yet its channel is better made near the earliest moment it
    /// ever came than a whole TTL before it; and such a job runs only a
    /// few dozen times a day, so waiting for [`SHARP_GAPS`] gaps would
    /// waste a channel on each of its first runs. Only for a pair whose
    /// gaps all outlast the horizon: a channel made at its start could
    /// never serve the next one, so the question is only when in the
    /// silence to make it; between shorter gaps, waiting risks the start
    /// it waits for.
    fn quiet_until(&self, pair: PairId, later: u64, horizon: u64) -> bool {
        self.state(pair).is_some_and(|state| {
            state.gaps.len() >= YOUNG_GAPS
                && state.gaps.min() > horizon
                && state.gaps.variation() <= REGULAR_VARIATION
                && state.last_ts.is_some_and(|last| {
                    // The next gap falls below the shortest of n by about
                    // their range over n: that much earlier is not quiet.
                    let range = state.gaps.max() - state.gaps.min();
                    let margin = range / state.gaps.len() as u64;
                    later.saturating_sub(last) < state.gaps.min().saturating_sub(margin)
                })
        })
    }

    /// Predictions with probability at least `floor`, most likely first
    /// (ties by key, so the order is deterministic).
    pub fn predict_above(&self, now: u64, horizon: u64, floor: f64) -> Vec<Prediction> {
        let mut out: Vec<Prediction> = self
            .scores(now, horizon)
            .iter()
            .enumerate()
            .filter(|(_, score)| score.probability >= floor && score.probability > 0.0)
            .filter_map(|(id, score)| {
                let pair = id as PairId;
                let state = self.state(pair)?;
                Some(Prediction {
                    src: state.key.src.clone(),
                    dst: state.key.dst.clone(),
                    kind: state.key.kind.clone(),
                    probability: score.probability,
                    expected_lead_ns: score.expected_lead_ns,
                    need: self.need_given(state, pair, score.probability, now, horizon),
                })
            })
            .collect();
        out.sort_by(|a, b| {
            b.probability
                .total_cmp(&a.probability)
                .then_with(|| (&a.src, &a.dst, &a.kind).cmp(&(&b.src, &b.dst, &b.kind)))
        });
        out
    }

    /// Every pair with a non-negligible (>= 1%) chance of starting within
    /// `horizon` of `now`.
    pub fn predict(&self, now: u64, horizon: u64) -> Vec<Prediction> {
        self.predict_above(now, horizon, 0.01)
    }

    /// Pairs to prepare a channel for at `now`: probability and
    /// [`Model::need`] at least `threshold`, unless a channel made within
    /// the next [`LOOKAHEAD_STEPS`] steps of `step` would clearly be worth
    /// more (a sharp periodic start is better covered by a channel made
    /// closer to it than by one expiring just before it; only pairs with
    /// sharp gaps wait). `wanted`
    /// filters pairs, e.g. those with no channel yet.
    pub fn due(
        &self,
        now: u64,
        horizon: u64,
        threshold: f64,
        step: u64,
        wanted: impl Fn(PairId) -> bool,
    ) -> Vec<Due> {
        let waste_cost = threshold / (1.0 - threshold).max(1e-3);
        let worth = |p: f64| p - waste_cost * (1.0 - p);
        let current = self.scores(now, horizon);
        let mut candidates: Vec<(Due, bool)> = current
            .iter()
            .enumerate()
            .filter(|(id, score)| {
                let pair = *id as PairId;
                score.probability >= threshold
                    && wanted(pair)
                    && self.state(pair).is_some_and(|state| {
                        self.needs_at_least(state, pair, score.probability, now, horizon, threshold)
                    })
            })
            .map(|(id, score)| {
                let due = Due {
                    pair: id as PairId,
                    probability: score.probability,
                    expected_lead_ns: score.expected_lead_ns,
                };
                (due, false)
            })
            .collect();
        for k in 1..=LOOKAHEAD_STEPS {
            if candidates.iter().all(|(_, settled)| *settled) {
                break;
            }
            // Waiting pays if a channel made later is worth more, counting
            // the starts missed while waiting. A channel is worth its chance
            // of a hit minus its chance of waste, the latter weighed so that
            // a channel at exactly `threshold` is worth nothing.
            let later_ts = now.saturating_add(k * step);
            candidates.retain_mut(|(candidate, settled)| {
                if *settled {
                    return true;
                }
                // Broadly spread gaps: any moment may bring the start.
                if !self.sharp(candidate.pair, horizon)
                    && !self.quiet_until(candidate.pair, later_ts, horizon)
                {
                    *settled = true;
                    return true;
                }
                let meanwhile = self.score(candidate.pair, now, k * step).probability;
                let best_now = worth(candidate.probability) + PEAK_MARGIN;
                // Even a certain start later could not make up for waiting,
                // and waiting longer only misses more.
                if 1.0 - meanwhile <= best_now {
                    *settled = true;
                    return true;
                }
                let later = self.score(candidate.pair, later_ts, horizon).probability;
                (1.0 - meanwhile) * worth(later) <= best_now
            });
        }
        candidates.into_iter().map(|(due, _)| due).collect()
    }

    /// Writes the model as JSON.
    /// The file is written beside `path` and renamed over it, so a crash
    /// mid-save leaves the previous model intact for the next start.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::persist::write_json(path, self, "model")
    }

    /// Reads a model written by [`Model::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let mut model: Self = crate::persist::read_json(path, "model")?;
        model.index = model
            .pairs
            .iter()
            .enumerate()
            .filter_map(|(id, state)| {
                state
                    .as_ref()
                    .map(|state| (state.key.clone(), id as PairId))
            })
            .collect();
        Ok(model)
    }
}

#[cfg(test)]
mod tests;
