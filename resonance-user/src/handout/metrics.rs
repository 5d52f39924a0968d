//! The broker's counters, registered into the agent's Prometheus registry
//! (or a private one when the broker runs alone).

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

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
}

impl BrokerMetrics {
    /// Creates the families and registers them into `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
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
                "Brokered channels that carried data, as the probes saw them.",
                pair,
            )?,
            unused: vec(
                "resonance_broker_channels_unused_total",
                "Brokered channels the probes never saw used.",
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
        })
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
