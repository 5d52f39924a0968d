//! `cargo xtask bench NAME`: builds the benchmark binaries in release mode and
//! runs them; each measures its own baseline in the same run.

use std::path::Path;

use anyhow::Result;
use clap::Subcommand;

use crate::{bootstrap::BuildEnv, cmd};

/// The benchmarks.
#[derive(Subcommand)]
pub enum Which {
    /// Ping-pongs, a stream, redis and pgbench, without probes and with
    /// each probe mode attached.
    Observer {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Print the table as Markdown, to paste into the docs.
        #[arg(long)]
        markdown: bool,
    },
    /// Kernel events per second the agent's pipeline handles on one core,
    /// against just reading the ring buffer.
    Agent {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Getting a channel to another process: connect+accept, broker on
    /// demand, broker pre-created.
    Channel {
        /// Print one JSON object per variant instead of a table.
        #[arg(long)]
        json: bool,
        /// Print the table as Markdown, to paste into the docs.
        #[arg(long)]
        markdown: bool,
    },
    /// Unmodified pipelines with the default pipe, a pipe sized by hand and
    /// one the agent grows while they run.
    Grow {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Predictions per second of the predictive model, against reading the
    /// same trace.
    Predict {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Scenario whose trace is measured (default: a day of `web`).
        #[arg(long)]
        scenario: Option<String>,
    },
}

/// Builds and runs one benchmark.
/// Debian packages of the observer bench's real workloads: PostgreSQL
/// (initdb, postgres, pgbench) and redis (redis-server, redis-benchmark).
const OBSERVER_PACKAGES: &[&str] = &["postgresql", "redis-server", "redis-tools"];

pub fn run(root: &Path, env: &BuildEnv, which: Which) -> Result<()> {
    match which {
        Which::Observer { json, markdown } => {
            crate::debian::ensure(OBSERVER_PACKAGES)?;
            run_tests_bench(root, env, "bench-observer", json, markdown)
        }
        Which::Agent { json } => run_tests_bench(root, env, "bench-agent", json, false),
        Which::Channel { json, markdown } => {
            run_tests_bench(root, env, "bench-channel", json, markdown)
        }
        Which::Grow { json } => {
            // The bench starts the agent itself.
            cmd::cargo(
                root,
                env,
                &[
                    "build",
                    "--release",
                    "--package",
                    "resonance-user",
                    "--bin",
                    "resonance",
                ],
            )?;
            run_tests_bench(root, env, "bench-grow", json, false)
        }
        Which::Predict { json, scenario } => {
            cmd::cargo(
                root,
                env,
                &[
                    "build",
                    "--release",
                    "--package",
                    "resonance-user",
                    "--bin",
                    "bench-predict",
                ],
            )?;
            let mut args = Vec::new();
            if json {
                args.push("--json");
            }
            if let Some(scenario) = &scenario {
                args.extend(["--scenario", scenario.as_str()]);
            }
            cmd::run(root, env, &root.join("target/release/bench-predict"), &args)
        }
    }
}

/// Builds the tests crate's binaries (the benchmark needs `traffic` too) and
/// runs one of them.
fn run_tests_bench(
    root: &Path,
    env: &BuildEnv,
    binary: &str,
    json: bool,
    markdown: bool,
) -> Result<()> {
    cmd::cargo(
        root,
        env,
        &[
            "build",
            "--release",
            "--package",
            "resonance-tests",
            "--bins",
        ],
    )?;
    let mut args = Vec::new();
    if json {
        args.push("--json");
    }
    if markdown {
        args.push("--markdown");
    }
    cmd::run(root, env, &root.join("target/release").join(binary), &args)
}
