//! The broker's counters, registered into the agent's Prometheus registry
//! (or a private one when the broker runs alone).
//!
//! Label cardinality is bounded as for the agent's pair metrics
//! ([`crate::metrics`]): the first `max_pairs` pairs labelled keep their own
//! `src`/`dst` labels, later ones fold into `src="_other"`,
//! `dst="_other"`, so a counter never jumps between series. Denials are
//! labelled by service, which a client can invent: services beyond the
//! same cap fold into `service="_other"`.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

/// The label value pairs beyond the cap are folded into.
pub const OTHER: &str = "_other";

/// Labels already given out, shared by every clone of the metrics.
#[derive(Default)]
struct Admitted {
    /// Services by requester, so a lookup needs no allocation.
    pairs: HashMap<String, HashSet<String>>,
    /// Pairs in `pairs`.
    count: usize,
    services: HashSet<String>,
}

/// Broker metric families. Pair labels are the requester's name and the
/// service; both come from processes allowed to connect, and a pair only
/// appears once a channel was asked for or prepared.
#[derive(Clone)]
pub struct BrokerMetrics {
    /// Channels created (prepared or on demand), by pair.
    pub created: IntCounterVec,
    /// Opens served from a pre-created channel, by pair.
    pub hits: IntCounterVec,
    /// Opens the broker served on demand, by pair.
    pub misses: IntCounterVec,
    /// Pre-created channels never used, by pair.
    pub waste: IntCounterVec,
    /// Revocations sent for expired channels, by pair.
    pub revocations: IntCounterVec,
    /// Preparations skipped for the budget, by pair.
    pub skipped: IntCounterVec,
    /// Feedback adjustments, by pair, `what` (`capacity`, `threshold`)
    /// and `direction` (`up`, `down`).
    pub adjustments: IntCounterVec,
    /// Channels the probes watched to the end that carried data, by pair.
    pub used: IntCounterVec,
    /// Channels the probes watched to the end that carried nothing, by pair.
    pub unused: IntCounterVec,
    /// Writes the probes saw find a brokered pipe full, by pair.
    pub blocked_writes: IntCounterVec,
    /// Delivery to first syscall on a brokered channel, seconds.
    pub first_use: Histogram,
    /// Policy denials, by action and service.
    pub denials: IntCounterVec,
    /// Connections closed for bad input, by reason.
    pub rejected: IntCounterVec,
    /// Idle pre-created channels.
    pub idle: IntGauge,
    /// Connected clients.
    pub connections: IntGauge,
    max_pairs: usize,
    admitted: Arc<Mutex<Admitted>>,
}

impl BrokerMetrics {
    /// Creates the families and registers them into `registry`; at most
    /// `max_pairs` pairs (and as many denied services) get labels of their
    /// own.
    pub fn new(registry: &Registry, max_pairs: usize) -> Result<Self, prometheus::Error> {
        let vec =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let v = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(v.clone()))?;
                Ok(v)
            };
        let pair = &["src", "dst"];
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        Ok(Self {
            created: vec(
                "resonance_broker_channels_created_total",
                "Channels the broker created.",
                pair,
            )?,
            hits: vec(
                "resonance_broker_hits_total",
                "Opens served by a pre-created channel.",
                pair,
            )?,
            misses: vec(
                "resonance_broker_misses_total",
                "Opens served by a channel created on demand.",
                pair,
            )?,
            waste: vec(
                "resonance_broker_waste_total",
                "Pre-created channels dropped unused.",
                pair,
            )?,
            revocations: vec(
                "resonance_broker_revocations_total",
                "Expired pre-created channels revoked.",
                pair,
            )?,
            skipped: vec(
                "resonance_broker_skipped_total",
                "Preparations skipped because the budget was spent.",
                pair,
            )?,
            adjustments: vec(
                "resonance_broker_adjustments_total",
                "Per-pair feedback adjustments of channel capacity or threshold.",
                &["src", "dst", "what", "direction"],
            )?,
            used: vec(
                "resonance_broker_channels_used_total",
                "Brokered channels through which the probes saw bytes move.",
                pair,
            )?,
            unused: vec(
                "resonance_broker_channels_unused_total",
                "Brokered channels through which the probes saw no byte move (an end-of-file read is no use).",
                pair,
            )?,
            blocked_writes: vec(
                "resonance_broker_blocked_writes_total",
                "Writes the probes saw find a brokered pipe too full to take them.",
                pair,
            )?,
            first_use: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "resonance_broker_first_use_seconds",
                        "Time from handing a channel out to its first use, seen by the probes.",
                    )
                    .buckets(prometheus::exponential_buckets(1e-5, 4.0, 12)?),
                )?;
                registry.register(Box::new(h.clone()))?;
                h
            },
            denials: vec(
                "resonance_broker_denials_total",
                "Requests the policy denied.",
                &["action", "service"],
            )?,
            rejected: vec(
                "resonance_broker_rejected_total",
                "Connections closed for bad input.",
                &["reason"],
            )?,
            idle: gauge(
                "resonance_broker_idle_channels",
                "Pre-created channels waiting to be claimed.",
            )?,
            connections: gauge("resonance_broker_connections", "Connected broker clients.")?,
            max_pairs,
            admitted: Arc::default(),
        })
    }

    fn admitted(&self) -> std::sync::MutexGuard<'_, Admitted> {
        self.admitted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `src`, `dst` labels of a pair: its own, or `_other` beyond the
    /// cap.
    pub fn pair_labels<'a>(&self, src: &'a str, dst: &'a str) -> [&'a str; 2] {
        let mut admitted = self.admitted();
        if admitted
            .pairs
            .get(src)
            .is_some_and(|dsts| dsts.contains(dst))
        {
            return [src, dst];
        }
        if admitted.count < self.max_pairs {
            admitted.count += 1;
            admitted
                .pairs
                .entry(src.to_owned())
                .or_default()
                .insert(dst.to_owned());
            return [src, dst];
        }
        [OTHER, OTHER]
    }

    /// Counts one event of a pair family.
    pub fn count(&self, vec: &IntCounterVec, src: &str, dst: &str) {
        vec.with_label_values(&self.pair_labels(src, dst)).inc();
    }

    /// Counts a feedback adjustment of a pair.
    pub fn adjusted(&self, src: &str, dst: &str, what: &str, direction: &str) {
        let [src, dst] = self.pair_labels(src, dst);
        self.adjustments
            .with_label_values(&[src, dst, what, direction])
            .inc();
    }

    /// Counts a denial of `action` on `service`.
    pub fn denied(&self, action: &str, service: &str) {
        let service = {
            let mut admitted = self.admitted();
            if admitted.services.contains(service) {
                service
            } else if admitted.services.len() < self.max_pairs {
                admitted.services.insert(service.to_owned());
                service
            } else {
                OTHER
            }
        };
        self.denials.with_label_values(&[action, service]).inc();
    }

    /// Sum of a pair counter over every label set (for tests and logs).
    pub fn total(vec: &IntCounterVec) -> u64 {
        use prometheus::core::Collector;
        vec.collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The hits counter's value per `src` label, as a scrape shows it.
    fn hits_by_src(registry: &Registry) -> BTreeMap<String, u64> {
        registry
            .gather()
            .iter()
            .filter(|family| family.name() == "resonance_broker_hits_total")
            .flat_map(|family| family.get_metric())
            .map(|metric| {
                let src = metric
                    .get_label()
                    .iter()
                    .find(|label| label.name() == "src")
                    .map(|label| label.value().to_owned())
                    .unwrap_or_default();
                (src, metric.get_counter().get_value() as u64)
            })
            .collect()
    }

    /// Admission outlives the broker's per-pair state: a pair that comes
    /// back (after its feedback was forgotten, say) counts under its own
    /// labels again, and pairs beyond the cap keep folding into `_other`,
    /// tick after tick.
    #[test]
    fn a_pair_that_comes_back_keeps_its_labels_and_later_pairs_still_fold() {
        let registry = Registry::new();
        let metrics = BrokerMetrics::new(&registry, 2).unwrap();
        for (src, dst) in [("a", "x"), ("b", "x"), ("c", "x")] {
            metrics.count(&metrics.hits, src, dst);
        }
        // a and b quiet for a while; c and d come and fold.
        for (src, dst) in [("c", "x"), ("d", "x"), ("a", "x"), ("d", "x")] {
            metrics.count(&metrics.hits, src, dst);
        }
        let hits = hits_by_src(&registry);
        let expected: BTreeMap<String, u64> = [("a", 2), ("b", 1), (OTHER, 4)]
            .into_iter()
            .map(|(src, n)| (src.to_owned(), n))
            .collect();
        assert_eq!(hits, expected);
    }
}
