//! `cargo xtask bench agent`: how many kernel events per second the agent's
//! user-side pipeline (decode, attribute, join, name services, score)
//! sustains on one core, against the raw rate of just reading the ring
//! buffer, both measured in the same run.
//!
//! With an idle gap of zero every observed syscall becomes a flow-start
//! event, so pipe ping-pong children produce events far faster than the
//! agent normally sees. The consumer is pinned to CPU 0; its capacity is
//! events handled per second of time spent handling them (waiting for the
//! kernel is not counted), and drops are reported beside it.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use resonance::{
    aggregate::ServiceNamer,
    observer::{Observer, ObserverOptions},
    score::Scorer,
    score::pair_figures,
};
use resonance_tests::traffic_bin;

const RUN: Duration = Duration::from_secs(4);
const ROUNDS: usize = 3;

fn main() -> Result<()> {
    let json = std::env::args().any(|a| a == "--json");
    pin_to_cpu0();
    let mut raw = Vec::new();
    let mut pipeline = Vec::new();
    for _ in 0..ROUNDS {
        raw.push(measure(Mode::Raw)?);
        pipeline.push(measure(Mode::Pipeline)?);
    }
    let best = |runs: &[Figures]| runs.iter().copied().fold(Figures::default(), Figures::max);
    let (raw, pipeline) = (best(&raw), best(&pipeline));
    let ratio = if raw.capacity > 0.0 {
        pipeline.capacity / raw.capacity
    } else {
        0.0
    };
    if json {
        let report = serde_json::json!({
            "raw_read": raw.to_json(),
            "pipeline": pipeline.to_json(),
            "pipeline_over_raw": ratio,
        });
        println!("{report}");
    } else {
        println!(
            "agent pipeline on one core, best of {ROUNDS} runs of {}s",
            RUN.as_secs()
        );
        println!(
            "  {:<10} {:>16} {:>16} {:>10}",
            "", "events/s (cpu)", "events/s (wall)", "drops"
        );
        for (name, f) in [("raw read", raw), ("pipeline", pipeline)] {
            println!(
                "  {name:<10} {:>16.0} {:>16.0} {:>10}",
                f.capacity, f.wall_rate, f.drops
            );
        }
        println!("  pipeline / raw capacity: {ratio:.3}");
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Raw,
    Pipeline,
}

#[derive(Clone, Copy, Default)]
struct Figures {
    /// Events per second of time spent handling them.
    capacity: f64,
    /// Events per second of wall time.
    wall_rate: f64,
    drops: u64,
    events: u64,
}

impl Figures {
    fn max(self, other: Figures) -> Figures {
        if other.capacity > self.capacity {
            other
        } else {
            self
        }
    }

    fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "events_per_cpu_second": self.capacity,
            "events_per_wall_second": self.wall_rate,
            "events": self.events,
            "drops": self.drops,
        })
    }
}

fn measure(mode: Mode) -> Result<Figures> {
    let mut observer = Observer::start(&ObserverOptions {
        idle_gap: Duration::ZERO,
        ..ObserverOptions::default()
    })
    .context("attaching the probes")?;
    let namer = ServiceNamer::default();
    let mut scorer = Scorer::new(Duration::from_secs(300));
    let mut load = Load::start()?;
    let start = Instant::now();
    let mut busy = Duration::ZERO;
    let mut events = 0u64;
    let mut last_tick = Instant::now();
    while start.elapsed() < RUN {
        let begun = Instant::now();
        let handled = match mode {
            Mode::Raw => observer.drain_raw(),
            Mode::Pipeline => {
                let n = observer.drain_events();
                if last_tick.elapsed() >= Duration::from_millis(200) {
                    let figures = pair_figures(&observer.interval(), &namer, None);
                    scorer.update(last_tick.elapsed(), &figures);
                    last_tick = Instant::now();
                }
                n
            }
        };
        if handled > 0 {
            busy += begun.elapsed();
            events += handled as u64;
        } else {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let wall = start.elapsed();
    load.stop();
    let drops = observer.stats().dropped;
    Ok(Figures {
        capacity: events as f64 / busy.as_secs_f64().max(1e-9),
        wall_rate: events as f64 / wall.as_secs_f64(),
        drops,
        events,
    })
}

/// Two ping-pong pairs keep the kernel busy producing events.
struct Load(Vec<Child>);

impl Load {
    fn start() -> Result<Self> {
        let children = (0..2)
            .map(|_| {
                Command::new(traffic_bin())
                    .args(["pipe-pingpong", "100000000"])
                    .stdout(Stdio::null())
                    .spawn()
                    .context("starting pipe-pingpong")
            })
            .collect::<Result<_>>()?;
        Ok(Self(children))
    }

    fn stop(&mut self) {
        for child in &mut self.0 {
            // The ping-pong child forks; killing the group would be cleaner,
            // but its half exits on the broken pipe anyway.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!("could not pin to CPU 0; figures are for whatever core runs us");
        }
    }
}
