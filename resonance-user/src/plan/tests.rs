use super::*;
use crate::trace::TraceEvent;

const S: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;

fn key(src: &str) -> PairKey {
    PairKey {
        src: src.to_owned(),
        dst: "db".to_owned(),
        kind: "pipe".to_owned(),
    }
}

fn event(ts_ns: u64, src: &str) -> TraceEvent {
    TraceEvent {
        ts_ns,
        src: src.to_owned(),
        dst: "db".to_owned(),
        kind: "pipe".to_owned(),
        bytes: 0,
        latency_ns: 0,
        error: false,
    }
}

fn fixed(threshold: f64) -> PlanSettings {
    PlanSettings {
        threshold,
        budget: None,
        ..PlanSettings::default()
    }
}

/// A pair wasting most of its channels is held above the host-wide
/// threshold, step by step up to the most a pair may have, and comes back
/// down once its channels are used again; other pairs are not moved.
#[test]
fn a_wasteful_pair_gets_a_margin_that_clean_windows_take_back() {
    let mut planner = Planner::new(fixed(0.5));
    let web = key("web");
    for _ in 0..3 {
        assert_eq!(planner.outcome(&web, Outcome::Waste, 1.0), None);
    }
    let change = planner.outcome(&web, Outcome::Waste, 1.0).expect("raised");
    assert!(change.raised, "{change:?}");
    assert!((planner.threshold_of(&web) - 0.6).abs() < 1e-9);
    assert_eq!(planner.threshold_of(&key("cron")), 0.5);
    // A costly channel steps further; never past threshold_max.
    for _ in 0..40 {
        planner.outcome(&web, Outcome::Waste, 3.0);
    }
    assert!((planner.threshold_of(&web) - 0.95).abs() < 1e-9);
    for _ in 0..8 {
        planner.outcome(&web, Outcome::Hit, 1.0);
    }
    assert!((planner.threshold_of(&web) - 0.9).abs() < 1e-9);
    assert!(
        planner.reason_of(&web).contains("margin lowered"),
        "{}",
        planner.reason_of(&web)
    );
    for _ in 0..80 {
        planner.outcome(&web, Outcome::Hit, 1.0);
    }
    assert_eq!(
        planner.threshold_of(&web),
        0.5,
        "never below the host-wide level"
    );
}

/// The budget hears hits and waste, not misses, and a pair's threshold
/// follows it.
#[test]
fn the_host_wide_threshold_follows_the_waste_budget() {
    let mut planner = Planner::new(PlanSettings::default());
    let start = planner.threshold();
    assert_eq!(start, BudgetSettings::default().floor);
    for _ in 0..200 {
        planner.outcome(&key("a"), Outcome::Miss, 1.0);
    }
    assert_eq!(planner.threshold(), start);
    for n in 0..400 {
        let pair = key(&format!("p{n}"));
        planner.outcome(&pair, Outcome::Waste, 1.0);
    }
    assert!(planner.threshold() > start + 0.2, "{}", planner.threshold());
    assert_eq!(planner.threshold_of(&key("fresh")), planner.threshold());
}

/// A pair every 10 ms: near certain within the TTL. Two channels only
/// when a replacement takes longer than its gaps; none for a pair the
/// caller cannot serve or that already has its stock.
#[test]
fn two_channels_only_where_a_replacement_would_come_too_late() {
    let mut model = Model::default();
    for n in 0..40 {
        model.observe(&event(n * 10 * MS, "web"));
    }
    let now = 400 * MS;
    let slow = Planner::new(PlanSettings {
        replacement_ns: 50 * MS,
        ..fixed(0.5)
    });
    let plans = slow.plan(&model, now, |_| Some(0));
    assert_eq!(plans.len(), 1, "{plans:?}");
    assert_eq!(plans[0].count, 2);
    assert_eq!(slow.plan(&model, now, |_| Some(1))[0].count, 1);
    assert!(slow.plan(&model, now, |_| Some(2)).is_empty());
    assert!(slow.plan(&model, now, |_| None).is_empty());
    let instant = Planner::new(fixed(0.5));
    assert_eq!(instant.plan(&model, now, |_| Some(0))[0].count, 1);
}

/// A pair held high by its margin gets no channel at a probability the
/// host-wide threshold would take.
#[test]
fn a_pair_is_held_to_its_own_threshold() {
    let mut model = Model::default();
    // Starts every 4 s: at 3 s after the last, a start within the 5 s TTL
    // is likely (the model is never quite certain).
    for n in 0..20 {
        model.observe(&event(n * 4 * S, "web"));
    }
    let now = 19 * 4 * S + 3 * S;
    let mut planner = Planner::new(PlanSettings {
        threshold_max: 1.0,
        ..fixed(0.3)
    });
    let before = planner.plan(&model, now, |_| Some(0));
    assert_eq!(before.len(), 1, "{before:?}");
    let probability = before[0].probability;
    assert!(probability < 0.99, "{probability}");
    for _ in 0..40 {
        planner.outcome(&key("web"), Outcome::Waste, 3.0);
    }
    assert!(planner.threshold_of(&key("web")) > probability);
    assert!(planner.plan(&model, now, |_| Some(0)).is_empty());
}

#[test]
fn margins_and_the_budget_survive_a_restart() {
    let mut budgeted = Planner::new(PlanSettings::default());
    for _ in 0..300 {
        budgeted.outcome(&key("web"), Outcome::Waste, 1.0);
    }
    let saved = budgeted.saved();
    let mut restarted = Planner::new(PlanSettings::default());
    restarted.restore(saved.clone());
    assert!(restarted.threshold() > PlanSettings::default().budget.unwrap_or_default().floor);
    assert_eq!(restarted.threshold(), budgeted.threshold());
    // A budget saved under another target starts afresh.
    let other_settings = PlanSettings {
        budget: Some(BudgetSettings {
            target: 0.2,
            ..BudgetSettings::default()
        }),
        ..PlanSettings::default()
    };
    let mut other = Planner::new(other_settings);
    let fresh = other.threshold();
    other.restore(saved);
    assert_eq!(other.threshold(), fresh);
    // Margins of a fixed threshold come back too.
    let mut fixed_planner = Planner::new(fixed(0.5));
    for _ in 0..4 {
        fixed_planner.outcome(&key("web"), Outcome::Waste, 1.0);
    }
    let mut again = Planner::new(fixed(0.5));
    again.restore(fixed_planner.saved());
    assert!((again.threshold_of(&key("web")) - 0.6).abs() < 1e-9);
}

/// Under a waste budget the budget is the one control: no pair gets a
/// margin however much it wastes.
#[test]
fn under_a_budget_no_pair_gets_a_margin() {
    let mut planner = Planner::new(PlanSettings::default());
    for _ in 0..50 {
        assert_eq!(planner.outcome(&key("web"), Outcome::Waste, 3.0), None);
    }
    assert_eq!(planner.threshold_of(&key("web")), planner.threshold());
}
