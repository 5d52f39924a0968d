//! Per-pair feedback: what the broker's channels for a pair measured, and
//! the pure rules that turn it into the pair's next channel capacity and
//! preparation threshold.
//!
//! The broker ([`crate::handout`]) keeps one [`PairFeedback`] per pair it
//! served. It records each channel it creates ([`PairFeedback::created`]),
//! each outcome of a channel ([`Outcome`]: a prepared one claimed or
//! wasted, an open served on demand) and each usage report a requester sends
//! ([`resonance_client::proto::ChannelUsage`]). [`decide_capacity`] and
//! [`adapt_threshold`] are the rules (documented in README.md, `## Broker`);
//! both return what changed with a reason, which the broker records and
//! counts.

use std::collections::VecDeque;

use resonance_client::proto::ChannelUsage;
use serde::Serialize;

/// A channel that never carried more than this is "small": it goes back to
/// the default capacity.
pub const SMALL_BYTES: u64 = 8 << 10;
/// Outcomes remembered per pair for the threshold rule.
pub const WINDOW: usize = 8;
/// Outcomes needed before the threshold is raised.
pub const RAISE_EVIDENCE: usize = 4;
/// Waste ratio above which the threshold is raised.
pub const WASTE_HIGH: f64 = 0.5;
/// Waste ratio at or below which (over a full window) it is lowered.
pub const WASTE_LOW: f64 = 0.125;
/// Threshold step up for a channel of default cost; lowering steps half
/// as far, so a pair does not oscillate.
pub const STEP: f64 = 0.1;
/// Most a channel's cost multiplies the step up by.
pub const MAX_COST: f64 = 3.0;

/// A capacity chosen for a pair's next channels, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Capacity, bytes.
    pub capacity: u32,
    /// Why, for logs and `explain`.
    pub reason: String,
}

/// A threshold change, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct ThresholdChange {
    /// The new threshold.
    pub threshold: f64,
    /// Why, for logs and `explain`.
    pub reason: String,
}

/// How a channel of the pair ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A prepared channel was claimed by `open()`.
    Hit,
    /// A prepared channel was dropped unused.
    Waste,
    /// An `open()` found no prepared channel and was served on demand.
    Miss,
}

/// The next capacity for a pair whose last channel had `current` bytes and
/// was used as `usage` says, within `[default, max]`-ish bounds (`max` is
/// `pipe-max-size` and the memory budget, already combined).
///
/// Rules: a writer that found the buffer full gets double the capacity, up
/// to `max`; a channel that never carried more than [`SMALL_BYTES`] goes
/// back to `default`; anything else keeps `current`. `None`: no change.
pub fn decide_capacity(
    current: u32,
    usage: &ChannelUsage,
    default: u32,
    max: u32,
) -> Option<Decision> {
    if usage.writer_blocked {
        let doubled = current.saturating_mul(2).min(max);
        if doubled <= current {
            return None;
        }
        return Some(Decision {
            capacity: doubled,
            reason: format!(
                "the writer blocked on a full {current}-byte buffer: doubled to {doubled} (limit {max})"
            ),
        });
    }
    if usage.bytes <= SMALL_BYTES && current != default {
        return Some(Decision {
            capacity: default,
            reason: format!(
                "the last channel carried {} bytes (at most {SMALL_BYTES}): back to the default {default}",
                usage.bytes
            ),
        });
    }
    None
}

/// The threshold after the outcomes in `window` (oldest first), from
/// `threshold`, within `[min, max]`; `cost` is the pair's channel memory
/// over a default channel's (1 = default).
///
/// Rules: with at least [`RAISE_EVIDENCE`] outcomes and a waste ratio above
/// [`WASTE_HIGH`], raise by [`STEP`] × cost (cost clamped to
/// `[1, MAX_COST]`: wasting a big buffer is worse); with a full
/// [`WINDOW`] and a waste ratio at most [`WASTE_LOW`] (prepared channels
/// were used, or opens went unprepared), lower by half a step. `None`: no
/// change (including at a bound).
pub fn adapt_threshold(
    threshold: f64,
    window: &VecDeque<Outcome>,
    cost: f64,
    min: f64,
    max: f64,
) -> Option<ThresholdChange> {
    let n = window.len();
    if n == 0 {
        return None;
    }
    let waste = window.iter().filter(|o| **o == Outcome::Waste).count();
    let ratio = waste as f64 / n as f64;
    let (target, why) = if n >= RAISE_EVIDENCE && ratio > WASTE_HIGH {
        let step = STEP * cost.clamp(1.0, MAX_COST);
        (threshold + step, "raised")
    } else if n >= WINDOW && ratio <= WASTE_LOW {
        (threshold - STEP / 2.0, "lowered")
    } else {
        return None;
    };
    let next = target.clamp(min, max);
    if (next - threshold).abs() < 1e-9 {
        return None;
    }
    Some(ThresholdChange {
        threshold: next,
        reason: format!(
            "{why} from {threshold:.2} to {next:.2}: {waste} of the last {n} channels wasted"
        ),
    })
}

/// What the broker knows of one pair.
#[derive(Clone, Debug, PartialEq)]
pub struct PairFeedback {
    /// Channels created (prepared or on demand).
    pub created: u64,
    /// Prepared channels claimed.
    pub hits: u64,
    /// Prepared channels wasted.
    pub waste: u64,
    /// Opens served on demand.
    pub misses: u64,
    /// ChannelUsage reports received.
    pub reports: u64,
    /// Capacity of the last channel created.
    pub last_capacity: Option<u32>,
    /// The last usage reported.
    pub last_usage: Option<ChannelUsage>,
    /// The capacity decision in force, if any (else the plan's).
    pub capacity: Option<Decision>,
    /// The pair's preparation threshold.
    pub threshold: f64,
    /// Why the threshold is what it is.
    pub threshold_reason: String,
    window: VecDeque<Outcome>,
}

impl PairFeedback {
    /// A pair starting at the configured threshold.
    pub fn new(threshold: f64) -> Self {
        Self {
            created: 0,
            hits: 0,
            waste: 0,
            misses: 0,
            reports: 0,
            last_capacity: None,
            last_usage: None,
            capacity: None,
            threshold,
            threshold_reason: "configured".to_owned(),
            window: VecDeque::with_capacity(WINDOW),
        }
    }

    /// A channel of `capacity` bytes was created for the pair.
    pub fn created(&mut self, capacity: u32) {
        self.created += 1;
        self.last_capacity = Some(capacity);
    }

    /// A requester reported `usage`; returns the new capacity decision if
    /// the capacity changes (it is then in force).
    pub fn report(&mut self, usage: ChannelUsage, default: u32, max: u32) -> Option<Decision> {
        self.reports += 1;
        self.last_usage = Some(usage);
        let current = self
            .capacity
            .as_ref()
            .map(|d| d.capacity)
            .or(self.last_capacity)
            .unwrap_or(default);
        let decision = decide_capacity(current, &usage, default, max)?;
        self.capacity = Some(decision.clone());
        Some(decision)
    }

    /// Records an outcome and adapts the threshold; returns the change if
    /// any. After a change the window starts over, so every step rests on
    /// fresh evidence.
    pub fn outcome(
        &mut self,
        outcome: Outcome,
        cost: f64,
        min: f64,
        max: f64,
    ) -> Option<ThresholdChange> {
        match outcome {
            Outcome::Hit => self.hits += 1,
            Outcome::Waste => self.waste += 1,
            Outcome::Miss => self.misses += 1,
        }
        if self.window.len() == WINDOW {
            self.window.pop_front();
        }
        self.window.push_back(outcome);
        let change = adapt_threshold(self.threshold, &self.window, cost, min, max)?;
        self.threshold = change.threshold;
        self.threshold_reason = change.reason.clone();
        self.window.clear();
        Some(change)
    }
}

/// A pair's feedback as `resonance explain` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Snapshot {
    /// Channels created.
    pub created: u64,
    /// Prepared channels claimed.
    pub hits: u64,
    /// Prepared channels wasted.
    pub waste: u64,
    /// Opens served on demand.
    pub misses: u64,
    /// The pair's preparation threshold.
    pub threshold: f64,
    /// Why it is what it is.
    pub threshold_reason: String,
    /// Capacity of the last channel created, bytes.
    pub last_capacity: Option<u32>,
    /// The capacity decision in force (else the plan's applies).
    pub capacity: Option<u32>,
    /// Why.
    pub capacity_reason: Option<String>,
    /// Usage reports received.
    pub reports: u64,
    /// The last report: bytes written.
    pub last_bytes: Option<u64>,
    /// The last report: peak fill, bytes.
    pub last_max_fill: Option<u32>,
    /// The last report: whether the writer found the buffer full.
    pub last_writer_blocked: Option<bool>,
    /// Recent outcomes, oldest first (`hit`, `waste`, `miss`).
    pub recent: Vec<&'static str>,
    /// The broker model's probability of an open within the TTL.
    pub probability: Option<f64>,
    /// Its expected lead time, ns.
    pub expected_lead_ns: Option<u64>,
}

impl PairFeedback {
    /// What `explain` shows (prediction fields left for the caller).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            created: self.created,
            hits: self.hits,
            waste: self.waste,
            misses: self.misses,
            threshold: self.threshold,
            threshold_reason: self.threshold_reason.clone(),
            last_capacity: self.last_capacity,
            capacity: self.capacity.as_ref().map(|d| d.capacity),
            capacity_reason: self.capacity.as_ref().map(|d| d.reason.clone()),
            reports: self.reports,
            last_bytes: self.last_usage.map(|u| u.bytes),
            last_max_fill: self.last_usage.map(|u| u.max_fill),
            last_writer_blocked: self.last_usage.map(|u| u.writer_blocked),
            recent: self
                .window
                .iter()
                .map(|o| match o {
                    Outcome::Hit => "hit",
                    Outcome::Waste => "waste",
                    Outcome::Miss => "miss",
                })
                .collect(),
            probability: None,
            expected_lead_ns: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: u32 = 64 << 10;
    const MAX: u32 = 1 << 20;

    fn blocked() -> ChannelUsage {
        ChannelUsage {
            bytes: 1 << 20,
            max_fill: DEFAULT,
            writer_blocked: true,
        }
    }

    #[test]
    fn a_blocked_writer_doubles_the_capacity_up_to_the_limit() {
        let d = decide_capacity(DEFAULT, &blocked(), DEFAULT, MAX).expect("a decision");
        assert_eq!(d.capacity, 2 * DEFAULT);
        assert!(d.reason.contains("blocked"), "{}", d.reason);
        let d = decide_capacity(MAX / 2 + 1, &blocked(), DEFAULT, MAX).expect("a decision");
        assert_eq!(d.capacity, MAX);
        assert_eq!(decide_capacity(MAX, &blocked(), DEFAULT, MAX), None);
        assert_eq!(
            decide_capacity(u32::MAX, &blocked(), DEFAULT, u32::MAX),
            None
        );
    }

    #[test]
    fn a_small_channel_goes_back_to_the_default_and_others_keep_theirs() {
        let small = ChannelUsage {
            bytes: 3000,
            ..ChannelUsage::default()
        };
        let d = decide_capacity(4 * DEFAULT, &small, DEFAULT, MAX).expect("a decision");
        assert_eq!(d.capacity, DEFAULT);
        assert_eq!(decide_capacity(DEFAULT, &small, DEFAULT, MAX), None);
        let busy = ChannelUsage {
            bytes: 1 << 20,
            ..ChannelUsage::default()
        };
        assert_eq!(decide_capacity(4 * DEFAULT, &busy, DEFAULT, MAX), None);
    }

    #[test]
    fn reports_compound_from_the_decision_in_force() {
        let mut pair = PairFeedback::new(0.5);
        pair.created(4096);
        assert_eq!(
            pair.report(blocked(), DEFAULT, MAX).map(|d| d.capacity),
            Some(8192)
        );
        assert_eq!(
            pair.report(blocked(), DEFAULT, MAX).map(|d| d.capacity),
            Some(16384)
        );
        assert_eq!(pair.capacity.as_ref().map(|d| d.capacity), Some(16384));
        assert_eq!(pair.reports, 2);
    }

    fn window(outcomes: &[Outcome]) -> VecDeque<Outcome> {
        outcomes.iter().copied().collect()
    }

    #[test]
    fn waste_raises_use_lowers_within_bounds() {
        use Outcome::*;
        let wasted = window(&[Waste, Waste, Waste, Hit]);
        let up = adapt_threshold(0.5, &wasted, 1.0, 0.3, 0.95).expect("raised");
        assert!((up.threshold - 0.6).abs() < 1e-9, "{up:?}");
        // Costly channels step further, still within the bound.
        let up = adapt_threshold(0.5, &wasted, 10.0, 0.3, 0.95).expect("raised");
        assert!((up.threshold - 0.8).abs() < 1e-9, "{up:?}");
        assert_eq!(adapt_threshold(0.95, &wasted, 1.0, 0.3, 0.95), None);
        // Too little evidence either way.
        assert_eq!(
            adapt_threshold(0.5, &window(&[Waste, Waste, Waste]), 1.0, 0.3, 0.95),
            None
        );
        assert_eq!(
            adapt_threshold(0.5, &window(&[Hit; 7]), 1.0, 0.3, 0.95),
            None
        );
        let used = window(&[Hit, Hit, Miss, Hit, Hit, Hit, Waste, Hit]);
        let down = adapt_threshold(0.5, &used, 1.0, 0.3, 0.95).expect("lowered");
        assert!((down.threshold - 0.45).abs() < 1e-9, "{down:?}");
        assert_eq!(adapt_threshold(0.3, &used, 1.0, 0.3, 0.95), None);
        // A balanced pair stays put.
        let mixed = window(&[Hit, Waste, Hit, Waste, Hit, Waste, Hit, Hit]);
        assert_eq!(adapt_threshold(0.5, &mixed, 1.0, 0.3, 0.95), None);
    }

    /// The broker's accounting for a pair whose pattern stopped while the
    /// model still predicts it at a stale probability: each TTL the broker
    /// prepares one channel if the probability reaches the pair's
    /// threshold, and that channel is wasted. The threshold must rise past
    /// the stale probability, and the waste stop, within a bounded number
    /// of TTLs.
    #[test]
    fn a_stopped_pattern_raises_the_threshold_until_waste_stops() {
        let stale = 0.72;
        let mut pair = PairFeedback::new(0.5);
        let mut waste_per_ttl = Vec::new();
        for _ttl in 0..40 {
            let prepared = stale >= pair.threshold;
            if prepared {
                pair.created(DEFAULT);
                pair.outcome(Outcome::Waste, 1.0, 0.3, 0.95);
            }
            waste_per_ttl.push(u32::from(prepared));
        }
        assert!(pair.threshold > stale, "threshold {}", pair.threshold);
        let first: u32 = waste_per_ttl[..10].iter().sum();
        let last: u32 = waste_per_ttl[30..].iter().sum();
        assert_eq!(first, 10);
        assert_eq!(last, 0);
        // Bounded: three raises of four wasted channels each.
        assert_eq!(pair.waste, 12);
        assert!(pair.threshold_reason.contains("wasted"));
    }

    #[test]
    fn the_window_keeps_the_latest_outcomes() {
        let mut pair = PairFeedback::new(0.5);
        for _ in 0..3 {
            assert_eq!(pair.outcome(Outcome::Hit, 1.0, 0.3, 0.95), None);
        }
        for _ in 0..40 {
            pair.outcome(Outcome::Miss, 1.0, 0.3, 0.95);
        }
        assert!((pair.threshold - 0.3).abs() < 1e-9, "{}", pair.threshold);
        assert_eq!((pair.hits, pair.misses), (3, 40));
    }
}
