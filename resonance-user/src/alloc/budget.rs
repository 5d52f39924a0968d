//! Budgets for pre-created channels: idle channels in total and per pair,
//! descriptors held in clients' inboxes, and kernel buffer memory.
//!
//! [`Budget::admit`] is asked once per candidate preparation, most probable
//! first, against the current [`Usage`]: when the budget is spent the
//! remaining (less probable) ones are skipped. Skipping is never an error
//! for a client: its `open()` then misses and is served on demand.

use std::collections::HashMap;

/// The limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Idle pre-created channels in total.
    pub max_idle: usize,
    /// Idle pre-created channels per pair.
    pub max_idle_per_pair: usize,
    /// Descriptors of idle channels held by clients (two per channel).
    pub max_fds: usize,
    /// Kernel buffer memory of idle channels, bytes.
    pub max_memory: u64,
}

/// What idle channels use now.
#[derive(Clone, Debug, Default)]
pub struct Usage<K> {
    /// Idle channels per pair.
    pub per_pair: HashMap<K, usize>,
    /// Idle channels.
    pub idle: usize,
    /// Their buffer memory.
    pub memory: u64,
}

/// Why a preparation was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Over {
    /// Too many idle channels.
    Idle,
    /// Too many idle channels for this pair.
    PerPair,
    /// Too many descriptors.
    Fds,
    /// Too much buffer memory.
    Memory,
}

impl<K: std::hash::Hash + Eq + Clone> Usage<K> {
    /// Counts a new idle channel.
    pub fn add(&mut self, pair: &K, memory: u64) {
        *self.per_pair.entry(pair.clone()).or_default() += 1;
        self.idle += 1;
        self.memory += memory;
    }

    /// Forgets an idle channel (claimed, revoked or lost).
    pub fn remove(&mut self, pair: &K, memory: u64) {
        if let Some(n) = self.per_pair.get_mut(pair) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_pair.remove(pair);
            }
        }
        self.idle = self.idle.saturating_sub(1);
        self.memory = self.memory.saturating_sub(memory);
    }

    /// Idle channels of one pair.
    pub fn of(&self, pair: &K) -> usize {
        self.per_pair.get(pair).copied().unwrap_or(0)
    }
}

impl Budget {
    /// Whether one more idle channel of `memory` bytes for `pair` fits.
    pub fn admit<K: std::hash::Hash + Eq + Clone>(
        &self,
        usage: &Usage<K>,
        pair: &K,
        memory: u64,
    ) -> Result<(), Over> {
        if usage.idle + 1 > self.max_idle {
            return Err(Over::Idle);
        }
        if usage.of(pair) + 1 > self.max_idle_per_pair {
            return Err(Over::PerPair);
        }
        if (usage.idle + 1) * 2 > self.max_fds {
            return Err(Over::Fds);
        }
        if usage.memory + memory > self.max_memory {
            return Err(Over::Memory);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_limit_binds() {
        let budget = Budget {
            max_idle: 3,
            max_idle_per_pair: 2,
            max_fds: 4,
            max_memory: 300,
        };
        let mut usage = Usage::default();
        assert_eq!(budget.admit(&usage, &"a", 100), Ok(()));
        usage.add(&"a", 100);
        assert_eq!(budget.admit(&usage, &"a", 500), Err(Over::Memory));
        usage.add(&"a", 100);
        assert_eq!(budget.admit(&usage, &"a", 10), Err(Over::PerPair));
        assert_eq!(budget.admit(&usage, &"b", 10), Err(Over::Fds));
        usage.remove(&"a", 100);
        assert_eq!(budget.admit(&usage, &"b", 10), Ok(()));
        let none = Budget {
            max_idle: 0,
            ..budget
        };
        assert_eq!(none.admit(&Usage::default(), &"a", 1), Err(Over::Idle));
    }
}
