//! The control socket: `resonance pairs` asks the running agent.
//!
//! Protocol: one JSON request per line (`{"request":"pairs"}`), one JSON
//! response per line (`{"ok":true,"pairs":[...]}` or
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

use crate::score::PairScore;

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
}

/// What the control socket serves, refreshed by the agent every tick.
#[derive(Debug, Default)]
pub struct Shared {
    /// Latest scores.
    pub scores: Vec<PairScore>,
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
