//! Retraining rules: drift detection, the schedule, and the swap verdict.

use super::*;
use crate::scenario::SplitMix64;

const S: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;

fn event(ts_ns: u64, src: &str, dst: &str) -> TraceEvent {
    TraceEvent {
        ts_ns,
        src: src.to_owned(),
        dst: dst.to_owned(),
        kind: "pipe".to_owned(),
        bytes: 0,
        latency_ns: 0,
        error: false,
    }
}

/// `poller -> app` every `period`, each followed 20 ms later by
/// `app -> db`, over `[from, to)`.
fn polling(from: u64, to: u64, period: u64) -> Vec<TraceEvent> {
    let mut events = Vec::new();
    let mut ts = from;
    while ts < to {
        events.push(event(ts, "poller", "app"));
        events.push(event(ts + 20 * MS, "app", "db"));
        ts += period;
    }
    events
}

fn trained(events: &[TraceEvent]) -> Model {
    let mut model = Model::default();
    for e in events {
        model.observe(e);
    }
    model
}

fn trial(reason: Reason, started_ns: u64, end_ns: u64) -> Trial {
    Trial {
        reason,
        started_ns,
        end_ns,
        threshold: 0.6,
        waste_cost: waste_cost(0.6),
        ttl_ns: 5 * S,
        min_holdout: 10,
    }
}

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

#[test]
fn a_candidate_learnt_from_garbage_is_not_swapped_in() {
    let history = polling(0, 300 * S, 2 * S);
    let baseline = trained(&history);
    // Garbage recent history: forty pairs that never occur again, each
    // with a steady two-second period until the trial starts.
    let mut rng = SplitMix64::new(9);
    let mut garbage: Vec<TraceEvent> = (0..40)
        .flat_map(|pair| {
            let phase = rng.between(0, 2 * S);
            (0..60u64)
                .map(move |k| event(180 * S + phase + k * 2 * S, &format!("junk{pair}"), "sink"))
        })
        .filter(|e| e.ts_ns < 300 * S)
        .collect();
    garbage.sort_by_key(|e| e.ts_ns);
    let holdout = polling(300 * S, 360 * S, 2 * S);
    let verdict = run_trial(
        baseline,
        &garbage,
        &holdout,
        &trial(Reason::Schedule, 300 * S, 360 * S),
    );
    let decision = &verdict.decision;
    assert_eq!(decision.outcome, Outcome::Kept, "{decision:#?}");
    assert!(verdict.candidate.is_none());
    assert!(
        decision.candidate.score < decision.current.score,
        "{decision:#?}"
    );
    assert!(decision.candidate.wasted > 0, "{decision:#?}");
    assert!(decision.why.contains("worse"), "{}", decision.why);
}

#[test]
fn a_candidate_that_learnt_the_new_behaviour_replaces_a_stale_model() {
    // Ten minutes of a 15 s poll, then the poll runs every 9 s.
    let old = polling(0, 600 * S, 15 * S);
    let new = polling(600 * S, 780 * S, 9 * S);
    let baseline = trained(&old);
    let mut serving = baseline.clone();
    for e in new.iter().filter(|e| e.ts_ns < 690 * S) {
        serving.observe(e);
    }
    // A drift trial started at 690 s learns the last 90 s only.
    let config = RetrainConfig {
        drift_window_ns: 90 * S,
        ..RetrainConfig::default()
    };
    let (from, to) = training_span(&config, Reason::Drift, 690 * S);
    assert_eq!((from, to), (600 * S, 690 * S));
    let history: Vec<TraceEvent> = old
        .iter()
        .chain(&new)
        .filter(|e| e.ts_ns >= from && e.ts_ns < to)
        .cloned()
        .collect();
    let holdout: Vec<TraceEvent> = new.iter().filter(|e| e.ts_ns >= 690 * S).cloned().collect();
    let verdict = run_trial(
        serving,
        &history,
        &holdout,
        &trial(Reason::Drift, 690 * S, 780 * S),
    );
    let decision = &verdict.decision;
    assert_eq!(decision.outcome, Outcome::Swapped, "{decision:#?}");
    assert!(
        decision.candidate.hit_rate > decision.current.hit_rate,
        "{decision:#?}"
    );
    assert_eq!(decision.trained_on, history.len());
    // The swapped-in model has learnt the holdout: it expects the next poll
    // 9 s after the last one.
    let Some(model) = verdict.candidate else {
        panic!("no candidate")
    };
    let last = holdout.iter().map(|e| e.ts_ns).max().unwrap_or(0);
    let key = PairKey {
        src: "poller".into(),
        dst: "app".into(),
        kind: "pipe".into(),
    };
    let id = model.pair_id(&key).unwrap_or(u32::MAX);
    let soon = model.score(id, last - 20 * MS + 5 * S, 5 * S).probability;
    assert!(soon > 0.6, "{soon}");
}

#[test]
fn a_holdout_too_small_keeps_the_model() {
    let history = polling(0, 120 * S, 2 * S);
    let verdict = run_trial(
        trained(&history),
        &history,
        &polling(120 * S, 126 * S, 2 * S),
        &trial(Reason::Schedule, 120 * S, 126 * S),
    );
    assert_eq!(verdict.decision.outcome, Outcome::Kept);
    assert!(verdict.decision.why.contains("too small"));
}
