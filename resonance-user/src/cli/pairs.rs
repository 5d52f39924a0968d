//! `resonance pairs`: the running agent's current scores.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::control::{Request, ask};

/// Arguments of `resonance pairs`.
#[derive(clap::Args)]
pub struct Args {
    /// The agent's control socket.
    #[arg(long, default_value = crate::config::DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
    /// One JSON object per pair per line.
    #[arg(long)]
    pub json: bool,
}

/// Asks the agent and prints its answer.
pub fn run(args: Args) -> Result<()> {
    let response = ask(&args.control_socket, &Request::Pairs)?;
    let pairs = response.pairs.unwrap_or_default();
    if args.json {
        for pair in &pairs {
            println!(
                "{}",
                serde_json::to_string(pair).context("encoding a pair")?
            );
        }
        return Ok(());
    }
    println!(
        "{:<20} {:<20} {:<14} {:>6} {:>10} {:>12} {:>12} {:>7}",
        "SOURCE", "DESTINATION", "KIND", "SCORE", "INTER/s", "BYTES/s", "LAT p50", "ERR %"
    );
    for pair in &pairs {
        let text = |key: &str| {
            pair.get(key)
                .and_then(|v| v.as_str())
                .unwrap_or("?")
                .to_owned()
        };
        let number = |path: &[&str]| {
            let mut value = pair;
            for key in path {
                value = value.get(key).unwrap_or(&serde_json::Value::Null);
            }
            value.as_f64()
        };
        println!(
            "{:<20} {:<20} {:<14} {:>6.3} {:>10.2} {:>12.0} {:>12} {:>7.2}",
            text("src"),
            text("dst"),
            text("kind"),
            number(&["score"]).unwrap_or(0.0),
            number(&["components", "interactions_per_s"]).unwrap_or(0.0),
            number(&["components", "bytes_per_s"]).unwrap_or(0.0),
            number(&["components", "latency_p50_ns"])
                .map_or("-".to_owned(), |ns| format!("{:.0}us", ns / 1000.0)),
            number(&["components", "error_ratio"]).unwrap_or(0.0) * 100.0,
        );
    }
    Ok(())
}
