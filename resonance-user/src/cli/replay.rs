//! `resonance replay TRACE`: preallocation simulated over a trace.

use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::{
    predict::{ModelConfig, budget::BudgetSettings, retrain::RetrainConfig},
    replay::{DEFAULT_THRESHOLD, DEFAULT_TTL_NS, Figures, ReplayConfig, replay},
    trace::read_trace,
};

/// Arguments of `resonance replay`.
#[derive(clap::Args)]
pub struct Args {
    /// The trace (JSON Lines, one interaction start per line).
    pub trace: std::path::PathBuf,
    /// Probability at which a channel is always prepared; with a waste
    /// budget, the highest the threshold goes.
    #[arg(long, default_value_t = DEFAULT_THRESHOLD)]
    pub threshold: f64,
    /// Share of prepared channels allowed to expire unused: the threshold
    /// is lowered toward --min-threshold while the running waste ratio
    /// stays under it (0: a fixed threshold).
    #[arg(long, default_value_t = BudgetSettings::default().target)]
    pub waste_budget: f64,
    /// Lowest threshold the waste budget goes down to.
    #[arg(long, default_value_t = BudgetSettings::default().floor)]
    pub min_threshold: f64,
    /// How long a prepared channel waits for its interaction (e.g. 5s).
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "5s")]
    pub ttl: Duration,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also print the model's figures for each pair (table output).
    #[arg(long)]
    pub by_pair: bool,
    /// Also print how well the model's probabilities are calibrated.
    #[arg(long)]
    pub calibration: bool,
    /// Switch off model components, to measure what each brings
    /// (repeatable): window, markov, timing, calibration.
    #[arg(long, value_enum)]
    pub disable: Vec<Component>,
    /// Most pairs the model tracks at once (least recently seen evicted).
    #[arg(long, default_value_t = ModelConfig::default().max_contexts)]
    pub max_contexts: usize,
    /// Retrain the model as the agent does: on a schedule and when the
    /// rolling hit rate falls (the `--retrain-*`, `--holdout` and
    /// `--drift-*` flags tune it).
    #[arg(long)]
    pub retrain: bool,
    /// Scheduled retraining period, in trace time (0s: drift only).
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "10m")]
    pub retrain_every: Duration,
    /// History a scheduled candidate learns.
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "10m")]
    pub retrain_window: Duration,
    /// How long candidate and serving model are compared before a swap.
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "30s")]
    pub holdout: Duration,
    /// Span of the rolling hit rate (and what a drift candidate learns).
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "30s")]
    pub drift_window: Duration,
    /// Fall of the rolling hit rate below its usual level that is a drift.
    #[arg(long, default_value_t = RetrainConfig::default().drift_margin)]
    pub drift_margin: f64,
}

/// The threshold as the table's heading line gives it.
fn threshold_text(report: &crate::replay::Report) -> String {
    match report.waste_budget {
        Some(target) => format!(
            "threshold {} at most, waste budget {target} (threshold at the end {:.3})",
            report.threshold, report.threshold_end
        ),
        None => format!("threshold {}", report.threshold),
    }
}

/// A part of the model that `--disable` switches off.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Component {
    /// Sliding-window follower tables.
    Window,
    /// The Markov chain.
    Markov,
    /// Per-pair inter-arrival timing.
    Timing,
    /// Online calibration of probabilities.
    Calibration,
}

/// Runs the replay.
pub fn run(args: Args) -> Result<()> {
    if !(args.threshold > 0.0 && args.threshold <= 1.0) {
        bail!("--threshold must be in (0, 1], got {}", args.threshold);
    }
    if !(0.0..1.0).contains(&args.waste_budget) {
        bail!(
            "--waste-budget must be in [0, 1), got {}",
            args.waste_budget
        );
    }
    if !(args.min_threshold > 0.0 && args.min_threshold <= args.threshold) {
        bail!(
            "--min-threshold must be in (0, --threshold], got {}",
            args.min_threshold
        );
    }
    let ttl_ns = u64::try_from(args.ttl.as_nanos()).context("--ttl is too long")?;
    if ttl_ns == 0 {
        bail!("--ttl must be positive");
    }
    debug_assert_eq!(
        DEFAULT_TTL_NS, 5_000_000_000,
        "keep the --ttl default in step"
    );
    let trace = read_trace(&args.trace)?;
    for bad in &trace.malformed {
        eprintln!("resonance: {}: skipped {bad}", args.trace.display());
    }
    let config = ReplayConfig {
        threshold: args.threshold,
        ttl_ns,
        model: ModelConfig {
            max_contexts: args.max_contexts,
            use_window: !args.disable.contains(&Component::Window),
            use_markov: !args.disable.contains(&Component::Markov),
            use_timing: !args.disable.contains(&Component::Timing),
            calibrate: !args.disable.contains(&Component::Calibration),
            ..ModelConfig::default()
        },
        retrain: args.retrain.then(|| retrain_config(&args)).transpose()?,
        budget: (args.waste_budget > 0.0).then(|| BudgetSettings {
            target: args.waste_budget,
            floor: args.min_threshold,
            ..BudgetSettings::default()
        }),
    };
    let report = replay(&trace.events, &config);
    if args.json {
        let mut value = serde_json::to_value(&report).context("encoding the report")?;
        if let Some(object) = value.as_object_mut() {
            object.insert("malformed_lines".to_owned(), trace.malformed.len().into());
        }
        let text = serde_json::to_string(&value).context("encoding the report")?;
        println!("{text}");
        return Ok(());
    }
    println!(
        "{} interactions, {}, ttl {} ms, {} malformed lines skipped",
        report.model.interactions,
        threshold_text(&report),
        report.ttl_ms,
        trace.malformed.len()
    );
    println!(
        "{:<18} {:>8} {:>8} {:>9} {:>8} {:>7} {:>10} {:>7} {:>11} {:>9}",
        "strategy",
        "hits",
        "hit_rate",
        "created",
        "wasted",
        "waste",
        "lead_p50",
        "brier",
        "idle_ch_s",
        "idle_GiBs"
    );
    for (name, figures) in [
        ("model", &report.model),
        ("static_pool", &report.static_pool),
        ("ratio_preconnect", &report.ratio_preconnect),
    ] {
        print_row(name, figures);
    }
    if !report.retrains.is_empty() {
        println!();
        let first = trace.events.first().map_or(0, |event| event.ts_ns);
        println!(
            "{:>8} {:<9} {:<8} {:>8} {:>8} {:>8} {:>8}",
            "at_s", "reason", "outcome", "trained", "cur_hit", "new_hit", "holdout"
        );
        for decision in &report.retrains {
            println!(
                "{:>8.0} {:<9} {:<8} {:>8} {:>8.3} {:>8.3} {:>8}",
                decision.decided_ns.saturating_sub(first) as f64 / 1e9,
                decision.reason.as_str(),
                decision.outcome.as_str(),
                decision.trained_on,
                decision.current.hit_rate,
                decision.candidate.hit_rate,
                decision.current.interactions
            );
        }
    }
    if args.calibration {
        println!();
        println!(
            "{:<12} {:>10} {:>10} {:>10}",
            "p (model)", "forecasts", "mean p", "observed"
        );
        for bin in &report.calibration {
            println!(
                "{:<12} {:>10} {:>10.3} {:>10.3}",
                format!("{:.1}-{:.1}", bin.from, bin.to),
                bin.forecasts,
                bin.mean_probability,
                bin.observed_rate
            );
        }
    }
    if args.by_pair {
        println!();
        println!(
            "{:<40} {:>8} {:>8} {:>8} {:>8} {:>10}",
            "pair (model)", "starts", "hits", "created", "wasted", "idle_ch_s"
        );
        for pair in &report.pairs {
            let name = format!("{} -> {} ({})", pair.src, pair.dst, pair.kind);
            println!(
                "{name:<40} {:>8} {:>8} {:>8} {:>8} {:>10.1}",
                pair.interactions, pair.hits, pair.created, pair.wasted, pair.idle_channel_seconds
            );
        }
    }
    Ok(())
}

fn retrain_config(args: &Args) -> Result<RetrainConfig> {
    let ns = |flag: &str, d: Duration| {
        u64::try_from(d.as_nanos()).with_context(|| format!("--{flag} is too long"))
    };
    if !(0.0..1.0).contains(&args.drift_margin) {
        bail!(
            "--drift-margin must be in [0, 1), got {}",
            args.drift_margin
        );
    }
    let config = RetrainConfig {
        every_ns: ns("retrain-every", args.retrain_every)?,
        window_ns: ns("retrain-window", args.retrain_window)?,
        holdout_ns: ns("holdout", args.holdout)?,
        drift_window_ns: ns("drift-window", args.drift_window)?,
        drift_margin: args.drift_margin,
        ..RetrainConfig::default()
    };
    if config.holdout_ns == 0 || config.drift_window_ns == 0 {
        bail!("--holdout and --drift-window must be positive");
    }
    Ok(config)
}

fn print_row(name: &str, figures: &Figures) {
    println!(
        "{:<18} {:>8} {:>8.3} {:>9} {:>8} {:>7.3} {:>8.1}ms {:>7.4} {:>11.0} {:>9.1}",
        name,
        figures.hits,
        figures.hit_rate,
        figures.created,
        figures.wasted,
        figures.waste_ratio,
        figures.lead_time_p50_ms,
        figures.brier_score,
        figures.idle_channel_seconds,
        figures.idle_buffer_byte_seconds / f64::from(1u32 << 30),
    );
}
