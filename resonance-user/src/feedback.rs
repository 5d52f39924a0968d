//! Per-pair feedback: what the broker's channels for a pair measured, and
//! the pure rules that turn it into the pair's next channel capacity.
//!
//! The broker ([`crate::handout`]) keeps one [`PairFeedback`] per pair it
//! served. It records each channel it creates ([`PairFeedback::created`]),
//! each outcome of a channel ([`Outcome`]: a prepared one claimed or
//! wasted, an open served on demand) and each usage report a requester sends
//! ([`resonance_client::proto::ChannelUsage`]). [`decide_capacity`] is the
//! capacity rule (documented in `docs/broker.md`); it returns what changed
//! with a reason, which the broker records and counts. The threshold is the
//! planner's ([`crate::plan`]), fed the same outcomes.

use std::collections::VecDeque;

use resonance_client::proto::ChannelUsage;
use serde::{Deserialize, Serialize};

pub use crate::aggregate::channels::{ChannelMeasure, Watched, measure};

/// A channel that never carried more than this is "small": it goes back to
/// the default capacity.
pub const SMALL_BYTES: u64 = 8 << 10;
/// Outcomes remembered per pair for `explain`.
pub const RECENT: usize = crate::plan::WINDOW;

/// Measured channels remembered per pair for the performance rule.
pub const MEASURED: usize = 8;
/// A median wait or turnaround above this makes a channel "slow".
pub const SLOW_NS: u64 = 10_000_000;
/// Bounds of the performance factor applied to a pair's score.
pub const PERFORMANCE_MIN: f64 = 0.5;
/// See [`PERFORMANCE_MIN`].
pub const PERFORMANCE_MAX: f64 = 1.2;

/// A capacity chosen for a pair's next channels, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Capacity, bytes.
    pub capacity: u32,
    /// Why, for logs and `explain`.
    pub reason: String,
}

pub use crate::plan::Outcome;

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

/// One channel of the pair as the probes measured it, once it is done.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeasuredChannel {
    /// The broker's channel id.
    pub channel: u64,
    /// Capacity it was given, bytes.
    pub capacity: u32,
    /// What the probes saw.
    pub measure: ChannelMeasure,
    /// Delivery to first syscall, ns (`None`: never used).
    pub time_to_first_use_ns: Option<u64>,
    /// Bytes written per second while it was in use.
    pub throughput_bytes_per_s: Option<f64>,
}

impl MeasuredChannel {
    fn slow(&self) -> bool {
        let m = &self.measure;
        m.wait_p50_ns.or(m.turnaround_p50_ns).unwrap_or(0) > SLOW_NS
    }
}

/// A score multiplier from measured channel performance, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Performance {
    /// Multiplies the pair's resonance score (then capped at 1).
    pub factor: f64,
    /// Why, for `explain`.
    pub reason: String,
}

/// The performance factor of a pair from its last measured channels
/// (oldest first); `None` while none of them carried data.
///
/// Rule: over the channels that were used, shares with errors (`e`), with
/// writes that found the pipe full (`b`) and with a median wait or
/// turnaround above [`SLOW_NS`] (`s`), and the share with none of these
/// (`g`); `factor = 1 + 0.2·g − 0.3·e − 0.2·b − 0.2·s`, clamped to
/// [[`PERFORMANCE_MIN`], [`PERFORMANCE_MAX`]]. Unused channels do not move
/// it: waste is the threshold rule's business.
pub fn performance<'a>(
    channels: impl IntoIterator<Item = &'a MeasuredChannel>,
) -> Option<Performance> {
    let (mut used, mut errors, mut blocked, mut slow, mut good) = (0u32, 0u32, 0u32, 0u32, 0u32);
    for channel in channels {
        if !channel.measure.used() {
            continue;
        }
        used += 1;
        let e = channel.measure.errors > 0;
        let b = channel.measure.blocked_writes > 0;
        let s = channel.slow();
        errors += u32::from(e);
        blocked += u32::from(b);
        slow += u32::from(s);
        good += u32::from(!(e || b || s));
    }
    if used == 0 {
        return None;
    }
    let share = |n: u32| f64::from(n) / f64::from(used);
    let factor =
        (1.0 + 0.2 * share(good) - 0.3 * share(errors) - 0.2 * share(blocked) - 0.2 * share(slow))
            .clamp(PERFORMANCE_MIN, PERFORMANCE_MAX);
    Some(Performance {
        factor,
        reason: format!(
            "of the last {used} used channels: {good} clean, {errors} with errors, {blocked} with a full pipe, {slow} slow (median wait or turnaround over {} ms)",
            SLOW_NS / 1_000_000
        ),
    })
}

/// What the broker knows of one pair. Saved across restarts (the last
/// usage report excepted: what it decided is in `capacity`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// The last usage reported (this run).
    #[serde(skip)]
    pub last_usage: Option<ChannelUsage>,
    /// The capacity decision in force, if any (else the plan's).
    pub capacity: Option<Decision>,
    /// The last channels the probes measured, oldest first.
    pub measured: VecDeque<MeasuredChannel>,
    /// The latest outcomes, oldest first.
    recent: VecDeque<Outcome>,
}

impl PairFeedback {
    /// A pair nothing is known of yet.
    pub fn new() -> Self {
        Self {
            created: 0,
            hits: 0,
            waste: 0,
            misses: 0,
            reports: 0,
            last_capacity: None,
            last_usage: None,
            capacity: None,
            measured: VecDeque::with_capacity(MEASURED),
            recent: VecDeque::with_capacity(RECENT),
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
        let decision = decide_capacity(self.current_capacity(default), &usage, default, max)?;
        self.capacity = Some(decision.clone());
        Some(decision)
    }

    /// The capacity the pair's channels currently get.
    pub fn current_capacity(&self, default: u32) -> u32 {
        self.capacity
            .as_ref()
            .map(|d| d.capacity)
            .or(self.last_capacity)
            .unwrap_or(default)
    }

    /// The probes saw a writer find one of the pair's pipes full: the
    /// capacity rule runs at once (not when the channel is done), so the
    /// next channel is already larger. Returns the decision if it changed.
    pub fn probed_full_pipe(
        &mut self,
        measure: &ChannelMeasure,
        default: u32,
        max: u32,
    ) -> Option<Decision> {
        let usage = ChannelUsage {
            bytes: measure.sent,
            max_fill: 0,
            writer_blocked: true,
        };
        let mut decision = decide_capacity(self.current_capacity(default), &usage, default, max)?;
        decision.reason = format!(
            "probes: {} writes found the pipe full; {}",
            measure.blocked_writes, decision.reason
        );
        self.capacity = Some(decision.clone());
        Some(decision)
    }

    /// A channel of the pair is done (its owners let go, or it was
    /// revoked): remembered for the performance rule, and a small one that
    /// never blocked sends the capacity back to the default. Returns the
    /// capacity decision if it changed.
    pub fn channel_done(
        &mut self,
        channel: MeasuredChannel,
        default: u32,
        max: u32,
    ) -> Option<Decision> {
        let usage = ChannelUsage {
            bytes: channel.measure.sent,
            max_fill: 0,
            writer_blocked: channel.measure.blocked_writes > 0,
        };
        let used = channel.measure.used();
        if self.measured.len() == MEASURED {
            self.measured.pop_front();
        }
        self.measured.push_back(channel);
        // A blocked writer was acted on when it was seen; an unused channel
        // says nothing about the size the pair needs.
        if usage.writer_blocked || !used {
            return None;
        }
        let mut decision = decide_capacity(self.current_capacity(default), &usage, default, max)?;
        decision.reason = format!("probes: {}", decision.reason);
        self.capacity = Some(decision.clone());
        Some(decision)
    }

    /// The score multiplier from the measured channels (see
    /// [`performance`]).
    pub fn performance(&self) -> Option<Performance> {
        performance(&self.measured)
    }

    /// Counts an outcome (the planner adapts the threshold from it).
    pub fn outcome(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Hit => self.hits += 1,
            Outcome::Waste => self.waste += 1,
            Outcome::Miss => self.misses += 1,
        }
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(outcome);
    }
}

impl Default for PairFeedback {
    fn default() -> Self {
        Self::new()
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
    /// The threshold the planner prepares the pair's channels at.
    pub threshold: Option<f64>,
    /// Why it is what it is.
    pub threshold_reason: Option<String>,
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
    /// The last channel the probes measured.
    pub last_measured: Option<MeasuredChannel>,
    /// Channels measured so far that carried nothing (of the remembered).
    pub measured_unused: usize,
    /// The score multiplier from measured performance.
    pub performance: Option<Performance>,
    /// The broker model's probability of an open within the TTL.
    pub probability: Option<f64>,
    /// Its expected lead time, ns.
    pub expected_lead_ns: Option<u64>,
    /// The chance a channel made now is the one the open uses (below the
    /// probability when a herald announces the pair).
    pub need: Option<f64>,
}

impl PairFeedback {
    /// What `explain` shows (prediction fields left for the caller).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            created: self.created,
            hits: self.hits,
            waste: self.waste,
            misses: self.misses,
            threshold: None,
            threshold_reason: None,
            last_capacity: self.last_capacity,
            capacity: self.capacity.as_ref().map(|d| d.capacity),
            capacity_reason: self.capacity.as_ref().map(|d| d.reason.clone()),
            reports: self.reports,
            last_bytes: self.last_usage.map(|u| u.bytes),
            last_max_fill: self.last_usage.map(|u| u.max_fill),
            last_writer_blocked: self.last_usage.map(|u| u.writer_blocked),
            recent: self.recent.iter().map(|o| o.as_str()).collect(),
            last_measured: self.measured.back().cloned(),
            measured_unused: self.measured.iter().filter(|m| !m.measure.used()).count(),
            performance: self.performance(),
            probability: None,
            expected_lead_ns: None,
            need: None,
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
        let mut pair = PairFeedback::new();
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

    #[test]
    fn the_latest_outcomes_are_kept_and_all_are_counted() {
        let mut pair = PairFeedback::new();
        for _ in 0..3 {
            pair.outcome(Outcome::Hit);
        }
        for _ in 0..40 {
            pair.outcome(Outcome::Miss);
        }
        assert_eq!((pair.hits, pair.misses), (3, 40));
        assert_eq!(pair.snapshot().recent, vec!["miss"; RECENT]);
    }

    fn measured(
        channel: u64,
        sent: u64,
        errors: u64,
        blocked: u64,
        wait_ns: u64,
    ) -> MeasuredChannel {
        MeasuredChannel {
            channel,
            capacity: DEFAULT,
            measure: ChannelMeasure {
                sent,
                received: sent,
                writes: u64::from(sent > 0),
                reads: u64::from(sent > 0),
                errors,
                blocked_writes: blocked,
                first_use_ns: 10,
                last_use_ns: 20,
                wait_p50_ns: Some(wait_ns),
                turnaround_p50_ns: None,
            },
            time_to_first_use_ns: Some(5),
            throughput_bytes_per_s: None,
        }
    }

    #[test]
    fn clean_channels_raise_the_score_and_poor_ones_lower_it_within_bounds() {
        let clean: Vec<_> = (0..4).map(|c| measured(c, 1000, 0, 0, 1_000)).collect();
        let up = performance(&clean).expect("used channels");
        assert!((up.factor - 1.2).abs() < 1e-9, "{up:?}");
        let poor: Vec<_> = (0..4)
            .map(|c| measured(c, 1000, 1, 3, 2 * SLOW_NS))
            .collect();
        let down = performance(&poor).expect("used channels");
        assert!((down.factor - PERFORMANCE_MIN).abs() < 1e-9, "{down:?}");
        let mixed = [
            measured(0, 1000, 0, 0, 1_000),
            measured(1, 1000, 0, 2, 1_000),
        ];
        let half = performance(&mixed).expect("used channels");
        assert!((half.factor - 1.0).abs() < 1e-9, "{half:?}");
        assert!(
            half.reason.contains("1 with a full pipe"),
            "{}",
            half.reason
        );
        // Unused channels say nothing about performance.
        assert_eq!(performance(&[measured(0, 0, 0, 0, 0)]), None);
    }

    #[test]
    fn a_probed_full_pipe_doubles_now_and_a_small_done_channel_resets() {
        let mut pair = PairFeedback::new();
        pair.created(DEFAULT);
        let seen = measured(1, 200_000, 0, 5, 1_000).measure;
        let d = pair.probed_full_pipe(&seen, DEFAULT, MAX).expect("doubled");
        assert_eq!(d.capacity, 2 * DEFAULT);
        assert!(d.reason.starts_with("probes: 5 writes"), "{}", d.reason);
        // The blocked channel finishing changes nothing more.
        assert_eq!(
            pair.channel_done(measured(1, 200_000, 0, 5, 1_000), DEFAULT, MAX),
            None
        );
        // Nor does an unused one.
        assert_eq!(
            pair.channel_done(measured(2, 0, 0, 0, 0), DEFAULT, MAX),
            None
        );
        // A small clean one goes back to the default.
        let d = pair
            .channel_done(measured(3, 100, 0, 0, 1_000), DEFAULT, MAX)
            .expect("reset");
        assert_eq!(d.capacity, DEFAULT);
        assert_eq!(pair.measured.len(), 3);
        let snapshot = pair.snapshot();
        assert_eq!(snapshot.measured_unused, 1);
        assert!(snapshot.performance.is_some());
    }
}
