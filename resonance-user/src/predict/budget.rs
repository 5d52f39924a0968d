//! [`WasteBudget`]: the threshold channels are prepared at, moved so that
//! the share of prepared channels that expire unused stays near a target.
//!
//! A fixed threshold cannot serve every workload: on a web stack a channel
//! for a request the model rates at 5 % is usually used (requests come in
//! bursts), while in a shell loop most such channels expire. The budget
//! spends the waste a sysadmin accepts where it buys hits: it starts at the
//! floor, and each outcome moves the threshold by the gap between the
//! running waste ratio (over the last [`MEMORY`] outcomes) and the target.
//! The long memory matters: a quiet night wastes a few channels in a row,
//! and a threshold that jumped at each would miss the morning's first
//! requests.

use serde::{Deserialize, Serialize};

/// Outcomes the running waste ratio remembers.
pub const MEMORY: f64 = 1000.0;

/// What the budget aims at, and its bounds below.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BudgetSettings {
    /// Share of prepared channels allowed to expire unused.
    pub target: f64,
    /// Lowest threshold the budget goes down to.
    pub floor: f64,
    /// How far one outcome moves the threshold per unit of ratio error.
    pub step: f64,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        Self {
            target: 0.10,
            floor: 0.02,
            step: 0.001,
        }
    }
}

/// A threshold between a floor and a ceiling that follows the running
/// waste ratio toward a target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WasteBudget {
    settings: BudgetSettings,
    ceiling: f64,
    threshold: f64,
    used: f64,
    wasted: f64,
}

impl WasteBudget {
    /// A budget that never goes above `ceiling` (the configured threshold:
    /// a channel is prepared at least from there). It starts at the floor.
    pub fn new(settings: BudgetSettings, ceiling: f64) -> Self {
        let floor = settings.floor.min(ceiling);
        Self {
            threshold: floor,
            settings: BudgetSettings { floor, ..settings },
            ceiling,
            used: 0.0,
            wasted: 0.0,
        }
    }

    /// The threshold now.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// The waste ratio it aims at.
    pub fn target(&self) -> f64 {
        self.settings.target
    }

    /// Its settings (the floor as it applies under the ceiling).
    pub fn settings(&self) -> &BudgetSettings {
        &self.settings
    }

    /// Outcomes it remembers (decayed, at most about [`MEMORY`]).
    pub fn outcomes(&self) -> f64 {
        self.used + self.wasted
    }

    /// The highest it goes.
    pub fn ceiling(&self) -> f64 {
        self.ceiling
    }

    /// The running waste ratio (0 before any outcome).
    pub fn waste_ratio(&self) -> f64 {
        let total = self.used + self.wasted;
        if total > 0.0 {
            self.wasted / total
        } else {
            0.0
        }
    }

    /// A prepared channel was used.
    pub fn used(&mut self) {
        self.record(false);
    }

    /// A prepared channel expired unused.
    pub fn wasted(&mut self) {
        self.record(true);
    }

    fn record(&mut self, wasted: bool) {
        let keep = 1.0 - 1.0 / MEMORY;
        self.used = self.used * keep + f64::from(u8::from(!wasted));
        self.wasted = self.wasted * keep + f64::from(u8::from(wasted));
        let error = self.waste_ratio() - self.settings.target;
        self.threshold =
            (self.threshold + self.settings.step * error).clamp(self.settings.floor, self.ceiling);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget() -> WasteBudget {
        WasteBudget::new(
            BudgetSettings {
                target: 0.1,
                floor: 0.05,
                step: 0.01,
            },
            0.6,
        )
    }

    #[test]
    fn starts_at_the_floor_and_stays_there_under_the_target() {
        let mut budget = budget();
        assert_eq!(budget.threshold(), 0.05);
        for _ in 0..500 {
            for _ in 0..19 {
                budget.used();
            }
            budget.wasted();
        }
        assert!((budget.waste_ratio() - 0.05).abs() < 0.01);
        assert_eq!(budget.threshold(), 0.05);
    }

    #[test]
    fn rises_while_waste_runs_above_the_target_and_comes_back() {
        let mut budget = budget();
        for _ in 0..300 {
            budget.used();
            budget.wasted();
        }
        let raised = budget.threshold();
        assert!(raised > 0.5, "{raised}");
        for _ in 0..5000 {
            budget.wasted();
        }
        assert_eq!(budget.threshold(), 0.6, "never above the ceiling");
        for _ in 0..20_000 {
            budget.used();
        }
        assert_eq!(budget.threshold(), 0.05);
    }

    #[test]
    fn a_floor_above_the_ceiling_is_the_ceiling() {
        let budget = WasteBudget::new(BudgetSettings::default(), 0.01);
        assert_eq!(budget.threshold(), 0.01);
    }
}
