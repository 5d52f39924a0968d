//! Per-pair state with a size bound.
//!
//! Pairs come from what clients send and what the probes see, so a map
//! keyed by them grows with whatever shows up. [`BoundedMap`] keeps at most
//! `max` keys and forgets the least recently updated one when a new key
//! would exceed that: a forgotten pair starts over (default threshold and
//! capacity) the next time it shows up, which is what a pair nobody used
//! for that long deserves anyway.

use std::{
    collections::{BTreeMap, HashMap},
    hash::Hash,
};

/// A map from `K` to `V` holding at most `max` entries.
#[derive(Clone, Debug)]
pub struct BoundedMap<K, V> {
    entries: HashMap<K, (u64, V)>,
    /// Entries by the stamp of their last update, oldest first.
    order: BTreeMap<u64, K>,
    next: u64,
    max: usize,
}

impl<K: Clone + Eq + Hash, V> BoundedMap<K, V> {
    /// An empty map for at most `max` pairs (at least one).
    pub fn new(max: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next: 0,
            max: max.max(1),
        }
    }

    /// The pair's value; reading does not count as use.
    pub fn get(&self, pair: &K) -> Option<&V> {
        self.entries.get(pair).map(|(_, v)| v)
    }

    /// The pair's value for an update, which makes it the most recent.
    pub fn get_mut(&mut self, pair: &K) -> Option<&mut V> {
        self.touch(pair)?;
        self.entries.get_mut(pair).map(|(_, v)| v)
    }

    /// Sets the pair's value, making it the most recent.
    pub fn insert(&mut self, pair: K, value: V) {
        if let Some(slot) = self.get_mut(&pair) {
            *slot = value;
        } else {
            self.get_or_insert_with(&pair, || value);
        }
    }

    /// The pair's value for an update, created by `make` if the pair is
    /// new (evicting the least recently updated pair if the map is full).
    pub fn get_or_insert_with(&mut self, pair: &K, make: impl FnOnce() -> V) -> &mut V {
        if self.touch(pair).is_none() {
            if self.entries.len() >= self.max
                && let Some((_, oldest)) = self.order.pop_first()
            {
                self.entries.remove(&oldest);
            }
            let stamp = self.stamp();
            self.order.insert(stamp, pair.clone());
            self.entries.insert(pair.clone(), (stamp, make()));
        }
        &mut self
            .entries
            .get_mut(pair)
            .expect("present: found or inserted above")
            .1
    }

    /// Every pair and its value, least recently updated first (the order
    /// to insert them in to rebuild the map).
    pub fn oldest_first(&self) -> impl Iterator<Item = (&K, &V)> {
        self.order
            .values()
            .filter_map(|pair| Some((pair, &self.entries.get(pair)?.1)))
    }

    /// Every pair and its value, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(pair, (_, v))| (pair, v))
    }

    /// Pairs held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no pair is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Moves an existing pair to the most recent end; `None` if absent.
    fn touch(&mut self, pair: &K) -> Option<()> {
        let stamp = self.stamp();
        let (old, _) = self.entries.get_mut(pair)?;
        let old = std::mem::replace(old, stamp);
        if let Some(key) = self.order.remove(&old) {
            self.order.insert(stamp, key);
        }
        Some(())
    }

    fn stamp(&mut self) -> u64 {
        self.next += 1;
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Pair = (String, String);
    type PairMap<V> = BoundedMap<Pair, V>;

    fn pair(n: usize) -> Pair {
        (format!("r{n}"), "svc".to_owned())
    }

    #[test]
    fn the_least_recently_updated_pair_goes_first() {
        let mut map = PairMap::new(3);
        for n in 0..3 {
            map.insert(pair(n), n);
        }
        // Updating r0 makes r1 the oldest.
        *map.get_mut(&pair(0)).expect("r0") += 10;
        // Reading r1 does not save it.
        assert_eq!(map.get(&pair(1)), Some(&1));
        map.insert(pair(3), 3);
        assert_eq!(map.len(), 3);
        assert_eq!(map.get(&pair(1)), None);
        assert_eq!(map.get(&pair(0)), Some(&10));
        *map.get_or_insert_with(&pair(4), || 4) += 1;
        assert_eq!(map.get(&pair(2)), None);
        assert_eq!(map.get(&pair(4)), Some(&5));
        assert_eq!(map.len(), 3);
        let order: Vec<&Pair> = map.oldest_first().map(|(p, _)| p).collect();
        assert_eq!(order, [&pair(0), &pair(3), &pair(4)]);
    }

    #[test]
    fn many_pairs_stay_within_the_bound() {
        let mut map = PairMap::new(16);
        for n in 0..1000 {
            map.get_or_insert_with(&pair(n), || n);
            assert!(map.len() <= 16);
        }
        assert_eq!(map.order.len(), map.len());
        assert!((984..1000).all(|n| map.get(&pair(n)) == Some(&n)));
    }
}
