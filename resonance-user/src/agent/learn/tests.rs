//! The agent's side of retraining and persistence, against a real (bound,
//! not serving) broker and a real store.

use std::{sync::mpsc, time::Duration};

use super::*;
use crate::{config::BrokerSettings, handout::Broker, predict::PairKey, store::StoreConfig};

const S: u64 = 1_000_000_000;
const T0: u64 = 1_700_000_000 * S;

/// A fresh folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("resonance-learn-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open(ts_ns: u64, src: &str, dst: &str) -> Open {
    Open {
        event: TraceEvent {
            ts_ns,
            src: src.to_owned(),
            dst: dst.to_owned(),
            kind: "channel".to_owned(),
            bytes: 0,
            latency_ns: 0,
            error: false,
        },
        hit: Some(false),
    }
}

fn poller() -> PairKey {
    PairKey {
        src: "poller".into(),
        dst: "app".into(),
        kind: "channel".into(),
    }
}

#[test]
fn a_missing_or_unreadable_model_means_a_fresh_one_and_a_saved_one_loads() {
    let dir = TempDir::new("load");
    let path = dir.0.join(MODEL_FILE_NAME);
    assert!(load_model(&path).is_none());

    let mut model = Model::default();
    for k in 0..10 {
        model.observe(&open(T0 + k * 2 * S, "poller", "app").event);
    }
    model.save(&path).unwrap();
    let loaded = load_model(&path).unwrap_or_default();
    assert_eq!(loaded.tracked(), 1);
    let now = T0 + 19 * S;
    assert_eq!(loaded.predict(now, 2 * S), model.predict(now, 2 * S));

    std::fs::write(&path, b"{\"config\": truncated").unwrap();
    assert!(load_model(&path).is_none());
    assert!(!path.exists(), "set aside, so the next save starts clean");
    let aside = dir.0.join(format!("{MODEL_FILE_NAME}.unreadable"));
    assert_eq!(
        std::fs::read(&aside).unwrap(),
        b"{\"config\": truncated",
        "the evidence is kept"
    );
}

/// A scheduled retrain through the agent's code: opens go to the store, the
/// candidate learns from the store on a thread, wins its holdout against the
/// serving model (which never saw the pattern), replaces it, and the model
/// the agent saves is the one the next start loads.
#[test]
fn a_scheduled_retrain_swaps_in_a_model_learnt_from_the_store_and_it_is_saved() {
    let dir = TempDir::new("swap");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let settings = BrokerSettings {
        socket: dir.0.join("broker.sock"),
        ..BrokerSettings::default()
    };
    let registry = Registry::new();
    let broker = Broker::bind(&settings, &registry).unwrap();
    let view = broker.view();
    let predict = PredictSettings {
        retrain_every: Duration::from_secs(300),
        retrain_window: Duration::from_secs(600),
        holdout: Duration::from_secs(30),
        save_every: Duration::from_secs(3600),
        ..PredictSettings::default()
    };
    let (tx, rx) = mpsc::channel();
    let mut learning = Learning::new(view.clone(), rx, &predict, &dir.0, &registry).unwrap();
    let mut store = Store::open(&dir.0.join("resonance.db"), StoreConfig::default()).unwrap();

    let swapped = || learning_counter(&registry, "schedule", "swapped");
    let mut now = T0;
    let mut next_open = T0;
    while swapped() == 0 && now < T0 + 400 * S {
        while next_open <= now {
            tx.send(open(next_open, "poller", "app")).unwrap();
            tx.send(open(next_open + 20_000_000, "app", "db")).unwrap();
            next_open += 2 * S;
        }
        learning.step(&mut store, now);
        if (now - T0).is_multiple_of(5 * S) {
            store.flush().unwrap();
        }
        if learning.running.is_some() {
            // Let the background thread decide (wall clock, not trace time).
            std::thread::sleep(Duration::from_millis(20));
        } else {
            now += S;
        }
    }
    assert_eq!(swapped(), 1, "no swap by {} s", (now - T0) / S);
    assert!(
        (T0 + 330 * S..T0 + 332 * S).contains(&now),
        "decided one holdout after the 300 s schedule, at {} s",
        (now - T0) / S
    );
    assert_eq!(
        view.with_model(|model| model.tracked()),
        2,
        "the serving model is the candidate"
    );
    let stored = store.starts(T0, now + S).unwrap();
    assert!(stored.len() >= 300, "{}", stored.len());
    let score = |model: &str| {
        registry
            .gather()
            .iter()
            .find(|family| family.name() == "resonance_model_holdout_hit_rate")
            .and_then(|family| {
                family
                    .get_metric()
                    .iter()
                    .find(|m| m.get_label().iter().any(|l| l.value() == model))
                    .map(|m| m.get_gauge().get_value())
            })
            .unwrap_or(-1.0)
    };
    assert!(
        score("candidate") > score("current"),
        "{} vs {}",
        score("candidate"),
        score("current")
    );

    learning.save().unwrap();
    let restarted = load_model(learning.model_path()).unwrap_or_default();
    assert!(restarted.pair_id(&poller()).is_some());
    let later = now + S;
    assert_eq!(
        restarted.predict(later, 2 * S),
        view.with_model(|model| model.predict(later, 2 * S))
    );
}

fn learning_counter(registry: &Registry, reason: &str, outcome: &str) -> u64 {
    registry
        .gather()
        .iter()
        .find(|family| family.name() == "resonance_model_retrains_total")
        .and_then(|family| {
            family
                .get_metric()
                .iter()
                .find(|m| {
                    let labels = m.get_label();
                    labels.iter().any(|l| l.value() == reason)
                        && labels.iter().any(|l| l.value() == outcome)
                })
                .map(|m| m.get_counter().get_value() as u64)
        })
        .unwrap_or(0)
}

/// With the schedule off, a fall of the opens' hit rate starts a drift
/// trial whose candidate learns only the opens since the fall began, from
/// the store.
#[test]
fn a_falling_hit_rate_starts_a_drift_retrain() {
    let dir = TempDir::new("drift");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let settings = BrokerSettings {
        socket: dir.0.join("broker.sock"),
        ..BrokerSettings::default()
    };
    let registry = Registry::new();
    let broker = Broker::bind(&settings, &registry).unwrap();
    let predict = PredictSettings {
        retrain_every: Duration::ZERO,
        drift_window: Duration::from_secs(20),
        holdout: Duration::from_secs(20),
        ..PredictSettings::default()
    };
    let (tx, rx) = mpsc::channel();
    let mut learning = Learning::new(broker.view(), rx, &predict, &dir.0, &registry).unwrap();
    let mut store = Store::open(&dir.0.join("resonance.db"), StoreConfig::default()).unwrap();
    let decided = || {
        ["swapped", "kept", "failed"]
            .iter()
            .map(|outcome| learning_counter(&registry, "drift", outcome))
            .sum::<u64>()
    };
    // Two opens a second, all hits for five minutes, then all misses.
    let fall = T0 + 300 * S;
    let mut now = T0;
    let mut next_open = T0;
    while decided() == 0 && now < T0 + 420 * S {
        while next_open <= now {
            let mut first = open(next_open, "poller", "app");
            first.hit = Some(next_open < fall);
            let mut second = open(next_open + 500_000_000, "app", "db");
            second.hit = Some(next_open < fall);
            tx.send(first).unwrap();
            tx.send(second).unwrap();
            next_open += S;
        }
        learning.step(&mut store, now);
        store.flush().unwrap();
        if learning.running.is_some() {
            std::thread::sleep(Duration::from_millis(20));
        } else {
            now += S;
        }
    }
    assert_eq!(decided(), 1, "no drift decision by {} s", (now - T0) / S);
    assert_eq!(learning_counter(&registry, "drift", "failed"), 0);
    assert_eq!(learning_counter(&registry, "schedule", "swapped"), 0);
    assert_eq!(learning_counter(&registry, "schedule", "kept"), 0);
    // Seen within the 20 s window after the fall, decided a holdout later.
    assert!(
        (fall + 20 * S..=fall + 45 * S).contains(&now),
        "decided {} s after the fall",
        (now as i64 - fall as i64) / S as i64
    );
}
