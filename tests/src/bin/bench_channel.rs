//! `cargo xtask bench channel`: what it costs a requester to get a channel
//! to a responder process and do a first round trip on it, three ways:
//!
//! - `connect_accept`: connect to B's listening Unix socket (B accepts in
//!   an epoll loop);
//! - `broker_on_demand`: `open()` through a broker that prepares nothing;
//! - `broker_prepared`: `open()` served by an end the broker pushed ahead
//!   of time (already in the requester's inbox and in B's epoll set).
//!
//! *acquire* runs from "I want to talk to B" until the requester holds a
//! descriptor it can write to (`connect` or `open` returned); *rtt* adds
//! one 64-byte request and its answer. What the requester holds besides
//! the descriptor (a [`resonance_client::Channel`]'s names and peer) is
//! freed with the stream after the trial, as an application frees it when
//! it closes the channel, not before its first write. B is the `responder`
//! example in every variant; each broker runs in its own process (this
//! binary with `--role broker`). The variants take turns in ten rounds
//! (rotating which goes first) with the same idle time before every trial,
//! so a change in the machine's load reaches all three alike.

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use resonance::{config::BrokerSettings, handout::Broker};
use resonance_client::{Channel, Client, Peer};
use resonance_tests::helper_bin;

const TRIALS: usize = 3000;
const WARMUP: usize = 100;
const PAYLOAD: usize = 64;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--role") {
        return broker_role(&args);
    }
    let json = args.iter().any(|a| a == "--json");
    let markdown = args.iter().any(|a| a == "--markdown");
    let dir = std::env::temp_dir().join(format!("resonance-bench-channel-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run(&dir, json, markdown);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn broker_role(args: &[String]) -> Result<()> {
    let socket = PathBuf::from(args.get(1).context("--role broker SOCKET THRESHOLD")?);
    let threshold: f64 = args.get(2).context("threshold")?.parse()?;
    let settings = BrokerSettings {
        socket,
        mode: "0600".into(),
        threshold,
        ..BrokerSettings::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let broker = Broker::bind(&settings, &prometheus::Registry::new())?;
        broker.run().await;
        Ok(())
    })
}

fn spawn_ready(command: &mut Command) -> Result<Killed> {
    let mut child = command.stdout(Stdio::piped()).spawn()?;
    let mut line = [0u8; 6];
    child
        .stdout
        .as_mut()
        .context("stdout")?
        .read_exact(&mut line)
        .context("waiting for ready")?;
    drop(child.stdout.take());
    Ok(Killed(child))
}

fn wait_socket(path: &Path) -> Result<()> {
    for _ in 0..500 {
        if UnixStream::connect(path).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("{} never came up", path.display())
}

struct Figures {
    variant: &'static str,
    acquire: Vec<u64>,
    rtt: Vec<u64>,
    hits: usize,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn exchange(stream: &mut UnixStream, i: usize) -> Result<()> {
    let mut request = (PAYLOAD as u32).to_le_bytes().to_vec();
    request.extend((0..PAYLOAD).map(|b| (b + i) as u8));
    stream.write_all(&request)?;
    let mut answer = [0u8; PAYLOAD];
    stream.read_exact(&mut answer)?;
    if answer
        .iter()
        .enumerate()
        .any(|(b, a)| *a != ((b + i) as u8) ^ 0x5a)
    {
        bail!("wrong answer");
    }
    Ok(())
}

/// A channel as the requester holds it during a trial.
struct Acquired {
    stream: UnixStream,
    hit: bool,
    /// The rest of a broker channel, freed after the trial.
    _held: Option<(String, Peer)>,
}

impl Acquired {
    fn connected(stream: UnixStream) -> Self {
        Self {
            stream,
            hit: false,
            _held: None,
        }
    }

    fn opened(channel: Channel) -> Self {
        let Channel {
            fd,
            service,
            peer,
            prepared,
            ..
        } = channel;
        Self {
            stream: UnixStream::from(fd),
            hit: prepared,
            _held: Some((service, peer)),
        }
    }
}

/// One way of getting a channel: how to acquire one, when the next trial
/// may start (the prepared variant waits for its pushed end), and what it
/// measured.
struct Variant<'a> {
    acquire: Box<dyn FnMut() -> Result<Acquired> + 'a>,
    ready: Box<dyn FnMut() -> bool + 'a>,
    figures: Figures,
}

impl<'a> Variant<'a> {
    fn new(
        name: &'static str,
        acquire: impl FnMut() -> Result<Acquired> + 'a,
        ready: impl FnMut() -> bool + 'a,
    ) -> Self {
        Self {
            acquire: Box::new(acquire),
            ready: Box::new(ready),
            figures: Figures {
                variant: name,
                acquire: Vec::new(),
                rtt: Vec::new(),
                hits: 0,
            },
        }
    }

    /// One trial after the same settling time as every other variant's:
    /// B is asleep in epoll_wait each time, as in a real first contact.
    fn trial(&mut self, i: usize, counted: bool) -> Result<()> {
        let settled = Instant::now() + SETTLE;
        // The prepared variant's end must be out of the socket and in the
        // inbox before the requester asks (steady state); give the broker
        // up to 100 ms more if it is late.
        let late = settled + Duration::from_millis(100);
        while !(self.ready)() && Instant::now() < late {
            std::thread::sleep(Duration::from_micros(200));
        }
        if let Some(left) = settled.checked_duration_since(Instant::now()) {
            std::thread::sleep(left);
        }
        let t0 = Instant::now();
        let mut acquired = (self.acquire)()?;
        let t1 = Instant::now();
        exchange(&mut acquired.stream, i)?;
        let t2 = Instant::now();
        let hit = acquired.hit;
        drop(acquired);
        if counted {
            self.figures.acquire.push((t1 - t0).as_nanos() as u64);
            self.figures.rtt.push((t2 - t0).as_nanos() as u64);
            self.figures.hits += usize::from(hit);
        }
        Ok(())
    }
}

/// Idle time before every trial of every variant.
const SETTLE: Duration = Duration::from_micros(700);
/// Trials run in this many rounds, the variants taking turns in rotating
/// order, so a change in the machine's load reaches all of them alike.
const ROUNDS: usize = 10;

/// Runs every variant's trials interleaved: in each round each variant
/// runs its share back to back, in an order rotated every round; the first
/// round begins with [`WARMUP`] uncounted trials of each.
fn measure(variants: &mut [Variant<'_>]) -> Result<()> {
    let mut i = 0;
    for round in 0..ROUNDS {
        let mut order: Vec<usize> = (0..variants.len()).collect();
        order.rotate_left(round % variants.len());
        for index in order {
            let variant = &mut variants[index];
            let warmup = if round == 0 { WARMUP } else { 0 };
            for trial in 0..warmup + TRIALS / ROUNDS {
                variant.trial(i, trial >= warmup)?;
                i += 1;
            }
        }
    }
    for variant in variants {
        variant.figures.acquire.sort_unstable();
        variant.figures.rtt.sort_unstable();
    }
    Ok(())
}

/// One variant's figures as both tables show them (ns, and ratios to the
/// connect + accept medians).
struct Row {
    acquire_p50: u64,
    acquire_p99: u64,
    rtt_p50: u64,
    rtt_p99: u64,
    acquire_ratio: f64,
    rtt_ratio: f64,
}

impl Row {
    fn of(f: &Figures, a_acq: f64, a_rtt: f64) -> Self {
        Self {
            acquire_p50: percentile(&f.acquire, 0.5),
            acquire_p99: percentile(&f.acquire, 0.99),
            rtt_p50: percentile(&f.rtt, 0.5),
            rtt_p99: percentile(&f.rtt, 0.99),
            acquire_ratio: percentile(&f.acquire, 0.5) as f64 / a_acq,
            rtt_ratio: percentile(&f.rtt, 0.5) as f64 / a_rtt,
        }
    }
}

/// The table as the docs show it, with how and when it was made.
fn print_markdown(variants: &[&Figures], a_acq: f64, a_rtt: f64) {
    let us = |v: u64| format!("{:.2} µs", v as f64 / 1000.0);
    println!(
        "`cargo xtask bench channel --markdown`, {TRIALS} trials per variant in {ROUNDS} \
         interleaved rounds, {} µs idle before each, {PAYLOAD}-byte request and answer; \
         {}.",
        SETTLE.as_micros(),
        resonance_tests::when_and_where()
    );
    println!();
    println!(
        "| variant | hits | acquire p50 | acquire p99 | first RTT p50 | first RTT p99 | acquire / (a) | RTT / (a) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for f in variants {
        let row = Row::of(f, a_acq, a_rtt);
        println!(
            "| {} | {}/{TRIALS} | {} | {} | {} | {} | {:.3} | {:.3} |",
            f.variant,
            f.hits,
            us(row.acquire_p50),
            us(row.acquire_p99),
            us(row.rtt_p50),
            us(row.rtt_p99),
            row.acquire_ratio,
            row.rtt_ratio
        );
    }
}

fn run(dir: &Path, json: bool, markdown: bool) -> Result<()> {
    let responder = helper_bin("responder");
    let listen = dir.join("listen.sock");
    let _b_listen = spawn_ready(Command::new(&responder).arg("--listen").arg(&listen))?;
    let me = std::env::current_exe()?;
    let (sock_b, sock_c) = (dir.join("on-demand.sock"), dir.join("prepared.sock"));
    let _broker_b = Killed(
        Command::new(&me)
            .arg("--role")
            .arg(&sock_b)
            .arg("2.0")
            .spawn()?,
    );
    let _broker_c = Killed(
        Command::new(&me)
            .arg("--role")
            .arg(&sock_c)
            .arg("0.3")
            .spawn()?,
    );
    wait_socket(&sock_b)?;
    wait_socket(&sock_c)?;
    let _b_on_demand = spawn_ready(
        Command::new(&responder)
            .arg("--socket")
            .arg(&sock_b)
            .args(["--service", "b"]),
    )?;
    let _b_prepared = spawn_ready(
        Command::new(&responder)
            .arg("--socket")
            .arg(&sock_c)
            .args(["--service", "b"]),
    )?;
    let client_b = Client::connect_to(&sock_b, "bench")?;
    let client_c = Client::connect_to(&sock_c, "bench")?;

    let mut variants = [
        Variant::new(
            "connect_accept",
            || Ok(Acquired::connected(UnixStream::connect(&listen)?)),
            || true,
        ),
        Variant::new(
            "broker_on_demand",
            || Ok(Acquired::opened(client_b.open("b")?)),
            || true,
        ),
        Variant::new(
            "broker_prepared",
            || Ok(Acquired::opened(client_c.open("b")?)),
            || client_c.prepared("b") > 0,
        ),
    ];
    measure(&mut variants)?;
    let [a, b, c] = variants.map(|v| v.figures);
    let a_acq = percentile(&a.acquire, 0.5) as f64;
    let a_rtt = percentile(&a.rtt, 0.5) as f64;
    if markdown {
        print_markdown(&[&a, &b, &c], a_acq, a_rtt);
        return Ok(());
    }
    if json {
        for f in [&a, &b, &c] {
            println!(
                "{{\"variant\":\"{}\",\"trials\":{TRIALS},\"hits\":{},\"acquire_p50_ns\":{},\"acquire_p99_ns\":{},\"rtt_p50_ns\":{},\"rtt_p99_ns\":{}}}",
                f.variant,
                f.hits,
                percentile(&f.acquire, 0.5),
                percentile(&f.acquire, 0.99),
                percentile(&f.rtt, 0.5),
                percentile(&f.rtt, 0.99)
            );
        }
        return Ok(());
    }
    println!(
        "{TRIALS} trials per variant in {ROUNDS} interleaved rounds, {} µs idle before each, \
         {PAYLOAD}-byte request and answer",
        SETTLE.as_micros()
    );
    println!(
        "{:<18} {:>6} {:>12} {:>12} {:>12} {:>12} {:>9} {:>9}",
        "variant",
        "hits",
        "acq p50 µs",
        "acq p99 µs",
        "rtt p50 µs",
        "rtt p99 µs",
        "acq/(a)",
        "rtt/(a)"
    );
    for f in [&a, &b, &c] {
        let us = |v: u64| v as f64 / 1000.0;
        let row = Row::of(f, a_acq, a_rtt);
        println!(
            "{:<18} {:>6} {:>12.2} {:>12.2} {:>12.2} {:>12.2} {:>9.3} {:>9.3}",
            f.variant,
            f.hits,
            us(row.acquire_p50),
            us(row.acquire_p99),
            us(row.rtt_p50),
            us(row.rtt_p99),
            row.acquire_ratio,
            row.rtt_ratio
        );
    }
    let acq_ratio = percentile(&c.acquire, 0.5) as f64 / a_acq;
    let rtt_ratio = percentile(&c.rtt, 0.5) as f64 / a_rtt;
    println!(
        "targets: (c) acquire p50 <= 0.1 x (a): {:.3} {}; (c) rtt p50 <= 0.92 x (a): {:.3} {}",
        acq_ratio,
        if acq_ratio <= 0.1 { "met" } else { "NOT met" },
        rtt_ratio,
        if rtt_ratio <= 0.92 { "met" } else { "NOT met" }
    );
    Ok(())
}
