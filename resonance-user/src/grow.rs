//! Growing the pipes of unmodified programs while they run.
//!
//! The probes report a write that found its pipe full, or a read that
//! took a full pipe's worth, the 1st, 2nd, 4th, ... time in its flow
//! ([`crate::observer::PipeFull`]). For each report
//! [`PipeGrower::handle`] names the pair (writer and readers found in
//! `/proc`), checks the policy (`[grow]`: named services only), borrows the
//! reporting process's descriptor (`pidfd_open` + `pidfd_getfd`, checked to still be
//! that pipe), lets [`decide::decide`] pick the size within
//! `pipe-max-size`, the user's pipe pages, the policy's largest size and
//! the agent's memory budget, resizes it and closes the duplicate. The
//! size a pair's pipe reached is learned, so the next pipe of that pair
//! (tonight's run of last night's pipeline) gets it at its first blocked
//! write. Every report ends in one [`Outcome`], counted, logged and kept
//! for `explain`; a process that exited, a closed pipe or a refusal is a
//! counted non-event.

pub mod decide;
pub mod host;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    path::PathBuf,
};

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use serde::{Deserialize, Serialize};

use crate::{
    Direction,
    aggregate::{Pattern, ProcessInfo, ProcessTable, ServiceNamer},
    config::GrowSettings,
    decode::End,
    observer::PipeFull,
    pair::PairKey,
};
use decide::{Ask, Bounds, DEFAULT_PIPE_PAGES, Decision, Limit, Limits};
use host::{BorrowError, BorrowedPipe, HoldersCache};

/// The name of the learned sizes' file in the state folder.
pub const LEARNED_FILE_NAME: &str = "pipe-growth.json";

/// Decisions kept per pair for `explain`.
const DECISIONS_PER_PAIR: usize = 16;
/// Pairs whose decisions are kept; the least recently decided is dropped.
const MAX_PAIRS: usize = 1024;

/// How one full-pipe report ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The pipe was grown.
    Grown,
    /// It was already as large as it wants to be.
    LargeEnough,
    /// A limit allows no more.
    AtLimit(Limit),
    /// Neither its writer nor its reader is a service `[grow]` names.
    NotInPolicy,
    /// The writer exited before the agent got to it.
    ProcessGone,
    /// The descriptor was closed or reused meanwhile.
    PipeClosed,
    /// The kernel refused the agent the process's descriptors.
    Refused,
    /// Resizing failed (e.g. `EBUSY`: the pipe holds more than fits).
    Failed,
}

impl Outcome {
    /// The metric label and the name in `explain`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Grown => "grown",
            Self::LargeEnough => "large_enough",
            Self::AtLimit(limit) => limit.as_str(),
            Self::NotInPolicy => "not_in_policy",
            Self::ProcessGone => "process_gone",
            Self::PipeClosed => "pipe_closed",
            Self::Refused => "refused",
            Self::Failed => "failed",
        }
    }

    /// Every label, so the series exist from the start.
    const LABELS: &[&str] = &[
        "grown",
        "large_enough",
        "policy_max_size",
        "pipe_max_size",
        "user_soft_limit",
        "user_hard_limit",
        "memory_budget",
        "not_in_policy",
        "process_gone",
        "pipe_closed",
        "refused",
        "failed",
    ];
}

/// One decision, as `explain` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Record {
    /// Unix epoch ns of the report.
    pub at_ns: u64,
    /// The process that reported it (writer or reader).
    pub pid: u32,
    /// The pipe (`pipe:[inode]`, or the FIFO's end id).
    pub pipe: String,
    /// How it ended (see [`Outcome::label`]).
    pub outcome: &'static str,
    /// Capacity before, bytes (0 when the pipe was not reached).
    pub from: u64,
    /// Capacity after, bytes.
    pub to: u64,
    /// Whether the size came from the pair's earlier pipes.
    pub learned: bool,
    /// What capped the growth, when something did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<Limit>,
    /// The reason in words.
    pub reason: String,
}

/// A pipe the agent grew, while something still holds it.
#[derive(Clone, Debug)]
struct Grown {
    end: End,
    /// Writer and readers: the pipe lives while one of them holds it.
    holders: Vec<u32>,
    uid: Option<u32>,
    original: u64,
    size: u64,
}

impl Grown {
    fn extra(&self) -> u64 {
        self.size.saturating_sub(self.original)
    }
}

/// What `explain` shows for one pair.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PairGrowth {
    /// The size this pair's pipes were grown to, bytes (0: none yet).
    pub learned_size: u64,
    /// The latest decisions, oldest first.
    pub decisions: VecDeque<Record>,
}

/// Counters of the growth, on the agent's registry.
#[derive(Clone)]
struct GrowthMetrics {
    outcomes: IntCounterVec,
    added_bytes: IntGauge,
    grown_pipes: IntGauge,
}

impl GrowthMetrics {
    fn register(registry: &Registry) -> prometheus::Result<Self> {
        let outcomes = IntCounterVec::new(
            Opts::new(
                "resonance_pipe_growth_total",
                "Reports of a writer blocked on a full pipe, by what the agent did: grown, \
                 large_enough, the limit that held it, not_in_policy, or a non-event \
                 (process_gone, pipe_closed, refused, failed).",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(outcomes.clone()))?;
        for label in Outcome::LABELS {
            outcomes.with_label_values(&[label]);
        }
        let added_bytes = IntGauge::new(
            "resonance_pipe_growth_bytes",
            "Pipe capacity the agent's growth adds now, bytes, over the pipes still open.",
        )?;
        registry.register(Box::new(added_bytes.clone()))?;
        let grown_pipes = IntGauge::new(
            "resonance_pipe_grown",
            "Pipes the agent grew that are still open.",
        )?;
        registry.register(Box::new(grown_pipes.clone()))?;
        Ok(Self {
            outcomes,
            added_bytes,
            grown_pipes,
        })
    }
}

/// The learned sizes as saved: a list, since JSON maps cannot take pair
/// keys.
#[derive(Debug, Default, Deserialize, Serialize)]
struct SavedSizes {
    pairs: Vec<(PairKey, u64)>,
}

/// Grows blocked pipes by the policy; see the module doc.
pub struct PipeGrower {
    services: Vec<Pattern>,
    bounds: Bounds,
    learned: BTreeMap<PairKey, u64>,
    learned_dirty: bool,
    grown: HashMap<u64, Grown>,
    pairs: HashMap<PairKey, PairGrowth>,
    /// Pairs by last decision, to drop the oldest past [`MAX_PAIRS`].
    recency: VecDeque<PairKey>,
    holders: HoldersCache,
    metrics: GrowthMetrics,
    path: Option<PathBuf>,
}

impl PipeGrower {
    /// A grower with `settings`, its metrics on `registry`, the learned
    /// sizes read from (and later saved to) `path` when given.
    pub fn new(
        settings: &GrowSettings,
        registry: &Registry,
        path: Option<PathBuf>,
    ) -> prometheus::Result<Self> {
        let learned = path
            .as_deref()
            .filter(|path| path.exists())
            .and_then(|path| {
                match crate::persist::read_json::<SavedSizes>(path, "learned pipe sizes") {
                    Ok(saved) => Some(saved.pairs.into_iter().collect()),
                    Err(error) => {
                        log::warn!("pipe sizes start unlearned: {error:#}");
                        None
                    }
                }
            })
            .unwrap_or_default();
        let mut grower = Self {
            services: Vec::new(),
            bounds: Bounds {
                max_size: 0,
                memory_budget: 0,
            },
            learned,
            learned_dirty: false,
            grown: HashMap::new(),
            pairs: HashMap::new(),
            recency: VecDeque::new(),
            holders: HoldersCache::default(),
            metrics: GrowthMetrics::register(registry)?,
            path,
        };
        grower.configure(settings);
        Ok(grower)
    }

    /// Takes new settings (SIGHUP); pipes already grown stay as they are.
    pub fn configure(&mut self, settings: &GrowSettings) {
        self.services = settings.services.iter().map(|s| Pattern::new(s)).collect();
        self.bounds = Bounds {
            max_size: settings.max_size,
            memory_budget: settings.memory_budget,
        };
    }

    /// Decides on one report and carries it out; `epoch_ns` is the
    /// report's time for `explain`. With no service named (the default)
    /// the report is only counted: nothing could be grown, so `/proc` is
    /// not walked to name its pair.
    pub fn handle(
        &mut self,
        report: &PipeFull,
        namer: &ServiceNamer,
        processes: &ProcessTable,
        epoch_ns: u64,
    ) -> Option<Record> {
        if self.services.is_empty() {
            self.metrics
                .outcomes
                .with_label_values(&[Outcome::NotInPolicy.label()])
                .inc();
            return None;
        }
        let now = crate::sys::monotonic_ns();
        let holders = self.holders.get(report.end, report.pid, now);
        let other = |pids: &[u32]| pids.iter().copied().find(|pid| *pid != report.pid);
        let (writer, reader) = match report.dir {
            Direction::Send => (Some(report.pid), other(&holders.readers)),
            Direction::Recv => (other(&holders.writers), Some(report.pid)),
        };
        let name = |pid: Option<u32>| -> String {
            let Some(pid) = pid else {
                return String::new();
            };
            match processes.get(pid) {
                Some(info) => namer.name(info),
                None => {
                    let mut info = ProcessInfo::read(pid, 0, "");
                    info.comm = info.main_comm.clone().unwrap_or_default();
                    namer.name(&info)
                }
            }
        };
        let pair = PairKey {
            src: name(writer),
            dst: name(reader),
            kind: report.end.kind.as_str().to_owned(),
        };
        let mut record = Record {
            at_ns: epoch_ns,
            pid: report.pid,
            pipe: pipe_name(report.end),
            outcome: "",
            from: 0,
            to: 0,
            learned: false,
            limit: None,
            reason: String::new(),
        };
        let outcome = self.carry_out(report, &pair, &holders, &mut record);
        record.outcome = outcome.label();
        self.metrics
            .outcomes
            .with_label_values(&[outcome.label()])
            .inc();
        self.publish_budget();
        let text = format!(
            "pipe growth: {} of pid {} ({} -> {}): {}",
            record.pipe, report.pid, pair.src, pair.dst, record.reason
        );
        // A limit is news when it stops a pipe the agent has not grown; at
        // the sizes it grew a pipe to, the later reports only repeat it.
        let repeated =
            matches!(outcome, Outcome::AtLimit(_)) && self.grown.contains_key(&report.end.id);
        match outcome {
            Outcome::AtLimit(_) if repeated => log::debug!("{text}"),
            Outcome::Grown | Outcome::AtLimit(_) => log::info!("{text}"),
            Outcome::Refused | Outcome::Failed => log::warn!("{text}"),
            _ => log::debug!("{text}"),
        }
        self.remember(pair, record.clone());
        Some(record)
    }

    fn carry_out(
        &mut self,
        report: &PipeFull,
        pair: &PairKey,
        holders: &host::Holders,
        record: &mut Record,
    ) -> Outcome {
        let named = self
            .services
            .iter()
            .any(|pattern| pattern.matches(&pair.src) || pattern.matches(&pair.dst));
        if !named {
            record.reason = format!(
                "neither {} nor {} is among grow.services",
                pair.src,
                if pair.dst.is_empty() {
                    "its reader"
                } else {
                    &pair.dst
                }
            );
            return Outcome::NotInPolicy;
        }
        let pipe = match BorrowedPipe::borrow(report.pid, report.fd, report.end) {
            Ok(pipe) => pipe,
            Err(error) => {
                record.reason = format!("not grown: {error}");
                return match error {
                    BorrowError::ProcessGone => Outcome::ProcessGone,
                    BorrowError::PipeClosed => Outcome::PipeClosed,
                    BorrowError::Refused(_) => Outcome::Refused,
                    BorrowError::Failed(_) => Outcome::Failed,
                };
            }
        };
        let current = match pipe.size() {
            Ok(size) => size,
            Err(error) => {
                record.reason = format!("reading its size failed: {error}");
                return Outcome::Failed;
            }
        };
        record.from = current;
        record.to = current;
        let limits = host::read_limits();
        let ask = Ask {
            current,
            write_bytes: u64::from(report.bytes),
            learned: self.learned.get(pair).copied(),
            user_pages: self.user_pages(holders, report.end, current, limits),
            budget_used: self.budget_used_without(report.end.id),
        };
        match decide::decide(ask, self.bounds, limits) {
            Decision::LargeEnough => {
                record.reason = format!("{current} bytes already hold its writes");
                Outcome::LargeEnough
            }
            Decision::AtLimit(limit) => {
                record.limit = Some(limit);
                record.reason = format!("at {current} bytes, {} allows no more", describe(limit));
                Outcome::AtLimit(limit)
            }
            Decision::Grow { to, learned, limit } => match pipe.resize(to) {
                Ok(set) => {
                    record.to = set;
                    record.learned = learned;
                    record.limit = limit;
                    record.reason = format!(
                        "grown from {current} to {set} bytes{}{}",
                        if learned {
                            ", the size this pair's earlier pipes needed"
                        } else {
                            ""
                        },
                        limit.map_or_else(String::new, |limit| format!(
                            ", held there by {}",
                            describe(limit)
                        )),
                    );
                    self.note_grown(report, pair, holders, current, set);
                    Outcome::Grown
                }
                Err(error) => {
                    record.reason = format!("resizing to {to} bytes failed: {error}");
                    Outcome::Failed
                }
            },
        }
    }

    fn note_grown(
        &mut self,
        report: &PipeFull,
        pair: &PairKey,
        holders: &host::Holders,
        current: u64,
        set: u64,
    ) {
        let entry = self.grown.entry(report.end.id).or_insert_with(|| Grown {
            end: report.end,
            holders: Vec::new(),
            uid: holders.uid,
            original: current,
            size: current,
        });
        entry.size = set;
        let everyone = holders.readers.iter().chain(&holders.writers).copied();
        for pid in std::iter::once(report.pid).chain(everyone) {
            if !entry.holders.contains(&pid) {
                entry.holders.push(pid);
            }
        }
        let learned = self.learned.entry(pair.clone()).or_insert(0);
        if set > *learned {
            *learned = set;
            self.learned_dirty = true;
        }
    }

    /// Pipe pages the pipe's user holds: each of its pipes at the default
    /// size, plus what the agent added to those it grew, plus this pipe's
    /// own excess if someone else grew it.
    fn user_pages(&self, holders: &host::Holders, end: End, current: u64, limits: Limits) -> u64 {
        let page = limits.page_size.max(1);
        let added: u64 = self
            .grown
            .values()
            .filter(|grown| grown.uid == holders.uid && grown.end.id != end.id)
            .map(|grown| grown.extra() / page)
            .sum();
        let this = (current / page).saturating_sub(DEFAULT_PIPE_PAGES);
        holders
            .user_pipes
            .max(1)
            .saturating_mul(DEFAULT_PIPE_PAGES)
            .saturating_add(added)
            .saturating_add(this)
    }

    fn budget_used_without(&self, end: u64) -> u64 {
        self.grown
            .iter()
            .filter(|(id, _)| **id != end)
            .map(|(_, grown)| grown.extra())
            .sum()
    }

    fn remember(&mut self, pair: PairKey, record: Record) {
        let learned_size = self.learned.get(&pair).copied().unwrap_or(0);
        let entry = self.pairs.entry(pair.clone()).or_default();
        entry.learned_size = learned_size;
        entry.decisions.push_back(record);
        while entry.decisions.len() > DECISIONS_PER_PAIR {
            entry.decisions.pop_front();
        }
        self.recency.retain(|key| *key != pair);
        self.recency.push_back(pair);
        while self.recency.len() > MAX_PAIRS {
            if let Some(oldest) = self.recency.pop_front() {
                self.pairs.remove(&oldest);
            }
        }
    }

    /// Forgets grown pipes nobody holds any more (their memory is back) and
    /// saves newly learned sizes; the agent calls it every tick.
    pub fn tick(&mut self) {
        self.grown
            .retain(|_, grown| grown.holders.iter().any(|pid| host::holds(*pid, grown.end)));
        self.publish_budget();
        if self.learned_dirty {
            self.save();
        }
    }

    /// Writes the learned sizes to the state folder.
    pub fn save(&mut self) {
        let Some(path) = &self.path else { return };
        let saved = SavedSizes {
            pairs: self
                .learned
                .iter()
                .map(|(pair, size)| (pair.clone(), *size))
                .collect(),
        };
        match crate::persist::write_json(path, &saved, "learned pipe sizes") {
            Ok(()) => self.learned_dirty = false,
            Err(error) => log::warn!("learned pipe sizes kept for the next try: {error:#}"),
        }
    }

    /// Every pair's growth, for the control socket.
    pub fn view(&self) -> BTreeMap<PairKey, PairGrowth> {
        self.pairs
            .iter()
            .map(|(pair, growth)| (pair.clone(), growth.clone()))
            .collect()
    }

    fn publish_budget(&self) {
        let added: u64 = self.grown.values().map(Grown::extra).sum();
        self.metrics
            .added_bytes
            .set(i64::try_from(added).unwrap_or(i64::MAX));
        self.metrics
            .grown_pipes
            .set(i64::try_from(self.grown.len()).unwrap_or(i64::MAX));
    }
}

/// How a pipe is named in logs and `explain`: as `/proc/PID/fd` shows an
/// anonymous pipe, or by its end id for a FIFO.
fn pipe_name(end: End) -> String {
    match end.kind {
        resonance_common::ChannelKind::Pipe => format!("pipe:[{}]", end.id),
        _ => format!("fifo {:#x}", end.id),
    }
}

fn describe(limit: Limit) -> &'static str {
    match limit {
        Limit::PolicyMaxSize => "grow.max_size",
        Limit::PipeMaxSize => "/proc/sys/fs/pipe-max-size",
        Limit::UserSoftLimit => {
            "the user's pipe-user-pages-soft (with room kept for its next pipe)"
        }
        Limit::UserHardLimit => "the user's pipe-user-pages-hard",
        Limit::MemoryBudget => "grow.memory_budget",
    }
}
