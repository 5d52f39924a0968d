//! `bench-predict`: how many predictions per second the model sustains,
//! against the cost of merely reading the same trace, measured in one run.
//!
//! A scenario trace is generated and written to a temporary file, then:
//! `read` parses it (the floor any consumer of the trace pays), `observe`
//! feeds every event to the model, `predict` observes and asks for all
//! predictions after every event, and `due` observes and asks which
//! channels to prepare (what the replay and the agent do). Each phase runs
//! several times and the fastest run counts.

use std::{hint::black_box, path::PathBuf, process::ExitCode, time::Instant};

use anyhow::{Context, Result, bail};
use resonance::{
    predict::Model,
    replay::{DEFAULT_THRESHOLD, DEFAULT_TTL_NS},
    scenario,
    trace::{read_trace, write_trace_file},
};
use serde::Serialize;

const ROUNDS: usize = 3;

#[derive(Serialize)]
struct Phase {
    name: &'static str,
    /// Events processed per second.
    events_per_s: f64,
    /// Model queries (predict or due calls) per second, if the phase makes any.
    queries_per_s: f64,
    /// Events per second relative to reading the trace.
    vs_read: f64,
}

#[derive(Serialize)]
struct Output {
    scenario: String,
    events: usize,
    pairs: usize,
    phases: Vec<Phase>,
}

struct Options {
    json: bool,
    scenario: String,
    duration_ns: u64,
}

fn options() -> Result<Options> {
    let mut options = Options {
        json: false,
        scenario: "web".to_owned(),
        duration_ns: 24 * 3600 * 1_000_000_000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--json" => options.json = true,
            "--scenario" => options.scenario = args.next().context("--scenario needs a name")?,
            "--duration" => {
                let text = args.next().context("--duration needs a value")?;
                let duration = humantime::parse_duration(&text)
                    .with_context(|| format!("--duration {text}"))?;
                options.duration_ns =
                    u64::try_from(duration.as_nanos()).context("--duration is too long")?;
            }
            other => bail!("unknown argument {other:?} (expected --json, --scenario, --duration)"),
        }
    }
    Ok(options)
}

/// Fastest of [`ROUNDS`] runs, in seconds.
fn fastest(mut run: impl FnMut() -> u64) -> f64 {
    (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            black_box(run());
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn bench() -> Result<()> {
    let options = options()?;
    let generated = scenario::generate(&options.scenario, 1, Some(options.duration_ns))?;
    let path: PathBuf = std::env::temp_dir().join(format!(
        "resonance-bench-predict-{}.jsonl",
        std::process::id()
    ));
    write_trace_file(&path, &generated.events)?;
    let read = fastest(|| read_trace(&path).map_or(0, |trace| trace.events.len() as u64));
    let trace = read_trace(&path)?;
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    let events = &trace.events;
    let count = events.len() as f64;
    let horizon = DEFAULT_TTL_NS;

    let observe = fastest(|| {
        let mut model = Model::default();
        for event in events {
            model.observe(event);
        }
        model.tracked() as u64
    });
    let predict = fastest(|| {
        let mut model = Model::default();
        let mut total = 0u64;
        for event in events {
            model.observe(event);
            total += model.predict(event.ts_ns, horizon).len() as u64;
        }
        total
    });
    let due = fastest(|| {
        let mut model = Model::default();
        let mut total = 0u64;
        for event in events {
            model.observe(event);
            let step = horizon / 8;
            total += model
                .due(event.ts_ns, horizon, DEFAULT_THRESHOLD, step, |_| true)
                .len() as u64;
        }
        total
    });
    let mut model = Model::default();
    for event in events {
        model.observe(event);
    }
    let phase = |name, seconds: f64, queries: bool| Phase {
        name,
        events_per_s: count / seconds,
        queries_per_s: if queries { count / seconds } else { 0.0 },
        vs_read: read / seconds,
    };
    let output = Output {
        scenario: options.scenario,
        events: events.len(),
        pairs: model.tracked(),
        phases: vec![
            phase("read", read, false),
            phase("observe", observe, false),
            phase("predict", predict, true),
            phase("due", due, true),
        ],
    };
    if options.json {
        println!(
            "{}",
            serde_json::to_string(&output).context("encoding the results")?
        );
        return Ok(());
    }
    println!(
        "scenario {}: {} events, {} pairs (fastest of {ROUNDS} runs)",
        output.scenario, output.events, output.pairs
    );
    println!(
        "{:<10} {:>14} {:>14} {:>10}",
        "phase", "events/s", "queries/s", "vs read"
    );
    for phase in &output.phases {
        println!(
            "{:<10} {:>14.0} {:>14.0} {:>9.2}x",
            phase.name, phase.events_per_s, phase.queries_per_s, phase.vs_read
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench-predict: {error:#}");
            ExitCode::FAILURE
        }
    }
}
