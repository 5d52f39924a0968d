//! The broker's model, kept current and kept across restarts.
//!
//! [`Learning`] receives every open the broker's model learns
//! ([`crate::handout::Broker::opens`]), records it in the history store's
//! `starts` table and in the rolling hit rate, and runs the retraining
//! trials of [`crate::predict::retrain`] in wall-clock time: when the
//! schedule or a drift starts a trial it copies the serving model; one
//! holdout later it reads the candidate's history from the store, and a
//! background thread relearns and plays both models over the holdout. The
//! broker keeps serving meanwhile; only the copy and the swap take its lock.
//! A swapped-in candidate first learns the opens that arrived while it was
//! judged, so nothing the serving model knew is lost.
//!
//! The model is saved to [`MODEL_FILE_NAME`] in the state folder every
//! `predict.save_every` and on a clean stop, and loaded at start
//! ([`load_model`]): a file that cannot be read is set aside and logged,
//! and the broker starts with a fresh model.

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::mpsc::Receiver,
    thread::JoinHandle,
};

use anyhow::{Context, Result};
use prometheus::{GaugeVec, IntCounterVec, Opts, Registry};

use crate::{
    config::PredictSettings,
    handout::{BrokerView, Open, SavedBroker},
    plan::Planner,
    predict::{
        Model,
        retrain::{self, Outcome, Reason, RetrainConfig, Trial, Trigger, Verdict},
    },
    store::Store,
    trace::TraceEvent,
};

/// The broker's model inside the state folder.
pub const MODEL_FILE_NAME: &str = "broker-model.json";

/// The broker's per-pair feedback inside the state folder.
pub const FEEDBACK_FILE_NAME: &str = "broker-feedback.json";

/// How long opens stay in memory after they are stored: the holdout is
/// read from here (the newest opens may not be flushed yet), and a
/// swapped-in candidate catches up from here.
const KEEP_MIN_NS: u64 = 60_000_000_000;

/// Retraining counters and the last holdout's figures.
#[derive(Clone)]
struct LearnMetrics {
    retrains: IntCounterVec,
    holdout_score: GaugeVec,
    holdout_hit_rate: GaugeVec,
}

impl LearnMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let retrains = IntCounterVec::new(
            Opts::new(
                "resonance_model_retrains_total",
                "Retraining trials of the broker's model, by why they ran (schedule, drift) \
                 and how they ended (swapped, kept, failed).",
            ),
            &["reason", "outcome"],
        )?;
        registry.register(Box::new(retrains.clone()))?;
        let holdout_score = GaugeVec::new(
            Opts::new(
                "resonance_model_holdout_score",
                "Score on the last retraining holdout ((hits - waste cost) / opens), \
                 of the serving model (current) and of the candidate.",
            ),
            &["model"],
        )?;
        registry.register(Box::new(holdout_score.clone()))?;
        let holdout_hit_rate = GaugeVec::new(
            Opts::new(
                "resonance_model_holdout_hit_rate",
                "Hit rate on the last retraining holdout, of the serving model (current) \
                 and of the candidate.",
            ),
            &["model"],
        )?;
        registry.register(Box::new(holdout_hit_rate.clone()))?;
        // Every series exists from the start, so rates and alerts see zeros.
        for reason in [Reason::Schedule, Reason::Drift] {
            for outcome in [Outcome::Swapped, Outcome::Kept, Outcome::Failed] {
                retrains.with_label_values(&[reason.as_str(), outcome.as_str()]);
            }
        }
        Ok(Self {
            retrains,
            holdout_score,
            holdout_hit_rate,
        })
    }
}

/// A trial waiting for its holdout to pass.
struct Pending {
    reason: Reason,
    started_ns: u64,
    baseline: Model,
    /// The broker's planner as it was then: both models are played with it.
    planner: Planner,
}

/// A trial being decided on a background thread.
struct Running {
    reason: Reason,
    end_ns: u64,
    handle: JoinHandle<Verdict>,
}

/// Keeps the broker's model learnt, retrained and saved; see the module
/// documentation.
pub struct Learning {
    view: BrokerView,
    opens: Receiver<Open>,
    settings: PredictSettings,
    retrain: RetrainConfig,
    trigger: Trigger,
    pending: Option<Pending>,
    running: Option<Running>,
    /// Opens of the last few holdouts, oldest first.
    recent: VecDeque<TraceEvent>,
    path: PathBuf,
    feedback_path: PathBuf,
    next_save_ns: Option<u64>,
    metrics: LearnMetrics,
}

impl Learning {
    /// Takes over the broker's opens; the model is saved in `state_dir`.
    pub fn new(
        view: BrokerView,
        opens: Receiver<Open>,
        predict: &PredictSettings,
        state_dir: &Path,
        registry: &Registry,
    ) -> Result<Self> {
        let retrain = predict.retrain_config();
        Ok(Self {
            view,
            opens,
            trigger: Trigger::new(&retrain),
            retrain,
            settings: predict.clone(),
            pending: None,
            running: None,
            recent: VecDeque::new(),
            path: state_dir.join(MODEL_FILE_NAME),
            feedback_path: state_dir.join(FEEDBACK_FILE_NAME),
            next_save_ns: None,
            metrics: LearnMetrics::new(registry).context("registering retraining metrics")?,
        })
    }

    /// New `[predict]` settings (SIGHUP); a trial under way finishes under
    /// the old ones.
    pub fn reconfigure(&mut self, predict: &PredictSettings) {
        if *predict != self.settings {
            self.retrain = predict.retrain_config();
            self.trigger = Trigger::new(&self.retrain);
            self.settings = predict.clone();
        }
    }

    /// Where the model is saved.
    pub fn model_path(&self) -> &Path {
        &self.path
    }

    /// Records the opens received since the last call, finishes or starts
    /// a trial when due, and saves the model when due. Called on every
    /// agent tick; `now_ns` is Unix epoch ns (the broker's clock).
    pub fn step(&mut self, store: &mut Store, now_ns: u64) {
        let opens: Vec<Open> = self.opens.try_iter().collect();
        self.record(store, opens, now_ns);
        if self
            .running
            .as_ref()
            .is_some_and(|r| r.handle.is_finished())
        {
            self.finish(store, now_ns);
        } else if self.running.is_none() {
            let holdout_over = self
                .pending
                .as_ref()
                .map(|p| now_ns >= p.started_ns.saturating_add(self.retrain.holdout_ns));
            match holdout_over {
                Some(true) => self.launch(store, now_ns),
                Some(false) => {}
                None => self.maybe_start(now_ns),
            }
        }
        let next_save = *self
            .next_save_ns
            .get_or_insert_with(|| now_ns.saturating_add(duration_ns(self.settings.save_every)));
        if now_ns >= next_save {
            self.next_save_ns = Some(now_ns.saturating_add(duration_ns(self.settings.save_every)));
            if let Err(error) = self.save() {
                log::error!("saving the broker model failed (kept in memory): {error:#}");
            }
        }
    }

    /// Stores the opens, feeds the rolling hit rate and keeps them in
    /// memory for holdouts and catch-ups.
    fn record(&mut self, store: &mut Store, opens: Vec<Open>, now_ns: u64) {
        for open in opens {
            // The hit rate is the broker's: observed starts had no channel.
            if let Some(hit) = open.hit {
                self.trigger.drift.record(open.event.ts_ns, hit);
            }
            store.add_start(open.event.clone());
            self.recent.push_back(open.event);
        }
        let keep = self.retrain.holdout_ns.saturating_mul(2).max(KEEP_MIN_NS);
        let cutoff = now_ns.saturating_sub(keep);
        while self.recent.front().is_some_and(|e| e.ts_ns < cutoff) {
            self.recent.pop_front();
        }
    }

    fn maybe_start(&mut self, now_ns: u64) {
        if !self.settings.retrain {
            return;
        }
        let Some((reason, drift)) = self.trigger.check(now_ns) else {
            return;
        };
        match drift {
            Some(drift) => log::info!(
                "broker model: hit rate of the last {:?} fell to {:.2} from a usual {:.2}: \
                 retraining (decision after {:?})",
                self.settings.drift_window,
                drift.recent,
                drift.usual,
                self.settings.holdout
            ),
            None => log::debug!("broker model: scheduled retraining starts"),
        }
        let baseline = self.view.with_model(|model| model.clone());
        self.pending = Some(Pending {
            reason,
            started_ns: now_ns,
            baseline,
            planner: self.view.planner(),
        });
    }

    /// The holdout has passed: reads the candidate's history from the
    /// store and decides on a background thread.
    fn launch(&mut self, store: &Store, now_ns: u64) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        let (from, to) = retrain::training_span(&self.retrain, pending.reason, pending.started_ns);
        let history: Vec<TraceEvent> = match store.starts(from, to) {
            Ok(starts) => starts,
            Err(error) => {
                self.failed(
                    pending.reason,
                    &format!("while reading its history: {error}"),
                );
                return;
            }
        };
        let holdout: Vec<TraceEvent> = self
            .recent
            .iter()
            .filter(|e| e.ts_ns >= pending.started_ns && e.ts_ns <= now_ns)
            .cloned()
            .collect();
        let planner = pending.planner;
        let trial = Trial {
            reason: pending.reason,
            started_ns: pending.started_ns,
            end_ns: now_ns,
            waste_cost: planner.waste_cost(),
            min_holdout: self.retrain.min_holdout,
        };
        let baseline = pending.baseline;
        let play = move |model: &mut Model, events: &[&TraceEvent], from: u64, to: u64| {
            crate::replay::evaluate(&planner, model, events, from, to)
        };
        let spawned = std::thread::Builder::new()
            .name("retrain".to_owned())
            .spawn(move || retrain::run_trial(baseline, &history, &holdout, &trial, play));
        match spawned {
            Ok(handle) => {
                self.running = Some(Running {
                    reason: pending.reason,
                    end_ns: now_ns,
                    handle,
                })
            }
            Err(error) => self.failed(
                pending.reason,
                &format!("while starting its thread: {error}"),
            ),
        }
    }

    /// Takes the verdict; a winning candidate catches up with the opens
    /// since the holdout ended and replaces the serving model.
    fn finish(&mut self, store: &mut Store, now_ns: u64) {
        let Some(running) = self.running.take() else {
            return;
        };
        let Ok(verdict) = running.handle.join() else {
            self.failed(running.reason, "because the training thread panicked");
            return;
        };
        let decision = verdict.decision;
        let mut late = Vec::new();
        if let Some(mut candidate) = verdict.candidate {
            let Self {
                view,
                opens,
                recent,
                ..
            } = self;
            view.with_model(|model| {
                // Under the lock nothing new is learnt, so after this drain
                // the candidate knows everything the serving model knows.
                late = opens.try_iter().collect();
                let since = recent.iter().filter(|e| e.ts_ns > running.end_ns);
                for event in since.chain(late.iter().map(|open| &open.event)) {
                    candidate.observe(event);
                }
                *model = candidate;
            });
        }
        self.record(store, late, now_ns);
        self.metrics
            .retrains
            .with_label_values(&[decision.reason.as_str(), decision.outcome.as_str()])
            .inc();
        // A holdout too small for a verdict (an idle broker) says nothing
        // about either model: the gauges keep the last real comparison.
        let judged = decision.current.interactions >= self.retrain.min_holdout;
        if judged {
            for (label, eval) in [
                ("current", &decision.current),
                ("candidate", &decision.candidate),
            ] {
                self.metrics
                    .holdout_score
                    .with_label_values(&[label])
                    .set(eval.score);
                self.metrics
                    .holdout_hit_rate
                    .with_label_values(&[label])
                    .set(eval.hit_rate);
            }
        }
        let level = if judged {
            log::Level::Info
        } else {
            log::Level::Debug
        };
        log::log!(
            level,
            "broker model: {} retraining on {} opens, {}: {}",
            decision.reason.as_str(),
            decision.trained_on,
            decision.outcome.as_str(),
            decision.why
        );
    }

    fn failed(&self, reason: Reason, why: &str) {
        log::error!(
            "broker model: {} retraining failed {why}; the serving model stays",
            reason.as_str()
        );
        self.metrics
            .retrains
            .with_label_values(&[reason.as_str(), Outcome::Failed.as_str()])
            .inc();
    }

    /// Writes the serving model to the state folder (copied under the
    /// lock, written outside it).
    pub fn save(&self) -> Result<()> {
        let model = self.view.with_model(|model| model.clone());
        let feedback = self.view.saved();
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        model.save(&self.path)?;
        crate::persist::write_json(&self.feedback_path, &feedback, "broker feedback")
    }
}

fn duration_ns(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The model saved at `path`, if there is a usable one. A missing file is
/// a first start; a file that cannot be read or decoded is logged, renamed
/// to `<name>.unreadable` (so the next save does not destroy the evidence)
/// and `None` is returned: the broker starts with a fresh model.
pub fn load_model(path: &Path) -> Option<Model> {
    let model = load_or_set_aside(path, "broker model", Model::load)?;
    log::info!(
        "loaded the broker model from {} ({} pairs)",
        path.display(),
        model.tracked()
    );
    Some(model)
}

/// The broker's per-pair feedback saved at `path` (capacity decisions,
/// outcomes, measured channels) and its planner's thresholds, under the
/// same rules as [`load_model`].
pub fn load_feedback(path: &Path) -> Option<SavedBroker> {
    load_or_set_aside(path, "broker feedback", |path| {
        crate::persist::read_json(path, "broker feedback")
    })
}

/// `load(path)`, or `None` for a missing file (a first start) and for one
/// that does not load, which is set aside as `<name>.unreadable`.
fn load_or_set_aside<T>(
    path: &Path,
    what: &str,
    load: impl FnOnce(&Path) -> Result<T>,
) -> Option<T> {
    if !path.exists() {
        log::info!("no saved {what} at {}: starting afresh", path.display());
        return None;
    }
    match load(path) {
        Ok(value) => Some(value),
        Err(error) => {
            let mut aside = path.as_os_str().to_owned();
            aside.push(".unreadable");
            let aside = PathBuf::from(aside);
            let moved = match std::fs::rename(path, &aside) {
                Ok(()) => format!("moved to {}", aside.display()),
                Err(rename) => format!("could not be moved aside: {rename}"),
            };
            log::error!(
                "the saved {what} is unusable ({error:#}); it was {moved}; starting afresh"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests;
