//! In-memory accumulation between flushes: samples are summed per
//! (src, dst, kind) and fine bucket, so a flush writes one row per pair and
//! bucket however many samples arrived.

use std::collections::HashMap;

use resonance_common::HIST_BUCKETS;

use super::PairSample;

/// Sums of one bucket of one pair, as held in memory and as stored in a row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sums {
    /// Interactions started.
    pub interactions: u64,
    /// Messages (writes or sends) seen.
    pub messages: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Failed calls.
    pub errors: u64,
    /// Latency counts in the `resonance_common::histogram` layout.
    pub latency: [u64; HIST_BUCKETS],
}

impl Default for Sums {
    fn default() -> Self {
        Self {
            interactions: 0,
            messages: 0,
            bytes: 0,
            errors: 0,
            latency: [0; HIST_BUCKETS],
        }
    }
}

impl Sums {
    /// Adds a sample's counts. Counts past the last latency bucket are
    /// folded into it, so the latency total stays equal to what was reported.
    pub fn add_sample(&mut self, sample: &PairSample) {
        self.interactions = self.interactions.saturating_add(sample.interactions);
        self.messages = self.messages.saturating_add(sample.messages);
        self.bytes = self.bytes.saturating_add(sample.bytes);
        self.errors = self.errors.saturating_add(sample.errors);
        for (index, &count) in sample.latency.iter().enumerate() {
            let slot = &mut self.latency[index.min(HIST_BUCKETS - 1)];
            *slot = slot.saturating_add(count);
        }
    }

    /// Adds another bucket's sums (merging rows, rolling up).
    pub fn merge(&mut self, other: &Sums) {
        self.interactions = self.interactions.saturating_add(other.interactions);
        self.messages = self.messages.saturating_add(other.messages);
        self.bytes = self.bytes.saturating_add(other.bytes);
        self.errors = self.errors.saturating_add(other.errors);
        for (mine, theirs) in self.latency.iter_mut().zip(&other.latency) {
            *mine = mine.saturating_add(*theirs);
        }
    }

    /// Number of latency samples.
    pub fn latency_count(&self) -> u64 {
        self.latency.iter().fold(0, |sum, c| sum.saturating_add(*c))
    }
}

pub use crate::pair::PairKey;

/// Buckets of one pair by start (Unix seconds).
type ByStart = HashMap<i64, Sums>;
/// Pairs keyed by destination, then kind.
type ByDst = HashMap<String, HashMap<String, ByStart>>;

/// Samples accumulated since the last successful flush.
///
/// Nested maps so that `add` finds an existing pair by `&str` without
/// allocating; only a pair's first sample copies its names.
#[derive(Debug, Default)]
pub struct Batch {
    by_src: HashMap<String, ByDst>,
    buckets: usize,
}

impl Batch {
    /// Adds `sample` to the bucket of width `width_s` that holds it.
    pub fn add(&mut self, sample: &PairSample, width_s: i64) {
        let start_s = bucket_start(sample.at_ns, width_s);
        let by_dst = entry(&mut self.by_src, &sample.src);
        let by_kind = entry(by_dst, &sample.dst);
        let by_start = entry(by_kind, &sample.kind);
        let sums = by_start.entry(start_s).or_insert_with(|| {
            self.buckets += 1;
            Sums::default()
        });
        sums.add_sample(sample);
    }

    /// Number of (pair, bucket) rows a flush would write.
    pub fn len(&self) -> usize {
        self.buckets
    }

    /// True when nothing was added since the last clear.
    pub fn is_empty(&self) -> bool {
        self.buckets == 0
    }

    /// Every accumulated row, pairs in name order, buckets in time order.
    pub fn rows(&self) -> Vec<(PairKey, i64, &Sums)> {
        let mut rows = Vec::with_capacity(self.buckets);
        for (src, by_dst) in &self.by_src {
            for (dst, by_kind) in by_dst {
                for (kind, by_start) in by_kind {
                    let key = PairKey {
                        src: src.clone(),
                        dst: dst.clone(),
                        kind: kind.clone(),
                    };
                    for (&start_s, sums) in by_start {
                        rows.push((key.clone(), start_s, sums));
                    }
                }
            }
        }
        rows.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        rows
    }

    /// Forgets everything (after a successful flush).
    pub fn clear(&mut self) {
        self.by_src.clear();
        self.buckets = 0;
    }
}

/// Start (Unix seconds) of the bucket of width `width_s` holding `at_ns`;
/// buckets are aligned on the epoch so fine buckets nest in coarse ones.
pub fn bucket_start(at_ns: u64, width_s: i64) -> i64 {
    // u64 ns / 1e9 is below 2^35, so it fits in i64.
    let at_s = (at_ns / 1_000_000_000) as i64;
    at_s - at_s.rem_euclid(width_s)
}

/// `map[key]`, inserting an empty value (and copying `key`) only when absent.
fn entry<'m, V: Default>(map: &'m mut HashMap<String, V>, key: &str) -> &'m mut V {
    if !map.contains_key(key) {
        map.insert(key.to_owned(), V::default());
    }
    // Inserted just above when it was missing.
    map.get_mut(key).unwrap_or_else(|| unreachable!())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_s: u64, src: &str, bytes: u64) -> PairSample {
        PairSample {
            at_ns: at_s * 1_000_000_000 + 123,
            src: src.to_owned(),
            dst: "db".to_owned(),
            kind: "unix_stream".to_owned(),
            interactions: 1,
            messages: 2,
            bytes,
            errors: 0,
            latency: vec![1; HIST_BUCKETS + 3],
        }
    }

    #[test]
    fn samples_sum_per_pair_and_bucket() {
        let mut batch = Batch::default();
        batch.add(&sample(100, "api", 10), 10);
        batch.add(&sample(109, "api", 5), 10);
        batch.add(&sample(110, "api", 1), 10);
        batch.add(&sample(100, "web", 7), 10);
        assert_eq!(batch.len(), 3);
        let rows = batch.rows();
        let summary: Vec<(&str, i64, u64)> = rows
            .iter()
            .map(|(key, start, sums)| (key.src.as_str(), *start, sums.bytes))
            .collect();
        assert_eq!(
            summary,
            vec![("api", 100, 15), ("api", 110, 1), ("web", 100, 7)]
        );
        // Two samples, each with 3 extra buckets folded into the last one.
        assert_eq!(rows[0].2.latency[HIST_BUCKETS - 1], 8);
        assert_eq!(rows[0].2.latency_count(), 2 * (HIST_BUCKETS as u64 + 3));
        batch.clear();
        assert!(batch.is_empty());
        assert!(batch.rows().is_empty());
    }

    #[test]
    fn buckets_align_on_the_epoch() {
        assert_eq!(bucket_start(0, 10), 0);
        assert_eq!(bucket_start(9_999_999_999, 10), 0);
        assert_eq!(bucket_start(10_000_000_000, 10), 10);
        assert_eq!(bucket_start(125_000_000_000, 60), 120);
    }
}
