//! [`Table`]: decayed counts of what follows a context, with the delay
//! distribution ([`Samples`]) of each follower. Used both by the sliding
//! window patterns (context = one interaction, followers = interactions seen
//! within the window after it) and by the Markov chain (context = the last
//! one or two interactions, followers = the next interaction).
//!
//! Counts decay by a factor per occurrence of the context rather than per
//! unit of time, so a job that runs every ten minutes keeps its evidence
//! between runs while a busy context relearns changed behaviour within a few
//! dozen occurrences (seconds to minutes).

use serde::{Deserialize, Serialize};

use super::{PairId, samples::Samples};

/// One follower of a context.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The following interaction.
    pub pair: PairId,
    count: f64,
    epoch: u64,
    /// Delays from the context to this follower.
    pub delays: Samples,
}

/// Decayed follower counts of one context.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Table {
    /// Decayed number of occurrences of the context.
    pub weight: f64,
    occurrences: u64,
    /// The followers, at most `max_entries`.
    pub entries: Vec<Entry>,
}

impl Table {
    /// The context occurred once more: older evidence fades by `decay`.
    pub fn occur(&mut self, decay: f64) {
        self.weight = self.weight * decay + 1.0;
        self.occurrences += 1;
    }

    /// Records that `pair` followed the latest occurrence after `delay_ns`.
    /// When full, the follower with the least decayed count makes room.
    pub fn credit(&mut self, pair: PairId, delay_ns: u64, decay: f64, max_entries: usize) {
        let now = self.occurrences;
        if let Some(entry) = self.entries.iter_mut().find(|entry| entry.pair == pair) {
            entry.count = decayed(entry.count, entry.epoch, now, decay) + 1.0;
            entry.epoch = now;
            entry.delays.push(delay_ns);
            return;
        }
        if self.entries.len() >= max_entries.max(1) {
            let weakest = self
                .entries
                .iter()
                .enumerate()
                .min_by(|(_, a), (_, b)| {
                    decayed(a.count, a.epoch, now, decay)
                        .total_cmp(&decayed(b.count, b.epoch, now, decay))
                })
                .map(|(index, _)| index);
            if let Some(index) = weakest {
                self.entries.swap_remove(index);
            }
        }
        let mut delays = Samples::default();
        delays.push(delay_ns);
        self.entries.push(Entry {
            pair,
            count: 1.0,
            epoch: now,
            delays,
        });
    }

    /// The decayed count of an entry as of the latest occurrence.
    pub fn count(&self, entry: &Entry, decay: f64) -> f64 {
        decayed(entry.count, entry.epoch, self.occurrences, decay)
    }

    /// Forgets a follower (its pair was evicted).
    pub fn remove(&mut self, pair: PairId) {
        self.entries.retain(|entry| entry.pair != pair);
    }
}

fn decayed(count: f64, epoch: u64, now: u64, decay: f64) -> f64 {
    let steps = now.saturating_sub(epoch).min(i32::MAX as u64) as i32;
    count * decay.powi(steps)
}

/// Dirichlet-smoothed probability of a follower: `count` observations out of
/// `weight` occurrences, with `prior_mass` pseudo-observations spread as
/// `prior_share` on this follower.
pub fn smoothed(count: f64, weight: f64, prior_mass: f64, prior_share: f64) -> f64 {
    let denominator = weight + prior_mass;
    if denominator <= 0.0 {
        return 0.0;
    }
    ((count + prior_mass * prior_share) / denominator).clamp(0.0, 1.0)
}

/// Probability that a follower with overall probability `p_follow` and
/// delays `delays` happens in `(elapsed, elapsed + horizon]`, given it has
/// not happened by `elapsed`; with the mean lead of those that do.
pub fn conditional(p_follow: f64, delays: &Samples, elapsed: u64, horizon: u64) -> (f64, u64) {
    let n = delays.len();
    if n == 0 {
        return (0.0, 0);
    }
    let mass = delays.window(elapsed, horizon);
    let longest = delays.max();
    if mass.above == 0 && elapsed <= longest.saturating_mul(2) {
        // Later than every remembered delay, but not by much: the follower
        // is taken as one more delay just past the longest, so a late one
        // is still expected (a few samples cannot bound a distribution's
        // tail); past twice the longest it is given up.
        let n = n as f64;
        let (before, inside) = (n / (n + 1.0), 1.0 / (n + 1.0));
        let remaining = 1.0 - p_follow * before;
        if remaining <= 0.0 {
            return (0.0, 0);
        }
        let lead = longest.saturating_sub(elapsed).min(horizon);
        return ((p_follow * inside / remaining).clamp(0.0, 1.0), lead);
    }
    let n = n as f64;
    let before = (n - mass.above as f64) / n;
    let inside = mass.within as f64 / n;
    let remaining = 1.0 - p_follow * before;
    if remaining <= 0.0 {
        return (0.0, 0);
    }
    (
        (p_follow * inside / remaining).clamp(0.0, 1.0),
        mass.mean_lead_ns,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_decay_per_occurrence_and_weakest_is_evicted() {
        let mut table = Table::default();
        for _ in 0..10 {
            table.occur(0.5);
            table.credit(1, 100, 0.5, 2);
        }
        table.occur(0.5);
        table.credit(2, 100, 0.5, 2);
        let count_1 = table.count(&table.entries[0], 0.5);
        assert!((count_1 - 0.999).abs() < 0.01, "{count_1}");
        assert!((table.weight - 1.999).abs() < 0.01, "{}", table.weight);
        for _ in 0..3 {
            table.occur(0.5);
            table.credit(2, 100, 0.5, 2);
        }
        table.occur(0.5);
        table.credit(3, 100, 0.5, 2);
        let mut pairs: Vec<PairId> = table.entries.iter().map(|entry| entry.pair).collect();
        pairs.sort_unstable();
        assert_eq!(pairs, vec![2, 3], "the faded follower 1 made room");
    }

    #[test]
    fn smoothing_distrusts_rare_evidence() {
        assert!(smoothed(1.0, 1.0, 1.0, 0.05) < 0.6);
        assert!(smoothed(20.0, 20.0, 1.0, 0.05) > 0.95);
        assert!((smoothed(0.0, 0.0, 1.0, 0.05) - 0.05).abs() < 1e-9);
    }

    #[test]
    fn conditional_rises_as_the_delay_approaches() {
        let mut delays = Samples::default();
        for value in [100, 110, 120] {
            delays.push(value);
        }
        let (early, _) = conditional(0.9, &delays, 0, 50);
        let (on_time, lead) = conditional(0.9, &delays, 80, 50);
        assert_eq!(early, 0.0);
        assert!((on_time - 0.9).abs() < 1e-9);
        assert_eq!(lead, 30);
        let (after_one, _) = conditional(0.9, &delays, 105, 50);
        assert!(after_one > 0.8 && after_one < 0.9, "{after_one}");
    }
}
