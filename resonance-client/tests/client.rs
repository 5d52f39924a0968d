//! The blocking client against a scripted broker: hits, misses, incoming
//! ends, revocations, and a reader thread that sleeps while idle.

mod common;

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use common::{FakeBroker, eventually};
use resonance_client::{Client, Role, Want, proto::Message};

fn connect(test: &str) -> (FakeBroker, Client, common::Conn) {
    let broker = FakeBroker::new(test);
    let accepting = broker.accept_later();
    let client = Client::connect_to(&broker.path(), "tester").expect("connecting");
    let conn = accepting.join().expect("accept thread");
    (broker, client, conn)
}

#[test]
fn a_pushed_end_is_a_hit_and_its_claim_reaches_the_broker() {
    let (_broker, client, mut conn) = connect("hit");
    let mut peer = conn.push(7, 0, Role::Requester, "b");
    eventually("the pushed end reaches the inbox", || {
        client.prepared("b") == 1
    });
    let channel = client.open("b").expect("open");
    assert!(channel.prepared);
    assert_eq!((channel.id, channel.role), (7, Role::Requester));
    assert_eq!(channel.service, "b");
    assert_eq!(client.stats().hits, 1);
    assert_eq!(conn.recv(), Message::Claimed { channel: 7 });
    let mut stream = UnixStream::from(channel.fd);
    stream.write_all(b"ping").expect("write");
    let mut got = [0u8; 4];
    peer.read_exact(&mut got).expect("read");
    assert_eq!(&got, b"ping");
}

#[test]
fn a_miss_asks_the_broker_and_waits_for_the_end() {
    let (_broker, client, mut conn) = connect("miss");
    let opener = std::thread::spawn(move || {
        let channel = client.open_with("c", Want::default());
        (client, channel)
    });
    let req = match conn.recv() {
        Message::Open { req, service, .. } => {
            assert_eq!(service, "c");
            req
        }
        other => panic!("expected Open, got {other:?}"),
    };
    let _peer = conn.push(8, req, Role::Requester, "c");
    let (client, channel) = opener.join().expect("opener");
    let channel = channel.expect("open");
    assert!(!channel.prepared);
    assert_eq!(channel.id, 8);
    assert_eq!(client.stats().misses, 1);
}

#[test]
fn incoming_ends_are_accepted_and_signal_the_event_fd() {
    let (_broker, client, conn) = connect("incoming");
    let _peer = conn.push(9, 0, Role::Responder, "me");
    let channel = client.accept().expect("accept");
    assert_eq!((channel.id, channel.role), (9, Role::Responder));
    assert!(client.try_incoming().is_none());
}

#[test]
fn revocation_drops_only_unused_ends() {
    let (_broker, client, mut conn) = connect("revoke");
    let _unused = conn.push(10, 0, Role::Requester, "b");
    let mut used = conn.push(11, 0, Role::Requester, "b");
    // Data waiting in an end means it is in use: it must survive.
    used.write_all(b"x").expect("write");
    eventually("both ends arrive", || client.prepared("b") == 2);
    conn.send(&Message::Revoke { channel: 10 }, None);
    assert_eq!(
        conn.recv(),
        Message::RevokeAck {
            channel: 10,
            dropped: true
        }
    );
    conn.send(&Message::Revoke { channel: 11 }, None);
    assert_eq!(
        conn.recv(),
        Message::RevokeAck {
            channel: 11,
            dropped: false
        }
    );
    assert_eq!(client.prepared("b"), 1);
    assert_eq!(client.stats().revoked, 1);
}

/// The client's reader thread's `/proc/self/task/TID` folder.
fn reader_task() -> std::path::PathBuf {
    let tasks = std::fs::read_dir("/proc/self/task").expect("listing threads");
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == "resonance-clien" {
            return task.path();
        }
    }
    panic!("no reader thread");
}

/// Voluntary context switches of the client's reader thread so far.
fn reader_switches() -> u64 {
    let status = std::fs::read_to_string(reader_task().join("status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("voluntary_ctxt_switches")
}

/// CPU time the reader thread has run so far, ns (the first field of
/// `schedstat`): a thread that spins in `poll(…, 0)` switches no context
/// but shows here.
fn reader_cpu_ns() -> u64 {
    let schedstat = std::fs::read_to_string(reader_task().join("schedstat")).expect("schedstat");
    schedstat
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("schedstat run time")
}

/// How long the reader sleeps while idle in each check, and the CPU it may
/// use meanwhile: waking for a 5 ms timer 60 times costs more, spinning
/// costs the whole period.
const IDLE: Duration = Duration::from_millis(300);
const IDLE_CPU_NS: u64 = 3_000_000;

/// The reader's wake-ups and CPU time over [`IDLE`].
fn idle_cost() -> (u64, u64) {
    let (switches, cpu) = (reader_switches(), reader_cpu_ns());
    std::thread::sleep(IDLE);
    (reader_switches() - switches, reader_cpu_ns() - cpu)
}

#[test]
fn an_idle_reader_sleeps_until_the_broker_speaks_or_the_client_drops() {
    let (_broker, client, mut conn) = connect("idle");
    // Settle: the thread is in poll with no timeout.
    std::thread::sleep(Duration::from_millis(20));
    let (woke, cpu) = idle_cost();
    assert!(woke <= 2, "idle reader woke {woke} times in {IDLE:?}");
    assert!(cpu < IDLE_CPU_NS, "idle reader ran {cpu} ns in {IDLE:?}");
    // A pushed end wakes it once; it flushes claims on a timer until the
    // end is taken, then goes back to sleeping without a timeout.
    let _peer = conn.push(12, 0, Role::Requester, "b");
    eventually("the end arrives", || client.prepared("b") == 1);
    let channel = client.open("b").expect("open");
    assert!(channel.prepared);
    assert_eq!(conn.recv(), Message::Claimed { channel: 12 });
    std::thread::sleep(Duration::from_millis(20));
    let (woke, cpu) = idle_cost();
    assert!(
        woke <= 2,
        "reader woke {woke} times in {IDLE:?} after a claim"
    );
    assert!(
        cpu < IDLE_CPU_NS,
        "reader ran {cpu} ns in {IDLE:?} after a claim"
    );
    let started = Instant::now();
    drop(client);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "drop waited for the reader"
    );
}
