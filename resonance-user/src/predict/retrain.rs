//! Retraining: when to relearn a [`Model`] from scratch and whether the
//! relearnt one may replace it.
//!
//! A retrain is a *trial*. When it starts (on a schedule, or because the
//! rolling hit rate fell: [`DriftDetector`]), the caller keeps a copy of the
//! serving model (the baseline). One holdout later, [`run_trial`] builds a
//! candidate by fresh learning ([`Model::retrain`]) on the history before
//! the trial started, then plays both models over the holdout (the events
//! since the start) with [`evaluate`]: both keep learning online as they go,
//! exactly as the serving model did, and are scored on the channels they
//! would have prepared. The candidate replaces the serving model only if
//! its score is not worse; it has then seen the holdout too, so it is
//! current. Everything here is pure (no clock, no I/O), so the replay and
//! the agent share it.

use std::collections::VecDeque;

use serde::Serialize;

use super::Model;
use crate::trace::TraceEvent;

/// When and how to retrain.
#[derive(Clone, Debug, PartialEq)]
pub struct RetrainConfig {
    /// Scheduled trials this often (0: no schedule).
    pub every_ns: u64,
    /// History a scheduled candidate learns (the last `window_ns` before
    /// the trial starts).
    pub window_ns: u64,
    /// How long both models are played before the decision.
    pub holdout_ns: u64,
    /// Span of the rolling hit rate. A drift-triggered candidate learns
    /// only this much history: the span whose hit rate fell, so the old
    /// behaviour is not relearnt.
    pub drift_window_ns: u64,
    /// How far below its usual level the rolling hit rate must fall.
    pub drift_margin: f64,
    /// Opens the rolling window needs before it says anything.
    pub drift_min_samples: usize,
    /// Fewest interactions in a holdout for a verdict; with fewer the
    /// serving model is kept.
    pub min_holdout: u64,
}

impl Default for RetrainConfig {
    fn default() -> Self {
        Self {
            every_ns: 600_000_000_000,
            window_ns: 600_000_000_000,
            holdout_ns: 30_000_000_000,
            drift_window_ns: 30_000_000_000,
            drift_margin: 0.1,
            drift_min_samples: 20,
            min_holdout: 10,
        }
    }
}

/// Why a trial started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    /// The schedule.
    Schedule,
    /// The rolling hit rate fell.
    Drift,
}

impl Reason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Schedule => "schedule",
            Reason::Drift => "drift",
        }
    }
}

/// How a trial ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The candidate replaced the serving model.
    Swapped,
    /// The serving model stays.
    Kept,
    /// The trial could not run (history unreadable, training crashed).
    Failed,
}

impl Outcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Swapped => "swapped",
            Outcome::Kept => "kept",
            Outcome::Failed => "failed",
        }
    }
}

/// How the channels a model would have prepared over a stretch of events
/// fared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Evaluation {
    /// Interaction starts.
    pub interactions: u64,
    /// Starts that found a channel ready.
    pub hits: u64,
    /// Channels prepared.
    pub created: u64,
    /// Channels that expired unused.
    pub wasted: u64,
    /// hits / interactions.
    pub hit_rate: f64,
    /// `(hits − cost × wasted) / interactions`, where a wasted channel
    /// costs [`Trial::waste_cost`] hits (by default `threshold / (1 −
    /// threshold)`: the trade-off [`Model::due`] makes, under which a
    /// channel prepared at exactly the threshold is worth nothing).
    pub score: f64,
}

/// What a trial decided, and on what evidence.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    /// Why the trial ran.
    pub reason: Reason,
    /// What it decided.
    pub outcome: Outcome,
    /// When the trial started (the baseline was copied), event time ns.
    pub started_ns: u64,
    /// When it decided (end of the holdout).
    pub decided_ns: u64,
    /// Events the candidate learnt from.
    pub trained_on: usize,
    /// The serving model on the holdout.
    pub current: Evaluation,
    /// The candidate on the holdout.
    pub candidate: Evaluation,
    /// One sentence on the verdict.
    pub why: String,
}

/// Settings of one trial.
#[derive(Clone, Copy, Debug)]
pub struct Trial {
    /// Why it runs.
    pub reason: Reason,
    /// When the baseline was copied.
    pub started_ns: u64,
    /// End of the holdout (the decision time).
    pub end_ns: u64,
    /// What a wasted channel costs in hits in the score: by default
    /// ([`waste_cost`]) the threshold's own trade-off; under a waste budget
    /// the budget's exchange rate, `target / (1 − target)`.
    pub waste_cost: f64,
    /// Fewest holdout interactions for a verdict.
    pub min_holdout: u64,
}

/// The cost of a wasted channel, in hits, under which a channel prepared at
/// exactly `threshold` is worth nothing: `threshold / (1 − threshold)`.
pub fn waste_cost(threshold: f64) -> f64 {
    threshold / (1.0 - threshold).max(1e-3)
}

/// A trial's verdict, with the candidate when it won.
#[derive(Debug)]
pub struct Verdict {
    /// The decision.
    pub decision: Decision,
    /// The model to serve from now on, when swapped: it has learnt the
    /// holdout too.
    pub candidate: Option<Model>,
}

/// The history a candidate learns for a trial started at `started_ns`:
/// from `started_ns − span` up to the start.
pub fn training_span(config: &RetrainConfig, reason: Reason, started_ns: u64) -> (u64, u64) {
    let span = match reason {
        Reason::Schedule => config.window_ns,
        Reason::Drift => config.drift_window_ns,
    };
    (started_ns.saturating_sub(span), started_ns)
}

/// Runs a trial: relearns a candidate from `history` (events before the
/// start, in time order), plays `baseline` (the serving model as it was at
/// the start) and the candidate over `holdout` (events from the start to
/// `trial.end_ns`), and swaps if the candidate scores at least as well.
pub fn run_trial(
    baseline: Model,
    history: &[TraceEvent],
    holdout: &[TraceEvent],
    trial: &Trial,
    play: impl Fn(&mut Model, &[&TraceEvent], u64, u64) -> Evaluation,
) -> Verdict {
    let mut candidate = baseline.clone();
    candidate.retrain(history.iter().filter(|e| e.ts_ns < trial.started_ns));
    let mut current = baseline;
    let holdout: Vec<&TraceEvent> = holdout
        .iter()
        .filter(|e| e.ts_ns >= trial.started_ns && e.ts_ns <= trial.end_ns)
        .collect();
    let current_eval = play(&mut current, &holdout, trial.started_ns, trial.end_ns);
    let candidate_eval = play(&mut candidate, &holdout, trial.started_ns, trial.end_ns);
    let (outcome, why) = if current_eval.interactions < trial.min_holdout {
        (
            Outcome::Kept,
            format!(
                "holdout too small ({} interactions, {} needed)",
                current_eval.interactions, trial.min_holdout
            ),
        )
    } else if candidate_eval.score >= current_eval.score {
        (
            Outcome::Swapped,
            format!(
                "candidate scored {:.3} (hit rate {:.3}) against {:.3} (hit rate {:.3})",
                candidate_eval.score,
                candidate_eval.hit_rate,
                current_eval.score,
                current_eval.hit_rate
            ),
        )
    } else {
        (
            Outcome::Kept,
            format!(
                "candidate scored worse: {:.3} (hit rate {:.3}) against {:.3} (hit rate {:.3})",
                candidate_eval.score,
                candidate_eval.hit_rate,
                current_eval.score,
                current_eval.hit_rate
            ),
        )
    };
    Verdict {
        decision: Decision {
            reason: trial.reason,
            outcome,
            started_ns: trial.started_ns,
            decided_ns: trial.end_ns,
            trained_on: history
                .iter()
                .filter(|e| e.ts_ns < trial.started_ns)
                .count(),
            current: current_eval,
            candidate: candidate_eval,
            why,
        },
        candidate: (outcome == Outcome::Swapped).then_some(candidate),
    }
}

/// A fall of the rolling hit rate of the opens below its usual level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Drift {
    /// Hit rate over the rolling window.
    pub recent: f64,
    /// The usual level it fell from.
    pub usual: f64,
}

/// Watches the hit rate of the opens over a rolling window. The usual
/// level is a moving average of the window's rate, taken once per window
/// length and only while no drift is seen (a fall must not lower the bar
/// it is measured against). A drift is reported when the rolling rate is
/// more than `margin` below the usual level, plus two standard errors of a
/// rate over that many opens (so chance dips of a small window do not
/// count); the level is then forgotten and relearnt, so a lasting new
/// level stops counting as drift.
#[derive(Clone, Debug)]
pub struct DriftDetector {
    window_ns: u64,
    margin: f64,
    min_samples: usize,
    recent: VecDeque<(u64, bool)>,
    hits: usize,
    usual: Option<f64>,
    next_fold: u64,
}

/// Weight of the latest window in the usual level.
const USUAL_WEIGHT: f64 = 0.3;

impl DriftDetector {
    /// A detector with the config's window, margin and minimum.
    pub fn new(config: &RetrainConfig) -> Self {
        Self {
            window_ns: config.drift_window_ns.max(1),
            margin: config.drift_margin,
            min_samples: config.drift_min_samples.max(1),
            recent: VecDeque::new(),
            hits: 0,
            usual: None,
            next_fold: 0,
        }
    }

    /// One open at `ts`, served by a prepared channel or not.
    pub fn record(&mut self, ts: u64, hit: bool) {
        self.recent.push_back((ts, hit));
        self.hits += usize::from(hit);
        self.trim(ts);
    }

    fn trim(&mut self, now: u64) {
        while let Some(&(ts, hit)) = self.recent.front() {
            if ts.saturating_add(self.window_ns) >= now {
                break;
            }
            self.recent.pop_front();
            self.hits -= usize::from(hit);
        }
    }

    /// The rolling hit rate, if the window holds enough opens.
    pub fn rate(&self) -> Option<f64> {
        (self.recent.len() >= self.min_samples).then(|| self.hits as f64 / self.recent.len() as f64)
    }

    /// The usual level, once learnt.
    pub fn usual(&self) -> Option<f64> {
        self.usual
    }

    /// Checks at `now`: folds the rolling rate into the usual level once
    /// per window, and reports a drift (forgetting the level) when the
    /// rate fell more than the margin below it.
    pub fn check(&mut self, now: u64) -> Option<Drift> {
        self.trim(now);
        let rate = self.rate()?;
        let noise = |usual: f64| 2.0 * (usual * (1.0 - usual) / self.recent.len() as f64).sqrt();
        if let Some(usual) = self.usual
            && rate < usual - self.margin - noise(usual)
        {
            self.usual = None;
            self.next_fold = now.saturating_add(self.window_ns);
            return Some(Drift {
                recent: rate,
                usual,
            });
        }
        if now >= self.next_fold {
            self.next_fold = now.saturating_add(self.window_ns);
            self.usual = Some(match self.usual {
                None => rate,
                Some(usual) => usual + USUAL_WEIGHT * (rate - usual),
            });
        }
        None
    }
}

/// Decides when trials start: on the schedule, or on a drift, never while
/// one is running.
#[derive(Clone, Debug)]
pub struct Trigger {
    every_ns: u64,
    next_schedule: Option<u64>,
    /// The rolling hit rate.
    pub drift: DriftDetector,
}

impl Trigger {
    /// A trigger for `config`.
    pub fn new(config: &RetrainConfig) -> Self {
        Self {
            every_ns: config.every_ns,
            next_schedule: None,
            drift: DriftDetector::new(config),
        }
    }

    /// Whether a trial should start at `now` (with no trial running), and
    /// why. The schedule counts from the first check and from every trial.
    pub fn check(&mut self, now: u64) -> Option<(Reason, Option<Drift>)> {
        let drift = self.drift.check(now);
        let next = *self
            .next_schedule
            .get_or_insert(now.saturating_add(self.every_ns));
        let reason = if drift.is_some() {
            Reason::Drift
        } else if self.every_ns > 0 && now >= next {
            Reason::Schedule
        } else {
            return None;
        };
        self.next_schedule = Some(now.saturating_add(self.every_ns));
        Some((reason, drift))
    }
}

#[cfg(test)]
mod tests;
