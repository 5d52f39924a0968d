//! `cargo xtask bench observer`: what the probes cost the traffic they
//! watch. A pipe ping-pong (1-byte round trips) and a 64 KiB streaming
//! transfer run in child processes, in rotating order without probes, with
//! empty programs on the same tracepoints (the floor any tracepoint observer
//! pays on this kernel), and with the observer; medians give the ratios.

use std::{process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use resonance::{
    observer::{Observer, ObserverOptions},
    probe::ProbeSet,
};
use resonance_tests::traffic_bin;

const ROUNDS: usize = 6;
const PINGPONG_ROUND_TRIPS: u64 = 20_000;
const STREAM_BYTES: u64 = 1 << 30;

fn main() -> Result<()> {
    let json = std::env::args().any(|a| a == "--json");
    let mut pingpong = Samples::default();
    let mut streaming = Samples::default();
    for round in 0..ROUNDS {
        // Rotate which mode goes first so drift in the machine's speed
        // favours none of them.
        let mut order = [Mode::Without, Mode::HookFloor, Mode::Observer];
        order.rotate_left(round % 3);
        for mode in order {
            let _attached = attach(mode)?;
            let seconds = run_traffic(&["pipe-pingpong", &PINGPONG_ROUND_TRIPS.to_string()])?;
            pingpong.push(mode, PINGPONG_ROUND_TRIPS as f64 / seconds);
            let seconds = run_traffic(&["pipe-stream", &STREAM_BYTES.to_string()])?;
            streaming.push(mode, STREAM_BYTES as f64 / seconds);
        }
    }
    if json {
        let figures = |samples: &Samples, unit: &str, target: f64| {
            serde_json::json!({
                format!("without_{unit}_per_s"): samples.median(Mode::Without),
                format!("hook_floor_{unit}_per_s"): samples.median(Mode::HookFloor),
                format!("with_{unit}_per_s"): samples.median(Mode::Observer),
                "ratio": samples.ratio(Mode::Observer),
                "hook_floor_ratio": samples.ratio(Mode::HookFloor),
                "target_ratio_at_least": target,
            })
        };
        let report = serde_json::json!({
            "rounds": ROUNDS,
            "pingpong": figures(&pingpong, "round_trips", 0.95),
            "streaming": figures(&streaming, "bytes", 0.98),
        });
        println!("{report}");
    } else {
        println!(
            "observer overhead, median of {ROUNDS} rounds; ratio = rate / rate without probes"
        );
        println!(
            "                 {:>12} {:>12} {:>12}  {:>7} {:>11}",
            "without", "hooks only", "observer", "ratio", "hooks ratio"
        );
        for (name, samples, scale, target) in [
            ("ping-pong rt/s", &pingpong, 1.0, 0.95),
            ("stream MiB/s", &streaming, 1_048_576.0, 0.98),
        ] {
            println!(
                "  {name:<14} {:>12.0} {:>12.0} {:>12.0}  {:>7.3} {:>11.3}  (target >= {target})",
                samples.median(Mode::Without) / scale,
                samples.median(Mode::HookFloor) / scale,
                samples.median(Mode::Observer) / scale,
                samples.ratio(Mode::Observer),
                samples.ratio(Mode::HookFloor),
            );
        }
    }
    Ok(())
}

/// What is attached while the traffic runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Nothing: the baseline.
    Without,
    /// Empty programs on the observer's tracepoints.
    HookFloor,
    /// The observer.
    Observer,
}

fn attach(mode: Mode) -> Result<Option<Observer>> {
    let probe_set = match mode {
        Mode::Without => return Ok(None),
        Mode::HookFloor => ProbeSet::HookFloor,
        Mode::Observer => ProbeSet::Observer,
    };
    let options = ObserverOptions {
        probe_set,
        ..ObserverOptions::default()
    };
    Ok(Some(
        Observer::start(&options).context("attaching the probes")?,
    ))
}

/// Runs one traffic child; returns the seconds it reported.
fn run_traffic(args: &[&str]) -> Result<f64> {
    let output = Command::new(traffic_bin())
        .args(args)
        .output()
        .with_context(|| format!("running traffic {args:?}"))?;
    if !output.status.success() {
        bail!(
            "traffic {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let nanos: u64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .context("traffic printed no elapsed time")?;
    Ok(Duration::from_nanos(nanos).as_secs_f64())
}

/// Rates measured per mode.
#[derive(Default)]
struct Samples {
    rates: Vec<(Mode, f64)>,
}

impl Samples {
    fn push(&mut self, mode: Mode, rate: f64) {
        self.rates.push((mode, rate));
    }

    fn median(&self, mode: Mode) -> f64 {
        let mut values: Vec<f64> = self
            .rates
            .iter()
            .filter(|(m, _)| *m == mode)
            .map(|(_, r)| *r)
            .collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(0.0)
    }

    fn ratio(&self, mode: Mode) -> f64 {
        let base = self.median(Mode::Without);
        if base == 0.0 {
            0.0
        } else {
            self.median(mode) / base
        }
    }
}
