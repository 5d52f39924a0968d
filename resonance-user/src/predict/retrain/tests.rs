//! Retraining rules: drift detection, the schedule, and the swap verdict.

use super::*;
use crate::scenario::SplitMix64;

const S: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;

#[test]
fn drift_is_a_fall_below_the_usual_level_and_a_new_level_is_accepted() {
    let config = RetrainConfig {
        drift_window_ns: 10 * S,
        drift_margin: 0.2,
        drift_min_samples: 10,
        ..RetrainConfig::default()
    };
    let mut detector = DriftDetector::new(&config);
    let mut rng = SplitMix64::new(3);
    let mut drifts = Vec::new();
    // Ten opens a second: 95 % hits for two minutes, then 40 %.
    for tenth in 0..3000u64 {
        let ts = tenth * 100 * MS;
        let rate = if ts < 120 * S { 0.95 } else { 0.4 };
        detector.record(ts, rng.chance(rate));
        if let Some(drift) = detector.check(ts) {
            drifts.push((ts, drift));
        }
    }
    assert_eq!(drifts.len(), 1, "{drifts:?}");
    let (at, drift) = drifts[0];
    assert!(
        (120 * S..130 * S).contains(&at),
        "seen {} s after the fall",
        (at as f64 - 120e9) / 1e9
    );
    assert!(drift.usual > 0.85, "{drift:?}");
    assert!(drift.recent < drift.usual - 0.2, "{drift:?}");
    // The lasting new level became the usual one.
    let usual = detector.usual().unwrap_or(0.0);
    assert!((usual - 0.4).abs() < 0.15, "{usual}");
}

#[test]
fn a_steady_hit_rate_never_drifts() {
    let config = RetrainConfig {
        drift_window_ns: 10 * S,
        drift_min_samples: 10,
        ..RetrainConfig::default()
    };
    let mut detector = DriftDetector::new(&config);
    let mut rng = SplitMix64::new(4);
    for tenth in 0..6000u64 {
        let ts = tenth * 100 * MS;
        detector.record(ts, rng.chance(0.8));
        assert_eq!(detector.check(ts), None, "at {ts}");
    }
    assert!(detector.usual().is_some_and(|u| (u - 0.8).abs() < 0.1));
}

#[test]
fn schedule_fires_every_period_and_drift_takes_precedence() {
    let config = RetrainConfig {
        every_ns: 60 * S,
        drift_window_ns: 10 * S,
        drift_min_samples: 5,
        ..RetrainConfig::default()
    };
    let mut trigger = Trigger::new(&config);
    let mut fired = Vec::new();
    for second in 0..250u64 {
        let ts = second * S;
        // Opens always hit, until a fall at 150 s.
        trigger.drift.record(ts, second < 150);
        if let Some((reason, _)) = trigger.check(ts) {
            fired.push((second, reason));
        }
    }
    assert_eq!(fired[0], (60, Reason::Schedule), "{fired:?}");
    assert_eq!(fired[1], (120, Reason::Schedule), "{fired:?}");
    let drift = fired
        .iter()
        .find(|(_, reason)| *reason == Reason::Drift)
        .copied();
    assert!(
        drift.is_some_and(|(second, _)| (150..160).contains(&second)),
        "{fired:?}"
    );
    // The schedule restarts from the drift trial.
    let (at, _) = drift.unwrap_or((0, Reason::Drift));
    assert!(
        fired
            .iter()
            .any(|&(second, reason)| reason == Reason::Schedule && second == at + 60),
        "{fired:?}"
    );
}
