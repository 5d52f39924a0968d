//! The done-means targets of the predictive engine, replayed on the
//! generated scenarios at the default threshold and TTL, retraining on the
//! two drift scenarios, plus determinism and the CLI's handling of damaged
//! traces.

use std::process::Command;

use resonance::{
    replay::{BUCKET_NS, ReplayConfig, Report, replay},
    scenario::{self, Scenario},
};

fn run(name: &str, seed: u64) -> (Scenario, Report) {
    let generated = scenario::generate(name, seed, None).unwrap();
    let report = replay(&generated.events, &ReplayConfig::default());
    (generated, report)
}

/// Targets every scenario meets: most starts served, little waste, less
/// than the static pool's.
fn assert_targets(name: &str, report: &Report) {
    let model = &report.model;
    let pool = &report.static_pool;
    let summary = format!("{name}: model {model:?}\nstatic {pool:?}");
    assert!(model.interactions > 500, "{summary}");
    assert!(
        model.idle_buffer_byte_seconds < pool.idle_buffer_byte_seconds,
        "{summary}"
    );
    assert!(model.hit_rate >= 0.9, "{summary}");
    assert!(model.waste_ratio <= 0.15, "{summary}");
    assert!(model.waste_ratio < pool.waste_ratio, "{summary}");
    assert!(
        model.idle_channel_seconds < pool.idle_channel_seconds,
        "fewer idle channel-seconds than the pool: {summary}"
    );
    assert_eq!(
        model.created,
        model.hits + model.wasted + model.pending,
        "every channel is used, wasted or pending: {summary}"
    );
}

/// The done-means in full: the targets, and at least as many starts served
/// as the static pool (which keeps a channel ready for every pair seen in
/// the last five minutes) with strictly less waste.
fn assert_done_means(name: &str, report: &Report) {
    assert_targets(name, report);
    let (model, pool) = (&report.model, &report.static_pool);
    assert!(
        model.hits >= pool.hits,
        "{name}: {} hits against the pool's {}\nmodel {model:?}\nstatic {pool:?}",
        model.hits,
        pool.hits
    );
}

/// Web, cron, pipelines and drift, seeds 1 to 3, at the defaults
/// (threshold 0.6 at most, waste budget 0.10, TTL 5 s). Seed 1: web 12,536
/// hits against the pool's 12,526 at waste 0.074 against 0.207; cron 1,065
/// against 1,024, 0.126 against 0.931; pipelines 6,911 against 6,911,
/// 0.107 against 0.331; drift 8,252 against 8,252, 0.078 against 0.134.
///
/// Not every seed gets there: over seeds 1 to 10, 38 of the 40 runs meet
/// the done-means in full; drift seeds 6 and 10 are one start short of the
/// pool each. Those starts are the first poll after the poller's period
/// changed, which the pool serves only because it keeps a channel ready
/// all the time.
#[test]
fn every_scenario_meets_the_done_means() {
    for seed in 1..=3 {
        for name in ["web", "cron", "pipelines", "drift"] {
            let (_, report) = run(name, seed);
            assert_done_means(&format!("{name} seed {seed}"), &report);
        }
    }
}

/// Over seeds 1 to 10 of every generated scenario, at the defaults: the
/// targets on every run (hit rate at least 0.9, waste at most 0.15, less
/// waste and fewer idle channel-seconds than the static pool), and hits
/// within 2 points of the pool's, except where stated:
/// - `build`: builds start at random (every four minutes on average) and
///   typing resumes after random pauses, so `git -> ssh` and the first
///   request to the language server after a pause come with nothing to
///   announce them; the pool serves them from channels it keeps for five
///   minutes (its waste about 0.8). Worst seed 7: 0.912 against 0.945.
/// - `drift-same-names`: the ten checks change interval and phase at once;
///   the model misses their first runs after the deploy (seed 5: 60 of its
///   72 misses in the 2.5 minutes after it) until the new gaps replace the
///   old. Worst seed 7: 0.951 against 0.995.
/// - `batch` (seeds 4 and 7, 2.5 and 2.1 points): a job whose start
///   jitter is wider than the TTL (seed 4's `cron -> sa1`, gaps of 81 to
///   87 s against a 5 s TTL) gets one channel per run, placed where most
///   of its starts came, and misses the earliest (20 of its 172); the
///   pool serves them from a channel kept all the time (its waste 0.97).
///   A second channel per run would serve them at about 40 % waste.
///
/// On web, cron, pipelines and drift the model is within one start of the
/// pool on every seed, and at or above it on all but three (drift seeds 6,
/// 7 and 10, one start short each).
fn seeds_1_to_10_meet_the_targets(name: &str, short_of_the_pool_at_most: usize) {
    let reasons = ["batch", "build", "drift-same-names"];
    let first_four = ["web", "cron", "pipelines", "drift"].contains(&name);
    let mut short = Vec::new();
    // (lowest hit rate, its seed), (highest waste, its seed).
    let mut worst = [(f64::MAX, 0), (f64::MIN, 0)];
    for seed in 1..=10 {
        let label = format!("{name} seed {seed}");
        let (_, report) = run(name, seed);
        assert_targets(&label, &report);
        let (model, pool) = (&report.model, &report.static_pool);
        if model.hit_rate < worst[0].0 {
            worst[0] = (model.hit_rate, seed);
        }
        if model.waste_ratio > worst[1].0 {
            worst[1] = (model.waste_ratio, seed);
        }
        if !reasons.contains(&name) {
            assert!(
                model.hit_rate + 0.02 >= pool.hit_rate,
                "{label}: {:.3} against the pool's {:.3}",
                model.hit_rate,
                pool.hit_rate
            );
        }
        if first_four {
            assert!(
                model.hits + 1 >= pool.hits,
                "{label}: {} hits against the pool's {}",
                model.hits,
                pool.hits
            );
            if model.hits < pool.hits {
                short.push(label);
            }
        }
    }
    eprintln!("{name}: worst (hit rate, seed), (waste, seed): {worst:?}");
    assert!(
        short.len() <= short_of_the_pool_at_most,
        "short of the pool: {short:?}"
    );
}

/// One test per scenario, so the harness runs them side by side.
macro_rules! seeds_1_to_10 {
    ($($test:ident: $name:literal, $short:literal;)*) => {
        $(
            #[test]
            fn $test() {
                seeds_1_to_10_meet_the_targets($name, $short);
            }
        )*
        /// Every generated scenario has its test above.
        #[test]
        fn every_scenario_has_a_seeds_test() {
            let covered = [$($name),*];
            for name in scenario::SCENARIOS {
                assert!(covered.contains(name), "{name} has no seeds 1-10 test");
            }
        }
    };
}

seeds_1_to_10! {
    web_seeds_1_to_10: "web", 0;
    cron_seeds_1_to_10: "cron", 0;
    pipelines_seeds_1_to_10: "pipelines", 0;
    drift_seeds_1_to_10: "drift", 3;
    drift_same_names_seeds_1_to_10: "drift-same-names", 0;
    batch_seeds_1_to_10: "batch", 0;
    sparse_seeds_1_to_10: "sparse", 0;
    build_seeds_1_to_10: "build", 0;
    churn_seeds_1_to_10: "churn", 0;
}

/// A real trace, recorded on this project's 2-core VM by `resonance record`
/// during one run of the tests crate's `real_traces` test (PostgreSQL 15 +
/// `pgbench -C`, redis-server + `redis-benchmark -k 0` over Unix sockets,
/// and a `dump | gzip | cat` loop, all at once in bursts with think time),
/// kept in `tests/data` so the done-means is checked on real traffic
/// deterministically; the live test records a new one each run, whose
/// timing varies. Per workload (the starts between its own services):
/// pgbench 188 of 190 hits against the pool's 188 at waste 0.050 against
/// 0.078; redis 198 of 200 against 198, 0.048 against 0.074; the pipeline
/// loop the same.
#[test]
fn a_recorded_real_trace_meets_the_done_means() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/recorded-postgres-redis-pipeline.jsonl");
    let trace = resonance::trace::read_trace(&path).unwrap();
    assert!(trace.malformed.is_empty(), "{:?}", trace.malformed);
    let workloads: [(&str, &[&str]); 3] = [
        ("pgbench", &["pgbench", "postgres"]),
        (
            "redis",
            &["redis-benchmark", "redis-server", "redis-check-rdb"],
        ),
        ("pipeline loop", &["rt-dump", "rt-gzip", "rt-cat"]),
    ];
    for (name, services) in workloads {
        let events: Vec<_> = trace
            .events
            .iter()
            .filter(|e| services.contains(&e.src.as_str()) && services.contains(&e.dst.as_str()))
            .cloned()
            .collect();
        assert!(events.len() >= 150, "{name}: {} starts", events.len());
        let report = replay(&events, &ReplayConfig::default());
        let (model, pool) = (&report.model, &report.static_pool);
        let summary = format!("{name}: model {model:?}\nstatic {pool:?}");
        assert!(model.hit_rate >= 0.9, "{summary}");
        assert!(model.waste_ratio <= 0.15, "{summary}");
        assert!(model.waste_ratio < pool.waste_ratio, "{summary}");
        assert!(
            model.idle_channel_seconds < pool.idle_channel_seconds,
            "fewer idle channel-seconds than the pool: {summary}"
        );
        assert!(model.hits >= pool.hits, "{summary}");
    }
}

/// On cron the model serves clearly more than the pool: jobs every ten
/// minutes drop out of a five-minute pool, and the model predicts them
/// from their period (seed 4: 0.986 against 0.948).
#[test]
fn cron_beats_static_pool_on_both_counts() {
    let (_, report) = run("cron", 4);
    assert_done_means("cron seed 4", &report);
    assert!(report.model.hit_rate > report.static_pool.hit_rate + 0.02);
}

/// Without the waste budget (a fixed threshold of 0.6) the model serves
/// fewer starts than the pool on web: the budget, not luck, closes the gap.
/// The threshold it ends at is below the configured one.
#[test]
fn the_waste_budget_buys_the_hits_a_fixed_threshold_misses() {
    let generated = scenario::generate("web", 1, None).unwrap();
    let budgeted = replay(&generated.events, &ReplayConfig::default());
    let fixed = replay(
        &generated.events,
        &ReplayConfig {
            budget: None,
            ..ReplayConfig::default()
        },
    );
    assert!(
        fixed.model.hits < fixed.static_pool.hits,
        "{:?}",
        fixed.model
    );
    assert!(budgeted.model.hits > fixed.model.hits + 50);
    assert!(budgeted.model.waste_ratio > fixed.model.waste_ratio);
    assert!(
        budgeted.model.waste_ratio <= 0.1 + 0.01,
        "{:?}",
        budgeted.model
    );
    assert!(budgeted.threshold_end < budgeted.threshold);
    assert_eq!(fixed.threshold_end, fixed.threshold);
    assert_eq!(budgeted.waste_budget, Some(0.1));
}

#[test]
fn drift_targets_and_recovery_within_two_minutes() {
    let (generated, report) = run("drift", 1);
    assert_done_means("drift", &report);
    let first = generated.events.first().map_or(0, |event| event.ts_ns);
    let change = generated.change_ns.unwrap() - first;
    // The first 30 s slice from which every later slice stays above 0.8.
    let recovered = report
        .timeline
        .iter()
        .enumerate()
        .rev()
        .find(|(_, bucket)| {
            bucket.interactions >= 10 && (bucket.hits as f64) <= 0.8 * bucket.interactions as f64
        })
        .map_or(0, |(index, _)| (index as u64 + 1) * BUCKET_NS);
    assert!(
        recovered <= change + 120_000_000_000,
        "hit rate back above 0.8 only {} s after the change: {:?}",
        recovered.saturating_sub(change) / 1_000_000_000,
        report.timeline
    );
    let after: Vec<_> = report
        .timeline
        .iter()
        .filter(|bucket| bucket.start_s * 1_000_000_000 >= change)
        .collect();
    let hits: u64 = after.iter().map(|bucket| bucket.hits).sum();
    let starts: u64 = after.iter().map(|bucket| bucket.interactions).sum();
    assert!(
        starts > 500 && hits as f64 >= 0.9 * starts as f64,
        "{hits}/{starts}"
    );
}

#[test]
fn same_trace_same_report() {
    let report = || {
        let generated = scenario::generate("pipelines", 3, Some(900_000_000_000)).unwrap();
        serde_json::to_string(&replay(&generated.events, &ReplayConfig::default())).unwrap()
    };
    assert_eq!(report(), report());
}

fn resonance(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_resonance"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn cli_replay_is_deterministic_and_skips_bad_lines() {
    let dir = std::env::temp_dir().join(format!("resonance-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("cron.jsonl");
    let trace_arg = trace.to_str().unwrap();
    let generated = resonance(&[
        "gen-trace",
        "--scenario",
        "cron",
        "--seed",
        "5",
        "--duration",
        "20m",
        "--output",
        trace_arg,
    ]);
    assert!(generated.status.success(), "{generated:?}");

    let one = resonance(&["replay", trace_arg, "--json"]);
    let two = resonance(&["replay", trace_arg, "--json"]);
    assert!(one.status.success(), "{one:?}");
    assert_eq!(one.stdout, two.stdout);
    let report: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap();
    for key in [
        "interactions",
        "hits",
        "hit_rate",
        "created",
        "wasted",
        "waste_ratio",
        "lead_time_p50_ms",
        "brier_score",
    ] {
        assert!(report[key].is_number(), "{key} missing: {report}");
        assert!(report["static_pool"][key].is_number(), "static_pool {key}");
        assert!(report["ratio_preconnect"][key].is_number(), "ratio {key}");
    }
    let good_lines = std::fs::read_to_string(&trace).unwrap().lines().count() as u64;

    // Damage the trace: two bad lines among the good ones.
    let mut text = std::fs::read_to_string(&trace).unwrap();
    let second_line = text.find('\n').unwrap() + 1;
    text.insert_str(second_line, "{\"ts_ns\": \"yesterday\"}\n");
    text.push_str("not json at all\n");
    let damaged = dir.join("damaged.jsonl");
    std::fs::write(&damaged, text).unwrap();
    let out = resonance(&["replay", damaged.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 2:"), "{stderr}");
    assert!(
        stderr.contains(&format!("line {}:", good_lines + 2)),
        "{stderr}"
    );
    let damaged_report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(damaged_report["interactions"], report["interactions"]);
    assert_eq!(damaged_report["interactions"].as_u64(), Some(good_lines));
    assert_eq!(damaged_report["malformed_lines"].as_u64(), Some(2));
    assert_eq!(report["malformed_lines"].as_u64(), Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Forecasts match observed frequencies (every well-filled reliability bin
/// within 0.1), and online calibration improves the Brier score where the
/// raw components are over-confident (cron: 0.033 raw against 0.0055; drift:
/// 0.038 against 0.036, seed 2, 30 min). On web and pipelines the raw
/// probabilities are already about right (pipelines: 0.113 raw, 0.114
/// calibrated), so there calibration must only not make them worse.
#[test]
fn probabilities_are_calibrated() {
    use resonance::predict::ModelConfig;
    for name in ["web", "pipelines", "cron", "drift"] {
        let generated = scenario::generate(name, 2, Some(1_800_000_000_000)).unwrap();
        let calibrated = replay(&generated.events, &ReplayConfig::default());
        let raw_config = ReplayConfig {
            model: ModelConfig {
                calibrate: false,
                ..ModelConfig::default()
            },
            ..ReplayConfig::default()
        };
        let raw = replay(&generated.events, &raw_config);
        let (with, without) = (calibrated.model.brier_score, raw.model.brier_score);
        if matches!(name, "cron" | "drift") {
            assert!(with < without, "{name}: calibrated {with} vs raw {without}");
        } else {
            assert!(
                with <= without + 0.005,
                "{name}: calibrated {with} vs raw {without}"
            );
        }
        let mut checked = 0;
        for bin in &calibrated.calibration {
            if bin.forecasts >= 500 {
                checked += 1;
                assert!(
                    (bin.observed_rate - bin.mean_probability).abs() <= 0.1,
                    "{name}: {bin:?}"
                );
            }
        }
        assert!(checked >= 2, "{name}: {:?}", calibrated.calibration);
    }
}

#[test]
fn bounded_memory_degrades_gracefully() {
    use resonance::predict::ModelConfig;
    // cron has 12 pairs; with room for 8 the least recently seen are
    // evicted and relearnt, so some periodic jobs are predicted less.
    let (generated, full) = run("cron", 1);
    let config = ReplayConfig {
        model: ModelConfig {
            max_contexts: 8,
            ..ModelConfig::default()
        },
        ..ReplayConfig::default()
    };
    let bounded = replay(&generated.events, &config);
    let figures = &bounded.model;
    assert_eq!(figures.interactions, full.model.interactions);
    assert_eq!(
        figures.created,
        figures.hits + figures.wasted + figures.pending
    );
    assert!(figures.hits > figures.interactions / 2, "{figures:?}");
    assert!(figures.hit_rate < full.model.hit_rate, "{figures:?}");
}

/// Retraining on the drift scenario (the app, cache, poller period and jobs
/// change at half time), with a sensitive drift rule (3 points below the
/// usual hit rate over 30 s, 30 s holdout).
///
/// What it shows, and what it cannot: the online model already recovers
/// within the slice of the change (seed 1: 0.979 in the change slice, 1.000
/// in every later one), because the new behaviour arrives under new service
/// names, which fresh follower tables and gap rings learn as fast as a
/// freshly trained model would, and the evidence fallback keeps a channel
/// for each new pair until its timing has two gaps. So retraining has
/// nothing to restore here: the drift trial starts at the change and its
/// candidate ties with the serving model on the holdout (0.934 against
/// 0.937, both played with the agent's planner as it stood), which is
/// kept. The test checks that the drift is noticed within 90 s, that
/// trial's figures (kept, 0.934 against 0.937), and that
/// retraining costs nothing: over the first two minutes after the change it
/// serves at least as many starts as online learning alone, and every 30 s
/// slice from two minutes after the change on is at 0.8 or better. The case
/// where retraining does restore the hit rate, existing pairs changing
/// their timing under the same names, is
/// `retraining_restores_the_hit_rate_when_the_same_pairs_change`.
#[test]
fn drift_is_detected_and_retraining_does_not_cost_hits() {
    use resonance::predict::retrain::{Outcome, Reason, RetrainConfig};
    let retrain = RetrainConfig {
        drift_margin: 0.03,
        drift_window_ns: 30_000_000_000,
        holdout_ns: 30_000_000_000,
        ..RetrainConfig::default()
    };
    let (first, change, online, retrained) = online_and_retrained("drift", 1, retrain);
    let drift = first_drift_trial(&retrained, change);
    assert!(
        drift.decided_ns <= change + 90_000_000_000,
        "decided {} s after the change: {drift:#?}",
        (drift.decided_ns - change) / 1_000_000_000
    );
    // The figures the README gives for this trial: a tie, kept.
    assert_eq!(drift.outcome, Outcome::Kept, "{drift:#?}");
    let (candidate, current) = (drift.candidate.score, drift.current.score);
    assert!(
        (candidate - 0.9345).abs() < 0.0005 && (current - 0.9368).abs() < 0.0005,
        "holdout scores {candidate:.4} (candidate) against {current:.4}: {drift:#?}"
    );
    assert!(
        retrained
            .retrains
            .iter()
            .any(|d| d.reason == Reason::Schedule),
        "the 10 min schedule ran too: {:#?}",
        retrained.retrains
    );

    let change_s = (change - first) / 1_000_000_000;
    let (online_hits, starts) = slices(&online, change_s, change_s + 120);
    let (retrained_hits, _) = slices(&retrained, change_s, change_s + 120);
    assert!(starts > 300, "{starts}");
    assert!(
        retrained_hits >= online_hits,
        "first two minutes after the change: {retrained_hits} with retraining, \
         {online_hits} without, of {starts}"
    );
    for bucket in retrained
        .timeline
        .iter()
        .filter(|b| b.start_s >= change_s + 120 && b.interactions >= 10)
    {
        assert!(
            bucket.hits as f64 >= 0.8 * bucket.interactions as f64,
            "{bucket:?} in {:?}",
            retrained.timeline
        );
    }
    assert_eq!(retrained.model.interactions, online.model.interactions);
    assert_eq!(
        retrained.model.created,
        retrained.model.hits + retrained.model.wasted + retrained.model.pending
    );
}

/// Seed 1 of a drift scenario replayed at the defaults without and with
/// `retrain`: its first event's time, the change's, and both reports.
fn online_and_retrained(
    name: &str,
    seed: u64,
    retrain: resonance::predict::retrain::RetrainConfig,
) -> (u64, u64, Report, Report) {
    let generated = scenario::generate(name, seed, None).unwrap();
    let first = generated.events.first().map_or(0, |event| event.ts_ns);
    let change = generated.change_ns.unwrap();
    let online = replay(&generated.events, &ReplayConfig::default());
    let retrained = replay(
        &generated.events,
        &ReplayConfig {
            retrain: Some(retrain),
            ..ReplayConfig::default()
        },
    );
    (first, change, online, retrained)
}

/// The first drift trial that started at or after `change`.
fn first_drift_trial(report: &Report, change: u64) -> &resonance::predict::retrain::Decision {
    use resonance::predict::retrain::Reason;
    report
        .retrains
        .iter()
        .find(|d| d.reason == Reason::Drift && d.started_ns >= change)
        .unwrap_or_else(|| panic!("no drift trial after the change: {:#?}", report.retrains))
}

/// Hits and starts of the timeline slices starting in `[from_s, to_s)`
/// (seconds from the first event).
fn slices(report: &Report, from_s: u64, to_s: u64) -> (u64, u64) {
    report
        .timeline
        .iter()
        .filter(|b| b.start_s >= from_s && b.start_s < to_s)
        .fold((0, 0), |(h, n), b| (h + b.hits, n + b.interactions))
}

/// Retraining on `drift-same-names` (seed 1): ten Consul health checks,
/// each on its own interval of 15 to 24 s, all shortened by 40 % at half
/// time under the same names. The online model holds on to the old
/// intervals: each check keeps its last 16 gaps, and a shorter new gap
/// only wins the timing rule once it is most of them, i.e. after about ten
/// checks (1.5 to 2.5 min). Its follower tables do not fill in, as the
/// checks' intervals differ, so their mutual delays are spread out (with
/// one interval shared by all checks they do: in such a variant, 12 or 20
/// checks going from 15 s to 9 s, the online model stayed at 1.000 and
/// wasted more instead, which is why the intervals here differ).
/// A drift trial starts 12 s after the change; its candidate learns the
/// last 90 s (mostly the old intervals, but two to five gaps per check, not
/// sixteen), plays the 30 s holdout against the serving model and wins it
/// (score 0.833 against 0.144, hit rate 0.958 against 0.167), so from 42 s
/// after the change the model in service relearns from a short memory.
///
/// Retraining settings: the drift rule of the `drift` test (margin 0.05)
/// and a 90 s drift window (the default is 30 s), so a candidate learns
/// enough checks per service to time them; holdout, schedule and the rest
/// at their defaults.
///
/// Measured, hits / starts per 30 s slice from the change on, without and
/// with retraining: 6/25 and 6/25, 9/27 and 21/27, 12/28 and 28/28, 19/27
/// and 27/27, then 24/25 and 25/25, 28/28 and 28/28; over the first two
/// minutes 46/107 (0.430) against 82/107 (0.766), a margin of 0.34,
/// asserted at 0.15. Every slice in the five minutes before is 1.000.
///
/// Over seeds 1 to 12 the drift trial swaps in its candidate on every one
/// (the candidate, learnt from a few checks, also prepares channels on
/// chance alignments of checks with different intervals; a waste costs the
/// waste budget's 0.11 hits in the trial's score, so its extra hits win).
#[test]
fn retraining_restores_the_hit_rate_when_the_same_pairs_change() {
    use resonance::predict::retrain::{Outcome, RetrainConfig};
    let retrain = RetrainConfig {
        drift_margin: 0.05,
        drift_window_ns: 90_000_000_000,
        ..RetrainConfig::default()
    };
    let (first, change, online, retrained) = online_and_retrained("drift-same-names", 1, retrain);
    let timelines = format!(
        "without retraining {:?}\nwith retraining {:?}",
        online.timeline, retrained.timeline
    );
    // Slices are counted from the first event; the first one starting at or
    // after the change is the first "after" slice.
    let change_s = (change - first).div_ceil(1_000_000_000);

    // Before the change both runs serve nearly every check.
    for report in [&online, &retrained] {
        let (hits, starts) = slices(report, change_s - 300, change_s - 30);
        assert!(starts > 100, "{starts}");
        assert!(
            hits as f64 >= 0.95 * starts as f64,
            "before: {hits}/{starts}\n{timelines}"
        );
    }

    // Right after it the online model is stale: its first minute falls.
    let (hits, starts) = slices(&online, change_s, change_s + 60);
    assert!(
        (hits as f64) < 0.6 * starts as f64,
        "first minute without retraining: {hits}/{starts}\n{timelines}"
    );

    // A drift trial noticed it and swapped in a better candidate.
    let drift = first_drift_trial(&retrained, change);
    assert_eq!(drift.outcome, Outcome::Swapped, "{drift:#?}");
    assert!(
        drift.decided_ns <= change + 60_000_000_000,
        "decided {} s after the change: {drift:#?}",
        (drift.decided_ns - change) / 1_000_000_000
    );
    assert!(drift.candidate.score > drift.current.score, "{drift:#?}");
    assert!(
        drift.candidate.hit_rate > drift.current.hit_rate,
        "{drift:#?}"
    );

    // The first two minutes after the change: retraining serves clearly
    // more (measured 0.766 against 0.430).
    let (online_hits, starts) = slices(&online, change_s, change_s + 120);
    let (retrained_hits, retrained_starts) = slices(&retrained, change_s, change_s + 120);
    assert_eq!(starts, retrained_starts);
    assert!(starts > 80, "{starts}");
    let (online_rate, retrained_rate) = (
        online_hits as f64 / starts as f64,
        retrained_hits as f64 / starts as f64,
    );
    assert!(
        retrained_rate >= online_rate + 0.15,
        "first two minutes after the change: {retrained_hits} with retraining, \
         {online_hits} without, of {starts}\n{timelines}"
    );

    // From one minute after the change on, every slice is back at 0.8 or
    // better with retraining; without it, not yet (the online model gets
    // there in the third minute).
    let late = |report: &Report| -> Vec<(u64, u64, u64)> {
        report
            .timeline
            .iter()
            .filter(|b| b.start_s >= change_s + 60 && b.interactions >= 10)
            .filter(|b| (b.hits as f64) < 0.8 * b.interactions as f64)
            .map(|b| (b.start_s, b.hits, b.interactions))
            .collect()
    };
    assert_eq!(late(&retrained), vec![], "{timelines}");
    assert!(!late(&online).is_empty(), "{timelines}");

    assert_eq!(retrained.model.interactions, online.model.interactions);
    assert!(retrained.model.hits > online.model.hits);
    assert_eq!(
        retrained.model.created,
        retrained.model.hits + retrained.model.wasted + retrained.model.pending
    );
}

/// The claim in the README and above: on every one of seeds 1 to 12 of
/// `drift-same-names` the drift trial swaps in its candidate.
#[test]
fn the_same_pairs_drift_trial_swaps_on_every_seed_1_to_12() {
    use resonance::predict::retrain::{Outcome, RetrainConfig};
    let retrain = RetrainConfig {
        drift_margin: 0.05,
        drift_window_ns: 90_000_000_000,
        ..RetrainConfig::default()
    };
    let kept: Vec<String> = (1..=12)
        .filter_map(|seed| {
            let (_, change, _, retrained) =
                online_and_retrained("drift-same-names", seed, retrain.clone());
            let drift = first_drift_trial(&retrained, change);
            (drift.outcome != Outcome::Swapped).then(|| {
                format!(
                    "seed {seed}: {:?}, {:.3} against {:.3}",
                    drift.outcome, drift.candidate.score, drift.current.score
                )
            })
        })
        .collect();
    assert!(kept.is_empty(), "not swapped: {kept:?}");
}

/// The CLI behaves like a Unix filter and says what it expected: a reader
/// that went away ends `replay` by SIGPIPE, not a panic (exit 101,
/// "failed printing to stdout"), and a malformed duration is named with
/// the form it should take.
#[test]
fn cli_ends_quietly_on_a_closed_stdout_and_names_bad_durations() {
    use std::os::unix::process::ExitStatusExt;
    let trace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/recorded-postgres-redis-pipeline.jsonl");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = Command::new(env!("CARGO_BIN_EXE_resonance"))
        .arg("replay")
        .arg(&trace)
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.signal(),
        Some(nix::sys::signal::Signal::SIGPIPE as i32),
        "{:?}: {stderr}",
        output.status
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // A missing config file is said once, not once per error in the chain.
    let missing = resonance(&["run", "--config", "/nonexistent/resonance.toml"]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );

    let bad = resonance(&["replay", trace.to_str().unwrap(), "--ttl", "banana"]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("\"banana\"") && stderr.contains("such as 250ms, 5s, 2m"),
        "{stderr}"
    );
}
