//! A requester: opens a channel to a service in a recurring pattern, sends
//! one request on it, checks the answer and closes it.
//!
//! `requester --socket BROKER [--service responder] [--count 200]
//! [--interval-ms 30] [--bytes 256] [--hold-ms 0] [--warmup 20]`
//!
//! Each request is a little-endian u32 length and `--bytes` bytes; the
//! responder answers with the bytes XORed with 0x5a. `--hold-ms` waits
//! between opening and using each channel. Prints one JSON line:
//! `{"opens":..,"hits":..,"misses":..,"hits_after_warmup":..,
//! "opens_after_warmup":..,"verified":..,"bytes_sent":..,"bytes_received":..}`
//! and exits non-zero if any exchange failed. `--linger-ms` keeps the
//! connection open after the last exchange (so unused pushed ends expire
//! and are revoked while it listens).

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::PathBuf,
    time::Duration,
};

use resonance_client::Client;

fn main() {
    if let Err(error) = run() {
        eprintln!("requester: {error}");
        std::process::exit(3);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut socket = None;
    let mut service = "responder".to_owned();
    let (mut count, mut interval_ms, mut bytes, mut hold_ms, mut warmup) =
        (200u64, 30u64, 256usize, 0u64, 20u64);
    let mut linger_ms = 0u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--socket" => socket = Some(PathBuf::from(value)),
            "--service" => service = value,
            "--count" => count = value.parse()?,
            "--interval-ms" => interval_ms = value.parse()?,
            "--bytes" => bytes = value.parse()?,
            "--hold-ms" => hold_ms = value.parse()?,
            "--warmup" => warmup = value.parse()?,
            "--linger-ms" => linger_ms = value.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let client = match socket {
        Some(path) => Client::connect_to(&path, &resonance_client::client::default_name())?,
        None => Client::connect()?,
    };
    let (mut hits_after, mut opens_after, mut verified) = (0u64, 0u64, 0u64);
    let (mut sent, mut received) = (0u64, 0u64);
    for i in 0..count {
        let channel = client.open(&service)?;
        if i >= warmup {
            opens_after += 1;
            hits_after += u64::from(channel.prepared);
        }
        if hold_ms > 0 {
            std::thread::sleep(Duration::from_millis(hold_ms));
        }
        // A socketpair end: a UnixStream owns it from here on.
        let mut stream = UnixStream::from(channel.fd);
        let payload: Vec<u8> = (0..bytes).map(|b| (b as u64 + i) as u8).collect();
        let mut request = (bytes as u32).to_le_bytes().to_vec();
        request.extend_from_slice(&payload);
        stream.write_all(&request)?;
        sent += request.len() as u64;
        let mut answer = vec![0u8; bytes];
        stream.read_exact(&mut answer)?;
        received += answer.len() as u64;
        if answer.iter().zip(&payload).any(|(a, p)| *a != p ^ 0x5a) {
            return Err(format!("answer {i} does not match its request").into());
        }
        verified += 1;
        drop(stream);
        std::thread::sleep(Duration::from_millis(interval_ms));
    }
    std::thread::sleep(Duration::from_millis(linger_ms));
    let stats = client.stats();
    println!(
        "{{\"opens\":{count},\"hits\":{},\"misses\":{},\"revoked\":{},\"hits_after_warmup\":{hits_after},\"opens_after_warmup\":{opens_after},\"verified\":{verified},\"bytes_sent\":{sent},\"bytes_received\":{received}}}",
        stats.hits, stats.misses, stats.revoked
    );
    Ok(())
}
