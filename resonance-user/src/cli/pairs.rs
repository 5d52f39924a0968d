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
    let rows: Vec<[String; 8]> = pairs.iter().map(row).collect();
    let half_life = response.half_life_ns.map(std::time::Duration::from_nanos);
    print!("{}", table(&header(half_life), &rows));
    Ok(())
}

/// The table's header. The rates and the latency are the agent's decayed
/// averages since the pair was first seen, with the half-life the agent
/// runs with (`score.half_life`), which the headers name.
fn header(half_life: Option<std::time::Duration>) -> [String; 8] {
    let window = half_life.map_or_else(
        || "avg".to_owned(),
        |h| format!("avg, {} half-life", short(h)),
    );
    [
        "SOURCE".to_owned(),
        "DESTINATION".to_owned(),
        "KIND".to_owned(),
        "SCORE".to_owned(),
        format!("INTER/s ({window})"),
        format!("BYTES/s ({window})"),
        format!("LAT p50 ({window})"),
        "ERR %".to_owned(),
    ]
}

/// `5m`, `90s`, `2h`: a half-life as a config would write it.
fn short(duration: std::time::Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0 => format!("{}ms", duration.as_millis()),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// One pair's cells, formatted.
fn row(pair: &serde_json::Value) -> [String; 8] {
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
    [
        text("src"),
        text("dst"),
        text("kind"),
        format!("{:.3}", number(&["score"]).unwrap_or(0.0)),
        format!(
            "{:.2}",
            number(&["components", "interactions_per_s"]).unwrap_or(0.0)
        ),
        format!(
            "{:.0}",
            number(&["components", "bytes_per_s"]).unwrap_or(0.0)
        ),
        crate::report::human_ns(number(&["components", "latency_p50_ns"]).map(|ns| ns as u64)),
        format!(
            "{:.2}",
            number(&["components", "error_ratio"]).unwrap_or(0.0) * 100.0
        ),
    ]
}

/// The header and `rows`, each column as wide as its widest cell (names
/// left-aligned, figures right-aligned), so long socket paths do not push
/// the figures out of their columns.
fn table(header: &[String; 8], rows: &[[String; 8]]) -> String {
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for cells in std::iter::once(header).chain(rows) {
        let line: Vec<String> = cells
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(column, (cell, width))| {
                if column < 3 {
                    format!("{cell:<width$}")
                } else {
                    format!("{cell:>width$}")
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_stay_aligned_whatever_the_names() {
        let long = "/run/some/deeply/nested/application/socket.sock";
        let rows = [
            [
                "web".into(),
                long.into(),
                "unix_dgram".into(),
                "0.500".into(),
                "1.00".into(),
                "10".into(),
                "-".into(),
                "0.00".into(),
            ],
            [
                "a".into(),
                "b".into(),
                "pipe".into(),
                "0.900".into(),
                "120.00".into(),
                "3000000".into(),
                "2us".into(),
                "0.00".into(),
            ],
        ];
        let text = table(&header(Some(std::time::Duration::from_secs(300))), &rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        // Every line ends its ERR % column at the same place, and the
        // score column starts at the same place in every line.
        let score_at: Vec<usize> = lines
            .iter()
            .map(|l| l.find("SCORE").or_else(|| l.find("0.")).unwrap())
            .collect();
        assert!(score_at.windows(2).all(|w| w[0] == w[1]), "{text}");
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{text}");
        assert!(lines[0].contains("BYTES/s (avg, 5m half-life)"), "{text}");
        let text = table(&header(Some(std::time::Duration::from_secs(90))), &rows);
        assert!(text.contains("INTER/s (avg, 90s half-life)"), "{text}");
        assert!(table(&header(None), &rows).contains("LAT p50 (avg)"));
    }
}
