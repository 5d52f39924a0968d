//! [`Markov`]: a chain over the interaction stream, order 1 and order 2.
//! Each context (last interaction, or last two) owns a [`Table`] of decayed
//! next-interaction counts. Predictions back off from order 2 to order 1 in
//! proportion to the order-2 context's evidence, so the higher order only
//! speaks where the data supports it.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{
    PairId,
    table::{Table, smoothed},
};

/// The chain and where the stream currently stands.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Markov {
    /// Order-1 contexts, keyed by the last interaction.
    pub first: HashMap<PairId, Table>,
    /// Order-2 contexts, keyed by the last two interactions (older first).
    #[serde(with = "pair_keyed")]
    pub second: HashMap<(PairId, PairId), Table>,
    /// Latest interaction and its time.
    pub last: Option<(PairId, u64)>,
    /// The interaction before it.
    pub previous: Option<PairId>,
}

/// Tuning of the chain, taken from the model configuration.
#[derive(Clone, Copy, Debug)]
pub struct ChainParams {
    /// Decay per context occurrence.
    pub decay: f64,
    /// Dirichlet prior mass.
    pub alpha: f64,
    /// Order-2 evidence at which it weighs as much as order 1.
    pub order2_support: f64,
    /// Most followers per context.
    pub max_entries: usize,
    /// Most order-2 contexts kept.
    pub max_contexts: usize,
    /// Longest delay at which the next interaction still follows (the
    /// sliding window W).
    pub window_ns: u64,
}

impl Markov {
    /// Learns the transition into `pair` at `ts`.
    pub fn observe(&mut self, pair: PairId, ts: u64, params: &ChainParams) {
        if let Some((last, last_ts)) = self.last {
            let delay = ts.saturating_sub(last_ts);
            // A next interaction later than the window is no sequence,
            // just what happened to come next on a quiet host: the
            // context occurred, and was not followed.
            let follows = delay <= params.window_ns;
            let table = self.first.entry(last).or_default();
            table.occur(params.decay);
            if follows {
                table.credit(pair, delay, params.decay, params.max_entries);
            }
            if let Some(previous) = self.previous {
                if !self.second.contains_key(&(previous, last))
                    && self.second.len() >= params.max_contexts
                {
                    self.evict_weakest_second();
                }
                let table = self.second.entry((previous, last)).or_default();
                table.occur(params.decay);
                if follows {
                    table.credit(pair, delay, params.decay, params.max_entries);
                }
            }
            self.previous = Some(last);
        }
        self.last = Some((pair, ts));
    }

    fn evict_weakest_second(&mut self) {
        let weakest = self
            .second
            .iter()
            .min_by(|(ka, a), (kb, b)| a.weight.total_cmp(&b.weight).then(ka.cmp(kb)))
            .map(|(key, _)| *key);
        if let Some(key) = weakest {
            self.second.remove(&key);
        }
    }

    /// Calls `sink(pair, p_next, table, entry index)` for every candidate
    /// next interaction (or only `only`), with its backed-off probability.
    /// `share(pair)` is the prior share of a pair (Dirichlet base measure).
    pub fn candidates(
        &self,
        params: &ChainParams,
        only: Option<PairId>,
        share: impl Fn(PairId) -> f64,
        mut sink: impl FnMut(PairId, f64, &Table, usize),
    ) {
        let Some((last, _)) = self.last else {
            return;
        };
        let Some(first) = self.first.get(&last) else {
            return;
        };
        let second = self
            .previous
            .and_then(|previous| self.second.get(&(previous, last)));
        let lambda = second.map_or(0.0, |table| {
            table.weight / (table.weight + params.order2_support)
        });
        for (index, entry) in first.entries.iter().enumerate() {
            if only.is_some_and(|pair| pair != entry.pair) {
                continue;
            }
            let prior = share(entry.pair);
            let p1 = smoothed(
                first.count(entry, params.decay),
                first.weight,
                params.alpha,
                prior,
            );
            let p2 = second
                .and_then(|table| {
                    table
                        .entries
                        .iter()
                        .find(|other| other.pair == entry.pair)
                        .map(|other| (table, other))
                })
                .map_or_else(
                    || {
                        second.map_or(0.0, |table| {
                            smoothed(0.0, table.weight, params.alpha, prior)
                        })
                    },
                    |(table, other)| {
                        smoothed(
                            table.count(other, params.decay),
                            table.weight,
                            params.alpha,
                            prior,
                        )
                    },
                );
            sink(entry.pair, lambda * p2 + (1.0 - lambda) * p1, first, index);
        }
    }

    /// Forgets everything about an evicted pair.
    pub fn remove(&mut self, pair: PairId) {
        self.first.remove(&pair);
        self.second.retain(|(a, b), _| *a != pair && *b != pair);
        for table in self.first.values_mut().chain(self.second.values_mut()) {
            table.remove(pair);
        }
        if self.last.is_some_and(|(last, _)| last == pair) {
            self.last = None;
            self.previous = None;
        }
        if self.previous == Some(pair) {
            self.previous = None;
        }
    }
}

/// JSON object keys must be strings, so the order-2 map is stored as a list.
mod pair_keyed {
    use std::collections::HashMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{PairId, Table};

    pub fn serialize<S: Serializer>(
        map: &HashMap<(PairId, PairId), Table>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut list: Vec<(&(PairId, PairId), &Table)> = map.iter().collect();
        list.sort_by_key(|(key, _)| **key);
        list.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<HashMap<(PairId, PairId), Table>, D::Error> {
        let list: Vec<((PairId, PairId), Table)> = Vec::deserialize(deserializer)?;
        Ok(list.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> ChainParams {
        ChainParams {
            decay: 0.95,
            alpha: 1.0,
            order2_support: 2.0,
            max_entries: 8,
            max_contexts: 16,
            window_ns: 30,
        }
    }

    fn next_probabilities(chain: &Markov) -> Vec<(PairId, f64)> {
        let mut out = Vec::new();
        chain.candidates(
            &params(),
            None,
            |_| 0.05,
            |pair, p, _, _| out.push((pair, p)),
        );
        out.sort_by_key(|(pair, _)| *pair);
        out
    }

    /// What comes next after longer than the window is not a sequence: on
    /// a quiet host it is whatever happened to run next.
    #[test]
    fn a_next_interaction_past_the_window_is_not_learnt() {
        let mut chain = Markov::default();
        let mut ts = 0;
        for _ in 0..10 {
            chain.observe(1, ts, &params());
            chain.observe(2, ts + 40, &params());
            chain.observe(3, ts + 50, &params());
            ts += 100;
        }
        chain.observe(1, ts, &params());
        assert!(
            next_probabilities(&chain)
                .iter()
                .all(|(pair, _)| *pair != 2)
        );
        chain.observe(2, ts + 40, &params());
        let after_two = next_probabilities(&chain);
        assert!(
            after_two.iter().any(|(pair, p)| *pair == 3 && *p > 0.8),
            "{after_two:?}"
        );
    }

    #[test]
    fn order_two_disambiguates_a_shared_step() {
        // Streams 1,3,4 and 2,3,5 alternate: after 3 the next depends on
        // what came before it, which only order 2 can see.
        let mut chain = Markov::default();
        let mut ts = 0;
        for _ in 0..30 {
            for pair in [1, 3, 4, 2, 3, 5] {
                ts += 10;
                chain.observe(pair, ts, &params());
            }
        }
        chain.observe(1, ts + 10, &params());
        chain.observe(3, ts + 20, &params());
        let probabilities = next_probabilities(&chain);
        let p4 = probabilities
            .iter()
            .find(|(pair, _)| *pair == 4)
            .map(|(_, p)| *p);
        let p5 = probabilities
            .iter()
            .find(|(pair, _)| *pair == 5)
            .map(|(_, p)| *p);
        assert!(p4.unwrap_or(0.0) > 0.8, "{probabilities:?}");
        assert!(p5.unwrap_or(1.0) < 0.2, "{probabilities:?}");
    }
}
