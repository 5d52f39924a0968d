//! Unit tests of the combined model.

use super::*;

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

fn probability(model: &Model, now: u64, horizon: u64, src: &str, dst: &str) -> f64 {
    model
        .predict(now, horizon)
        .iter()
        .find(|p| p.src == src && p.dst == dst)
        .map_or(0.0, |p| p.probability)
}

/// A trigger `a -> b` followed 20 ms later by `b -> c`, every 7 s.
fn triggered(model: &mut Model, rounds: u64) -> u64 {
    let mut ts = 0;
    for round in 0..rounds {
        ts = round * 7 * S;
        model.observe(&event(ts, "a", "b"));
        model.observe(&event(ts + 20 * MS, "b", "c"));
    }
    ts
}

#[test]
fn follower_is_predicted_with_its_delay() {
    let mut model = Model::default();
    let ts = triggered(&mut model, 20);
    model.observe(&event(ts + 7 * S, "a", "b"));
    let predictions = model.predict(ts + 7 * S, S);
    let follower = predictions
        .iter()
        .find(|p| p.src == "b" && p.dst == "c")
        .cloned();
    let follower = follower.unwrap_or_else(|| panic!("no b->c in {predictions:?}"));
    assert!(follower.probability > 0.85, "{follower:?}");
    assert_eq!(follower.expected_lead_ns, 20 * MS);
}

#[test]
fn rare_evidence_is_not_over_trusted() {
    let mut model = Model::default();
    model.observe(&event(0, "a", "b"));
    model.observe(&event(10 * MS, "b", "c"));
    model.observe(&event(7 * S, "a", "b"));
    let once = probability(&model, 7 * S, S, "b", "c");
    let mut model = Model::default();
    let ts = triggered(&mut model, 20);
    model.observe(&event(ts + 7 * S, "a", "b"));
    let often = probability(&model, ts + 7 * S, S, "b", "c");
    assert!(once < often, "{once} vs {often}");
    assert!(once < 0.6, "one observation: {once}");
    assert!(often > 0.85, "twenty observations: {often}");
}

#[test]
fn periodic_pair_is_due_only_near_its_time() {
    let mut model = Model::default();
    for run in 0..10 {
        model.observe(&event(run * 60 * S + (run % 3) * 10 * MS, "cron", "job"));
    }
    let last = 9 * 60 * S + 10 * MS;
    let horizon = 5 * S;
    assert!(probability(&model, last + 10 * S, horizon, "cron", "job") < 0.01);
    let near = probability(&model, last + 57 * S, horizon, "cron", "job");
    assert!(near > 0.85, "{near}");
    let due_early = model.due(last + 20 * S, horizon, 0.5, horizon / 8, |_| true);
    assert!(due_early.is_empty(), "{due_early:?}");
    let due_near = model.due(last + 57 * S, horizon, 0.5, horizon / 8, |_| true);
    assert_eq!(due_near.len(), 1, "{due_near:?}");
    // Long overdue: the job stopped, no more channels for it.
    assert_eq!(
        probability(&model, last + 400 * S, horizon, "cron", "job"),
        0.0
    );
}

#[test]
fn think_time_between_bursts_is_remembered() {
    // Bursts of 20 starts 250 ms apart with 11 s of think time between
    // them: the 16 recent gaps are all short by the end of a burst.
    let mut model = Model::new(ModelConfig {
        calibrate: false,
        ..ModelConfig::default()
    });
    let mut last = 0;
    for burst in 0..4 {
        for round in 0..20 {
            last = burst * 16 * S + round * 250 * MS;
            model.observe(&event(last, "a", "b"));
        }
    }
    let horizon = 5 * S;
    // Ten seconds into the silence the next burst, due at 11.25 s, is
    // expected from the three think times seen.
    let p = probability(&model, last + 10 * S, horizon, "a", "b");
    assert!(p >= 0.6, "{p}");
    // Past every think time seen, by more than twice the short gaps: stopped.
    let late = probability(&model, last + 12 * S, horizon, "a", "b");
    assert!(late < 0.01, "{late}");
}

#[test]
fn changed_behaviour_is_relearned() {
    let mut model = Model::default();
    let mut ts = 0;
    for _ in 0..50 {
        ts += 3 * S;
        model.observe(&event(ts, "a", "b"));
        model.observe(&event(ts + 5 * MS, "b", "old"));
    }
    for _ in 0..25 {
        ts += 3 * S;
        model.observe(&event(ts, "a", "b"));
        model.observe(&event(ts + 5 * MS, "b", "new"));
    }
    ts += 3 * S;
    model.observe(&event(ts, "a", "b"));
    let new = probability(&model, ts, S, "b", "new");
    let old = probability(&model, ts, S, "b", "old");
    assert!(new > 0.8, "{new}");
    assert!(old < 0.2, "{old}");
}

#[test]
fn resonance_prior_raises_an_unproven_follower() {
    let train = |model: &mut Model| {
        model.observe(&event(0, "a", "b"));
        model.observe(&event(5 * MS, "b", "c"));
        model.observe(&event(7 * S, "a", "b"));
    };
    let mut neutral = Model::default();
    train(&mut neutral);
    let mut resonant = Model::default();
    resonant.set_prior(
        PairKey {
            src: "b".into(),
            dst: "c".into(),
            kind: "pipe".into(),
        },
        1.0,
    );
    train(&mut resonant);
    let now = 7 * S;
    let p_neutral = probability(&neutral, now, S, "b", "c");
    let p_resonant = probability(&resonant, now, S, "b", "c");
    assert!(p_resonant > p_neutral, "{p_resonant} vs {p_neutral}");
}

#[test]
fn memory_is_bounded_and_recent_pairs_survive() {
    let config = ModelConfig {
        max_contexts: 8,
        ..ModelConfig::default()
    };
    let mut model = Model::new(config);
    for i in 0..100u64 {
        model.observe(&event(i * S, &format!("svc{i}"), "sink"));
        model.observe(&event(i * S + MS, "hot", "sink"));
    }
    assert_eq!(model.tracked(), 8);
    let hot = PairKey {
        src: "hot".into(),
        dst: "sink".into(),
        kind: "pipe".into(),
    };
    assert!(model.pair_id(&hot).is_some());
    assert!(probability(&model, 100 * S, 2 * S, "hot", "sink") > 0.5);
}

#[test]
fn saved_model_predicts_the_same_after_reload() {
    let mut model = Model::default();
    let ts = triggered(&mut model, 12);
    for run in 0..6 {
        model.observe(&event(ts + run * 30 * S, "cron", "job"));
    }
    let now = ts + 6 * 30 * S;
    // Priors in force are part of what is saved (a map keyed by pairs once
    // made the save fail).
    model.set_priors(vec![(PairKey::of(&event(0, "cron", "job")), 0.9)]);
    let dir = std::env::temp_dir().join(format!("resonance-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.json");
    model.save(&path).unwrap();
    let mut loaded = Model::load(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    for offset in [0, S, 25 * S, 29 * S] {
        assert_eq!(
            model.predict(now + offset, 5 * S),
            loaded.predict(now + offset, 5 * S)
        );
    }
    // Keeps learning identically after the restart.
    let next = event(now + 30 * S, "a", "b");
    model.observe(&next);
    loaded.observe(&next);
    assert_eq!(
        model.predict(now + 30 * S, S),
        loaded.predict(now + 30 * S, S)
    );
    assert!(!model.predict(now + 30 * S, S).is_empty());
}

#[test]
fn retrain_equals_learning_the_history_afresh() {
    let history: Vec<TraceEvent> = (0..40)
        .flat_map(|i| [event(i * 5 * S, "x", "y"), event(i * 5 * S + MS, "y", "z")])
        .collect();
    let mut fresh = Model::default();
    for e in &history {
        fresh.observe(e);
    }
    let mut retrained = Model::default();
    retrained.observe(&event(0, "old", "stuff"));
    retrained.retrain(&history);
    let now = 200 * S;
    assert_eq!(fresh.predict(now, 5 * S), retrained.predict(now, 5 * S));
    assert_eq!(retrained.tracked(), 2);
}

#[test]
fn one_pair_score_matches_the_full_scores() {
    let mut model = Model::default();
    let ts = triggered(&mut model, 15);
    for run in 0..5 {
        model.observe(&event(ts + run * 9 * S, "cron", "job"));
    }
    let last = ts + 4 * 9 * S;
    let mut confident = 0;
    for now in [last, last + 10 * MS, last + 8 * S] {
        let all = model.scores(now, 2 * S);
        confident += all.iter().filter(|score| score.probability > 0.3).count();
        for (id, score) in all.iter().enumerate() {
            assert_eq!(model.score(id as PairId, now, 2 * S), *score, "pair {id}");
        }
    }
    assert!(confident > 0, "the comparison covered a real prediction");
}

fn due_at(model: &Model, now: u64, horizon: u64, threshold: f64) -> Vec<PairId> {
    model
        .due(now, horizon, threshold, horizon / 8, |_| true)
        .iter()
        .map(|due| due.pair)
        .collect()
}

/// A new pair gets a channel from how the host's new pairs went on, not
/// from having been seen once: where they were one-off commands, a new
/// pair is not worth a channel; where they came back within a second (a
/// build starting one compiler after another), it is, at once.
#[test]
fn a_new_pair_is_judged_by_how_the_hosts_new_pairs_recurred() {
    let horizon = 5 * S;
    let threshold = 0.2;
    let mut one_offs = Model::default();
    let mut repeats = Model::default();
    for n in 0..60 {
        let at = n * 60 * S;
        let name = format!("cmd{n}");
        one_offs.observe(&event(at, "bash", &name));
        for k in 0..3 {
            repeats.observe(&event(at + k * 300 * MS, "make", &name));
        }
    }
    assert!(
        one_offs.young_outcomes()[0] >= 50,
        "{:?}",
        one_offs.young_outcomes()
    );
    let now = 3600 * S;
    one_offs.observe(&event(now, "bash", "fresh"));
    repeats.observe(&event(now, "make", "fresh"));
    let fresh = |model: &Model, src: &str| {
        model
            .pair_id(&PairKey::of(&event(0, src, "fresh")))
            .unwrap()
    };
    let p_one_off = probability(&one_offs, now + MS, horizon, "bash", "fresh");
    let p_repeat = probability(&repeats, now + MS, horizon, "make", "fresh");
    assert!(p_one_off < 0.05, "{p_one_off}");
    assert!(p_repeat > 0.9, "{p_repeat}");
    assert!(!due_at(&one_offs, now + MS, horizon, threshold).contains(&fresh(&one_offs, "bash")));
    assert!(due_at(&repeats, now + MS, horizon, threshold).contains(&fresh(&repeats, "make")));
    // Once quiet for longer than new pairs here come back, it has most
    // likely stopped: no channel replaces the first.
    let p_later = probability(&repeats, now + 2 * S, horizon, "make", "fresh");
    assert!(p_later < p_repeat / 2.0, "{p_later}");
}

/// A job every minute with seconds of jitter is not sharp (its gaps span
/// more than half the TTL), yet it is regular: its channel is made near
/// the earliest moment it ever started, not as soon as the probability
/// clears the threshold, when it would expire before most runs.
#[test]
fn a_regular_job_waits_for_the_earliest_moment_it_ever_came() {
    let horizon = 5 * S;
    let threshold = 0.1;
    let gaps = [
        57, 63, 58, 62, 59, 61, 60, 60, 57, 63, 58, 62, 59, 61, 60, 60, 59,
    ];
    let mut model = Model::default();
    let mut at = 0;
    model.observe(&event(at, "cron", "job"));
    for gap in gaps {
        at += gap * S;
        model.observe(&event(at, "cron", "job"));
    }
    let id = model
        .pair_id(&PairKey::of(&event(0, "cron", "job")))
        .unwrap();
    let early = at + 53 * S;
    assert!(probability(&model, early, horizon, "cron", "job") >= threshold);
    assert!(
        due_at(&model, early, horizon, threshold).is_empty(),
        "waits"
    );
    assert_eq!(due_at(&model, at + 57 * S, horizon, threshold), vec![id]);

    // From its second gap on: a job that runs a few dozen times a day
    // cannot wait for sixteen. With four gaps the room left below the
    // shortest is their range over four (1 s).
    let mut young = Model::default();
    let mut at = 0;
    young.observe(&event(at, "cron", "job"));
    for gap in [58, 62, 60, 59] {
        at += gap * S;
        young.observe(&event(at, "cron", "job"));
    }
    let id = young
        .pair_id(&PairKey::of(&event(0, "cron", "job")))
        .unwrap();
    let early = at + 53 * S;
    assert!(probability(&young, early, horizon, "cron", "job") >= threshold);
    assert!(
        due_at(&young, early, horizon, threshold).is_empty(),
        "waits"
    );
    assert_eq!(due_at(&young, at + 57 * S, horizon, threshold), vec![id]);
}

/// A pair seen twice, hours apart, that is late: one gap says nothing of
/// its jitter, so it is not taken for a clock merely late by it (which
/// gave it one chance in two of starting in every TTL for hours).
#[test]
fn a_pair_with_one_long_gap_is_not_expected_any_moment_once_late() {
    let horizon = 5 * S;
    let mut model = Model::default();
    model.observe(&event(0, "backup", "rclone"));
    model.observe(&event(3600 * S, "backup", "rclone"));
    let late = probability(&model, 7300 * S, horizon, "backup", "rclone");
    assert!(late < 0.01, "{late}");
}

fn need(model: &Model, now: u64, horizon: u64, src: &str, dst: &str) -> f64 {
    model
        .predict_above(now, horizon, 0.0)
        .iter()
        .find(|p| p.src == src && p.dst == dst)
        .map_or(0.0, |p| p.need)
}

/// `a -> b` followed 20 ms later by `b -> c`, rounds 6 to 10 s apart.
fn heralded_rounds(model: &mut Model, rounds: u64) -> u64 {
    let mut ts = 0;
    for round in 0..rounds {
        ts += 6 * S + (round * 7 % 9) * 500 * MS;
        model.observe(&event(ts, "a", "b"));
        model.observe(&event(ts + 20 * MS, "b", "c"));
    }
    ts
}

#[test]
fn a_heralded_pair_is_needed_when_its_herald_comes_not_before() {
    // `b -> c` always comes 20 ms after `a -> b`: the herald.
    let mut model = Model::default();
    let ts = heralded_rounds(&mut model, 40);
    let horizon = 5 * S;
    // 4 s into the pause its timing says a start within the horizon is
    // likely, but a channel made now would often expire first, and the
    // herald will announce the start: no early channel.
    let early = ts + 20 * MS + 4 * S;
    let likely = probability(&model, early, horizon, "b", "c");
    assert!(likely > 0.5, "{likely}");
    let early_need = need(&model, early, horizon, "b", "c");
    assert!(early_need < 0.3, "{early_need}");
    // Once the herald is there, the follower is needed.
    let herald = ts + 8 * S;
    model.observe(&event(herald, "a", "b"));
    let now_need = need(&model, herald, horizon, "b", "c");
    assert!(now_need > 0.85, "{now_need}");
    // The herald itself has no herald: its need is its probability.
    let p = probability(&model, herald + 4 * S, horizon, "a", "b");
    let n = need(&model, herald + 4 * S, horizon, "a", "b");
    assert!((p - n).abs() < 1e-12, "{p} vs {n}");
}

#[test]
fn a_herald_too_close_to_prepare_for_is_no_herald() {
    // The broker prepares on a clock: a follower 20 ms after its trigger
    // cannot wait for it when preparation needs 50 ms.
    let mut model = Model::new(ModelConfig {
        herald_min_lead_ns: 50 * MS,
        ..ModelConfig::default()
    });
    let ts = heralded_rounds(&mut model, 40);
    let early = ts + 20 * MS + 4 * S;
    let p = probability(&model, early, 5 * S, "b", "c");
    let n = need(&model, early, 5 * S, "b", "c");
    assert!((p - n).abs() < 1e-12, "{p} vs {n}");
}

#[test]
fn a_sharp_job_waits_for_its_moment_and_a_spread_one_does_not() {
    let horizon = 5 * S;
    let step = horizon / 8;
    // Every 60 s within 10 ms: the best moment to prepare is knowable.
    let mut sharp = Model::default();
    for run in 0..20 {
        sharp.observe(&event(run * 60 * S + (run % 3) * 5 * MS, "cron", "job"));
    }
    let last = 19 * 60 * S + 5 * MS;
    // Gaps of 59.99 and 60.005 s: 55 s in, a channel would cover only the
    // shorter ones, one made a step later covers all.
    let early = last + 55 * S;
    let p = probability(&sharp, early, horizon, "cron", "job");
    assert!((0.25..0.6).contains(&p), "{p}");
    assert!(sharp.due(early, horizon, 0.25, step, |_| true).is_empty());
    assert_eq!(
        sharp.due(early + step, horizon, 0.25, step, |_| true).len(),
        1
    );
    // Gaps spread over 3 to 9 s: any moment may bring the start, so a
    // likely enough pair gets its channel now.
    let mut spread = Model::default();
    let mut ts = 0;
    for n in 0..20u64 {
        ts += 3 * S + (n * 7 % 13) * 500 * MS;
        spread.observe(&event(ts, "loop", "grep"));
    }
    let now = ts + 3 * S;
    let p = probability(&spread, now, horizon, "loop", "grep");
    assert!(p >= 0.5, "{p}");
    assert_eq!(spread.due(now, horizon, 0.5, step, |_| true).len(), 1);
}

#[test]
fn a_late_follower_is_still_expected_for_a_while() {
    // `b -> c` 20 ms after `a -> b`: at 25 ms, later than every delay seen,
    // it is still expected; at 100 ms, past twice the longest, given up.
    // The chain alone, so the follower's own 7 s rhythm does not count.
    let mut model = Model::new(ModelConfig {
        calibrate: false,
        use_timing: false,
        use_window: false,
        ..ModelConfig::default()
    });
    let ts = triggered(&mut model, 20);
    let herald = ts + 7 * S;
    model.observe(&event(herald, "a", "b"));
    let late = probability(&model, herald + 25 * MS, S, "b", "c");
    assert!(late > 0.2, "{late}");
    let gone = probability(&model, herald + 100 * MS, S, "b", "c");
    assert!(gone < 0.1, "{gone}");
}

#[test]
fn overlapping_occurrences_each_expect_their_follower() {
    // Two requests in flight: `a -> b` twice 5 ms apart, the first reply
    // `b -> c` 20 ms after the first. The second reply is still expected;
    // once it came, no third is.
    let mut model = Model::new(ModelConfig {
        calibrate: false,
        use_timing: false,
        use_markov: false,
        ..ModelConfig::default()
    });
    let ts = triggered(&mut model, 20);
    let t = ts + 7 * S;
    model.observe(&event(t, "a", "b"));
    model.observe(&event(t + 5 * MS, "a", "b"));
    model.observe(&event(t + 20 * MS, "b", "c"));
    let second = probability(&model, t + 21 * MS, S, "b", "c");
    assert!(second > 0.5, "{second}");
    model.observe(&event(t + 25 * MS, "b", "c"));
    let third = probability(&model, t + 26 * MS, S, "b", "c");
    assert!(third < 0.2, "{third}");
}

#[test]
fn a_context_no_tighter_than_the_followers_own_gaps_is_left_to_its_timing() {
    // `check -> a` every 10 s, `check -> b` every 7 s: b "follows" a at
    // delays spread over its whole period, a chance alignment that says
    // nothing b's own sharp gaps do not.
    let mut model = Model::new(ModelConfig {
        calibrate: false,
        use_markov: false,
        ..ModelConfig::default()
    });
    let now = 581 * S;
    let mut events: Vec<TraceEvent> = (0..60u64)
        .map(|n| event(n * 10 * S, "check", "a"))
        .chain((0..86u64).map(|n| event(n * 7 * S + 3 * S, "check", "b")))
        .filter(|e| e.ts_ns <= now)
        .collect();
    events.sort_by_key(|e| e.ts_ns);
    for e in &events {
        model.observe(e);
    }
    // `a` ran 1 s ago and b not since; b ran at 577 s and is next due at
    // 584 s, outside a 2 s horizon: its timing says no, and so must the
    // model (the spread-out `a -> b` entry alone says about a third).
    let p = probability(&model, now, 2 * S, "check", "b");
    assert!(p < 0.05, "{p}");
}

fn scored(
    src: &str,
    dst: &str,
    kind: resonance_common::ChannelKind,
    score: f64,
) -> crate::score::PairScore {
    crate::score::PairScore {
        key: crate::score::PairKey {
            src: src.into(),
            dst: dst.into(),
            kind: kind.as_str().to_owned(),
        },
        score,
        components: Default::default(),
        normalized: Default::default(),
        performance: 1.0,
        totals: Default::default(),
    }
}

/// Each observed pair takes its own score; a brokered pair the best of its
/// (src, dst) over the kinds its channels were measured as; pairs the
/// scores no longer name go back to neutral.
#[test]
fn scores_become_priors_and_forgotten_pairs_turn_neutral() {
    use resonance_common::ChannelKind;
    let priors = priors_from_scores(&[
        scored("web", "db", ChannelKind::UnixStream, 0.8),
        scored("web", "db", ChannelKind::Pipe, 0.3),
        scored("head", "cat", ChannelKind::Pipe, 0.6),
    ]);
    let of = |src: &str, dst: &str, kind: &str| {
        priors
            .iter()
            .find(|(k, _)| k.src == src && k.dst == dst && k.kind == kind)
            .map(|(_, score)| *score)
    };
    assert_eq!(of("web", "db", "unix_stream"), Some(0.8));
    assert_eq!(of("web", "db", "pipe"), Some(0.3));
    assert_eq!(of("web", "db", CHANNEL_KIND), Some(0.8));
    assert_eq!(of("head", "cat", "pipe"), Some(0.6));
    let mut model = Model::default();
    let head_cat = PairKey::of(&event(0, "head", "cat"));
    model.observe(&event(S, "head", "cat"));
    model.set_priors(priors);
    assert_eq!(model.prior(&head_cat), 0.6);
    model.set_priors(Vec::new());
    assert_eq!(model.prior(&head_cat), 0.5);
}
