//! The Prometheus endpoint's content: per-pair traffic, latency and scores,
//! and the agent's own health.
//!
//! Label cardinality is bounded: the first `max_pairs` pairs seen get their
//! own `src`/`dst`/`kind` labels and keep them; later pairs fold into one
//! series with `src="_other"`, `dst="_other"`, `kind="_other"`, so counters
//! never jump between series.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
};

use prometheus::{
    Encoder, GaugeVec, Histogram as PromHistogram, HistogramOpts, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
    core::{Collector, Desc},
    proto,
};

use crate::{
    aggregate::Histogram,
    score::{IntervalFigures, PairKey, PairScore},
};

/// The label value pairs beyond the cap are folded into (the broker's
/// metrics fold the same way).
pub use crate::handout::metrics::OTHER;

/// Powers of two from 2^10 ns (~1 µs) to 2^34 ns (~17 s): latency bucket
/// bounds published to Prometheus. Each is a bucket edge of the kernel's
/// histogram, so the cumulative counts are exact.
const LATENCY_BOUND_EXPONENTS: std::ops::RangeInclusive<u32> = 10..=34;

/// All metric families.
pub struct Metrics {
    registry: Registry,
    max_pairs: usize,
    admitted: Mutex<BTreeSet<PairKey>>,
    bytes: IntCounterVec,
    messages: IntCounterVec,
    errors: IntCounterVec,
    interactions: IntCounterVec,
    score: GaugeVec,
    component: GaugeVec,
    latency: Arc<Mutex<BTreeMap<[String; 3], Histogram>>>,
    /// Ring-buffer records decoded.
    pub events: IntCounter,
    /// Ring-buffer records that failed to decode.
    pub events_malformed: IntCounter,
    /// Events the kernel could not queue (ring buffer full).
    pub event_drops: IntCounter,
    /// Entries in the kernel's flow map.
    pub flow_map_entries: IntGauge,
    /// Processes the agent knows.
    pub processes: IntGauge,
    /// Pairs being scored.
    pub pairs_tracked: IntGauge,
    /// Time to write one batch of history.
    pub flush_duration: PromHistogram,
    /// History flushes that failed.
    pub flush_failures: IntCounter,
    /// Endpoint connections closed to stay within the cap.
    pub http_connections_shed: IntCounter,
    /// Endpoint requests refused for their credentials.
    pub http_unauthorized: IntCounter,
    /// 1 per attached tracepoint.
    pub probe_attached: IntGaugeVec,
}

/// A metric that could not be registered (a programming error, reported
/// instead of panicking).
pub type MetricsError = prometheus::Error;

impl Metrics {
    /// The registry, for modules that publish their own families (the
    /// broker).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Creates and registers every family.
    pub fn new(max_pairs: usize) -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let pair_labels = &["src", "dst", "kind"];
        let counter = |name: &str, help: &str| -> Result<IntCounterVec, MetricsError> {
            let vec = IntCounterVec::new(Opts::new(name, help), pair_labels)?;
            registry.register(Box::new(vec.clone()))?;
            Ok(vec)
        };
        let bytes = counter("resonance_pair_bytes_total", "Bytes sent from src to dst.")?;
        let messages = counter(
            "resonance_pair_messages_total",
            "Send syscalls from src to dst.",
        )?;
        let errors = counter(
            "resonance_pair_errors_total",
            "Failed syscalls and connects between src and dst.",
        )?;
        let interactions = counter(
            "resonance_pair_interactions_total",
            "Times src started talking to dst after an idle gap.",
        )?;
        let score = GaugeVec::new(
            Opts::new(
                "resonance_pair_score",
                "Resonance score of the pair, 0 to 1 (see docs/agent.md).",
            ),
            pair_labels,
        )?;
        registry.register(Box::new(score.clone()))?;
        let component = GaugeVec::new(
            Opts::new(
                "resonance_pair_score_component",
                "Normalised score components of the pair, 0 to 1.",
            ),
            &["src", "dst", "kind", "component"],
        )?;
        registry.register(Box::new(component.clone()))?;
        let latency = Arc::new(Mutex::new(BTreeMap::new()));
        registry.register(Box::new(LatencyCollector::new(Arc::clone(&latency))?))?;
        let int_counter = |name: &str, help: &str| -> Result<IntCounter, MetricsError> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let int_gauge = |name: &str, help: &str| -> Result<IntGauge, MetricsError> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let events = int_counter(
            "resonance_events_total",
            "Ring-buffer records read from the kernel.",
        )?;
        let events_malformed = int_counter(
            "resonance_events_malformed_total",
            "Ring-buffer records that could not be decoded.",
        )?;
        let event_drops = int_counter(
            "resonance_event_drops_total",
            "Events the kernel could not queue because the ring buffer was full.",
        )?;
        let flow_map_entries = int_gauge(
            "resonance_flow_map_entries",
            "Entries in the kernel flow map.",
        )?;
        let processes = int_gauge("resonance_processes", "Processes the agent knows about.")?;
        let pairs_tracked = int_gauge("resonance_pairs", "Service pairs being scored.")?;
        let flush_duration = PromHistogram::with_opts(
            HistogramOpts::new(
                "resonance_store_flush_duration_seconds",
                "Time to write one batch of history to the store.",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
        )?;
        registry.register(Box::new(flush_duration.clone()))?;
        let flush_failures = int_counter(
            "resonance_store_flush_failures_total",
            "History flushes that failed.",
        )?;
        let http_connections_shed = int_counter(
            "resonance_http_connections_shed_total",
            "Connections to this endpoint closed to stay within metrics.max_connections \
             (the oldest idle one, or a newcomer when all were answering).",
        )?;
        let http_unauthorized = int_counter(
            "resonance_http_unauthorized_total",
            "Requests to this endpoint answered 401 (missing or wrong basic-auth credentials).",
        )?;
        let probe_attached = IntGaugeVec::new(
            Opts::new(
                "resonance_probe_attached",
                "1 for each hook the probes are attached to, with the mode they run in \
                 (tp_btf, raw_tp, or the classic tracepoint fallback).",
            ),
            &["tracepoint", "mode"],
        )?;
        registry.register(Box::new(probe_attached.clone()))?;
        Ok(Self {
            registry,
            max_pairs,
            admitted: Mutex::new(BTreeSet::new()),
            bytes,
            messages,
            errors,
            interactions,
            score,
            component,
            latency,
            events,
            events_malformed,
            event_drops,
            flow_map_entries,
            processes,
            pairs_tracked,
            flush_duration,
            flush_failures,
            http_connections_shed,
            http_unauthorized,
            probe_attached,
        })
    }

    /// The label values for `key`: its own, or `_other` beyond the cap.
    fn labels(&self, key: &PairKey) -> [String; 3] {
        let mut admitted = self.admitted.lock().unwrap_or_else(|p| p.into_inner());
        if admitted.contains(key) || admitted.len() < self.max_pairs {
            admitted.insert(key.clone());
            [key.src.clone(), key.dst.clone(), key.kind.clone()]
        } else {
            [OTHER.to_owned(), OTHER.to_owned(), OTHER.to_owned()]
        }
    }

    /// Adds one tick of traffic.
    pub fn record_traffic(&self, figures: &BTreeMap<PairKey, IntervalFigures>) {
        let mut latency = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        for (key, f) in figures {
            let labels = self.labels(key);
            let values = [labels[0].as_str(), labels[1].as_str(), labels[2].as_str()];
            self.bytes.with_label_values(&values).inc_by(f.bytes);
            self.messages.with_label_values(&values).inc_by(f.messages);
            self.errors.with_label_values(&values).inc_by(f.errors);
            self.interactions
                .with_label_values(&values)
                .inc_by(f.interactions);
            latency.entry(labels).or_default().merge(&f.latency);
        }
    }

    /// Publishes the current scores (pairs folded into `_other` publish
    /// none: a score of a mixture means nothing).
    pub fn record_scores(&self, scores: &[PairScore]) {
        self.pairs_tracked.set(scores.len() as i64);
        for s in scores {
            let labels = self.labels(&s.key);
            if labels[0] == OTHER {
                continue;
            }
            let values = [labels[0].as_str(), labels[1].as_str(), labels[2].as_str()];
            self.score.with_label_values(&values).set(s.score);
            for (name, value) in [
                ("frequency", s.normalized.frequency),
                ("rate", s.normalized.rate),
                ("latency", s.normalized.latency),
                ("errors", s.normalized.errors),
            ] {
                self.component
                    .with_label_values(&[values[0], values[1], values[2], name])
                    .set(value);
            }
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> Result<String, MetricsError> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        Ok(String::from_utf8_lossy(&buffer).into_owned())
    }
}

/// Publishes the per-pair latency histograms straight from the kernel's
/// bucket counts (the prometheus crate's own histogram only takes single
/// observations).
struct LatencyCollector {
    desc: Desc,
    pairs: Arc<Mutex<BTreeMap<[String; 3], Histogram>>>,
}

const LATENCY_NAME: &str = "resonance_pair_latency_seconds";
const LATENCY_HELP: &str =
    "Wait in the pipe (one-way channels) or request-to-response turnaround (sockets), per pair.";

impl LatencyCollector {
    fn new(pairs: Arc<Mutex<BTreeMap<[String; 3], Histogram>>>) -> Result<Self, MetricsError> {
        let desc = Desc::new(
            LATENCY_NAME.to_owned(),
            LATENCY_HELP.to_owned(),
            vec!["src".to_owned(), "dst".to_owned(), "kind".to_owned()],
            Default::default(),
        )?;
        Ok(Self { desc, pairs })
    }
}

impl Collector for LatencyCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
        let mut family = proto::MetricFamily::default();
        family.set_name(LATENCY_NAME.to_owned());
        family.set_help(LATENCY_HELP.to_owned());
        family.set_field_type(proto::MetricType::HISTOGRAM);
        let metrics = pairs
            .iter()
            .map(|(labels, hist)| {
                // Sorted by name, as the crate's own vectors emit them.
                let [src, dst, kind] = labels;
                let label_pairs = [("dst", dst), ("kind", kind), ("src", src)]
                    .into_iter()
                    .map(|(name, value)| {
                        let mut pair = proto::LabelPair::default();
                        pair.set_name(name.to_owned());
                        pair.set_value(value.clone());
                        pair
                    })
                    .collect();
                let mut metric = proto::Metric::from_label(label_pairs);
                metric.set_histogram(to_proto(hist));
                metric
            })
            .collect();
        family.set_metric(metrics);
        vec![family]
    }
}

/// Cumulative counts at power-of-two bounds: kernel bucket `2k` starts at
/// exactly 2^k ns, so everything below index `2k` is below the bound.
fn to_proto(hist: &Histogram) -> proto::Histogram {
    let counts = hist.buckets();
    let mut out = proto::Histogram::default();
    let buckets = LATENCY_BOUND_EXPONENTS
        .map(|exponent| {
            let below: u64 = counts.iter().take(2 * exponent as usize).sum();
            let mut bucket = proto::Bucket::default();
            bucket.set_upper_bound((1u64 << exponent) as f64 / 1e9);
            bucket.set_cumulative_count(below);
            bucket
        })
        .collect();
    out.set_bucket(buckets);
    out.set_sample_count(hist.count());
    out.set_sample_sum(hist.sum_ns() as f64 / 1e9);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(src: &str) -> PairKey {
        PairKey {
            src: src.into(),
            dst: "db".into(),
            kind: "unix_stream".to_owned(),
        }
    }

    fn tick(pairs: &[(&str, u64)]) -> BTreeMap<PairKey, IntervalFigures> {
        pairs
            .iter()
            .map(|&(src, bytes)| {
                let figures = IntervalFigures {
                    interactions: 1,
                    messages: 1,
                    bytes,
                    errors: 0,
                    latency: Histogram::default(),
                };
                (key(src), figures)
            })
            .collect()
    }

    /// The first `max_pairs` pairs keep their labels for good, whichever
    /// pairs later ticks carry: a later pair never takes a quiet pair's
    /// place, so no counter moves between series.
    #[test]
    fn admission_holds_across_ticks() {
        let metrics = Metrics::new(2).unwrap();
        let line = |src: &str, bytes: u64| {
            format!(
                r#"resonance_pair_bytes_total{{dst="db",kind="unix_stream",src="{src}"}} {bytes}"#
            )
        };
        let other = |bytes: u64| {
            format!(
                r#"resonance_pair_bytes_total{{dst="_other",kind="_other",src="_other"}} {bytes}"#
            )
        };
        metrics.record_traffic(&tick(&[("a", 100), ("b", 200)]));
        // a and b are quiet now; c and d still fold.
        metrics.record_traffic(&tick(&[("c", 300), ("d", 400)]));
        metrics.record_traffic(&tick(&[("a", 10), ("c", 30)]));
        let text = metrics.encode().unwrap();
        for expected in [line("a", 110), line("b", 200), other(730)] {
            assert!(
                text.lines().any(|l| l == expected),
                "no {expected}:\n{text}"
            );
        }
        assert!(
            !text.contains(r#"src="c""#) && !text.contains(r#"src="d""#),
            "{text}"
        );
    }

    #[test]
    fn pairs_beyond_the_cap_fold_into_other() {
        let metrics = Metrics::new(2).unwrap();
        let mut tick = BTreeMap::new();
        for (i, src) in ["a", "b", "c", "d"].into_iter().enumerate() {
            let mut latency = Histogram::default();
            latency.record(3_000);
            tick.insert(
                key(src),
                IntervalFigures {
                    interactions: 1,
                    messages: 1,
                    bytes: 100 * (i as u64 + 1),
                    errors: 0,
                    latency,
                },
            );
        }
        metrics.record_traffic(&tick);
        let text = metrics.encode().unwrap();
        assert!(
            text.contains(r#"resonance_pair_bytes_total{dst="db",kind="unix_stream",src="a"} 100"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"resonance_pair_bytes_total{dst="_other",kind="_other",src="_other"} 700"#
            ),
            "{text}"
        );
        assert!(!text.contains(r#"src="c""#), "{text}");
        // 3 µs lies between 2^11 and 2^12 ns.
        assert!(text.contains(r#"resonance_pair_latency_seconds_bucket{dst="db",kind="unix_stream",src="a",le="0.000002048"} 0"#), "{text}");
        assert!(text.contains(r#"resonance_pair_latency_seconds_bucket{dst="db",kind="unix_stream",src="a",le="0.000004096"} 1"#), "{text}");
        assert!(
            text.contains("# HELP resonance_pair_latency_seconds"),
            "{text}"
        );
    }
}
