//! Retraining trials judged by the replay's own play of the planner.

use super::*;
use crate::{
    predict::retrain::{Outcome, Reason, Trial, training_span, waste_cost},
    scenario::SplitMix64,
};

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
        waste_cost: waste_cost(0.6),
        min_holdout: 10,
    }
}

/// Both models of a trial played as the replay plays them, with the
/// planner at a fixed 0.6 and a 5 s TTL.
fn run_trial(
    baseline: Model,
    history: &[TraceEvent],
    holdout: &[TraceEvent],
    trial: &Trial,
) -> retrain::Verdict {
    let planner = Planner::new(PlanSettings {
        threshold: 0.6,
        budget: None,
        ttl_ns: 5 * S,
        ..PlanSettings::default()
    });
    retrain::run_trial(
        baseline,
        history,
        holdout,
        trial,
        |model, events, from, to| evaluate(&planner, model, events, from, to),
    )
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
