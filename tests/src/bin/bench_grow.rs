//! `cargo xtask bench grow`: unmodified pipelines with the pipe the shell
//! gives them (64 KiB), with the pipe set by hand before the run (what
//! util-linux 2.39's `pipesz` does: `traffic pipesz` sets its stdout's size
//! and execs the producer), and grown by the agent while they run: on a
//! pair it has not seen (`agent_first`, a new reader name every round) and
//! on one it has learned (`agent_learned`).
//!
//! Two workloads: `dd | cat`, where the pipe's size sets the pace, and
//! `dd | gzip -1`, where gzip does. One agent runs through every variant
//! (its probes cost all of them alike); its `[grow]` policy names only the
//! readers of the agent variants. Blocked writes come from an observer of
//! the bench's own: the writer flows' full-pipe count per run. Rounds are
//! interleaved, the variants' order rotating; figures are medians with min
//! and max.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use resonance::{
    Direction,
    observer::{Observer, ObserverOptions},
};
use resonance_tests::{resonance_bin, traffic_bin};

const ROUNDS: usize = 5;
const MIB: u64 = 1 << 20;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Default,
    HandSet,
    AgentFirst,
    AgentLearned,
}

impl Variant {
    const ALL: [Variant; 4] = [
        Self::Default,
        Self::HandSet,
        Self::AgentFirst,
        Self::AgentLearned,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Default => "default_64k",
            Self::HandSet => "hand_set_1m",
            Self::AgentFirst => "agent_first",
            Self::AgentLearned => "agent_learned",
        }
    }
}

struct Workload {
    name: &'static str,
    writer: &'static str,
    /// The consumer program (copied under other names for the agent
    /// variants) and its arguments.
    consumer: &'static str,
    consumer_args: &'static str,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "dd 2000 MiB | cat",
        writer: "dd if=/dev/zero bs=256K count=8000 status=none",
        consumer: "cat",
        consumer_args: "",
    },
    Workload {
        name: "dd 1000 MiB | gzip -1",
        writer: "dd if=/dev/zero bs=256K count=4000 status=none",
        consumer: "gzip",
        consumer_args: "-1",
    },
];

#[derive(Default)]
struct Samples {
    seconds: Vec<f64>,
    blocked: Vec<u64>,
}

fn main() -> Result<()> {
    let json = std::env::args().any(|a| a == "--json");
    let dir = std::env::temp_dir().join(format!("resonance-bench-grow-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run(&dir, json);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn which(program: &str) -> Result<PathBuf> {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let path = Path::new(dir).join(program);
        if path.is_file() {
            return Ok(path);
        }
    }
    bail!("{program} is not on PATH")
}

fn start_agent(dir: &Path) -> Result<Killed> {
    let config = dir.join("resonance.toml");
    std::fs::write(&config, "[grow]\nservices = [\"grown-*\"]\n")?;
    let control = dir.join("control.sock");
    let log = std::fs::File::create(dir.join("agent.log"))?;
    let child = Command::new(resonance_bin())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--control-socket")
        .arg(&control)
        .arg("--metrics-listen")
        .arg("127.0.0.1:0")
        .arg("--broker-socket")
        .arg(dir.join("broker.sock"))
        .stderr(log)
        .stdout(Stdio::null())
        .spawn()
        .context("starting the agent")?;
    let agent = Killed(child);
    for _ in 0..3000 {
        if std::os::unix::net::UnixStream::connect(&control).is_ok() {
            // The loop that reads the ring buffer starts right after.
            std::thread::sleep(Duration::from_millis(500));
            return Ok(agent);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("the agent never answered on {}", control.display())
}

/// The script of one run.
fn script(dir: &Path, workload: &Workload, variant: Variant, round: usize) -> Result<String> {
    let consumer = match variant {
        Variant::Default | Variant::HandSet => which(workload.consumer)?,
        Variant::AgentFirst | Variant::AgentLearned => {
            let name = match variant {
                Variant::AgentFirst => format!("grown-{}-{round}", workload.consumer),
                _ => format!("grown-{}", workload.consumer),
            };
            let path = dir.join(name);
            if !path.exists() {
                std::fs::copy(which(workload.consumer)?, &path)?;
            }
            path
        }
    };
    let writer = match variant {
        Variant::HandSet => format!(
            "{} pipesz {MIB} {}",
            traffic_bin().display(),
            workload.writer
        ),
        _ => workload.writer.to_owned(),
    };
    Ok(format!(
        "{writer} | {} {} >/dev/null",
        consumer.display(),
        workload.consumer_args
    ))
}

/// Full-pipe writes of `dd` processes not counted before.
fn blocked_writes(observer: &mut Observer, seen: &mut std::collections::HashSet<u32>) -> u64 {
    let flows = observer.flows();
    let mut blocked = 0;
    for flow in flows
        .iter()
        .filter(|f| f.dir == Direction::Send && f.comm == "dd" && f.kind.is_one_way())
    {
        if !seen.contains(&flow.pid) {
            blocked += flow.blocked;
        }
    }
    seen.extend(flows.iter().filter(|f| f.comm == "dd").map(|f| f.pid));
    blocked
}

fn run(dir: &Path, json: bool) -> Result<()> {
    let _agent = start_agent(dir)?;
    let mut observer = Observer::start(&ObserverOptions::default())
        .context("loading the bench's own probes (needs root)")?;
    let mut seen = std::collections::HashSet::new();
    let mut samples: Vec<Vec<Samples>> = WORKLOADS
        .iter()
        .map(|_| Variant::ALL.iter().map(|_| Samples::default()).collect())
        .collect();
    // One unmeasured run of each, so that agent_learned has learned.
    for workload in WORKLOADS {
        for variant in Variant::ALL {
            let status = Command::new("sh")
                .args(["-c", &script(dir, workload, variant, 0)?])
                .status()?;
            if !status.success() {
                bail!("warm-up of {} failed: {status}", workload.name);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    blocked_writes(&mut observer, &mut seen);
    for round in 1..=ROUNDS {
        for (w, workload) in WORKLOADS.iter().enumerate() {
            for k in 0..Variant::ALL.len() {
                let v = (k + round) % Variant::ALL.len();
                let variant = Variant::ALL[v];
                let script = script(dir, workload, variant, round)?;
                let start = Instant::now();
                let status = Command::new("sh").args(["-c", &script]).status()?;
                let seconds = start.elapsed().as_secs_f64();
                if !status.success() {
                    bail!("{script}: {status}");
                }
                // Let the flows settle in the maps before they are read.
                std::thread::sleep(Duration::from_millis(300));
                let blocked = blocked_writes(&mut observer, &mut seen);
                samples[w][v].seconds.push(seconds);
                samples[w][v].blocked.push(blocked);
            }
        }
    }
    report(&samples, json);
    Ok(())
}

fn median_f(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn median_u(values: &[u64]) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted[sorted.len() / 2]
}

fn report(samples: &[Vec<Samples>], json: bool) {
    let mut rows = Vec::new();
    for (w, workload) in WORKLOADS.iter().enumerate() {
        let hand = median_f(&samples[w][1].seconds);
        let default = median_f(&samples[w][0].seconds);
        for (v, variant) in Variant::ALL.iter().enumerate() {
            let s = &samples[w][v];
            let median = median_f(&s.seconds);
            let min = s.seconds.iter().copied().fold(f64::INFINITY, f64::min);
            let max = s.seconds.iter().copied().fold(0.0, f64::max);
            rows.push(serde_json::json!({
                "workload": workload.name,
                "variant": variant.name(),
                "seconds_median": median,
                "seconds_min": min,
                "seconds_max": max,
                "to_hand_set": median / hand,
                "to_default": median / default,
                "blocked_writes_median": median_u(&s.blocked),
            }));
        }
    }
    if json {
        println!("{}", serde_json::json!({ "rounds": ROUNDS, "rows": rows }));
        return;
    }
    println!(
        "{:<24} {:<14} {:>9} {:>17} {:>11} {:>10} {:>9}",
        "workload", "variant", "median s", "min-max s", "/hand-set", "/default", "blocked"
    );
    for row in &rows {
        println!(
            "{:<24} {:<14} {:>9.3} {:>8.3}-{:<8.3} {:>11.3} {:>10.3} {:>9}",
            row["workload"].as_str().unwrap_or(""),
            row["variant"].as_str().unwrap_or(""),
            row["seconds_median"].as_f64().unwrap_or(0.0),
            row["seconds_min"].as_f64().unwrap_or(0.0),
            row["seconds_max"].as_f64().unwrap_or(0.0),
            row["to_hand_set"].as_f64().unwrap_or(0.0),
            row["to_default"].as_f64().unwrap_or(0.0),
            row["blocked_writes_median"].as_u64().unwrap_or(0),
        );
    }
    println!("{ROUNDS} rounds, variants interleaved; ratios of medians.");
}
