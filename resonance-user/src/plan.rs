//! The planner: which pairs get a channel now, and how many, under one
//! threshold policy. The broker's preparation pass runs it on the wall
//! clock; `resonance replay` and the retraining holdout run the very same
//! code in event time, so their figures describe what the agent does.
//!
//! **Threshold.** Host-wide, a [`WasteBudget`] keeps the share of prepared
//! channels that expire unused near its target, moving the threshold
//! between a floor and the configured threshold (the ceiling: from there a
//! channel is always prepared). With a fixed threshold instead
//! (`waste_budget = 0`), a per-pair *margin* holds a pair that wastes more
//! than its share above it: over the pair's last [`WINDOW`] outcomes, more
//! than half wasted (with at least [`RAISE_EVIDENCE`] of them) raises it by
//! [`STEP`] times the channel's
//! cost relative to a default one (at most [`MAX_COST`]); a full window
//! with at most one in eight wasted lowers it by half a step; it never
//! goes below 0, and the pair's threshold (fixed + margin) never above
//! `threshold_max`. After a change the window starts over, so each step
//! rests on fresh evidence. Under a budget the margins stay at 0: the
//! budget is the one waste control, and margins raised while its long
//! memory catches up were measured to cost the very hits it buys (web
//! scenario, seed 1: 12,485 hits instead of 12,536).
//!
//! **Which pairs.** [`Model::due`] at the host-wide threshold (a sharp
//! periodic pair waits for its moment, a heralded pair for its herald, a
//! pair too new for its timing is judged by how the host's young pairs
//! recur: every channel answers to the same threshold), then each
//! pair held to its own threshold. **How many.** One; two for a
//! near-certain pair whose starts come faster than a replacement reaches
//! the client (half its gaps under [`PlanSettings::replacement_ns`]). In
//! event time a replacement is instant, so a replay never keeps two.

pub mod bounded;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::predict::{
    Model, PairId, PairKey,
    budget::{BudgetSettings, WasteBudget},
};
use bounded::BoundedMap;

/// Outcomes remembered per pair for its margin.
pub const WINDOW: usize = 8;
/// Outcomes needed before a margin is raised.
pub const RAISE_EVIDENCE: usize = 4;
/// Waste share of the window above which the margin is raised.
pub const WASTE_HIGH: f64 = 0.5;
/// Waste share of a full window at or below which it is lowered.
pub const WASTE_LOW: f64 = 0.125;
/// Margin step up for a channel of default cost; lowering steps half as
/// far, so a pair does not oscillate.
pub const STEP: f64 = 0.1;
/// Most a channel's cost multiplies the step up by.
pub const MAX_COST: f64 = 3.0;
/// A pair this likely to start within the TTL may keep two channels.
pub const TWO_CHANNELS_FROM: f64 = 0.9;

/// The planner's settings; the defaults are the agent's and the replay's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanSettings {
    /// How long a prepared channel waits for its start; also the horizon
    /// of the predictions.
    pub ttl_ns: u64,
    /// Probability from which a channel is always prepared: the waste
    /// budget's ceiling, or the fixed threshold without a budget.
    pub threshold: f64,
    /// Highest a pair's own threshold goes.
    pub threshold_max: f64,
    /// The waste budget; `None` keeps the threshold fixed.
    pub budget: Option<BudgetSettings>,
    /// How long a replacement channel takes to reach the client after a
    /// hit (0 in event time).
    pub replacement_ns: u64,
    /// Pairs whose margins are kept (least recently updated forgotten).
    pub max_pairs: usize,
}

/// Default channel TTL.
pub const DEFAULT_TTL_NS: u64 = 5_000_000_000;
/// Default threshold (the budget's ceiling).
pub const DEFAULT_THRESHOLD: f64 = 0.6;
/// Default highest per-pair threshold.
pub const DEFAULT_THRESHOLD_MAX: f64 = 0.95;

impl Default for PlanSettings {
    fn default() -> Self {
        Self {
            ttl_ns: DEFAULT_TTL_NS,
            threshold: DEFAULT_THRESHOLD,
            threshold_max: DEFAULT_THRESHOLD_MAX,
            budget: Some(BudgetSettings::default()),
            replacement_ns: 0,
            max_pairs: 4096,
        }
    }
}

/// How a prepared channel, or an open, turned out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A prepared channel was claimed by its start.
    Hit,
    /// A prepared channel expired or was dropped unused.
    Waste,
    /// A start found no prepared channel.
    Miss,
}

impl Outcome {
    /// `hit`, `waste` or `miss`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Waste => "waste",
            Self::Miss => "miss",
        }
    }
}

/// A pair's threshold above the host-wide one, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Margin {
    /// Added to the host-wide threshold.
    pub margin: f64,
    /// Why it is what it is.
    pub reason: String,
    window: VecDeque<Outcome>,
}

impl Default for Margin {
    fn default() -> Self {
        Self {
            margin: 0.0,
            reason: "none: no pair-specific evidence yet".to_owned(),
            window: VecDeque::with_capacity(WINDOW),
        }
    }
}

/// A change of a pair's margin, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct MarginChange {
    /// Whether it went up.
    pub raised: bool,
    /// Why, for logs and `explain`.
    pub reason: String,
}

/// Channels to make for one pair now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prepare {
    /// The pair ([`Model::key`] names it).
    pub pair: PairId,
    /// How many more channels it should have.
    pub count: usize,
    /// Its probability of a start within the TTL.
    pub probability: f64,
}

/// The planner's state: the waste budget and the pairs' margins.
#[derive(Clone, Debug)]
pub struct Planner {
    settings: PlanSettings,
    budget: Option<WasteBudget>,
    margins: BoundedMap<PairKey, Margin>,
}

/// What of a planner outlives a restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedPlanner {
    /// The host-wide budget.
    pub budget: Option<WasteBudget>,
    /// The margins, least recently updated first.
    pub margins: Vec<(PairKey, Margin)>,
}

impl Planner {
    /// A planner starting at the budget's floor with no margins.
    pub fn new(settings: PlanSettings) -> Self {
        Self {
            budget: settings
                .budget
                .as_ref()
                .map(|budget| WasteBudget::new(budget.clone(), settings.threshold)),
            margins: BoundedMap::new(settings.max_pairs),
            settings,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &PlanSettings {
        &self.settings
    }

    /// The host-wide threshold now.
    pub fn threshold(&self) -> f64 {
        self.budget
            .as_ref()
            .map_or(self.settings.threshold, WasteBudget::threshold)
    }

    /// What a wasted channel costs in hits when judging a model: under a
    /// waste budget what the budget trades it for, with a fixed threshold
    /// the threshold's own trade-off.
    pub fn waste_cost(&self) -> f64 {
        let rate = self
            .settings
            .budget
            .as_ref()
            .map_or(self.settings.threshold, |budget| budget.target);
        crate::predict::retrain::waste_cost(rate)
    }

    /// The threshold `key`'s channels are prepared at.
    pub fn threshold_of(&self, key: &PairKey) -> f64 {
        let margin = self.margins.get(key).map_or(0.0, |m| m.margin);
        (self.threshold() + margin).min(self.settings.threshold_max.max(self.threshold()))
    }

    /// Why `key`'s threshold is what it is.
    pub fn reason_of(&self, key: &PairKey) -> String {
        let host = match &self.budget {
            Some(budget) => format!(
                "host-wide {:.2} (waste budget {:.2}, running waste {:.2})",
                budget.threshold(),
                budget.target(),
                budget.waste_ratio()
            ),
            None => format!("host-wide {:.2} (fixed)", self.settings.threshold),
        };
        match self.margins.get(key) {
            Some(m) if m.margin > 0.0 => format!("{host} + {:.2}: {}", m.margin, m.reason),
            _ => host,
        }
    }

    /// Channels to make at `now`: for every pair the caller can serve
    /// (`ready` gives how many channels it has ready, `None` for a pair it
    /// cannot serve), how many more it should have.
    pub fn plan(
        &self,
        model: &Model,
        now: u64,
        ready: impl Fn(&PairKey) -> Option<usize>,
    ) -> Vec<Prepare> {
        let ttl = self.settings.ttl_ns.max(1);
        let step = (ttl / 8).max(1);
        let wanted = |id: PairId| {
            model
                .key(id)
                .and_then(&ready)
                .is_some_and(|ready| ready < 2)
        };
        let host = self.threshold();
        let mut plans = Vec::new();
        for due in model.due(now, ttl, host, step, wanted) {
            let Some(key) = model.key(due.pair) else {
                continue;
            };
            let own = self.threshold_of(key);
            if own > host && (due.probability < own || model.need(due.pair, now, ttl) < own) {
                continue;
            }
            let bursty = model
                .typical_gap(due.pair)
                .is_some_and(|gap| gap < self.settings.replacement_ns);
            let stock = if due.probability >= TWO_CHANNELS_FROM && bursty {
                2
            } else {
                1
            };
            let have = ready(key).unwrap_or(stock);
            if have < stock {
                plans.push(Prepare {
                    pair: due.pair,
                    count: stock - have,
                    probability: due.probability,
                });
            }
        }
        plans
    }

    /// Whether a pair whose channel just expired at `at` should get
    /// another at once: its need still clears its threshold (no waiting
    /// for a better moment: it was already judged worth a channel).
    pub fn still_due(&self, model: &Model, pair: PairId, at: u64) -> bool {
        let Some(key) = model.key(pair) else {
            return false;
        };
        model.need(pair, at, self.settings.ttl_ns) >= self.threshold_of(key)
    }

    /// Records how one of `key`'s channels (or opens) turned out: the
    /// budget hears of hits and waste, the pair's margin of everything.
    /// `cost` is the channel's buffer memory relative to a default one.
    /// Returns the margin's change, if any.
    pub fn outcome(&mut self, key: &PairKey, outcome: Outcome, cost: f64) -> Option<MarginChange> {
        if let Some(budget) = &mut self.budget {
            match outcome {
                Outcome::Hit => budget.used(),
                Outcome::Waste => budget.wasted(),
                Outcome::Miss => {}
            }
        }
        let ceiling = (self.settings.threshold_max - self.threshold()).max(0.0);
        let margin = self.margins.get_or_insert_with(key, Margin::default);
        if margin.window.len() == WINDOW {
            margin.window.pop_front();
        }
        margin.window.push_back(outcome);
        let n = margin.window.len();
        let waste = margin
            .window
            .iter()
            .filter(|o| **o == Outcome::Waste)
            .count();
        let share = waste as f64 / n as f64;
        // Under a waste budget the budget is the one waste control (its
        // long memory judges the host, and margins raised while it catches
        // up cost the hits it would buy); margins hold pairs of a fixed
        // threshold.
        if self.budget.is_some() {
            return None;
        }
        let (next, raised) = if n >= RAISE_EVIDENCE && share > WASTE_HIGH {
            (margin.margin + STEP * cost.clamp(1.0, MAX_COST), true)
        } else if n >= WINDOW && share <= WASTE_LOW {
            (margin.margin - STEP / 2.0, false)
        } else {
            return None;
        };
        let next = next.clamp(0.0, ceiling);
        if (next - margin.margin).abs() < 1e-9 {
            return None;
        }
        let reason = format!(
            "{} from {:.2} to {next:.2}: {waste} of the last {n} channels wasted",
            if raised {
                "margin raised"
            } else {
                "margin lowered"
            },
            margin.margin
        );
        margin.margin = next;
        margin.reason = reason.clone();
        margin.window.clear();
        Some(MarginChange { raised, reason })
    }

    /// What to save across a restart.
    pub fn saved(&self) -> SavedPlanner {
        SavedPlanner {
            budget: self.budget.clone(),
            margins: self
                .margins
                .oldest_first()
                .map(|(key, margin)| (key.clone(), margin.clone()))
                .collect(),
        }
    }

    /// Takes back what [`Planner::saved`] returned; a budget saved under
    /// other settings is left for a fresh one.
    pub fn restore(&mut self, saved: SavedPlanner) {
        if let (Some(saved), Some(current)) = (saved.budget, &self.budget)
            && saved.settings() == current.settings()
            && saved.ceiling() == current.ceiling()
        {
            self.budget = Some(saved);
        }
        for (key, margin) in saved.margins {
            self.margins.insert(key, margin);
        }
    }
}

#[cfg(test)]
mod tests;
