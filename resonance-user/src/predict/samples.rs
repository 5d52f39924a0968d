//! [`Samples`]: the most recent observed durations (inter-arrival gaps or
//! trigger-to-follower delays), kept as raw values so the empirical
//! distribution stays exact for sharp periodic jobs and old behaviour is
//! forgotten after [`CAPACITY`] new samples.

use serde::{Deserialize, Serialize};

/// How many recent durations a distribution keeps.
pub const CAPACITY: usize = 16;

/// A ring of the latest durations, in nanoseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "Ring")]
pub struct Samples {
    values: Vec<u64>,
    next: usize,
    /// The same values in order, kept on every push: quantiles are read on
    /// every prediction, far more often than samples arrive.
    #[serde(skip)]
    sorted: Vec<u64>,
}

/// What a saved [`Samples`] holds; the order is rebuilt on load.
#[derive(Deserialize)]
struct Ring {
    values: Vec<u64>,
    next: usize,
}

impl From<Ring> for Samples {
    fn from(ring: Ring) -> Self {
        let mut sorted = ring.values.clone();
        sorted.sort_unstable();
        Self {
            values: ring.values,
            next: ring.next,
            sorted,
        }
    }
}

/// What the samples say about a window `(elapsed, elapsed + horizon]`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WindowMass {
    /// Samples longer than `elapsed` (the event has not happened yet).
    pub above: usize,
    /// Samples inside the window.
    pub within: usize,
    /// Mean of `sample - elapsed` over the samples inside the window.
    pub mean_lead_ns: u64,
}

impl Samples {
    /// Records one duration, replacing the oldest when full.
    pub fn push(&mut self, value: u64) {
        if self.values.len() < CAPACITY {
            self.values.push(value);
        } else {
            let old = std::mem::replace(&mut self.values[self.next], value);
            self.next = (self.next + 1) % CAPACITY;
            if let Ok(index) = self.sorted.binary_search(&old) {
                self.sorted.remove(index);
            }
        }
        let index = self.sorted.partition_point(|&v| v < value);
        self.sorted.insert(index, value);
    }

    /// Number of stored samples.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether nothing was observed yet.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Largest stored sample.
    pub fn max(&self) -> u64 {
        self.sorted.last().copied().unwrap_or(0)
    }

    /// The sample below which a share `q` of the samples fall (nearest
    /// rank), 0 with none.
    pub fn quantile(&self, q: f64) -> u64 {
        let n = self.sorted.len();
        if n == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as usize).clamp(1, n);
        self.sorted[rank - 1]
    }

    /// How widely the samples spread: the 90th percentile minus the 10th.
    pub fn spread(&self) -> u64 {
        self.quantile(0.9) - self.quantile(0.1)
    }

    /// Smallest stored sample.
    pub fn min(&self) -> u64 {
        self.sorted.first().copied().unwrap_or(0)
    }

    /// Standard deviation over mean of the stored samples (0 with none):
    /// 1 for the gaps of random (Poisson) starts, near 0 for a clock's.
    pub fn variation(&self) -> f64 {
        let n = self.values.len();
        if n == 0 {
            return 0.0;
        }
        let mean = self.sum() as f64 / n as f64;
        if mean <= 0.0 {
            return 0.0;
        }
        let var = self
            .values
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / n as f64;
        var.sqrt() / mean
    }

    /// Sum of the stored samples.
    pub fn sum(&self) -> u64 {
        self.values.iter().sum()
    }

    /// Counts the samples beyond `elapsed` and those in
    /// `(elapsed, elapsed + horizon]`.
    pub fn window(&self, elapsed: u64, horizon: u64) -> WindowMass {
        let end = elapsed.saturating_add(horizon);
        let mut mass = WindowMass::default();
        let mut lead_sum = 0u64;
        for &value in &self.values {
            if value > elapsed {
                mass.above += 1;
                if value <= end {
                    mass.within += 1;
                    lead_sum += value - elapsed;
                }
            }
        }
        if mass.within > 0 {
            mass.mean_lead_ns = lead_sum / mass.within as u64;
        }
        mass
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_counts_and_forgets_oldest() {
        let mut samples = Samples::default();
        for value in [10, 20, 30, 40] {
            samples.push(value);
        }
        let mass = samples.window(15, 20);
        assert_eq!((mass.above, mass.within), (3, 2));
        assert_eq!(mass.mean_lead_ns, 10, "leads 5 and 15");
        for _ in 0..CAPACITY {
            samples.push(1000);
        }
        assert_eq!(samples.len(), CAPACITY);
        assert_eq!(samples.window(15, 20).above, CAPACITY);
        assert_eq!(samples.max(), 1000);
    }

    #[test]
    fn quantiles_follow_the_ring_and_survive_a_save() {
        let mut samples = Samples::default();
        // 1..=40: the ring keeps 25..=40.
        for value in 1..=40u64 {
            samples.push(value);
        }
        assert_eq!((samples.min(), samples.max()), (25, 40));
        assert_eq!(samples.quantile(0.5), 32);
        assert_eq!(samples.quantile(0.1), 26);
        assert_eq!(samples.spread(), 39 - 26);
        let text = serde_json::to_string(&samples).unwrap();
        assert!(!text.contains("sorted"), "{text}");
        let loaded: Samples = serde_json::from_str(&text).unwrap();
        assert_eq!(loaded, samples);
        assert_eq!(loaded.quantile(0.9), samples.quantile(0.9));
    }
}
