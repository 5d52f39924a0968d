//! Scenarios of the kinds of host the first five leave out: background
//! noise that never recurs, sparse jittered jobs, build fan-out, and
//! services that come and go. Each mixes in [`adhoc`] commands, since no
//! real host runs only its planned workload.

use super::{Builder, MS, Periodic, S, SplitMix64, periodic, web_request};

/// Commands an administrator strings together by hand. Two drawn at
/// random are rarely drawn again in the same order within hours, so most
/// ad-hoc pairs occur once, and a few recur by chance, as on a real host.
const COMMANDS: [&str; 48] = [
    "ps",
    "grep",
    "awk",
    "sed",
    "sort",
    "uniq",
    "head",
    "tail",
    "wc",
    "less",
    "cut",
    "tr",
    "xargs",
    "find",
    "du",
    "df",
    "ls",
    "cat",
    "journalctl",
    "systemctl",
    "ss",
    "ip",
    "lsof",
    "jq",
    "curl",
    "git",
    "diff",
    "tee",
    "column",
    "free",
    "dmesg",
    "zcat",
    "tar",
    "gzip",
    "base64",
    "sha256sum",
    "openssl",
    "dig",
    "top",
    "vmstat",
    "iostat",
    "strace",
    "nl",
    "paste",
    "comm",
    "fold",
    "rev",
    "watch",
];

/// Ad-hoc pipelines (`a | b`, sometimes `a | b | c`) at random moments,
/// `mean_gap` apart on average, between `from` and `to`.
pub(super) fn adhoc(rng: &mut SplitMix64, out: &mut Builder, from: u64, to: u64, mean_gap: f64) {
    let mut at = from as f64;
    loop {
        at += rng.exponential(mean_gap);
        if at >= to as f64 {
            return;
        }
        let mut step = at as u64;
        let mut src = pick(rng);
        let stages = if rng.chance(0.3) { 2 } else { 1 };
        for _ in 0..stages {
            let dst = pick(rng);
            out.push(rng, step, (src, dst, "pipe"));
            step += rng.between(MS / 5, 5 * MS);
            src = dst;
        }
    }
}

/// Ad-hoc pipelines making up about `share` of all the starts, the ones
/// already in `out` being the rest.
fn adhoc_share(rng: &mut SplitMix64, out: &mut Builder, duration: u64, share: f64) {
    // An ad-hoc pipeline has 1.3 pairs on average (see `adhoc`).
    let pipelines = out.events.len() as f64 * share / (1.0 - share) / 1.3;
    if pipelines >= 1.0 {
        adhoc(rng, out, 0, duration, duration as f64 / pipelines);
    }
}

fn pick(rng: &mut SplitMix64) -> &'static str {
    COMMANDS[(rng.next_u64() % COMMANDS.len() as u64) as usize]
}

/// Flows of one batch job, by name; the job's period and phase are drawn.
const BATCH_JOBS: [&[super::Step<'static>]; 12] = [
    &[
        (("cron", "backup.sh", "pipe"), 0, 1),
        (("pg_dump", "zstd", "pipe"), 5 * MS, 30 * MS),
        (("zstd", "rclone", "pipe"), 20 * MS, 200 * MS),
    ],
    &[
        (("cron", "certbot", "pipe"), 0, 1),
        (("certbot", "nginx", "unix_stream"), 200 * MS, 900 * MS),
    ],
    &[
        (("cron", "mysqlcheck", "pipe"), 0, 1),
        (("mysqlcheck", "mysqld", "unix_stream"), 5 * MS, 20 * MS),
    ],
    &[
        (("cron", "rotate-uploads", "pipe"), 0, 1),
        (("find", "xargs", "pipe"), 10 * MS, 80 * MS),
        (("xargs", "rm", "pipe"), 5 * MS, 50 * MS),
    ],
    &[(("systemd", "apt-check", "unix_stream"), 0, 1)],
    &[
        (("cron", "mail-queue", "pipe"), 0, 1),
        (("postqueue", "awk", "pipe"), 5 * MS, 20 * MS),
        (("awk", "logger", "pipe"), MS, 10 * MS),
        (("logger", "rsyslogd", "unix_dgram"), MS, 5 * MS),
    ],
    &[
        (("cron", "php-cron", "pipe"), 0, 1),
        (("php", "redis", "unix_stream"), 30 * MS, 120 * MS),
    ],
    &[(("telegraf", "docker", "unix_stream"), 0, 1)],
    &[
        (("cron", "sync-mirror", "pipe"), 0, 1),
        (("rsync", "ssh", "pipe"), 10 * MS, 60 * MS),
    ],
    &[
        (("cron", "sa1", "pipe"), 0, 1),
        (("sadc", "sa1", "pipe"), 5 * MS, 15 * MS),
    ],
    &[
        (("cron", "healthcheck", "pipe"), 0, 1),
        (("curl", "nginx", "tcp"), 20 * MS, 100 * MS),
        (("healthcheck", "logger", "pipe"), 10 * MS, 50 * MS),
    ],
    &[
        (("cron", "queue-prune", "pipe"), 0, 1),
        (("psql", "postgres", "unix_stream"), 10 * MS, 40 * MS),
    ],
];

/// A host with a dozen batch jobs, each every one to five minutes (drawn
/// per job and seed) and started late by up to a few seconds (cron's
/// minute boundary plus `sleep $RANDOM`-style spreading, drawn per job),
/// a Prometheus scrape every 30 s, and ad-hoc commands about 4 % of the
/// starts.
pub(super) fn batch(rng: &mut SplitMix64, out: &mut Builder, duration: u64) {
    jobs(rng, out, duration, (60, 301));
    let scrape = Periodic {
        period: 30 * S,
        phase: 7 * S,
        jitter: 30 * MS,
        steps: &[(("prometheus", "node_exporter", "tcp"), 0, 1)],
    };
    periodic(rng, out, &scrape, 0, duration);
    adhoc_share(rng, out, duration, 0.04);
}

/// The same dozen jobs, each every 5 to 60 minutes, over a day, and ad-hoc
/// commands about 4 % of the starts, with nothing else: a few thousand
/// channels a day, the regime where a waste controller has little to
/// learn from and every pair spends hours with fewer gaps than its timing
/// needs.
pub(super) fn sparse(rng: &mut SplitMix64, out: &mut Builder, duration: u64) {
    jobs(rng, out, duration, (300, 3601));
    adhoc_share(rng, out, duration, 0.04);
}

/// [`BATCH_JOBS`], each with a period drawn from `periods_s` (seconds)
/// and its own phase and start jitter.
fn jobs(rng: &mut SplitMix64, out: &mut Builder, duration: u64, periods_s: (u64, u64)) {
    out.end_ns = duration;
    for steps in BATCH_JOBS {
        let period = rng.between(periods_s.0, periods_s.1) * S;
        let job = Periodic {
            period,
            phase: rng.between(0, period),
            jitter: rng.between(100 * MS, 4 * S),
            steps,
        };
        periodic(rng, out, &job, 0, duration);
    }
}

/// A developer's build box: builds start at random (every four minutes on
/// average, during a work session of about forty minutes, sessions an hour
/// apart), each a `git fetch`, then `make` starting one compiler per
/// changed file in a row (a different number each build), an assembler
/// per compile, and one link; between builds an editor talks to its
/// language server in bursts while someone types, and ad-hoc commands
/// come about every minute.
pub(super) fn build(rng: &mut SplitMix64, out: &mut Builder, duration: u64) {
    out.end_ns = duration;
    let mut session = rng.between(0, 5 * 60 * S);
    while session < duration {
        let end = (session + rng.between(25 * 60 * S, 55 * 60 * S)).min(duration);
        let mut at = session as f64;
        loop {
            at += rng.exponential(240.0 * S as f64);
            if at >= end as f64 {
                break;
            }
            one_build(rng, out, at as u64);
        }
        editing(rng, out, session, end);
        adhoc(rng, out, session, end, 60.0 * S as f64);
        session = end + rng.between(30 * 60 * S, 90 * 60 * S);
    }
}

fn one_build(rng: &mut SplitMix64, out: &mut Builder, start: u64) {
    let mut at = start;
    out.push(rng, at, ("git", "ssh", "pipe"));
    at += rng.between(300 * MS, 2 * S);
    out.push(rng, at, ("bash", "make", "pipe"));
    let files = rng.between(2, 40);
    for _ in 0..files {
        at += rng.between(5 * MS, 60 * MS);
        out.push(rng, at, ("make", "cc", "pipe"));
        let compile = at + rng.between(20 * MS, 400 * MS);
        out.push(rng, compile, ("cc1", "as", "pipe"));
    }
    at += rng.between(500 * MS, 3 * S);
    out.push(rng, at, ("collect2", "ld", "pipe"));
    at += rng.between(50 * MS, 500 * MS);
    out.push(rng, at, ("make", "bash", "pipe"));
}

/// Typing bursts: a request to the language server every few hundred
/// milliseconds while typing, pauses of seconds to minutes between.
fn editing(rng: &mut SplitMix64, out: &mut Builder, from: u64, to: u64) {
    let mut at = from + rng.between(0, 60 * S);
    while at < to {
        let keys = rng.between(3, 30);
        for _ in 0..keys {
            at += rng.between(80 * MS, 700 * MS);
            out.push(rng, at, ("nvim", "rust-analyzer", "pipe"));
        }
        at += rng.exponential(45.0 * S as f64) as u64 + S;
    }
}

/// A container host where services come and go: a web app redeployed
/// every 10 to 30 minutes under a new name (`app-v1`, `app-v2`, ... as
/// container names change), each version serving request bursts to redis
/// and postgres and scraped every 15 s while it lives; queue workers that
/// appear for two to eight minutes under their own names and poll the
/// queue every second or two; and ad-hoc commands about 3 % of the starts.
pub(super) fn churn(rng: &mut SplitMix64, out: &mut Builder, duration: u64) {
    out.end_ns = duration;
    let mut version = 1;
    let mut from = 0;
    while from < duration {
        let to = (from + rng.between(10 * 60 * S, 30 * 60 * S)).min(duration);
        let app = format!("app-v{version}");
        let mut t = from as f64 / S as f64;
        loop {
            t += rng.exponential(1.5);
            if t * S as f64 >= to as f64 {
                break;
            }
            web_request(rng, out, (t * S as f64) as u64, &app, "redis");
        }
        let steps = [(("prometheus", app.as_str(), "tcp"), 0, 1)];
        let scrape = Periodic {
            period: 15 * S,
            phase: rng.between(0, 15 * S),
            jitter: 20 * MS,
            steps: &steps,
        };
        periodic(rng, out, &scrape, from, to);
        from = to;
        version += 1;
    }
    let mut worker = 1;
    let mut at = rng.between(0, 5 * 60 * S);
    while at < duration {
        let lives = rng.between(2 * 60 * S, 8 * 60 * S);
        let name = format!("worker-{worker}");
        let poll = rng.between(S, 2 * S);
        let mut t = at;
        while t < (at + lives).min(duration) {
            out.push(rng, t, (&name, "rabbitmq", "tcp"));
            t += poll + rng.between(0, 50 * MS);
        }
        worker += 1;
        at += lives + rng.exponential(4.0 * 60.0 * S as f64) as u64;
    }
    adhoc(rng, out, 0, duration, 30.0 * S as f64);
}
