//! Resonance score per (source service, destination service, kind).
//!
//! Each pair keeps exponentially decayed averages (half-life configurable,
//! 5 min by default) of four components, updated every tick:
//!
//! - frequency: interactions per second (flow starts after an idle gap),
//! - rate: bytes per second,
//! - latency: median wait or turnaround, ns (only when measured),
//! - error ratio: failed syscalls per message.
//!
//! Frequency, rate and latency are normalised against the host's own pairs
//! by mid-rank (0 = lowest on this host, 1 = highest; 0.5 when alone), the
//! error ratio against a fixed 5 % ceiling. The score is
//!
//! `score = 0.3·F + 0.3·R + 0.2·(1 − L) + 0.2·(1 − min(1, errors / 0.05))`
//!
//! where a pair with no latency measured gets `L = 0.5`. It lies in [0, 1]:
//! busy, fast, clean pairs resonate. A pair whose brokered channels were
//! measured by the probes has it multiplied by their performance factor
//! ([`crate::feedback::performance`]) and capped at 1. Pure functions only;
//! unit-tested.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use serde::Serialize;

use crate::aggregate::{Histogram, Interaction, OwnExecutable, ServiceNamer};

/// Service name for the far end of a send nobody was seen reading.
pub const UNKNOWN_PEER: &str = "(unknown)";

/// Weights of the components (they sum to 1).
const WEIGHT_FREQUENCY: f64 = 0.3;
const WEIGHT_RATE: f64 = 0.3;
const WEIGHT_LATENCY: f64 = 0.2;
const WEIGHT_ERRORS: f64 = 0.2;
/// Error ratio at which the error component bottoms out.
const ERROR_CEILING: f64 = 0.05;
/// A pair whose decayed activity falls below this is forgotten.
const FORGET_BELOW: f64 = 1e-6;

/// A service pair with its kind: the one key of scores, store and model.
pub use crate::pair::PairKey;

/// What one pair did during one tick.
#[derive(Clone, Debug, Default)]
pub struct IntervalFigures {
    /// Interactions started.
    pub interactions: u64,
    /// Send syscalls.
    pub messages: u64,
    /// Bytes.
    pub bytes: u64,
    /// Errors.
    pub errors: u64,
    /// Latency samples.
    pub latency: Histogram,
}

/// Decayed raw components of a pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Components {
    /// Interactions per second.
    pub interactions_per_s: f64,
    /// Bytes per second.
    pub bytes_per_s: f64,
    /// Median latency, ns (None until measured).
    pub latency_p50_ns: Option<f64>,
    /// Errors per message.
    pub error_ratio: f64,
}

/// Components normalised to [0, 1] (1 = best for rate and frequency,
/// highest for latency).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Normalized {
    /// Rank of the interaction frequency.
    pub frequency: f64,
    /// Rank of the byte rate.
    pub rate: f64,
    /// Rank of the latency (1 = slowest on this host).
    pub latency: f64,
    /// Error ratio against the ceiling (1 = at or above it).
    pub errors: f64,
}

/// Everything a pair did since the agent first saw it (not decayed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Interactions started.
    pub interactions: u64,
    /// Send syscalls.
    pub messages: u64,
    /// Bytes.
    pub bytes: u64,
    /// Errors.
    pub errors: u64,
}

/// A pair's score with what it is made of.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PairScore {
    /// The pair.
    #[serde(flatten)]
    pub key: PairKey,
    /// The resonance score, 0..=1.
    pub score: f64,
    /// Decayed raw components.
    pub components: Components,
    /// Normalised components.
    pub normalized: Normalized,
    /// Multiplier from measured channel performance (1 = none measured).
    pub performance: f64,
    /// Totals since first seen.
    pub totals: Totals,
}

/// How much of the decayed averages' weight a pair's own history holds:
/// `1 - (1 - alpha)^n` after n ticks (n updates of the error ratio). An
/// average that starts at zero is `weight` times too small while a pair is
/// young; dividing by it gives the average over the time since the pair
/// was first seen, so a new pair's first tick counts in full instead of as
/// a fraction of one (a pair that only ever failed read 0.46 % errors).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Weights {
    /// Of the interaction and byte rates (every tick).
    rates: f64,
    /// Of the error ratio (ticks with messages or errors).
    errors: f64,
}

impl Weights {
    /// `raw` with its young-pair bias removed.
    fn corrected(&self, raw: &Components) -> Components {
        let unbias = |value: f64, weight: f64| if weight > 0.0 { value / weight } else { 0.0 };
        Components {
            interactions_per_s: unbias(raw.interactions_per_s, self.rates),
            bytes_per_s: unbias(raw.bytes_per_s, self.rates),
            latency_p50_ns: raw.latency_p50_ns,
            error_ratio: unbias(raw.error_ratio, self.errors),
        }
    }
}

/// Decayed state of all pairs.
#[derive(Clone, Debug)]
pub struct Scorer {
    half_life: Duration,
    pairs: BTreeMap<PairKey, (Components, Totals, Weights)>,
    /// Score multipliers from measured channel performance, by (src, dst).
    performance: HashMap<(String, String), f64>,
}

impl Scorer {
    /// A scorer whose averages halve every `half_life`.
    pub fn new(half_life: Duration) -> Self {
        Self {
            half_life,
            pairs: BTreeMap::new(),
            performance: HashMap::new(),
        }
    }

    /// Replaces the per-pair performance multipliers (see
    /// [`crate::feedback::performance`]); pairs not named get 1.
    pub fn set_performance(&mut self, factors: HashMap<(String, String), f64>) {
        self.performance = factors;
    }

    /// Changes the half-life (config reload).
    pub fn set_half_life(&mut self, half_life: Duration) {
        self.half_life = half_life;
    }

    /// Folds one tick of length `interval` into every pair's averages
    /// (pairs silent in this tick decay towards zero).
    pub fn update(&mut self, interval: Duration, figures: &BTreeMap<PairKey, IntervalFigures>) {
        let seconds = interval.as_secs_f64().max(1e-9);
        let alpha = 1.0 - 0.5f64.powf(seconds / self.half_life.as_secs_f64().max(1e-9));
        for key in figures.keys() {
            self.pairs.entry(key.clone()).or_default();
        }
        let quiet = IntervalFigures::default();
        for (key, (state, totals, weights)) in &mut self.pairs {
            let f = figures.get(key).unwrap_or(&quiet);
            weights.rates += alpha * (1.0 - weights.rates);
            totals.interactions += f.interactions;
            totals.messages += f.messages;
            totals.bytes += f.bytes;
            totals.errors += f.errors;
            state.interactions_per_s +=
                alpha * (f.interactions as f64 / seconds - state.interactions_per_s);
            state.bytes_per_s += alpha * (f.bytes as f64 / seconds - state.bytes_per_s);
            if f.messages > 0 {
                let ratio = f.errors as f64 / f.messages as f64;
                state.error_ratio += alpha * (ratio - state.error_ratio);
                weights.errors += alpha * (1.0 - weights.errors);
            } else if f.errors > 0 {
                // Errors without traffic (failed connects) are all failure.
                state.error_ratio += alpha * (1.0 - state.error_ratio);
                weights.errors += alpha * (1.0 - weights.errors);
            }
            if let Some(p50) = f.latency.quantile(0.5) {
                let p50 = p50 as f64;
                state.latency_p50_ns = Some(match state.latency_p50_ns {
                    Some(old) => old + alpha * (p50 - old),
                    None => p50,
                });
            }
        }
        self.pairs.retain(|_, (s, _, _)| {
            s.interactions_per_s > FORGET_BELOW
                || s.bytes_per_s > FORGET_BELOW
                || s.error_ratio > FORGET_BELOW
        });
    }

    /// Current scores, in pair order. A pair that has only ever failed
    /// (errors, and not one byte through) scores 0: whatever its rate and
    /// latency ranks, nothing it tried worked.
    pub fn scores(&self) -> Vec<PairScore> {
        let corrected: Vec<(&PairKey, Components, &Totals)> = self
            .pairs
            .iter()
            .map(|(key, (raw, totals, weights))| (key, weights.corrected(raw), totals))
            .collect();
        let frequencies: Vec<f64> = corrected
            .iter()
            .map(|(_, c, _)| c.interactions_per_s)
            .collect();
        let rates: Vec<f64> = corrected.iter().map(|(_, c, _)| c.bytes_per_s).collect();
        let latencies: Vec<f64> = corrected
            .iter()
            .filter_map(|(_, c, _)| c.latency_p50_ns)
            .collect();
        corrected
            .into_iter()
            .map(|(key, c, totals)| {
                let normalized = Normalized {
                    frequency: mid_rank(&frequencies, c.interactions_per_s),
                    rate: mid_rank(&rates, c.bytes_per_s),
                    latency: c.latency_p50_ns.map_or(0.5, |l| mid_rank(&latencies, l)),
                    errors: (c.error_ratio / ERROR_CEILING).min(1.0),
                };
                let performance = self
                    .performance
                    .get(&(key.src.clone(), key.dst.clone()))
                    .copied()
                    .unwrap_or(1.0);
                let only_failed = totals.errors > 0 && totals.bytes == 0;
                let score = if only_failed {
                    0.0
                } else {
                    (combine(&normalized) * performance).clamp(0.0, 1.0)
                };
                PairScore {
                    key: key.clone(),
                    score,
                    performance,
                    components: c,
                    normalized,
                    totals: *totals,
                }
            })
            .collect()
    }

    /// Number of pairs tracked.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether no pair is tracked.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

/// The weighted sum documented in the module doc.
pub fn combine(n: &Normalized) -> f64 {
    WEIGHT_FREQUENCY * n.frequency
        + WEIGHT_RATE * n.rate
        + WEIGHT_LATENCY * (1.0 - n.latency)
        + WEIGHT_ERRORS * (1.0 - n.errors)
}

/// Mid-rank of `value` among `values` (which contains it), in [0, 1];
/// 0.5 when it is alone.
pub fn mid_rank(values: &[f64], value: f64) -> f64 {
    if values.len() <= 1 {
        return 0.5;
    }
    let below = values.iter().filter(|v| **v < value).count() as f64;
    let equal = values.iter().filter(|v| **v == value).count().max(1) as f64;
    (below + (equal - 1.0) / 2.0) / (values.len() - 1) as f64
}

/// Folds process-level interactions into service pairs, leaving out those
/// with a process of `left_out` at either end (the agent's own CLI).
pub fn pair_figures(
    interactions: &[Interaction],
    namer: &ServiceNamer,
    left_out: Option<&OwnExecutable>,
) -> BTreeMap<PairKey, IntervalFigures> {
    let mut figures: BTreeMap<PairKey, IntervalFigures> = BTreeMap::new();
    for i in interactions {
        if let Some(own) = left_out
            && (own.runs(&i.src) || i.dst.as_ref().is_some_and(|dst| own.runs(dst)))
        {
            continue;
        }
        let dst = match (&i.dst, &i.dst_addr) {
            (Some(dst), _) => namer.name(dst),
            (None, Some(addr)) => addr.clone(),
            (None, None) => UNKNOWN_PEER.to_owned(),
        };
        let key = PairKey {
            src: namer.name(&i.src),
            dst,
            kind: i.kind.as_str().to_owned(),
        };
        let entry = figures.entry(key).or_default();
        entry.interactions += i.interactions;
        entry.messages += i.messages;
        entry.bytes += i.bytes;
        entry.errors += i.errors;
        entry.latency.merge(&i.latency);
    }
    figures
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(src: &str, dst: &str) -> PairKey {
        PairKey {
            src: src.into(),
            dst: dst.into(),
            kind: "unix_stream".to_owned(),
        }
    }

    fn figures(
        interactions: u64,
        bytes: u64,
        errors: u64,
        latency_ns: Option<u64>,
    ) -> IntervalFigures {
        let mut latency = Histogram::default();
        if let Some(ns) = latency_ns {
            latency.record(ns);
        }
        IntervalFigures {
            interactions,
            messages: interactions.max(1) * 10,
            bytes,
            errors,
            latency,
        }
    }

    #[test]
    fn busy_fast_clean_pairs_score_above_slow_failing_ones() {
        let mut scorer = Scorer::new(Duration::from_secs(60));
        let mut tick = BTreeMap::new();
        tick.insert(
            key("nginx", "php"),
            figures(100, 1_000_000, 0, Some(100_000)),
        );
        tick.insert(
            key("cron", "backup"),
            figures(1, 1_000, 5, Some(900_000_000)),
        );
        tick.insert(key("app", "redis"), figures(50, 50_000, 0, Some(50_000)));
        for _ in 0..10 {
            scorer.update(Duration::from_secs(1), &tick);
        }
        let scores = scorer.scores();
        let get = |src: &str| scores.iter().find(|s| s.key.src == src).unwrap().score;
        assert!(get("nginx") > get("app"), "{scores:#?}");
        assert!(get("app") > get("cron"), "{scores:#?}");
        assert!(scores.iter().all(|s| (0.0..=1.0).contains(&s.score)));
    }

    /// A new pair's figures count in full from its first tick, however
    /// long the half-life: `su -> /dev/log`, six failed sends and nothing
    /// else, used to show 0.46 % errors and score like a healthy pair.
    #[test]
    fn a_new_pair_counts_in_full_and_one_that_only_fails_scores_zero() {
        let mut scorer = Scorer::new(Duration::from_secs(300));
        let mut tick = BTreeMap::new();
        tick.insert(key("web", "db"), figures(5, 150_000_000, 0, Some(20_000)));
        let failing = IntervalFigures {
            interactions: 6,
            messages: 0,
            bytes: 0,
            errors: 6,
            latency: Histogram::default(),
        };
        tick.insert(key("su", "/dev/log"), failing);
        scorer.update(Duration::from_millis(500), &tick);
        let scores = scorer.scores();
        let get = |src: &str| scores.iter().find(|s| s.key.src == src).unwrap();
        let (web, su) = (get("web"), get("su"));
        // 150 MB in half a second is 300 MB/s, not a 5-minute average.
        assert!((web.components.bytes_per_s - 3e8).abs() < 1.0, "{web:#?}");
        assert!(
            (web.components.interactions_per_s - 10.0).abs() < 1e-6,
            "{web:#?}"
        );
        assert!((su.components.error_ratio - 1.0).abs() < 1e-9, "{su:#?}");
        assert_eq!(su.normalized.errors, 1.0);
        assert_eq!(su.score, 0.0, "{su:#?}");
        assert!(web.score > 0.5, "{web:#?}");
        // A pair that failed once but has carried data is scored, not zeroed.
        tick.clear();
        tick.insert(key("su", "/dev/log"), figures(1, 100, 0, None));
        scorer.update(Duration::from_secs(1), &tick);
        assert!(
            scorer
                .scores()
                .iter()
                .any(|s| s.key.src == "su" && s.score > 0.0)
        );
    }

    #[test]
    fn old_behaviour_fades_with_the_half_life() {
        let mut scorer = Scorer::new(Duration::from_secs(10));
        let mut tick = BTreeMap::new();
        tick.insert(key("a", "b"), figures(10, 1000, 0, None));
        scorer.update(Duration::from_secs(1000), &tick);
        let busy = scorer.scores()[0].components.bytes_per_s;
        scorer.update(Duration::from_secs(10), &BTreeMap::new());
        let later = scorer.scores()[0].components.bytes_per_s;
        assert!((later / busy - 0.5).abs() < 1e-9, "{busy} -> {later}");
        // A long silence forgets the pair entirely.
        scorer.update(Duration::from_secs(100_000), &BTreeMap::new());
        assert!(scorer.is_empty());
    }

    #[test]
    fn mid_rank_spreads_ties_and_handles_a_single_pair() {
        assert_eq!(mid_rank(&[5.0], 5.0), 0.5);
        assert_eq!(mid_rank(&[1.0, 2.0, 3.0], 1.0), 0.0);
        assert_eq!(mid_rank(&[1.0, 2.0, 3.0], 3.0), 1.0);
        assert_eq!(mid_rank(&[2.0, 2.0], 2.0), 0.5);
    }

    #[test]
    fn measured_performance_moves_only_its_own_pair() {
        let mut scorer = Scorer::new(Duration::from_secs(60));
        let mut tick = BTreeMap::new();
        tick.insert(key("web", "db"), figures(10, 10_000, 0, Some(100_000)));
        tick.insert(key("web", "cache"), figures(10, 10_000, 0, Some(100_000)));
        scorer.update(Duration::from_secs(1), &tick);
        let before = scorer.scores();
        let mut factors = HashMap::new();
        factors.insert(("web".to_owned(), "db".to_owned()), 0.5);
        scorer.set_performance(factors);
        let after = scorer.scores();
        let get = |scores: &[PairScore], dst: &str| {
            scores.iter().find(|s| s.key.dst == dst).unwrap().clone()
        };
        assert!((get(&after, "db").score - get(&before, "db").score * 0.5).abs() < 1e-9);
        assert_eq!(get(&after, "db").performance, 0.5);
        assert_eq!(get(&after, "cache").score, get(&before, "cache").score);
    }
}
