//! The model's strategy in the replay: a channel for every pair
//! [`Model::due`] names that has none ready, consumed by a start of that
//! pair within the TTL (a hit) or expiring unused (waste). An expired
//! channel whose pair is still due at the moment it expires is replaced
//! then, as the broker's next preparation pass would, rather than at the
//! replay's next clock tick: a pair that is late but still expected keeps
//! a channel without a gap a start could fall into.
//!
//! The threshold is the configured one, or, with a waste budget
//! ([`ReplayConfig::budget`]), the budget's, fed with every hit and waste.

use crate::predict::{
    Model, PairId, PairKey,
    budget::{BudgetSettings, WasteBudget},
    retrain,
};

use super::{PairFigures, ReplayConfig, Tally};

/// The model's channels and outcomes, one channel at most per pair.
pub struct Predictive {
    /// The model, fed every event after its outcome is scored.
    pub model: Model,
    /// Creation time of each pair's ready channel.
    channels: Vec<Option<u64>>,
    /// Running figures.
    pub tally: Tally,
    /// Figures per pair, in replay order.
    pub per_pair: Vec<PairFigures>,
    /// When each wasted channel expired, for the timeline.
    pub wasted_at: Vec<u64>,
    /// The threshold channels are prepared at, kept within the waste budget.
    pub budget: Option<WasteBudget>,
}

impl Predictive {
    /// The strategy for the trace's pairs (`keys`, in replay order), with
    /// a waste budget below `threshold` if `budget` is set.
    pub fn new(
        model: Model,
        keys: &[PairKey],
        threshold: f64,
        budget: Option<&BudgetSettings>,
    ) -> Self {
        Self {
            model,
            channels: vec![None; keys.len()],
            tally: Tally::default(),
            per_pair: keys
                .iter()
                .map(|key| PairFigures {
                    src: key.src.clone(),
                    dst: key.dst.clone(),
                    kind: key.kind.clone(),
                    ..PairFigures::default()
                })
                .collect(),
            wasted_at: Vec::new(),
            budget: budget.map(|settings| WasteBudget::new(settings.clone(), threshold)),
        }
    }

    /// Plays the expiries up to `now`. The model has seen nothing since
    /// each expiry (events are replayed after expiring), so asking it at
    /// the expiry time does not look ahead.
    pub fn expire(&mut self, keys: &[PairKey], now: u64, config: &ReplayConfig) {
        let ttl = config.ttl_ns.max(1);
        for (pair, key) in keys.iter().enumerate().take(self.channels.len()) {
            while let Some(created) = self.channels[pair] {
                let expiry = created.saturating_add(ttl);
                if expiry >= now {
                    break;
                }
                self.channels[pair] = None;
                self.tally.wasted += 1;
                self.per_pair[pair].wasted += 1;
                if let Some(budget) = &mut self.budget {
                    budget.wasted();
                }
                self.wasted_at.push(expiry);
                let still_due = self
                    .model
                    .pair_id(key)
                    .is_some_and(|id| self.still_due(id, expiry, config));
                if still_due {
                    self.make(pair, expiry);
                }
            }
        }
    }

    /// Whether the pair's need clears the threshold at `at` (no lookahead:
    /// it was already judged worth a channel, and waiting now could only
    /// miss), or it is kept by the evidence fallback.
    fn still_due(&self, id: PairId, at: u64, config: &ReplayConfig) -> bool {
        self.model.need(id, at, config.ttl_ns) >= self.threshold(config)
            || self.model.fallback(id, at)
    }

    /// The threshold now: the budget's, or the configured one.
    pub fn threshold(&self, config: &ReplayConfig) -> f64 {
        self.budget
            .as_ref()
            .map_or(config.threshold, WasteBudget::threshold)
    }

    /// What a wasted channel costs in hits when judging a model: under a
    /// waste budget what the budget trades it for (one channel in
    /// `1 / target` may be wasted), with a fixed threshold the threshold's
    /// own trade-off.
    pub fn waste_cost(&self, config: &ReplayConfig) -> f64 {
        let rate = config
            .budget
            .as_ref()
            .map_or_else(|| self.threshold(config), |budget| budget.target);
        retrain::waste_cost(rate)
    }

    fn make(&mut self, pair: usize, now: u64) {
        self.channels[pair] = Some(now);
        self.tally.created += 1;
        self.per_pair[pair].created += 1;
    }

    /// A start of `pair` at `now`: consumes its channel if one was made
    /// before; returns the lead time of a hit.
    pub fn start(&mut self, pair: usize, now: u64) -> Option<u64> {
        let lead = match self.channels[pair] {
            Some(created) if created < now => {
                self.channels[pair] = None;
                if let Some(budget) = &mut self.budget {
                    budget.used();
                }
                Some(now - created)
            }
            _ => None,
        };
        self.tally.start(lead);
        self.per_pair[pair].interactions += 1;
        self.per_pair[pair].hits += u64::from(lead.is_some());
        lead
    }

    /// Creates a channel for every pair the model says is due at `now` and
    /// that has none; `index` maps a pair to its replay number.
    pub fn create_due(
        &mut self,
        index: &impl Fn(&PairKey) -> Option<usize>,
        now: u64,
        config: &ReplayConfig,
    ) {
        let step = (config.ttl_ns / 8).max(1);
        let replay_pair = |model: &Model, id: PairId| model.key(id).and_then(index);
        let ready =
            |id| replay_pair(&self.model, id).is_some_and(|pair| self.channels[pair].is_none());
        let threshold = self.threshold(config);
        let due = self.model.due(now, config.ttl_ns, threshold, step, ready);
        for due in due {
            if let Some(pair) = replay_pair(&self.model, due.pair)
                && self.channels[pair].is_none()
            {
                self.make(pair, now);
            }
        }
    }

    /// Channels still ready (neither used nor expired).
    pub fn pending(&self) -> u64 {
        self.channels.iter().flatten().count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{predict::ModelConfig, trace::TraceEvent};

    const S: u64 = 1_000_000_000;

    fn key() -> PairKey {
        PairKey {
            src: "a".to_owned(),
            dst: "b".to_owned(),
            kind: "pipe".to_owned(),
        }
    }

    /// Replays starts of the one pair `key()` at `times`, as the replay
    /// does: expiries, the start, learning, new channels.
    fn play(strategy: &mut Predictive, times: &[u64], config: &ReplayConfig) {
        let keys = [key()];
        let index = |_: &PairKey| Some(0);
        for &at in times {
            strategy.expire(&keys, at, config);
            strategy.start(0, at);
            strategy.model.observe(&TraceEvent {
                ts_ns: at,
                src: keys[0].src.clone(),
                dst: keys[0].dst.clone(),
                kind: keys[0].kind.clone(),
                bytes: 0,
                latency_ns: 0,
                error: false,
            });
            strategy.create_due(&index, at, config);
        }
    }

    #[test]
    fn a_new_pair_has_a_channel_for_its_second_start() {
        let config = ReplayConfig::default();
        let mut strategy = Predictive::new(Model::default(), &[key()], config.threshold, None);
        // Second start 7 s after the first: the channel made at the first
        // expires at 5 s and, the pair still being kept, is replaced.
        play(&mut strategy, &[0, 7 * S], &config);
        assert_eq!(strategy.tally.hits, 1, "the second start is served");
        assert_eq!(strategy.tally.wasted, 1);
    }

    #[test]
    fn a_late_pair_keeps_a_channel_until_judged_stopped() {
        let key = PairKey {
            src: "a".to_owned(),
            dst: "b".to_owned(),
            kind: "pipe".to_owned(),
        };
        let config = ReplayConfig::default();
        // Raw probabilities, so the figures below follow from the timing
        // rule alone.
        let model = Model::new(ModelConfig {
            calibrate: false,
            ..ModelConfig::default()
        });
        let mut strategy =
            Predictive::new(model, std::slice::from_ref(&key), config.threshold, None);
        let index = |_: &PairKey| Some(0);
        // A start every 4 s, each one served by the channel made after the
        // one before.
        let mut last = 0;
        for n in 0..20 {
            last = n * 4 * S;
            strategy.expire(std::slice::from_ref(&key), last, &config);
            strategy.start(0, last);
            strategy.model.observe(&TraceEvent {
                ts_ns: last,
                src: key.src.clone(),
                dst: key.dst.clone(),
                kind: key.kind.clone(),
                bytes: 0,
                latency_ns: 0,
                error: false,
            });
            strategy.create_due(&index, last, &config);
        }
        assert_eq!(strategy.pending(), 1, "a channel after the last start");
        let created = strategy.tally.created;
        // The TTL passes with no start: the pair is late, not yet stopped
        // (quiet for less than twice its longest gap), so the channel is
        // replaced the moment it expires.
        strategy.expire(
            std::slice::from_ref(&key),
            last + config.ttl_ns + 1,
            &config,
        );
        assert_eq!(strategy.tally.wasted, 1);
        assert_eq!(strategy.tally.created, created + 1, "replaced at expiry");
        assert_eq!(strategy.pending(), 1);
        // Quiet for 10 s, more than twice the 4 s gap and a horizon past
        // it; but the pair has never paused for longer than the horizon,
        // so this may be its first think time: still kept, until the 30 s
        // window has passed.
        let expire_at = |strategy: &mut Predictive, at: u64| {
            strategy.expire(std::slice::from_ref(&key), at, &config);
        };
        expire_at(&mut strategy, last + 2 * config.ttl_ns + 1);
        assert_eq!(strategy.tally.wasted, 2);
        assert_eq!(strategy.tally.created, created + 2);
        assert_eq!(strategy.pending(), 1);
        expire_at(&mut strategy, last + 8 * config.ttl_ns + 1);
        let wasted = strategy.tally.wasted;
        assert_eq!(wasted, 7, "replaced at every expiry up to 30 s");
        assert_eq!(strategy.tally.created, created + 6);
        assert_eq!(strategy.pending(), 0);
    }
}
