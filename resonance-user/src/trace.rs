//! Interaction traces: [`TraceEvent`] (one interaction start) stored as JSON
//! Lines. [`read_trace`] / [`parse_trace`] load a trace and return a
//! [`Trace`] holding the good events plus one [`Malformed`] entry per bad line
//! (so a damaged file never stops a replay), and [`write_trace`] writes
//! events back in the same format, which is what the scenario generators
//! emit. For live recording, [`StartDetector`] turns raw flow activity into
//! interaction starts (first activity after an idle gap),
//! [`named_starts`] names what the probes saw the same way for the agent's
//! model and for `resonance record`, and [`TraceWriter`] appends them one
//! at a time.

use std::{
    fmt,
    fs::File,
    io::{BufRead, BufReader, BufWriter, Write},
    path::Path,
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{
    aggregate::{OwnExecutable, ServiceNamer},
    observer::InteractionStart,
};

impl crate::pair::PairKey {
    /// The key of an event.
    pub fn of(event: &TraceEvent) -> Self {
        Self {
            src: event.src.clone(),
            dst: event.dst.clone(),
            kind: event.kind.clone(),
        }
    }
}

/// One interaction start: the first activity of a (src, dst, kind) flow
/// after an idle gap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// When the interaction started (nanoseconds since the Unix epoch).
    pub ts_ns: u64,
    /// The initiating service (process name).
    pub src: String,
    /// The receiving service.
    pub dst: String,
    /// Channel kind: `pipe`, `unix_stream`, `unix_dgram`, `tcp`, ...
    pub kind: String,
    /// Bytes moved by the interaction.
    #[serde(default)]
    pub bytes: u64,
    /// How long the interaction took.
    #[serde(default)]
    pub latency_ns: u64,
    /// Whether it ended in an error.
    #[serde(default)]
    pub error: bool,
}

/// A line of a trace that could not be used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Malformed {
    /// 1-based line number in the file.
    pub line: usize,
    /// Why the line was rejected.
    pub reason: String,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// A loaded trace: the usable events in event-time order and the rejects.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    /// Good events, sorted by `ts_ns` (stable, so equal times keep file order).
    pub events: Vec<TraceEvent>,
    /// Lines that were skipped, in file order.
    pub malformed: Vec<Malformed>,
}

/// Reads a JSON Lines trace file; bad lines are collected, not fatal.
pub fn read_trace(path: &Path) -> Result<Trace> {
    let file = File::open(path).with_context(|| format!("opening trace {}", path.display()))?;
    parse_trace(BufReader::new(file)).with_context(|| format!("reading trace {}", path.display()))
}

/// Parses JSON Lines from any reader. Only I/O errors fail; a line that is
/// not a valid event (bad JSON, missing field, empty service name) is
/// recorded in [`Trace::malformed`] with its line number and skipped.
pub fn parse_trace<R: BufRead>(reader: R) -> Result<Trace> {
    let mut trace = Trace::default();
    for (index, line) in reader.lines().enumerate() {
        let line_number = index + 1;
        let line = line.with_context(|| format!("line {line_number}"))?;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        match parse_line(text) {
            Ok(event) => trace.events.push(event),
            Err(reason) => trace.malformed.push(Malformed {
                line: line_number,
                reason,
            }),
        }
    }
    trace.events.sort_by_key(|event| event.ts_ns);
    Ok(trace)
}

fn parse_line(text: &str) -> std::result::Result<TraceEvent, String> {
    let event: TraceEvent = serde_json::from_str(text).map_err(|error| error.to_string())?;
    if event.src.is_empty() || event.dst.is_empty() || event.kind.is_empty() {
        return Err("src, dst and kind must not be empty".to_owned());
    }
    Ok(event)
}

/// Writes events as JSON Lines, one per line, in the order given.
pub fn write_trace<W: Write>(writer: W, events: &[TraceEvent]) -> Result<()> {
    let mut writer = BufWriter::new(writer);
    for event in events {
        serde_json::to_writer(&mut writer, event).context("encoding a trace event")?;
        writer.write_all(b"\n").context("writing a trace event")?;
    }
    writer.flush().context("flushing the trace")
}

/// Writes events to a file (created or truncated).
pub fn write_trace_file(path: &Path, events: &[TraceEvent]) -> Result<()> {
    let file = File::create(path).with_context(|| format!("creating trace {}", path.display()))?;
    write_trace(file, events).with_context(|| format!("writing trace {}", path.display()))
}

/// Appends events to a trace as they come (for `resonance record`).
pub struct TraceWriter<W: Write> {
    writer: BufWriter<W>,
    written: u64,
}

impl<W: Write> TraceWriter<W> {
    /// Wraps a destination.
    pub fn new(writer: W) -> Self {
        Self {
            writer: BufWriter::new(writer),
            written: 0,
        }
    }

    /// Appends one event as a line.
    pub fn write(&mut self, event: &TraceEvent) -> Result<()> {
        serde_json::to_writer(&mut self.writer, event).context("encoding a trace event")?;
        self.writer
            .write_all(b"\n")
            .context("writing a trace event")?;
        self.written += 1;
        Ok(())
    }

    /// Events written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Flushes buffered lines (e.g. periodically, or before exiting).
    pub fn flush(&mut self) -> Result<()> {
        self.writer.flush().context("flushing the trace")
    }
}

/// Decides which flow activity is an interaction start: the first activity
/// of a (src, dst, kind) flow, or the first after `idle_gap_ns` of silence.
pub struct StartDetector {
    idle_gap_ns: u64,
    last_activity: std::collections::HashMap<(String, String, String), u64>,
}

impl StartDetector {
    /// A detector with the given idle gap.
    pub fn new(idle_gap_ns: u64) -> Self {
        Self {
            idle_gap_ns,
            last_activity: std::collections::HashMap::new(),
        }
    }

    /// Records activity at `ts_ns`; true if it starts an interaction.
    pub fn activity(&mut self, ts_ns: u64, src: &str, dst: &str, kind: &str) -> bool {
        let key = (src.to_owned(), dst.to_owned(), kind.to_owned());
        // Starts resolved late may come out of order: the latest activity
        // stays the reference.
        let previous = self.last_activity.get(&key).copied();
        self.last_activity
            .insert(key, previous.map_or(ts_ns, |last| last.max(ts_ns)));
        previous.is_none_or(|last| ts_ns.saturating_sub(last) > self.idle_gap_ns)
    }

    /// Forgets flows idle for longer than the gap (bounds memory on long
    /// recordings; a forgotten flow's next activity is a start anyway).
    pub fn prune(&mut self, now_ns: u64) {
        let gap = self.idle_gap_ns;
        self.last_activity
            .retain(|_, last| now_ns.saturating_sub(*last) <= gap);
    }

    /// Flows currently remembered.
    pub fn tracked(&self) -> usize {
        self.last_activity.len()
    }
}

/// The probes' interaction starts as trace events, in time order: each
/// reader is one event named by `namer`, processes of `left_out` (the
/// agent's own CLI) are dropped, and `detector` keeps one start per pair
/// and idle gap (a writer with several readers, or a pair whose processes
/// start flows in the same gap, is one start). A start whose readers were
/// never seen names no pair and is dropped. Bytes, latency and error are
/// left for the caller (they are figures of the interval, not the start).
pub fn named_starts(
    starts: Vec<InteractionStart>,
    namer: &ServiceNamer,
    left_out: Option<&OwnExecutable>,
    detector: &mut StartDetector,
) -> Vec<TraceEvent> {
    let mut starts = starts;
    starts.sort_by_key(|start| start.ts_ns);
    let mut events = Vec::new();
    for start in starts {
        if left_out.is_some_and(|own| own.runs(&start.src)) {
            continue;
        }
        let src = namer.name(&start.src);
        let kind = start.kind.as_str();
        for dst in &start.dst {
            if left_out.is_some_and(|own| own.runs(dst)) {
                continue;
            }
            let dst = namer.name(dst);
            if !detector.activity(start.ts_ns, &src, &dst, kind) {
                continue;
            }
            events.push(TraceEvent {
                ts_ns: start.ts_ns,
                src: src.clone(),
                dst,
                kind: kind.to_owned(),
                bytes: 0,
                latency_ns: 0,
                error: false,
            });
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ts_ns: u64, src: &str, dst: &str) -> TraceEvent {
        TraceEvent {
            ts_ns,
            src: src.to_owned(),
            dst: dst.to_owned(),
            kind: "pipe".to_owned(),
            bytes: 10,
            latency_ns: 5,
            error: false,
        }
    }

    #[test]
    fn malformed_lines_are_reported_and_good_lines_kept() {
        let text = concat!(
            r#"{"ts_ns": 30, "src": "a", "dst": "b", "kind": "pipe", "bytes": 1, "latency_ns": 2, "error": false}"#,
            "\n",
            "this is not json\n",
            r#"{"ts_ns": 10, "src": "c", "dst": "d", "kind": "unix_stream", "bytes": 3, "latency_ns": 4, "error": true}"#,
            "\n",
            "\n",
            r#"{"ts_ns": 20, "src": "c"}"#,
            "\n",
            r#"{"ts_ns": 40, "src": "", "dst": "d", "kind": "pipe"}"#,
            "\n",
            r#"{"ts_ns": 50, "src": "e", "dst": "f", "kind": "pipe"}"#,
            "\n",
        );
        let trace = parse_trace(text.as_bytes()).unwrap();
        let lines: Vec<usize> = trace.malformed.iter().map(|bad| bad.line).collect();
        assert_eq!(lines, vec![2, 5, 6]);
        let times: Vec<u64> = trace.events.iter().map(|event| event.ts_ns).collect();
        assert_eq!(times, vec![10, 30, 50], "good lines sorted by time");
        assert_eq!(trace.events[0].kind, "unix_stream");
        assert!(trace.events[0].error);
        assert_eq!(trace.events[2].bytes, 0, "optional fields default");
    }

    #[test]
    fn starts_are_first_activity_after_an_idle_gap() {
        let mut detector = StartDetector::new(100);
        assert!(detector.activity(0, "a", "b", "pipe"));
        assert!(!detector.activity(50, "a", "b", "pipe"));
        assert!(
            !detector.activity(150, "a", "b", "pipe"),
            "gap of 100 is not idle"
        );
        assert!(detector.activity(251, "a", "b", "pipe"), "gap of 101 is");
        assert!(
            detector.activity(260, "a", "b", "unix_stream"),
            "other kind"
        );
        detector.prune(355);
        assert_eq!(detector.tracked(), 1);
        assert!(detector.activity(400, "a", "b", "pipe"));
    }

    #[test]
    fn streaming_writer_matches_batch_writer() {
        let events = vec![event(1, "a", "b"), event(2, "b", "c")];
        let mut streamed = Vec::new();
        {
            let mut writer = TraceWriter::new(&mut streamed);
            for event in &events {
                writer.write(event).unwrap();
            }
            assert_eq!(writer.written(), 2);
            writer.flush().unwrap();
        }
        let mut batch = Vec::new();
        write_trace(&mut batch, &events).unwrap();
        assert_eq!(streamed, batch);
    }

    #[test]
    fn written_trace_reads_back_identically() {
        let events = vec![event(1, "a", "b"), event(2, "b", "c")];
        let mut buffer = Vec::new();
        write_trace(&mut buffer, &events).unwrap();
        let trace = parse_trace(buffer.as_slice()).unwrap();
        assert!(trace.malformed.is_empty());
        assert_eq!(trace.events, events);
    }
}
