//! [`Recurrence`]: how the young pairs of this host recur, learnt from
//! the population. A pair seen once or twice has no timing of its own, and
//! a start stream cannot tell a job's first run from an ad-hoc command
//! that never comes back; what it can tell is how the host's earlier young
//! pairs went on. Each start of a young pair is followed until its pair
//! starts again (a gap) or the window passes without it (censored); the
//! chance that a young pair quiet for `elapsed` starts within the horizon
//! is the share of those outcomes with a gap in `(elapsed, elapsed +
//! horizon]` among those whose gap was not already over by `elapsed`
//! (a Kaplan-Meier hazard over one step). A host whose new pairs are
//! mostly one-off commands gives them a low chance, and the threshold, not
//! a rule of its own, decides whether that is worth a channel. Two
//! pseudo-outcomes ([`PRIOR_OUTCOMES`]) stand for the evidence a fresh host
//! lacks.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{PairId, PairKey};

/// Outcomes remembered per class (the oldest forgotten first).
pub const MEMORY: usize = 256;

/// What a fresh host is taken to have seen: one young pair that came back
/// at a moment anywhere in the window, one that never did. Enough to try
/// a channel for the first new pairs at a low threshold (the budget starts
/// at its floor); a few real outcomes outweigh it.
pub const PRIOR_OUTCOMES: f64 = 1.0;

/// Young starts followed at once; past it the oldest is censored early
/// (a storm of new pairs must not grow memory).
pub const WAITING_MAX: usize = 4096;

/// Classes of young start: a pair's first start, its second.
pub const CLASSES: usize = 2;

/// Which outcomes a class has seen.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Outcomes {
    /// In arrival order: `Some(gap)` for a pair that started again within
    /// the window, `None` for one that did not.
    fifo: VecDeque<Option<u64>>,
    /// The gaps of `fifo`, sorted.
    sorted: Vec<u64>,
}

impl Outcomes {
    fn push(&mut self, outcome: Option<u64>) {
        if self.fifo.len() >= MEMORY
            && let Some(Some(old)) = self.fifo.pop_front()
            && let Ok(at) = self.sorted.binary_search(&old)
        {
            self.sorted.remove(at);
        }
        self.fifo.push_back(outcome);
        if let Some(gap) = outcome {
            let at = self.sorted.partition_point(|&g| g < gap);
            self.sorted.insert(at, gap);
        }
    }

    /// The chance of a gap in `(elapsed, elapsed + horizon]` given none by
    /// `elapsed`, and the mean lead to it.
    fn chance(&self, elapsed: u64, horizon: u64, window: u64) -> (f64, u64) {
        let censored = self.fifo.len() - self.sorted.len();
        let after = self.sorted.partition_point(|&g| g <= elapsed);
        let until = self
            .sorted
            .partition_point(|&g| g <= elapsed.saturating_add(horizon));
        let within = &self.sorted[after..until];
        let at_risk = (self.sorted.len() - after + censored) as f64;
        // The prior's recurring pseudo-outcome, uniform over the window.
        let window = window.max(1) as f64;
        let left = (window - elapsed as f64).max(0.0);
        let prior_within = PRIOR_OUTCOMES * left.min(horizon as f64) / window;
        let prior_at_risk = PRIOR_OUTCOMES * left / window + PRIOR_OUTCOMES;
        let p = (within.len() as f64 + prior_within) / (at_risk + prior_at_risk);
        let lead = if within.is_empty() {
            horizon / 2
        } else {
            let sum: u128 = within.iter().map(|&g| u128::from(g - elapsed)).sum();
            (sum / within.len() as u128) as u64
        };
        (p, lead)
    }
}

/// A young start still waiting for its pair's next one.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Waiting {
    key: PairKey,
    pair: PairId,
    ts: u64,
}

/// The population's recurrence of young pairs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Recurrence {
    classes: [Outcomes; CLASSES],
    /// Young starts in time order, until their window passes.
    waiting: VecDeque<Waiting>,
}

/// Which class a pair with `seen` starts belongs to, if it is young.
pub fn class_of(seen: u64) -> Option<usize> {
    (1..=CLASSES as u64)
        .contains(&seen)
        .then(|| (seen - 1) as usize)
}

impl Recurrence {
    /// A start of `key` (interned as `pair`) that had `seen_before`
    /// starts, `gap` after its previous one: resolves that previous start
    /// if it was young, and follows this one if the pair is still young.
    pub fn on_start(
        &mut self,
        key: &PairKey,
        pair: PairId,
        seen_before: u64,
        gap: Option<u64>,
        ts: u64,
        window: u64,
    ) {
        if let (Some(class), Some(gap)) = (class_of(seen_before), gap) {
            self.classes[class].push((gap <= window).then_some(gap));
            self.waiting.retain(|w| !(w.pair == pair && w.key == *key));
        }
        if let Some(class) = class_of(seen_before + 1) {
            if self.waiting.len() >= WAITING_MAX {
                self.waiting.pop_front();
                self.classes[class].push(None);
            }
            self.waiting.push_back(Waiting {
                key: key.clone(),
                pair,
                ts,
            });
        }
    }

    /// Lets time pass: young starts whose window has passed with no next
    /// start are censored. `seen` gives how many starts a pair has now
    /// (`None` once it is no longer tracked: it did not come back either).
    pub fn tick(&mut self, now: u64, window: u64, seen: impl Fn(PairId, &PairKey) -> Option<u64>) {
        while let Some(front) = self.waiting.front() {
            if now.saturating_sub(front.ts) <= window {
                break;
            }
            let class = seen(front.pair, &front.key).map_or(Some(0), class_of);
            if let Some(class) = class {
                self.classes[class].push(None);
            }
            self.waiting.pop_front();
        }
    }

    /// The chance that a pair with `seen` starts, quiet for `elapsed`,
    /// starts within `horizon`, and the mean lead; `None` for a pair that
    /// is not young or quiet for longer than `window` (whose young starts
    /// are all censored by then).
    pub fn chance(&self, seen: u64, elapsed: u64, horizon: u64, window: u64) -> Option<(f64, u64)> {
        let class = class_of(seen)?;
        (elapsed <= window).then(|| self.classes[class].chance(elapsed, horizon, window))
    }

    /// Outcomes learnt per class (for `explain` and tests).
    pub fn outcomes(&self) -> [usize; CLASSES] {
        [self.classes[0].fifo.len(), self.classes[1].fifo.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const WINDOW: u64 = 30 * S;

    fn key(n: u32) -> PairKey {
        PairKey {
            src: format!("a{n}"),
            dst: "b".to_owned(),
            kind: "pipe".to_owned(),
        }
    }

    #[test]
    fn a_fresh_host_gives_young_pairs_a_small_chance() {
        let recurrence = Recurrence::default();
        let (p, _) = recurrence.chance(1, 0, 5 * S, WINDOW).unwrap();
        assert!((p - 1.0 / 12.0).abs() < 1e-9, "a sixth of one in two: {p}");
        assert!(
            recurrence.chance(3, 0, 5 * S, WINDOW).is_none(),
            "not young"
        );
        assert!(recurrence.chance(1, WINDOW + 1, 5 * S, WINDOW).is_none());
    }

    #[test]
    fn one_off_pairs_drive_the_chance_down_and_quick_repeats_up() {
        let mut one_offs = Recurrence::default();
        for n in 0..100 {
            let ts = u64::from(n) * S;
            one_offs.on_start(&key(n), n, 0, None, ts, WINDOW);
            one_offs.tick(ts, WINDOW, |_, _| Some(1));
        }
        one_offs.tick(200 * S, WINDOW, |_, _| Some(1));
        assert_eq!(one_offs.outcomes(), [100, 0]);
        let (p, _) = one_offs.chance(1, 0, 5 * S, WINDOW).unwrap();
        assert!(p < 0.01, "{p}");

        let mut bursts = Recurrence::default();
        for n in 0..100 {
            let ts = u64::from(n) * 60 * S;
            bursts.on_start(&key(n), n, 0, None, ts, WINDOW);
            bursts.on_start(&key(n), n, 1, Some(S), ts + S, WINDOW);
        }
        let (p, lead) = bursts.chance(1, 0, 5 * S, WINDOW).unwrap();
        assert!(p > 0.95, "{p}");
        assert_eq!(lead, S);
        // Past the gap every young pair came back after, only the prior
        // says it might.
        let (late, _) = bursts.chance(1, 2 * S, 5 * S, WINDOW).unwrap();
        assert!(late < 0.1, "{late}");
    }

    #[test]
    fn a_gap_past_the_window_counts_as_no_recurrence_once() {
        let mut recurrence = Recurrence::default();
        recurrence.on_start(&key(1), 1, 0, None, 0, WINDOW);
        recurrence.on_start(&key(1), 1, 1, Some(WINDOW + S), WINDOW + S, WINDOW);
        recurrence.tick(10 * WINDOW, WINDOW, |_, _| Some(2));
        assert_eq!(
            recurrence.outcomes(),
            [1, 1],
            "first censored once, second censored by tick"
        );
        let (p, _) = recurrence.chance(1, 0, 5 * S, WINDOW).unwrap();
        assert!(p < 1.0 / 12.0, "{p}");
    }

    #[test]
    fn memory_is_bounded_and_forgets_the_oldest() {
        let mut recurrence = Recurrence::default();
        for n in 0..(MEMORY as u32 * 2) {
            recurrence.on_start(&key(n), n, 0, None, 0, WINDOW);
            recurrence.on_start(&key(n), n, 1, Some(S), S, WINDOW);
        }
        recurrence.tick(u64::MAX / 2, WINDOW, |_, _| Some(2));
        assert_eq!(recurrence.outcomes()[0], MEMORY);
        assert_eq!(recurrence.classes[0].sorted.len(), MEMORY);
    }
}
