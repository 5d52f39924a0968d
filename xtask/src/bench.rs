//! `cargo xtask bench NAME`: builds the benchmark binaries in release mode and
//! runs them; each measures its own baseline in the same run.

use std::path::Path;

use anyhow::Result;
use clap::Subcommand;

use crate::{bootstrap::BuildEnv, cmd};

/// The benchmarks.
#[derive(Subcommand)]
pub enum Which {
    /// Pipe ping-pong and streaming, without and with the probes attached.
    Observer {
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
pub fn run(root: &Path, env: &BuildEnv, which: Which) -> Result<()> {
    match which {
        Which::Observer { json } => {
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
            cmd::run(
                root,
                env,
                &root.join("target/release/bench-observer"),
                &args,
            )
        }
        Which::Channel { json } => {
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
            let args: &[&str] = if json { &["--json"] } else { &[] };
            cmd::run(root, env, &root.join("target/release/bench-channel"), args)
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
