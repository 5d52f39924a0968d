//! A request chain for the live pipeline test: a front end asks a relay
//! over a plain Unix socket (the probes see it, the broker does not), and
//! the relay, after some work, opens a backend service through the broker.
//!
//! - `chain relay --listen PATH --broker SOCK --service NAME [--name NAME]
//!   [--work-ms N] [--summary FILE]`: accepts one connection on PATH; for every request
//!   (u32 length + bytes) it works N ms, opens NAME through the broker,
//!   sends the request on the channel (the responder example answers it
//!   XORed with 0x5a), checks the answer and acknowledges with one byte.
//!   When the front end hangs up it writes (to FILE, else stdout)
//!   `{"rounds":..,"prepared":..,"verified":..,"pattern":"0111.."}` (one
//!   digit per open: 1 when a prepared channel served it) and exits.
//! - `chain ask --connect PATH --rounds N --min-gap-ms A --max-gap-ms B
//!   [--seed S]`: sends N requests, waiting a pseudo-random gap in [A, B]
//!   ms before each, so the relay's opens follow no clock of their own.
//!
//! Prints `ready` on stdout once the relay listens.

use std::{
    io::{Read, Write},
    os::unix::net::{UnixListener, UnixStream},
    path::PathBuf,
    time::Duration,
};

use resonance_client::Client;

type Error = Box<dyn std::error::Error>;

const PAYLOAD: usize = 256;

fn main() {
    if let Err(error) = run() {
        eprintln!("chain: {error}");
        std::process::exit(3);
    }
}

struct Args {
    listen: Option<PathBuf>,
    connect: Option<PathBuf>,
    broker: Option<PathBuf>,
    service: String,
    name: Option<String>,
    summary: Option<PathBuf>,
    work_ms: u64,
    rounds: u64,
    min_gap_ms: u64,
    max_gap_ms: u64,
    seed: u64,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, Error> {
    let mut parsed = Args {
        listen: None,
        connect: None,
        broker: None,
        service: "responder".to_owned(),
        name: None,
        summary: None,
        work_ms: 50,
        rounds: 100,
        min_gap_ms: 300,
        max_gap_ms: 1000,
        seed: 1,
    };
    while let Some(arg) = args.next() {
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--listen" => parsed.listen = Some(PathBuf::from(value)),
            "--connect" => parsed.connect = Some(PathBuf::from(value)),
            "--broker" => parsed.broker = Some(PathBuf::from(value)),
            "--service" => parsed.service = value,
            "--name" => parsed.name = Some(value),
            "--summary" => parsed.summary = Some(PathBuf::from(value)),
            "--work-ms" => parsed.work_ms = value.parse()?,
            "--rounds" => parsed.rounds = value.parse()?,
            "--min-gap-ms" => parsed.min_gap_ms = value.parse()?,
            "--max-gap-ms" => parsed.max_gap_ms = value.parse()?,
            "--seed" => parsed.seed = value.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(parsed)
}

fn run() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().ok_or("usage: chain relay|ask ...")?;
    let args = parse(args)?;
    match mode.as_str() {
        "relay" => relay(&args),
        "ask" => ask(&args),
        other => Err(format!("unknown mode {other}").into()),
    }
}

fn relay(args: &Args) -> Result<(), Error> {
    let listen = args.listen.as_ref().ok_or("relay needs --listen")?;
    let broker = args.broker.as_ref().ok_or("relay needs --broker")?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(resonance_client::client::default_name);
    let client = Client::connect_to(broker, &name)?;
    let _ = std::fs::remove_file(listen);
    let listener = UnixListener::bind(listen)?;
    println!("ready");
    std::io::stdout().flush()?;
    let (mut front, _) = listener.accept()?;
    let (mut rounds, mut prepared, mut verified) = (0u64, 0u64, 0u64);
    // Which opens found a prepared channel, in order ('1') or not ('0').
    let mut pattern = String::new();
    loop {
        let mut length = [0u8; 4];
        match front.read_exact(&mut length) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(error) => return Err(error.into()),
        }
        let mut request = vec![0u8; u32::from_le_bytes(length) as usize];
        front.read_exact(&mut request)?;
        rounds += 1;
        std::thread::sleep(Duration::from_millis(args.work_ms));
        let channel = client.open(&args.service)?;
        prepared += u64::from(channel.prepared);
        pattern.push(if channel.prepared { '1' } else { '0' });
        let mut backend = UnixStream::from(channel.fd);
        backend.write_all(&length)?;
        backend.write_all(&request)?;
        let mut answer = vec![0u8; request.len()];
        backend.read_exact(&mut answer)?;
        if answer.iter().zip(&request).all(|(a, r)| *a == r ^ 0x5a) {
            verified += 1;
        }
        drop(backend);
        front.write_all(&[1])?;
    }
    let summary = format!(
        "{{\"rounds\":{rounds},\"prepared\":{prepared},\"verified\":{verified},\"pattern\":\"{pattern}\"}}\n"
    );
    match &args.summary {
        Some(path) => std::fs::write(path, summary)?,
        None => print!("{summary}"),
    }
    Ok(())
}

fn ask(args: &Args) -> Result<(), Error> {
    let connect = args.connect.as_ref().ok_or("ask needs --connect")?;
    let mut relay = UnixStream::connect(connect)?;
    let span = args.max_gap_ms.saturating_sub(args.min_gap_ms) + 1;
    let mut state = args.seed.max(1);
    for round in 0..args.rounds {
        // xorshift: reproducible gaps without a dependency.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        std::thread::sleep(Duration::from_millis(args.min_gap_ms + state % span));
        let payload: Vec<u8> = (0..PAYLOAD).map(|b| (b as u64 + round) as u8).collect();
        relay.write_all(&(PAYLOAD as u32).to_le_bytes())?;
        relay.write_all(&payload)?;
        let mut ack = [0u8; 1];
        relay.read_exact(&mut ack)?;
    }
    Ok(())
}
