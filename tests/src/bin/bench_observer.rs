//! `cargo xtask bench observer`: what the probes cost the traffic they
//! watch.
//!
//! Six ways of running, in rotating order within each round so drift in the
//! machine's speed favours none: no probes (the baseline); an empty
//! `tp_btf/sys_exit` program (the floor of the default mode); empty
//! programs on the classic syscall tracepoints (the floor of the fallback);
//! the observer in its default mode (the best this kernel loads); the same
//! without latency; and the observer forced into the classic tracepoint
//! fallback. Each runs every
//! workload: 1-byte ping-pongs over a pipe and over a Unix stream
//! socketpair, pinned to one CPU and not; a 64 KiB pipe stream; real
//! redis-server + redis-benchmark over a Unix socket, both pinned to one
//! CPU; real PostgreSQL + `pgbench -S` over its socket. A ratio is a rate
//! over the same round's rate without probes; the table gives the median
//! over rounds with the lowest and highest.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use resonance::{
    observer::{Observer, ObserverOptions},
    probe::{ProbeMode, ProbeSet},
};
use resonance_tests::{
    Reaped,
    servers::{pgbench, postgres_bin_dir, start_postgres, start_redis},
    traffic_bin,
};

const ROUNDS: usize = 5;
/// The CPU pinned workloads share (the other one keeps the rest of the
/// machine, this benchmark included, off their CPU).
const PINNED_CPU: &str = "1";
const PINNED_ROUND_TRIPS: u64 = 100_000;
const UNPINNED_ROUND_TRIPS: u64 = 20_000;
const STREAM_BYTES: u64 = 1 << 30;
const REDIS_REQUESTS: u64 = 30_000;
const REDIS_TESTS: &str = "ping_inline,set,get";
const PGBENCH_SECONDS: &str = "3";

fn main() -> Result<()> {
    let json = std::env::args().any(|a| a == "--json");
    let markdown = std::env::args().any(|a| a == "--markdown");
    let servers = Servers::start()?;
    let workloads = workloads();
    let mut results = Results::default();
    let mut default_mode = None;
    let mut walks = 0;
    for round in 0..ROUNDS {
        let mut order = Mode::ALL;
        order.rotate_left(round % Mode::ALL.len());
        for mode in order {
            let observer = attach(mode)?;
            if mode == Mode::Default {
                default_mode = observer.as_ref().map(Observer::mode);
            }
            for workload in &workloads {
                let rate = (workload.run)(&servers)
                    .with_context(|| format!("{} under {}", workload.name, mode.label()))?;
                results.push(round, mode, workload.name, rate);
            }
            if mode == Mode::Default {
                walks += observer.as_ref().map_or(0, Observer::fd_walks);
            }
        }
        eprintln!("bench observer: round {} of {ROUNDS} done", round + 1);
    }
    let default_mode = default_mode.map_or("none", ProbeMode::as_str);
    if json {
        print_json(&workloads, &results, default_mode, walks);
    } else if markdown {
        print_markdown(&workloads, &results, default_mode, walks);
    } else {
        print_table(&workloads, &results, default_mode, walks);
    }
    Ok(())
}

/// What is attached while the workloads run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Nothing: the baseline.
    Without,
    /// An empty `tp_btf/sys_exit` program.
    FloorBtf,
    /// Empty programs on the classic tracepoints the fallback uses.
    FloorClassic,
    /// The observer, in the mode it picks.
    Default,
    /// The same with latency left out (`measure_latency = false`): what
    /// latency costs is the difference.
    NoLatency,
    /// The observer, forced onto the classic tracepoints.
    Fallback,
}

impl Mode {
    const ALL: [Self; 6] = [
        Self::Without,
        Self::FloorBtf,
        Self::FloorClassic,
        Self::Default,
        Self::NoLatency,
        Self::Fallback,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Without => "without",
            Self::FloorBtf => "empty tp_btf",
            Self::FloorClassic => "empty classic",
            Self::Default => "observer",
            Self::NoLatency => "no latency",
            Self::Fallback => "fallback",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::Without => "without",
            Self::FloorBtf => "floor_tp_btf",
            Self::FloorClassic => "floor_tracepoint",
            Self::Default => "observer",
            Self::NoLatency => "observer_no_latency",
            Self::Fallback => "observer_tracepoint",
        }
    }
}

fn attach(mode: Mode) -> Result<Option<Observer>> {
    let (probe_set, probe_mode) = match mode {
        Mode::Without => return Ok(None),
        Mode::FloorBtf => (ProbeSet::HookFloor, Some(ProbeMode::TpBtf)),
        Mode::FloorClassic => (ProbeSet::HookFloor, Some(ProbeMode::Tracepoint)),
        Mode::Default | Mode::NoLatency => (ProbeSet::Observer, None),
        Mode::Fallback => (ProbeSet::Observer, Some(ProbeMode::Tracepoint)),
    };
    let options = ObserverOptions {
        probe_set,
        mode: probe_mode,
        latency: mode != Mode::NoLatency,
        ..ObserverOptions::default()
    };
    Ok(Some(
        Observer::start(&options).context("attaching the probes")?,
    ))
}

/// The real servers the workloads talk to, started once.
struct Servers {
    scratch: PathBuf,
    redis_socket: PathBuf,
    pg_bin: PathBuf,
    pg_dir: PathBuf,
    _redis: Reaped,
    _postgres: Reaped,
}

impl Servers {
    fn start() -> Result<Self> {
        let scratch = std::env::temp_dir().join(format!("resonance-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).context("creating a scratch folder")?;
        let redis_socket = scratch.join("redis.sock");
        // Pinned like its benchmark client, so the two share one CPU.
        let redis = start_redis(&redis_socket, Some(PINNED_CPU));
        let postgres = start_postgres(&scratch);
        Ok(Self {
            pg_bin: postgres_bin_dir(),
            pg_dir: scratch.join("pg"),
            scratch: scratch.clone(),
            redis_socket,
            _redis: redis,
            _postgres: postgres,
        })
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// One workload: its name, its unit, the default mode's target ratio if
/// there is one, and how to run it once, returning a rate.
struct Workload {
    name: &'static str,
    unit: &'static str,
    target: Option<f64>,
    run: fn(&Servers) -> Result<f64>,
}

fn workloads() -> Vec<Workload> {
    vec![
        Workload {
            name: "pipe ping-pong, pinned",
            unit: "round trips/s",
            target: Some(0.85),
            run: |_| pingpong("pipe-pingpong", PINNED_ROUND_TRIPS, true),
        },
        Workload {
            name: "pipe ping-pong",
            unit: "round trips/s",
            target: None,
            run: |_| pingpong("pipe-pingpong", UNPINNED_ROUND_TRIPS, false),
        },
        Workload {
            name: "unix ping-pong, pinned",
            unit: "round trips/s",
            target: None,
            run: |_| pingpong("unix-pingpong", PINNED_ROUND_TRIPS, true),
        },
        Workload {
            name: "unix ping-pong",
            unit: "round trips/s",
            target: None,
            run: |_| pingpong("unix-pingpong", UNPINNED_ROUND_TRIPS, false),
        },
        Workload {
            name: "pipe stream 64 KiB",
            unit: "MiB/s",
            target: Some(0.98),
            run: |_| {
                let seconds = traffic(&["pipe-stream", &STREAM_BYTES.to_string()], false)?;
                Ok(STREAM_BYTES as f64 / 1_048_576.0 / seconds)
            },
        },
        Workload {
            name: "redis-benchmark, pinned",
            unit: "requests/s",
            target: Some(0.90),
            run: redis,
        },
        Workload {
            name: "pgbench -S",
            unit: "transactions/s",
            target: None,
            run: pgbench_select,
        },
    ]
}

fn pingpong(kind: &str, round_trips: u64, pinned: bool) -> Result<f64> {
    Ok(round_trips as f64 / traffic(&[kind, &round_trips.to_string()], pinned)?)
}

/// Runs one traffic child (pinned through taskset, which its forked half
/// inherits); returns the seconds it reported.
fn traffic(args: &[&str], pinned: bool) -> Result<f64> {
    let mut command = if pinned {
        let mut command = Command::new("taskset");
        command.args(["-c", PINNED_CPU]).arg(traffic_bin());
        command
    } else {
        Command::new(traffic_bin())
    };
    let output = command
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

fn redis(servers: &Servers) -> Result<f64> {
    let tests = REDIS_TESTS.split(',').count() as f64;
    let started = Instant::now();
    run_quietly(
        Command::new("taskset")
            .args(["-c", PINNED_CPU, "redis-benchmark", "-s"])
            .arg(&servers.redis_socket)
            .args(["-c", "4", "-n", &REDIS_REQUESTS.to_string()])
            .args(["-t", REDIS_TESTS, "-q"]),
        "redis-benchmark",
    )?;
    Ok(tests * REDIS_REQUESTS as f64 / started.elapsed().as_secs_f64())
}

fn pgbench_select(servers: &Servers) -> Result<f64> {
    let output = run_quietly(
        pgbench(&servers.pg_bin, &servers.pg_dir).args([
            "-S",
            "-n",
            "-c",
            "2",
            "-T",
            PGBENCH_SECONDS,
        ]),
        "pgbench -S",
    )?;
    tps(&output).context("pgbench printed no tps")
}

/// The `tps = N` figure of pgbench's report (the last one, without the
/// initial connection time where both are printed).
fn tps(report: &str) -> Option<f64> {
    report
        .lines()
        .rev()
        .filter_map(|line| line.trim().strip_prefix("tps = "))
        .find_map(|rest| rest.split_whitespace().next()?.parse().ok())
}

fn run_quietly(command: &mut Command, what: &str) -> Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !output.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Rates per (round, mode, workload).
#[derive(Default)]
struct Results {
    rates: Vec<(usize, Mode, &'static str, f64)>,
}

/// A mode's ratios to no probes over the rounds.
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Results {
    fn push(&mut self, round: usize, mode: Mode, workload: &'static str, rate: f64) {
        self.rates.push((round, mode, workload, rate));
    }

    fn rate(&self, round: usize, mode: Mode, workload: &str) -> Option<f64> {
        self.rates
            .iter()
            .find(|(r, m, w, _)| *r == round && *m == mode && *w == workload)
            .map(|(_, _, _, rate)| *rate)
    }

    fn median_rate(&self, mode: Mode, workload: &str) -> f64 {
        let rates = (0..ROUNDS).filter_map(|round| self.rate(round, mode, workload));
        median(rates.collect())
    }

    /// Each round's rate over the same round's rate without probes.
    fn ratios(&self, mode: Mode, workload: &str) -> Spread {
        let ratios: Vec<f64> = (0..ROUNDS)
            .filter_map(|round| {
                let base = self.rate(round, Mode::Without, workload)?;
                (base > 0.0).then(|| self.rate(round, mode, workload).map(|r| r / base))?
            })
            .collect();
        Spread {
            median: median(ratios.clone()),
            min: ratios.iter().copied().fold(f64::INFINITY, f64::min),
            max: ratios.iter().copied().fold(0.0, f64::max),
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn print_table(workloads: &[Workload], results: &Results, default_mode: &str, walks: u64) {
    println!(
        "observer overhead: ratio = rate / rate without probes in the same round; \
         median [min-max] of {ROUNDS} rounds; observer mode: {default_mode}"
    );
    print!("{:<24} {:>14}", "workload", "without");
    for mode in &Mode::ALL[1..] {
        print!(" {:>20}", mode.label());
    }
    println!("  target");
    for workload in workloads {
        let without = results.median_rate(Mode::Without, workload.name);
        print!("{:<24} {:>14.0}", workload.name, without);
        for &mode in &Mode::ALL[1..] {
            let spread = results.ratios(mode, workload.name);
            print!(
                " {:>20}",
                format!("{:.3} [{:.2}-{:.2}]", spread.median, spread.min, spread.max)
            );
        }
        match workload.target {
            Some(target) => println!("  >= {target}  ({})", workload.unit),
            None => println!("  -  ({})", workload.unit),
        }
    }
    println!("descriptor walks on cache misses in the observer runs: {walks}");
}

fn print_markdown(workloads: &[Workload], results: &Results, default_mode: &str, walks: u64) {
    println!(
        "`cargo xtask bench observer --markdown`, {ROUNDS} rounds, modes rotated within each; \
         ratio = rate / the same round's rate without probes, median [min-max]; observer \
         mode {default_mode}, {walks} descriptor walks on cache misses; {}.",
        resonance_tests::when_and_where()
    );
    println!();
    print!("| workload (unit) | without |");
    for mode in &Mode::ALL[1..] {
        print!(" {} |", mode.label());
    }
    println!(" target |");
    println!("|---|---|{}---|", "---|".repeat(Mode::ALL.len() - 1));
    for workload in workloads {
        let without = results.median_rate(Mode::Without, workload.name);
        print!("| {} ({}) | {without:.0} |", workload.name, workload.unit);
        for &mode in &Mode::ALL[1..] {
            let spread = results.ratios(mode, workload.name);
            print!(
                " {:.3} [{:.2}-{:.2}] |",
                spread.median, spread.min, spread.max
            );
        }
        match workload.target {
            Some(target) => println!(" ≥ {target} |"),
            None => println!(" — |"),
        }
    }
}

fn print_json(workloads: &[Workload], results: &Results, default_mode: &str, walks: u64) {
    let rows: Vec<_> = workloads
        .iter()
        .map(|workload| {
            let mut row = serde_json::json!({
                "workload": workload.name,
                "unit": workload.unit,
                "without": results.median_rate(Mode::Without, workload.name),
                "target_ratio_at_least": workload.target,
            });
            for &mode in &Mode::ALL[1..] {
                let spread = results.ratios(mode, workload.name);
                row[mode.key()] = serde_json::json!({
                    "rate": results.median_rate(mode, workload.name),
                    "ratio": spread.median,
                    "ratio_min": spread.min,
                    "ratio_max": spread.max,
                });
            }
            row
        })
        .collect();
    let report = serde_json::json!({
        "rounds": ROUNDS,
        "observer_mode": default_mode,
        "fd_walks": walks,
        "workloads": rows,
    });
    println!("{report}");
}
