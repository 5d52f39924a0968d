//! The baselines the model is measured against, replayed on the same
//! events: [`StaticPool`] and [`RatioPreconnect`]. Both follow the replay's
//! rules: a channel serves a start within its TTL, or expires as waste.

use std::collections::VecDeque;

use super::{Figures, Tally};

/// How long a pair stays in the static pool after its last start.
pub const STATIC_KEEP_NS: u64 = 300_000_000_000;
/// Window over which the preconnect baseline measures a pair's rate.
pub const RATE_WINDOW_NS: u64 = 60_000_000_000;
/// Channels prepared per expected start within the TTL (Envoy's
/// `per_upstream_preconnect_ratio`).
pub const PRECONNECT_RATIO: f64 = 1.0;
/// Most channels the preconnect baseline keeps per pair.
pub const PRECONNECT_MAX: usize = 4;

/// Keeps one idle channel for every pair seen in the last five minutes:
/// replaced at once when used, and when it expires while the pair is still
/// in the pool.
pub struct StaticPool {
    ttl: u64,
    last_seen: Vec<Option<u64>>,
    channels: Vec<Option<u64>>,
    tally: Tally,
}

impl StaticPool {
    /// A pool for `pairs` pairs.
    pub fn new(pairs: usize, ttl: u64) -> Self {
        Self {
            ttl,
            last_seen: vec![None; pairs],
            channels: vec![None; pairs],
            tally: Tally::default(),
        }
    }

    /// Plays the expiries (and replacements) of a pair's channel up to `now`.
    fn settle(&mut self, pair: usize, now: u64) {
        while let Some(created) = self.channels[pair] {
            let expiry = created.saturating_add(self.ttl);
            if expiry >= now {
                break;
            }
            self.tally.waste(self.ttl);
            let in_pool = self.last_seen[pair]
                .is_some_and(|seen| expiry <= seen.saturating_add(STATIC_KEEP_NS));
            if in_pool {
                self.channels[pair] = Some(expiry);
                self.tally.created += 1;
            } else {
                self.channels[pair] = None;
            }
        }
    }

    /// A start of `pair` at `now`.
    pub fn interaction(&mut self, pair: usize, now: u64) {
        self.settle(pair, now);
        let lead = match self.channels[pair] {
            Some(created) if created < now => {
                self.channels[pair] = None;
                Some(now - created)
            }
            _ => None,
        };
        self.tally.start(lead);
        self.last_seen[pair] = Some(now);
        if self.channels[pair].is_none() {
            self.channels[pair] = Some(now);
            self.tally.created += 1;
        }
    }

    /// The pool's forecast: a pair in the pool is expected to start.
    pub fn brier(&mut self, pair: usize, now: u64, happened: bool) {
        let in_pool =
            self.last_seen[pair].is_some_and(|seen| now <= seen.saturating_add(STATIC_KEEP_NS));
        self.tally.brier(if in_pool { 1.0 } else { 0.0 }, happened);
    }

    /// Figures at the end of the trace.
    pub fn finish(mut self, end: u64) -> Figures {
        for pair in 0..self.channels.len() {
            self.settle(pair, end);
        }
        let (pending, idle) = still_ready(self.channels.iter().flatten(), end);
        self.tally.figures(pending, idle)
    }
}

/// Envoy-style preconnect: after each start of a pair, tops its ready
/// channels up to `ratio x rate x TTL` (at least one once the pair is
/// active, at most [`PRECONNECT_MAX`]), the rate measured over the last
/// minute. Channels are not replaced on expiry, only on traffic.
pub struct RatioPreconnect {
    ttl: u64,
    recent: Vec<VecDeque<u64>>,
    channels: Vec<VecDeque<u64>>,
    tally: Tally,
}

impl RatioPreconnect {
    /// The strategy for `pairs` pairs.
    pub fn new(pairs: usize, ttl: u64) -> Self {
        Self {
            ttl,
            recent: vec![VecDeque::new(); pairs],
            channels: vec![VecDeque::new(); pairs],
            tally: Tally::default(),
        }
    }

    fn settle(&mut self, pair: usize, now: u64) {
        while let Some(&created) = self.channels[pair].front() {
            if created.saturating_add(self.ttl) >= now {
                break;
            }
            self.channels[pair].pop_front();
            self.tally.waste(self.ttl);
        }
    }

    fn rate(&mut self, pair: usize, now: u64) -> f64 {
        let recent = &mut self.recent[pair];
        while recent
            .front()
            .is_some_and(|&ts| ts.saturating_add(RATE_WINDOW_NS) < now)
        {
            recent.pop_front();
        }
        recent.len() as f64 / RATE_WINDOW_NS as f64
    }

    /// A start of `pair` at `now`.
    pub fn interaction(&mut self, pair: usize, now: u64) {
        self.settle(pair, now);
        let lead = match self.channels[pair].front() {
            Some(&created) if created < now => {
                self.channels[pair].pop_front();
                Some(now - created)
            }
            _ => None,
        };
        self.tally.start(lead);
        self.recent[pair].push_back(now);
        let expected = self.rate(pair, now) * self.ttl as f64 * PRECONNECT_RATIO;
        let target = (expected.ceil() as usize).clamp(1, PRECONNECT_MAX);
        while self.channels[pair].len() < target {
            self.channels[pair].push_back(now);
            self.tally.created += 1;
        }
    }

    /// Forecast from the recent rate: Poisson chance of a start in the TTL.
    pub fn brier(&mut self, pair: usize, now: u64, happened: bool) {
        let rate = self.rate(pair, now);
        self.tally
            .brier(1.0 - (-rate * self.ttl as f64).exp(), happened);
    }

    /// Figures at the end of the trace.
    pub fn finish(mut self, end: u64) -> Figures {
        for pair in 0..self.channels.len() {
            self.settle(pair, end);
        }
        let (pending, idle) = still_ready(self.channels.iter().flatten(), end);
        self.tally.figures(pending, idle)
    }
}

/// Channels still ready at `end` (made at `created`): how many, and the
/// nanoseconds they sat idle until then.
fn still_ready<'a>(created: impl Iterator<Item = &'a u64>, end: u64) -> (u64, u128) {
    created.fold((0, 0), |(count, idle), &at| {
        (count + 1, idle + u128::from(end.saturating_sub(at)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn static_pool_replaces_on_use_and_expiry() {
        let mut pool = StaticPool::new(1, 5 * S);
        pool.interaction(0, 0);
        pool.interaction(0, 12 * S);
        let figures = pool.finish(12 * S);
        // Created at 0, expired at 5 (replaced), expired at 10 (replaced),
        // used at 12 and replaced.
        assert_eq!(figures.interactions, 2);
        assert_eq!(figures.hits, 1);
        assert_eq!(figures.created, 4);
        assert_eq!(figures.wasted, 2);
        assert_eq!(figures.pending, 1);
        assert_eq!(figures.lead_time_p50_ms, 2000.0);
        // Idle: 5 + 5 (expired) + 2 (used at 12) + 0 (pending, made at 12).
        assert!(
            (figures.idle_channel_seconds - 12.0).abs() < 1e-9,
            "{figures:?}"
        );
        assert!(
            (figures.idle_buffer_byte_seconds - 12.0 * crate::replay::channel_bytes() as f64).abs()
                < 1e-3
        );
    }

    #[test]
    fn static_pool_drops_pairs_idle_for_five_minutes() {
        let mut pool = StaticPool::new(1, 100 * S);
        pool.interaction(0, 0);
        pool.interaction(0, 1000 * S);
        let figures = pool.finish(1000 * S);
        assert_eq!(figures.hits, 0, "the pair left the pool");
        // Still in the pool at 300 s (seen exactly five minutes before).
        assert_eq!(figures.wasted, 4, "expiries at 100, 200, 300 and 400 s");
    }

    #[test]
    fn preconnect_scales_with_rate_and_does_not_refill_on_expiry() {
        let mut ratio = RatioPreconnect::new(1, 10 * S);
        for second in 0..30 {
            ratio.interaction(0, second * S);
        }
        ratio.interaction(0, 200 * S);
        let figures = ratio.finish(200 * S);
        assert_eq!(figures.interactions, 31);
        assert_eq!(
            figures.hits, 29,
            "all but the first and the one after the pause"
        );
        assert!(
            figures.created > figures.hits,
            "rate 1/s x 10 s asks for several"
        );
        assert_eq!(figures.pending, 1);
        assert_eq!(
            figures.created,
            figures.hits + figures.wasted + figures.pending
        );
    }
}
