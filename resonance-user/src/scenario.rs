//! Synthetic traces for named scenarios ([`SCENARIOS`]), reproducible from a
//! seed through a small [`SplitMix64`] generator. [`generate`] returns a
//! [`Scenario`]: the events in time order and, for the drift scenarios, when
//! the behaviour changes.
//!
//! - `web`: proxy -> app -> cache and database over Unix sockets, request
//!   bursts following a compressed diurnal rate (a "day" of one hour whose
//!   night is nearly idle), plus a metrics poller.
//! - `cron`: periodic jobs (15 s to 10 min) whose runs are pipelines such as
//!   `pg_dump | gzip | s3cmd`.
//! - `pipelines`: a shell loop running a chain of three pipelines with think
//!   time between rounds; two of them share a `sort | uniq` step.
//! - `drift`: a steady web stack whose app, poller period and jobs change at
//!   half time.
//! - `drift-same-names`: a Consul agent health-checks ten services, each
//!   on its own interval (15 to 24 s); at half time a deploy shortens every
//!   interval by 40 %. The same ten `consul -> service` pairs before and
//!   after: only their timing changes.
//! - `batch`, `sparse`, `build`, `churn`: hosts with background noise
//!   ([`hosts`]): a dozen jittered jobs every few minutes; the same jobs
//!   every 5 to 60 minutes over a day; a build box's fan-out and editing;
//!   a container host whose services come and go. Each has ad-hoc
//!   commands that mostly never recur.

mod hosts;

use anyhow::{Result, bail};

use crate::trace::TraceEvent;

/// Names accepted by [`generate`].
pub const SCENARIOS: &[&str] = &[
    "web",
    "cron",
    "pipelines",
    "drift",
    "drift-same-names",
    "batch",
    "sparse",
    "build",
    "churn",
];

/// Trace start time (ns since the epoch), so traces look like recordings.
pub const START_NS: u64 = 1_700_000_000_000_000_000;

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;

/// A generated trace.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Interaction starts in time order.
    pub events: Vec<TraceEvent>,
    /// When the behaviour changes (the drift scenarios only).
    pub change_ns: Option<u64>,
}

/// splitmix64: tiny, fast and good enough for workload jitter.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator for a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform duration in [low, high) nanoseconds.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + (self.unit() * high.saturating_sub(low) as f64) as u64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Exponentially distributed with the given mean.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

/// Generates a scenario; `duration_ns` overrides its default length.
pub fn generate(name: &str, seed: u64, duration_ns: Option<u64>) -> Result<Scenario> {
    let mut rng = SplitMix64::new(seed);
    let mut out = Builder::default();
    let mut change_ns = None;
    match name {
        "web" => web(&mut rng, &mut out, duration_ns.unwrap_or(2 * 3600 * S)),
        "cron" => cron(&mut rng, &mut out, duration_ns.unwrap_or(2 * 3600 * S)),
        "pipelines" => pipelines(&mut rng, &mut out, duration_ns.unwrap_or(3600 * S)),
        "drift" => {
            let duration = duration_ns.unwrap_or(40 * 60 * S);
            change_ns = Some(START_NS + duration / 2);
            drift(&mut rng, &mut out, duration);
        }
        "drift-same-names" => {
            let duration = duration_ns.unwrap_or(45 * 60 * S);
            change_ns = Some(START_NS + duration / 2);
            drift_same_names(&mut rng, &mut out, duration);
        }
        "batch" => hosts::batch(&mut rng, &mut out, duration_ns.unwrap_or(4 * 3600 * S)),
        "sparse" => hosts::sparse(&mut rng, &mut out, duration_ns.unwrap_or(24 * 3600 * S)),
        "build" => hosts::build(&mut rng, &mut out, duration_ns.unwrap_or(4 * 3600 * S)),
        "churn" => hosts::churn(&mut rng, &mut out, duration_ns.unwrap_or(2 * 3600 * S)),
        other => bail!(
            "unknown scenario {other:?}; known: {}",
            SCENARIOS.join(", ")
        ),
    }
    Ok(Scenario {
        events: out.finish(),
        change_ns,
    })
}

#[derive(Default)]
struct Builder {
    events: Vec<TraceEvent>,
    end_ns: u64,
}

impl Builder {
    /// Adds an interaction at `offset` ns into the trace, if before the end.
    fn push(&mut self, rng: &mut SplitMix64, offset: u64, flow: (&str, &str, &str)) {
        if self.end_ns != 0 && offset >= self.end_ns {
            return;
        }
        let (src, dst, kind) = flow;
        self.events.push(TraceEvent {
            ts_ns: START_NS + offset,
            src: src.to_owned(),
            dst: dst.to_owned(),
            kind: kind.to_owned(),
            bytes: rng.between(64, 65_536),
            latency_ns: rng.between(20_000, 2_000_000),
            error: rng.chance(0.002),
        });
    }

    fn finish(mut self) -> Vec<TraceEvent> {
        self.events.sort_by(|a, b| {
            a.ts_ns
                .cmp(&b.ts_ns)
                .then_with(|| (&a.src, &a.dst, &a.kind).cmp(&(&b.src, &b.dst, &b.kind)))
        });
        self.events
    }
}

/// One step of a job: the flow, and the bounds of its uniform delay after
/// the previous step.
type Step<'a> = ((&'a str, &'a str, &'a str), u64, u64);

/// A job that fires every `period` (with a little start jitter) and runs
/// `steps` in sequence, each after a uniform delay from the previous one.
struct Periodic<'a> {
    period: u64,
    phase: u64,
    jitter: u64,
    steps: &'a [Step<'a>],
}

fn periodic(rng: &mut SplitMix64, out: &mut Builder, job: &Periodic<'_>, from: u64, to: u64) {
    let mut fire = from + job.phase;
    while fire < to {
        let mut at = fire + rng.between(0, job.jitter);
        for &(flow, low, high) in job.steps {
            at += rng.between(low, high);
            out.push(rng, at, flow);
        }
        fire += job.period;
    }
}

fn web_request(rng: &mut SplitMix64, out: &mut Builder, at: u64, app: &str, cache: &str) {
    out.push(rng, at, ("nginx", app, "unix_stream"));
    let mut step = at + rng.between(200_000, 1_500_000);
    if rng.chance(0.97) {
        out.push(rng, step, (app, cache, "unix_stream"));
    }
    step += rng.between(2 * MS, 6 * MS);
    if rng.chance(0.35) {
        out.push(rng, step, (app, "postgres", "unix_stream"));
    }
    let reply = step + rng.between(8 * MS, 40 * MS);
    out.push(rng, reply, (app, "nginx", "unix_stream"));
}

fn web(rng: &mut SplitMix64, out: &mut Builder, duration: u64) {
    out.end_ns = duration;
    let day = 3600.0;
    let peak = 2.0;
    let night = 0.001;
    // Non-homogeneous Poisson bursts by thinning a peak-rate process.
    let mut t = 0.0;
    let end = duration as f64 / S as f64;
    loop {
        t += rng.exponential(1.0 / peak);
        if t >= end {
            break;
        }
        let daylight = (std::f64::consts::TAU * t / day).sin().max(0.0);
        let rate = peak * (night + (1.0 - night) * daylight * daylight);
        if rng.chance(rate / peak) {
            web_request(rng, out, (t * S as f64) as u64, "php-fpm", "redis");
        }
    }
    let poller = Periodic {
        period: 15 * S,
        phase: 3 * S,
        jitter: 20 * MS,
        steps: &[(("prometheus", "nginx", "tcp"), 0, 1)],
    };
    periodic(rng, out, &poller, 0, duration);
}

fn cron(rng: &mut SplitMix64, out: &mut Builder, duration: u64) {
    out.end_ns = duration;
    let jobs = [
        Periodic {
            period: 15 * S,
            phase: 2 * S,
            jitter: 20 * MS,
            steps: &[(("prometheus", "node_exporter", "unix_stream"), 0, 1)],
        },
        Periodic {
            period: 60 * S,
            phase: 0,
            jitter: 300 * MS,
            steps: &[
                (("cron", "backup.sh", "pipe"), 0, 1),
                (("pg_dump", "gzip", "pipe"), 5 * MS, 30 * MS),
                (("gzip", "s3cmd", "pipe"), 30 * MS, 200 * MS),
                (("s3cmd", "s3proxy", "unix_stream"), 50 * MS, 300 * MS),
            ],
        },
        Periodic {
            period: 300 * S,
            phase: 20 * S,
            jitter: 300 * MS,
            steps: &[
                (("cron", "logrotate", "pipe"), 0, 1),
                (("logrotate", "gzip", "pipe"), 10 * MS, 50 * MS),
                (("logrotate", "rsyslogd", "unix_dgram"), 100 * MS, 500 * MS),
            ],
        },
        Periodic {
            period: 600 * S,
            phase: 40 * S,
            jitter: 300 * MS,
            steps: &[
                (("cron", "report.sh", "pipe"), 0, 1),
                (("psql", "postgres", "unix_stream"), 10 * MS, 40 * MS),
                (("psql", "awk", "pipe"), 200 * MS, 2000 * MS),
                (("awk", "sendmail", "pipe"), 5 * MS, 20 * MS),
            ],
        },
    ];
    for job in &jobs {
        periodic(rng, out, job, 0, duration);
    }
}

fn pipelines(rng: &mut SplitMix64, out: &mut Builder, duration: u64) {
    out.end_ns = duration;
    let rounds: [&[Step<'_>]; 3] = [
        &[
            (("cat", "grep", "pipe"), 0, 1),
            (("grep", "sort", "pipe"), MS / 2, 3 * MS),
            (("sort", "uniq", "pipe"), 20 * MS, 200 * MS),
            (("uniq", "head", "pipe"), MS / 5, MS),
        ],
        &[
            (("find", "xargs", "pipe"), 5 * MS, 20 * MS),
            (("xargs", "wc", "pipe"), 5 * MS, 50 * MS),
        ],
        &[
            (("ps", "awk", "pipe"), 5 * MS, 20 * MS),
            (("awk", "sort", "pipe"), MS / 2, 3 * MS),
            (("sort", "uniq", "pipe"), 10 * MS, 50 * MS),
            (("uniq", "tail", "pipe"), MS / 5, MS),
        ],
    ];
    let mut at = S;
    while at < duration {
        for round in rounds {
            for &(flow, low, high) in round {
                at += rng.between(low, high);
                out.push(rng, at, flow);
            }
        }
        at += rng.between(2 * S, 8 * S);
    }
}

fn drift(rng: &mut SplitMix64, out: &mut Builder, duration: u64) {
    out.end_ns = duration;
    let change = duration / 2;
    let rate = 1.0;
    let mut t = 0.0;
    let end = duration as f64 / S as f64;
    loop {
        t += rng.exponential(1.0 / rate);
        if t >= end {
            break;
        }
        let at = (t * S as f64) as u64;
        if at < change {
            web_request(rng, out, at, "php-fpm", "redis");
        } else {
            web_request(rng, out, at, "gunicorn", "memcached");
        }
    }
    let before = Periodic {
        period: 15 * S,
        phase: 3 * S,
        jitter: 20 * MS,
        steps: &[(("prometheus", "nginx", "tcp"), 0, 1)],
    };
    periodic(rng, out, &before, 0, change);
    let after = Periodic {
        period: 10 * S,
        phase: 3 * S,
        jitter: 20 * MS,
        steps: &[(("prometheus", "nginx", "tcp"), 0, 1)],
    };
    periodic(rng, out, &after, change, duration);
    let job = Periodic {
        period: 30 * S,
        phase: 5 * S,
        jitter: 200 * MS,
        steps: &[
            (("cron", "sync.sh", "pipe"), 0, 1),
            (("rsync", "ssh", "pipe"), 10 * MS, 50 * MS),
        ],
    };
    periodic(rng, out, &job, change, duration);
}

/// Services a Consul agent health-checks in `drift-same-names`.
const CHECKED: [&str; 10] = [
    "api",
    "auth",
    "billing",
    "cart",
    "catalog",
    "checkout",
    "inventory",
    "search",
    "sessions",
    "users",
];

/// A Consul agent health-checks ten services, each on its own interval
/// (drawn in 15..24 s, as check definitions differ), with up to 50 ms of
/// jitter per check. At half time a deploy shortens every interval by 40 %
/// (20 s becomes 12 s) and restarts the checks, so each one starts again
/// at a new moment. Every pair keeps its name: what changes is only when
/// the same pairs come.
fn drift_same_names(rng: &mut SplitMix64, out: &mut Builder, duration: u64) {
    out.end_ns = duration;
    let change = duration / 2;
    for service in CHECKED {
        let before = rng.between(15 * S, 24 * S);
        let after = before / 5 * 3;
        for (from, to, interval) in [(0, change, before), (change, duration, after)] {
            let mut at = from + rng.between(0, interval);
            while at < to {
                let check = at + rng.between(0, 50 * MS);
                if check < to {
                    out.push(rng, check, ("consul", service, "tcp"));
                }
                at += interval;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_trace_other_seed_other_trace() {
        let a = generate("cron", 7, Some(600 * S)).unwrap();
        let b = generate("cron", 7, Some(600 * S)).unwrap();
        let c = generate("cron", 8, Some(600 * S)).unwrap();
        assert_eq!(a.events, b.events);
        assert_ne!(a.events, c.events);
        assert!(a.events.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns));
    }

    #[test]
    fn every_scenario_generates_events_and_unknown_fails() {
        // Two hours: the sparse jobs run every 5 to 60 minutes.
        for name in SCENARIOS {
            let scenario = generate(name, 1, Some(7200 * S)).unwrap();
            assert!(
                scenario.events.len() > 50,
                "{name}: {}",
                scenario.events.len()
            );
            let last = scenario.events.last().map_or(0, |event| event.ts_ns);
            assert!(last < START_NS + 7200 * S, "{name} overruns its duration");
        }
        assert!(generate("nope", 1, None).is_err());
        assert!(generate("drift", 1, None).unwrap().change_ns.is_some());
        assert!(
            generate("drift-same-names", 1, None)
                .unwrap()
                .change_ns
                .is_some()
        );
    }
}
