//! A real `resonance run` for the integration tests: started on scratch
//! sockets and a free metrics port, asked through its control socket and
//! its CLI, stopped with SIGTERM.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use resonance::control::{Request, ask};
use serde_json::Value;

use crate::{Reaped, free_port, resonance_bin, wait_for};

/// A `resonance run` started by a test, with where it answers.
pub struct Agent {
    /// The agent process, killed when dropped.
    pub process: Reaped,
    /// Its control socket.
    pub control: PathBuf,
    /// Its metrics address.
    pub metrics: SocketAddr,
    /// Its stderr, captured.
    pub log: PathBuf,
}

/// A fresh scratch folder for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("resonance-agent-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a scratch folder");
    dir
}

/// An agent with the test defaults (200 ms ticks), state under `dir`.
pub fn start_agent(dir: &Path) -> Agent {
    start_agent_with(dir, &[])
}

/// An agent with extra command-line arguments (e.g. `--config`).
pub fn start_agent_with(dir: &Path, extra: &[&std::ffi::OsStr]) -> Agent {
    let control = dir.join("control.sock");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let log = dir.join("agent.log");
    let log_file = std::fs::File::create(&log).expect("creating the agent log");
    let process = Command::new(resonance_bin())
        .arg("run")
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--control-socket")
        .arg(&control)
        .arg("--metrics-listen")
        .arg(metrics.to_string())
        .arg("--broker-socket")
        .arg(dir.join("broker.sock"))
        .args(["--tick", "200ms", "--flush-interval", "500ms"])
        .args(extra)
        .stderr(log_file)
        .spawn()
        .expect("starting resonance run");
    let agent = Agent {
        process: Reaped(process),
        control,
        metrics,
        log,
    };
    let ready = wait_for(Duration::from_secs(30), || {
        ask(&agent.control, &Request::Pairs).ok()
    });
    assert!(
        ready.is_some(),
        "the agent did not answer within 30 s:\n{}",
        agent.log_text()
    );
    agent
}

impl Agent {
    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `pairs` from its control socket (empty if it does not answer).
    pub fn pairs(&self) -> Vec<Value> {
        ask(&self.control, &Request::Pairs)
            .ok()
            .and_then(|r| r.pairs)
            .unwrap_or_default()
    }

    /// Total bytes of one pair, if the agent knows it.
    pub fn pair_bytes(&self, src: &str, dst: &str, kind: &str) -> Option<u64> {
        self.pairs()
            .iter()
            .find(|p| p["src"] == src && p["dst"] == dst && p["kind"] == kind)
            .and_then(|p| p["totals"]["bytes"].as_u64())
    }
}

impl Agent {
    /// `resonance explain SRC DST --json`, if the agent knows the pair.
    pub fn explain(&self, src: &str, dst: &str) -> Option<Value> {
        let output = Command::new(resonance_bin())
            .args(["explain", src, dst, "--json", "--control-socket"])
            .arg(&self.control)
            .output()
            .ok()?;
        if !output.status.success() {
            return None;
        }
        serde_json::from_slice(&output.stdout).ok()
    }
}

/// Sum of a counter family's samples whose labels contain `label`.
pub fn counter_sum(scrape: &str, family: &str, label: &str) -> u64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(family) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// SIGTERM, and the agent must exit cleanly.
pub fn stop(agent: &mut Agent) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.process.0.id() as i32, libc::SIGTERM) };
    let status = agent.process.0.wait().expect("waiting for the agent");
    assert!(
        status.success(),
        "agent exit {status}:\n{}",
        agent.log_text()
    );
}
