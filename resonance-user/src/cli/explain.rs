//! `resonance explain SRC DST`: why the running agent does what it does
//! for one pair: its score and components, the broker's prediction,
//! threshold, channel capacity and the measurements behind them.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::control::{Request, ask};

/// Arguments of `resonance explain`.
#[derive(clap::Args)]
pub struct Args {
    /// Source (requester) service.
    pub src: String,
    /// Destination service.
    pub dst: String,
    /// The agent's control socket.
    #[arg(long, default_value = crate::config::DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
    /// Print the agent's JSON answer.
    #[arg(long)]
    pub json: bool,
}

/// Asks the agent and prints its answer.
pub fn run(args: Args) -> Result<()> {
    let response = ask(
        &args.control_socket,
        &Request::Explain {
            src: args.src.clone(),
            dst: args.dst.clone(),
        },
    )?;
    let explain = response
        .explain
        .context("the agent answered without an explanation")?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&explain).context("encoding the explanation")?
        );
        return Ok(());
    }
    print!("{}", render(&explain));
    Ok(())
}

/// The explanation as text (missing fields print as `-`).
fn render(explain: &Value) -> String {
    let get = |value: &Value, path: &[&str]| -> Value {
        let mut value = value;
        for key in path {
            value = value.get(key).unwrap_or(&Value::Null);
        }
        value.clone()
    };
    let show = |value: Value| match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s,
        Value::Number(n) => n
            .as_f64()
            .filter(|f| f.fract() != 0.0)
            .map_or_else(|| n.to_string(), |f| format!("{f:.3}")),
        other => other.to_string(),
    };
    // Durations in the unit that keeps them readable (`7ms`, not
    // `7723355 ns`); `-` where the agent sent none.
    let time = |value: Value| crate::report::human_ns(value.as_f64().map(|ns| ns as u64));
    let mut out = format!(
        "{} -> {}\n",
        show(get(explain, &["src"])),
        show(get(explain, &["dst"]))
    );
    let scores = get(explain, &["scores"]);
    let scores = scores.as_array().cloned().unwrap_or_default();
    if scores.is_empty() {
        out.push_str("score: not observed\n");
    }
    for score in &scores {
        out.push_str(&format!(
            "score ({}): {} (performance x{})  interactions/s {}  bytes/s {}  latency p50 {}  errors {}\n",
            show(get(score, &["kind"])),
            show(get(score, &["score"])),
            show(get(score, &["performance"])),
            show(get(score, &["components", "interactions_per_s"])),
            show(get(score, &["components", "bytes_per_s"])),
            time(get(score, &["components", "latency_p50_ns"])),
            show(get(score, &["components", "error_ratio"])),
        ));
    }
    let predictions = get(explain, &["predictions"]);
    for prediction in predictions.as_array().into_iter().flatten() {
        let p = |path: &str| show(get(prediction, &[path]));
        out.push_str(&format!(
            "model ({}, {} starts learnt{}): probability {} within the TTL, expected lead {}, need {}, threshold {}, prior {}\n",
            p("kind"),
            p("starts"),
            if prediction["brokered"] == Value::Bool(true) {
                ""
            } else {
                ", context only"
            },
            p("probability"),
            time(get(prediction, &["expected_lead_ns"])),
            p("need"),
            p("threshold"),
            p("prior"),
        ));
    }
    let broker = get(explain, &["broker"]);
    if broker.is_null() {
        out.push_str("broker: never served this pair\n");
        return out;
    }
    let b = |path: &str| show(get(&broker, &[path]));
    out.push_str(&format!(
        "prediction: probability {} within the TTL, expected lead {}, need {}\n",
        b("probability"),
        time(get(&broker, &["expected_lead_ns"])),
        b("need")
    ));
    out.push_str(&format!(
        "threshold: {} ({})\n",
        b("threshold"),
        b("threshold_reason")
    ));
    let capacity = if get(&broker, &["capacity"]).is_null() {
        "as planned from the declared traffic (no feedback decision yet)".to_owned()
    } else {
        format!("{} ({})", b("capacity"), b("capacity_reason"))
    };
    out.push_str(&format!(
        "capacity: {capacity}; last channel {}\n",
        b("last_capacity")
    ));
    out.push_str(&format!(
        "last report: {} bytes, peak fill {}, writer blocked {} ({} reports)\n",
        b("last_bytes"),
        b("last_max_fill"),
        b("last_writer_blocked"),
        b("reports")
    ));
    let m = |path: &[&str]| {
        let mut full = vec!["last_measured"];
        full.extend_from_slice(path);
        show(get(&broker, &full))
    };
    if get(&broker, &["last_measured"]).is_null() {
        out.push_str("measured: no channel of this pair measured by the probes yet\n");
    } else {
        out.push_str(&format!(
            "last measured channel {} ({} bytes capacity): {} bytes sent, {} received, {} errors, {} writes found it full, {} bytes/s, first use {} after delivery, wait p50 {}, turnaround p50 {}\n",
            m(&["channel"]),
            m(&["capacity"]),
            m(&["measure", "sent"]),
            m(&["measure", "received"]),
            m(&["measure", "errors"]),
            m(&["measure", "blocked_writes"]),
            m(&["throughput_bytes_per_s"]),
            time(get(&broker, &["last_measured", "time_to_first_use_ns"])),
            time(get(&broker, &["last_measured", "measure", "wait_p50_ns"])),
            time(get(&broker, &["last_measured", "measure", "turnaround_p50_ns"])),
        ));
    }
    out.push_str(&format!(
        "performance: x{} ({}); {} of the measured channels unused\n",
        show(get(&broker, &["performance", "factor"])),
        show(get(&broker, &["performance", "reason"])),
        b("measured_unused")
    ));
    out.push_str(&format!(
        "channels: {} created, {} hits, {} waste, {} misses; recent {}\n",
        b("created"),
        b("hits"),
        b("waste"),
        b("misses"),
        b("recent")
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_scores_and_broker_feedback_and_their_absence() {
        let text = render(&serde_json::json!({
            "src": "web", "dst": "db",
            "scores": [{"kind": "unix_stream", "score": 0.75,
                        "components": {"interactions_per_s": 2.5, "bytes_per_s": 100.0,
                                       "latency_p50_ns": null, "error_ratio": 0.0}}],
            "broker": {"threshold": 0.6, "threshold_reason": "raised from 0.50 to 0.60: 3 of the last 4 channels wasted",
                       "capacity": 8192, "capacity_reason": "the writer blocked", "created": 3,
                       "hits": 1, "waste": 3, "misses": 0, "recent": ["waste"],
                       "last_measured": {"channel": 7, "capacity": 8192, "time_to_first_use_ns": 1500,
                                         "measure": {"sent": 9000, "received": 9000, "errors": 0,
                                                     "blocked_writes": 2, "wait_p50_ns": 40000,
                                                     "turnaround_p50_ns": null}},
                       "performance": {"factor": 0.8, "reason": "of the last 1 used channels: 0 clean"},
                       "measured_unused": 0}
        }));
        assert!(
            text.contains("channel 7 (8192 bytes capacity): 9000 bytes sent"),
            "{text}"
        );
        assert!(text.contains("2 writes found it full"), "{text}");
        // Times in human units.
        assert!(
            text.contains("first use 1500ns after delivery, wait p50 40us, turnaround p50 -"),
            "{text}"
        );
        assert!(!text.contains(" ns"), "{text}");
        assert!(
            text.contains("performance: x0.800 (of the last 1"),
            "{text}"
        );
        assert!(text.starts_with("web -> db\n"), "{text}");
        assert!(text.contains("score (unix_stream): 0.750"), "{text}");
        assert!(text.contains("threshold: 0.600 (raised"), "{text}");
        assert!(
            text.contains("capacity: 8192 (the writer blocked)"),
            "{text}"
        );
        // No capacity decision yet: said in words, not `- (-)`.
        let text = render(&serde_json::json!({
            "src": "web", "dst": "db", "scores": [],
            "broker": {"capacity": null, "capacity_reason": null, "last_capacity": 65536}
        }));
        assert!(
            text.contains("capacity: as planned from the declared traffic (no feedback decision yet); last channel 65536"),
            "{text}"
        );
        let text = render(&serde_json::json!({
            "src": "head", "dst": "cat", "scores": [], "broker": null,
            "predictions": [{"kind": "pipe", "starts": 12, "probability": 0.9,
                             "expected_lead_ns": 700_000_000u64, "need": 0.9,
                             "threshold": 0.5, "prior": 0.62, "brokered": false}]
        }));
        assert!(
            text.contains("model (pipe, 12 starts learnt, context only): probability 0.900 within the TTL, expected lead 700ms, need 0.900, threshold 0.500, prior 0.620"),
            "{text}"
        );
        let text =
            render(&serde_json::json!({"src": "a", "dst": "b", "scores": [], "broker": null}));
        assert!(text.contains("score: not observed"), "{text}");
        assert!(text.contains("broker: never served this pair"), "{text}");
        assert!(!text.contains("measured"), "{text}");
    }
}
