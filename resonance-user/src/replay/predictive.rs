//! The model's strategy in the replay: the agent's own planner
//! ([`crate::plan::Planner`]) run in event time. A channel for every pair
//! it names that has none ready, consumed by a start of that pair within
//! the TTL (a hit) or expiring unused (waste). An expired channel whose
//! pair is still due at the moment it expires is replaced then, as the
//! broker's next preparation pass would, rather than at the replay's next
//! clock tick: a pair that is late but still expected keeps a channel
//! without a gap a start could fall into. Every hit, waste and miss goes
//! to the planner, which moves its thresholds as the broker's does.

use crate::{
    plan::{Outcome, Planner},
    predict::{Model, PairKey},
};

use super::{PairFigures, ReplayConfig, Tally};

/// The model's channels and outcomes, one channel at most per pair.
pub struct Predictive {
    /// The model, fed every event after its outcome is scored.
    pub model: Model,
    /// The planner deciding which pairs get channels.
    pub planner: Planner,
    /// Creation time of each pair's ready channel.
    channels: Vec<Option<u64>>,
    /// Running figures.
    pub tally: Tally,
    /// Figures per pair, in replay order.
    pub per_pair: Vec<PairFigures>,
    /// When each wasted channel expired, for the timeline.
    pub wasted_at: Vec<u64>,
}

impl Predictive {
    /// The strategy for the trace's pairs (`keys`, in replay order) under
    /// `config`'s planner settings.
    pub fn new(model: Model, keys: &[PairKey], config: &ReplayConfig) -> Self {
        Self::with_planner(model, keys, Planner::new(config.plan_settings()))
    }

    /// The strategy with a planner as it stands (a copy of the agent's,
    /// for a retraining holdout).
    pub fn with_planner(model: Model, keys: &[PairKey], planner: Planner) -> Self {
        Self {
            model,
            planner,
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
        }
    }

    /// Plays the expiries up to `now`. The model has seen nothing since
    /// each expiry (events are replayed after expiring), so asking it at
    /// the expiry time does not look ahead.
    pub fn expire(&mut self, keys: &[PairKey], now: u64) {
        let ttl = self.planner.settings().ttl_ns.max(1);
        for (pair, key) in keys.iter().enumerate().take(self.channels.len()) {
            while let Some(created) = self.channels[pair] {
                let expiry = created.saturating_add(ttl);
                if expiry >= now {
                    break;
                }
                self.channels[pair] = None;
                self.tally.waste(ttl);
                self.per_pair[pair].wasted += 1;
                self.per_pair[pair].idle_channel_seconds += ttl as f64 / 1e9;
                self.planner.outcome(key, Outcome::Waste, 1.0);
                self.wasted_at.push(expiry);
                let still_due = self
                    .model
                    .pair_id(key)
                    .is_some_and(|id| self.planner.still_due(&self.model, id, expiry));
                if still_due {
                    self.make(pair, expiry);
                }
            }
        }
    }

    /// The host-wide threshold now.
    pub fn threshold(&self) -> f64 {
        self.planner.threshold()
    }

    /// What a wasted channel costs in hits when judging a model.
    pub fn waste_cost(&self) -> f64 {
        self.planner.waste_cost()
    }

    fn make(&mut self, pair: usize, now: u64) {
        self.channels[pair] = Some(now);
        self.tally.created += 1;
        self.per_pair[pair].created += 1;
    }

    /// A start of `pair` (named `key`) at `now`: consumes its channel if
    /// one was made before; returns the lead time of a hit.
    pub fn start(&mut self, pair: usize, key: &PairKey, now: u64) -> Option<u64> {
        let lead = match self.channels[pair] {
            Some(created) if created < now => {
                self.channels[pair] = None;
                Some(now - created)
            }
            _ => None,
        };
        let outcome = if lead.is_some() {
            Outcome::Hit
        } else {
            Outcome::Miss
        };
        self.planner.outcome(key, outcome, 1.0);
        self.tally.start(lead);
        if let Some(lead) = lead {
            self.per_pair[pair].idle_channel_seconds += lead as f64 / 1e9;
        }
        self.per_pair[pair].interactions += 1;
        self.per_pair[pair].hits += u64::from(lead.is_some());
        lead
    }

    /// Creates the channels the planner asks for at `now` (at most one per
    /// pair: in event time a replacement is instant); `index` maps a pair
    /// to its replay number.
    pub fn create_due(&mut self, index: &impl Fn(&PairKey) -> Option<usize>, now: u64) {
        let channels = &self.channels;
        let ready = |key: &PairKey| index(key).map(|pair| usize::from(channels[pair].is_some()));
        let plans = self.planner.plan(&self.model, now, ready);
        for plan in plans {
            if let Some(pair) = self.model.key(plan.pair).and_then(index)
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

    /// The figures as of `end`: channels still ready count as idle until
    /// then (in total and for their pairs).
    pub fn figures(&mut self, end: u64) -> super::Figures {
        let mut pending_idle = 0u128;
        for (pair, created) in self.channels.iter().enumerate() {
            if let Some(created) = created {
                let idle = end.saturating_sub(*created);
                pending_idle += u128::from(idle);
                self.per_pair[pair].idle_channel_seconds += idle as f64 / 1e9;
            }
        }
        let pending = self.pending();
        std::mem::take(&mut self.tally).figures(pending, pending_idle)
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
    fn play(strategy: &mut Predictive, times: &[u64]) {
        let keys = [key()];
        let index = |_: &PairKey| Some(0);
        for &at in times {
            strategy.expire(&keys, at);
            strategy.start(0, &keys[0], at);
            strategy.model.observe(&TraceEvent {
                ts_ns: at,
                src: keys[0].src.clone(),
                dst: keys[0].dst.clone(),
                kind: keys[0].kind.clone(),
                bytes: 0,
                latency_ns: 0,
                error: false,
            });
            strategy.create_due(&index, at);
        }
    }

    #[test]
    fn a_new_pair_on_a_fresh_host_has_a_channel_at_a_low_threshold() {
        // A fixed threshold under a fresh host's chance for a new pair
        // (one in twelve: a recurrence prior, see `predict::recurrence`),
        // and raw probabilities, so the figures follow from the rules.
        let config = ReplayConfig {
            budget: None,
            threshold: 0.05,
            ..ReplayConfig::default()
        };
        let model = Model::new(ModelConfig {
            calibrate: false,
            ..ModelConfig::default()
        });
        let mut strategy = Predictive::new(model, &[key()], &config);
        // Second start 7 s after the first: the channel made at the first
        // expires at 5 s and, the pair still being due, is replaced.
        play(&mut strategy, &[0, 7 * S]);
        assert_eq!(strategy.tally.hits, 1, "the second start is served");
        assert_eq!(strategy.tally.wasted, 1);
        // Idle 5 s until the first expired, 2 s until the replacement was
        // used; the one made at 7 s is still ready at 9 s.
        let figures = strategy.figures(9 * S);
        assert!(
            (figures.idle_channel_seconds - 9.0).abs() < 1e-9,
            "{figures:?}"
        );
        assert!((strategy.per_pair[0].idle_channel_seconds - 9.0).abs() < 1e-9);
    }

    #[test]
    fn a_late_pair_keeps_a_channel_until_judged_stopped() {
        let key = PairKey {
            src: "a".to_owned(),
            dst: "b".to_owned(),
            kind: "pipe".to_owned(),
        };
        // A fixed threshold, so the figures follow from the rules alone.
        let config = ReplayConfig {
            budget: None,
            ..ReplayConfig::default()
        };
        // Raw probabilities, so the figures below follow from the timing
        // rule alone.
        let model = Model::new(ModelConfig {
            calibrate: false,
            ..ModelConfig::default()
        });
        let mut strategy = Predictive::new(model, std::slice::from_ref(&key), &config);
        let index = |_: &PairKey| Some(0);
        // A start every 4 s, each one served by the channel made after the
        // one before.
        let mut last = 0;
        for n in 0..20 {
            last = n * 4 * S;
            strategy.expire(std::slice::from_ref(&key), last);
            strategy.start(0, &key, last);
            strategy.model.observe(&TraceEvent {
                ts_ns: last,
                src: key.src.clone(),
                dst: key.dst.clone(),
                kind: key.kind.clone(),
                bytes: 0,
                latency_ns: 0,
                error: false,
            });
            strategy.create_due(&index, last);
        }
        assert_eq!(strategy.pending(), 1, "a channel after the last start");
        let created = strategy.tally.created;
        // The TTL passes with no start: the pair is late, not yet stopped
        // (quiet for less than twice its longest gap), so the channel is
        // replaced the moment it expires.
        strategy.expire(std::slice::from_ref(&key), last + config.ttl_ns + 1);
        assert_eq!(strategy.tally.wasted, 1);
        assert_eq!(strategy.tally.created, created + 1, "replaced at expiry");
        assert_eq!(strategy.pending(), 1);
        // Quiet for 10 s, more than twice the 4 s gap and a horizon past
        // it; but the pair has never paused for longer than the horizon,
        // so this may be its first think time: still kept, until the 30 s
        // window has passed.
        let expire_at = |strategy: &mut Predictive, at: u64| {
            strategy.expire(std::slice::from_ref(&key), at);
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
