//! The control socket: `resonance pairs` and `resonance explain` ask the
//! running agent.
//!
//! Protocol: one JSON request per line (`{"request":"pairs"}`,
//! `{"request":"explain","src":"web","dst":"db"}`), one JSON response per
//! line (`{"ok":true,"pairs":[...]}`, `{"ok":true,"explain":{...}}` or
//! `{"ok":false,"error":"..."}`). Requests are capped at 64 KiB and a
//! client gets 5 s to send one; a bad request gets an error response and the
//! connection is closed, nothing else is affected.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt},
    net::UnixListener,
};

use crate::{handout::BrokerView, score::PairScore};

/// Longest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What a client may ask.
#[derive(Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// Current scores of every pair.
    Pairs,
    /// Why the agent does what it does for one pair.
    Explain {
        /// Source (requester) service.
        src: String,
        /// Destination service.
        dst: String,
    },
}

/// The agent's answer.
#[derive(Debug, Deserialize, Serialize)]
pub struct Response {
    /// Whether the request was understood.
    pub ok: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// Scores, for `pairs`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pairs: Option<Vec<serde_json::Value>>,
    /// The half-life the scores' averages decay with, ns, for `pairs`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub half_life_ns: Option<u64>,
    /// The explanation, for `explain`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub explain: Option<serde_json::Value>,
}

/// What the control socket serves, refreshed by the agent every tick.
#[derive(Debug, Default)]
pub struct Shared {
    /// Latest scores.
    pub scores: Vec<PairScore>,
    /// The half-life of their averages (`score.half_life`).
    pub half_life: Duration,
    /// The broker's per-pair state, when it runs.
    pub broker: Option<BrokerView>,
    /// What pipe growth decided, per pair.
    pub growth: std::collections::BTreeMap<crate::pair::PairKey, crate::grow::PairGrowth>,
}

/// The explanation of pair `src` → `dst`: its scores (one per channel kind
/// observed), the model's predictions (one per kind it learnt, observed or
/// brokered) and the broker's feedback for it (`null` when the broker never
/// served it); an error when none knows the pair.
pub fn explain(shared: &Shared, src: &str, dst: &str) -> Result<serde_json::Value, String> {
    let scores: Vec<&PairScore> = shared
        .scores
        .iter()
        .filter(|s| s.key.src == src && s.key.dst == dst)
        .collect();
    let broker = shared.broker.as_ref().and_then(|b| b.pair(src, dst));
    let predictions = shared
        .broker
        .as_ref()
        .map(|b| b.predictions(src, dst))
        .unwrap_or_default();
    let growth: Vec<serde_json::Value> = shared
        .growth
        .iter()
        .filter(|(pair, _)| pair.src == src && pair.dst == dst)
        .map(|(pair, growth)| {
            serde_json::json!({
                "kind": pair.kind,
                "learned_size": growth.learned_size,
                "decisions": growth.decisions,
            })
        })
        .collect();
    if scores.is_empty() && broker.is_none() && predictions.is_empty() && growth.is_empty() {
        return Err(format!(
            "neither the scores nor the broker know the pair {src} -> {dst}"
        ));
    }
    Ok(serde_json::json!({
        "src": src,
        "dst": dst,
        "scores": scores,
        "predictions": predictions,
        "broker": broker,
        "pipe_growth": growth,
    }))
}

/// Serves requests on `listener` until the task is dropped.
pub async fn serve(listener: UnixListener, shared: Arc<Mutex<Shared>>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    if let Err(error) = answer(stream, shared).await {
                        log::debug!("control connection: {error:#}");
                    }
                });
            }
            Err(error) => {
                log::warn!("control socket accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(stream: tokio::net::UnixStream, shared: Arc<Mutex<Shared>>) -> Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(reader, MAX_REQUEST));
    let mut line = String::new();
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => failure("no request within 5 s".to_owned()),
        Ok(Err(error)) => failure(format!("reading the request: {error}")),
        Ok(Ok(_)) if !line.ends_with('\n') => failure(format!(
            "request longer than {MAX_REQUEST} bytes or not newline-terminated"
        )),
        Ok(Ok(_)) => match serde_json::from_str::<Request>(line.trim_end()) {
            Err(error) => failure(format!("malformed request: {error}")),
            Ok(Request::Pairs) => {
                let shared = shared.lock().unwrap_or_else(|p| p.into_inner());
                let pairs = shared
                    .scores
                    .iter()
                    .filter_map(|s| serde_json::to_value(s).ok())
                    .collect();
                Response {
                    ok: true,
                    error: None,
                    pairs: Some(pairs),
                    half_life_ns: u64::try_from(shared.half_life.as_nanos()).ok(),
                    explain: None,
                }
            }
            Ok(Request::Explain { src, dst }) => {
                let shared = shared.lock().unwrap_or_else(|p| p.into_inner());
                match explain(&shared, &src, &dst) {
                    Ok(value) => Response {
                        ok: true,
                        error: None,
                        pairs: None,
                        half_life_ns: None,
                        explain: Some(value),
                    },
                    Err(error) => failure(error),
                }
            }
        },
    };
    let mut text = serde_json::to_string(&response).context("encoding the response")?;
    text.push('\n');
    writer
        .write_all(text.as_bytes())
        .await
        .context("writing the response")?;
    writer.shutdown().await.ok();
    Ok(())
}

fn failure(error: String) -> Response {
    Response {
        ok: false,
        error: Some(error),
        pairs: None,
        half_life_ns: None,
        explain: None,
    }
}

/// Sends one request to the agent at `socket` and returns its answer.
pub fn ask(socket: &Path, request: &Request) -> Result<Response> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to the agent at {}: is `resonance run` running with this --control-socket?",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut text = serde_json::to_string(request).context("encoding the request")?;
    text.push('\n');
    stream
        .write_all(text.as_bytes())
        .context("sending the request")?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .context("reading the agent's answer")?;
    let response: Response =
        serde_json::from_str(line.trim_end()).context("the agent's answer is not valid JSON")?;
    if !response.ok {
        bail!("the agent refused: {}", response.error.unwrap_or_default());
    }
    Ok(response)
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::score::{Components, Normalized, PairKey, Totals};

    fn score(src: &str, dst: &str, value: f64) -> PairScore {
        PairScore {
            key: PairKey {
                src: src.into(),
                dst: dst.into(),
                kind: "unix_stream".to_owned(),
            },
            score: value,
            components: Components::default(),
            normalized: Normalized::default(),
            performance: 1.0,
            totals: Totals::default(),
        }
    }

    #[test]
    fn explain_picks_the_pair_and_refuses_unknown_ones() {
        let shared = Shared {
            scores: vec![score("web", "db", 0.25), score("db", "web", 0.75)],
            broker: None,
            half_life: Duration::from_secs(300),
            growth: Default::default(),
        };
        let value = explain(&shared, "web", "db").expect("a known pair");
        let scores = value["scores"].as_array().expect("scores");
        assert_eq!(scores.len(), 1);
        assert_eq!(scores[0]["score"], 0.25);
        assert!(value["broker"].is_null());
        assert_eq!(value["pipe_growth"], serde_json::json!([]));
        let error = explain(&shared, "web", "cache").expect_err("an unknown pair");
        assert!(error.contains("web -> cache"), "{error}");
    }

    #[test]
    fn a_pair_known_only_by_its_pipe_growth_is_explained() {
        let mut growth = crate::grow::PairGrowth {
            learned_size: 1 << 20,
            ..Default::default()
        };
        growth.decisions.push_back(crate::grow::Record {
            at_ns: 1,
            pid: 7,
            pipe: "pipe:[9]".to_owned(),
            outcome: "grown",
            from: 65536,
            to: 1 << 20,
            learned: false,
            limit: None,
            reason: "grown".to_owned(),
        });
        let pair = crate::pair::PairKey {
            src: "dd".to_owned(),
            dst: "cat".to_owned(),
            kind: "pipe".to_owned(),
        };
        let shared = Shared {
            growth: [(pair, growth)].into_iter().collect(),
            ..Shared::default()
        };
        let value = explain(&shared, "dd", "cat").expect("known by its growth");
        assert_eq!(value["pipe_growth"][0]["kind"], "pipe");
        assert_eq!(value["pipe_growth"][0]["learned_size"], 1 << 20);
        assert_eq!(value["pipe_growth"][0]["decisions"][0]["to"], 1 << 20);
        assert!(explain(&shared, "cat", "dd").is_err());
    }

    #[test]
    fn explain_requests_parse_from_their_documented_form() {
        let request: Request =
            serde_json::from_str(r#"{"request":"explain","src":"web","dst":"db"}"#)
                .expect("an explain request");
        assert_eq!(
            request,
            Request::Explain {
                src: "web".into(),
                dst: "db".into()
            }
        );
    }
}
