//! `resonance record`: live interaction starts written as a trace that
//! `resonance replay` and the predictor read.

use std::{
    fs::File,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{
    aggregate::{OwnExecutable, ServiceNamer},
    config::{Config, DEFAULT_CONFIG_PATH},
    observer::{Observer, ObserverOptions},
    score::pair_figures,
    trace::{StartDetector, TraceWriter, named_starts},
};

/// How often flows and starts are read.
const POLL: Duration = Duration::from_millis(200);

/// Arguments of `resonance record`.
#[derive(clap::Args)]
pub struct Args {
    /// How long to record (e.g. `30s`, `10m`).
    #[arg(long, value_parser = crate::config::parse_duration)]
    pub duration: Duration,
    /// The trace file to write (JSON Lines).
    #[arg(long)]
    pub output: PathBuf,
    /// Config file with service rules.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Records until the duration is over.
pub fn run(args: Args) -> Result<()> {
    let explicit = args.config.is_some();
    let config_path = args
        .config
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    let config = Config::load(&config_path, explicit)?;
    let namer = ServiceNamer::new(config.services.clone());
    let mut observer = Observer::start(&ObserverOptions {
        idle_gap: config.idle_gap,
        ..ObserverOptions::default()
    })?;
    let file = File::create(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let mut writer = TraceWriter::new(file);
    let idle_gap_ns = u64::try_from(config.idle_gap.as_nanos()).unwrap_or(u64::MAX);
    let mut detector = StartDetector::new(idle_gap_ns);
    let own = OwnExecutable::current();
    let left_out = (!config.include_own_processes).then_some(&own);
    let deadline = Instant::now() + args.duration;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        runtime.block_on(observer.watch(left.min(POLL)))?;
        let interactions = observer.interval();
        let figures = pair_figures(&interactions, &namer, left_out);
        let mut events = named_starts(
            observer.interaction_starts(),
            &namer,
            left_out,
            &mut detector,
        );
        for event in &mut events {
            let figures = figures
                .iter()
                .find(|(k, _)| k.src == event.src && k.dst == event.dst && k.kind == event.kind);
            if let Some((_, f)) = figures {
                event.bytes = f.bytes;
                event.latency_ns = f.latency.quantile(0.5).unwrap_or(0);
                event.error = f.errors > 0;
            }
        }
        for event in &events {
            writer.write(event)?;
        }
        if left.is_zero() {
            break;
        }
    }
    writer.flush()?;
    log::info!(
        "wrote {} interaction starts to {}",
        writer.written(),
        args.output.display()
    );
    Ok(())
}
