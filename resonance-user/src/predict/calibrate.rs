//! [`Calibrator`]: learns how often the model's raw probabilities come true
//! and maps them onto observed frequencies. The model samples its own raw
//! forecasts for one horizon once per interval of event time; each forecast
//! waits in a per-pair queue until the pair starts (it came true) or its
//! deadline passes (it did not). Outcomes are tallied per twentieth of
//! probability, and a raw probability is mapped to its bin's observed rate,
//! shrunk toward the raw value while the bin has little evidence.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{PairId, Score};

const BINS: usize = 20;
/// Pseudo-forecasts at the raw probability each bin starts with.
const PRIOR_FORECASTS: f64 = 30.0;
/// Tallies are halved past this many forecasts, so calibration follows
/// changed behaviour.
const MAX_FORECASTS: f64 = 5000.0;

/// Online reliability map of raw probabilities.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Calibrator {
    next_sample: u64,
    /// Per bin: forecasts and how many came true.
    bins: Vec<(f64, f64)>,
    /// Per pair: deadlines and bins of its unresolved forecasts.
    pending: Vec<VecDeque<(u64, u8)>>,
}

impl Calibrator {
    fn bins_mut(&mut self) -> &mut Vec<(f64, f64)> {
        if self.bins.len() != BINS {
            self.bins = vec![(0.0, 0.0); BINS];
        }
        &mut self.bins
    }

    fn tally(&mut self, bin: u8, came_true: bool) {
        let bins = self.bins_mut();
        let Some(entry) = bins.get_mut(bin as usize) else {
            return;
        };
        entry.0 += 1.0;
        entry.1 += if came_true { 1.0 } else { 0.0 };
        if entry.0 > MAX_FORECASTS {
            entry.0 /= 2.0;
            entry.1 /= 2.0;
        }
    }

    /// `pair` started at `ts`: its forecasts still open came true, those
    /// whose deadline passed did not.
    pub fn on_start(&mut self, pair: PairId, ts: u64) {
        let Some(queue) = self.pending.get_mut(pair as usize) else {
            return;
        };
        let resolved: Vec<(u64, u8)> = queue.drain(..).collect();
        for (deadline, bin) in resolved {
            self.tally(bin, deadline >= ts);
        }
    }

    /// Whether a new sample of forecasts is due at `ts`.
    pub fn wants_sample(&self, ts: u64) -> bool {
        ts >= self.next_sample
    }

    /// Records the raw forecasts made at `now` for `(now, now + horizon]`,
    /// after resolving those whose deadline has passed.
    pub fn sample(&mut self, now: u64, horizon: u64, every: u64, raw: &[Score]) {
        self.next_sample = now.saturating_add(every.max(1));
        let mut expired = Vec::new();
        for queue in &mut self.pending {
            while let Some(&(deadline, bin)) = queue.front() {
                if deadline >= now {
                    break;
                }
                queue.pop_front();
                expired.push(bin);
            }
        }
        for bin in expired {
            self.tally(bin, false);
        }
        if self.pending.len() < raw.len() {
            self.pending.resize_with(raw.len(), VecDeque::new);
        }
        for (queue, score) in self.pending.iter_mut().zip(raw) {
            if score.probability >= 0.01 {
                queue.push_back((now.saturating_add(horizon), bin_of(score.probability)));
            }
        }
    }

    /// Forgets the open forecasts of an evicted pair.
    pub fn forget(&mut self, pair: PairId) {
        if let Some(queue) = self.pending.get_mut(pair as usize) {
            queue.clear();
        }
    }

    /// The observed frequency for a raw probability.
    pub fn map(&self, raw: f64) -> f64 {
        if raw <= 0.0 {
            return 0.0;
        }
        let Some(&(forecasts, came_true)) = self.bins.get(bin_of(raw) as usize) else {
            return raw;
        };
        ((came_true + PRIOR_FORECASTS * raw) / (forecasts + PRIOR_FORECASTS)).clamp(0.0, 1.0)
    }
}

fn bin_of(probability: f64) -> u8 {
    ((probability * BINS as f64) as usize).min(BINS - 1) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(p: f64) -> Vec<Score> {
        vec![Score {
            probability: p,
            expected_lead_ns: 0,
        }]
    }

    #[test]
    fn overconfident_forecasts_are_mapped_down() {
        let mut calibrator = Calibrator::default();
        // Forecasts of 0.9 that come true one time in four.
        for i in 0..400u64 {
            let now = i * 10;
            calibrator.sample(now, 5, 10, &scores(0.9));
            if i % 4 == 0 {
                calibrator.on_start(0, now + 1);
            }
        }
        let mapped = calibrator.map(0.9);
        assert!(mapped < 0.4, "{mapped}");
        assert!(
            calibrator.map(0.3) > 0.29,
            "untouched bins keep the raw value"
        );
        assert_eq!(calibrator.map(0.0), 0.0);
    }
}
