//! The tokio client against a scripted broker: hits, misses, incoming
//! ends, revocations, all driven on the runtime (no blocking pool).

#![cfg(feature = "tokio")]

mod common;

use std::io::{Read, Write};

use common::FakeBroker;
use resonance_client::{AsyncClient, Role, Want, proto::Message};

async fn connect(test: &str) -> (FakeBroker, AsyncClient, common::Conn) {
    let broker = FakeBroker::new(test);
    let accepting = broker.accept_later();
    let client = AsyncClient::connect_to(&broker.path(), "tester")
        .await
        .expect("connecting");
    let conn = blocking(move || accepting.join().expect("accept thread")).await;
    (broker, client, conn)
}

/// Runs blocking fake-broker steps off the runtime's worker.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking step")
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_end_is_a_hit_and_its_claim_reaches_the_broker() {
    let (_broker, client, mut conn) = connect("async-hit").await;
    let mut peer = conn.push(7, 0, Role::Requester, "b");
    eventually("the pushed end reaches the inbox", || {
        client.prepared("b") == 1
    })
    .await;
    let channel = client.open("b", Want::default()).await.expect("open");
    assert!(channel.prepared);
    assert_eq!(channel.id, 7);
    assert_eq!(client.stats().hits, 1);
    let (claim, _conn) = blocking(move || (conn.recv(), conn)).await;
    assert_eq!(claim, Message::Claimed { channel: 7 });
    let mut stream = std::os::unix::net::UnixStream::from(channel.fd);
    stream.write_all(b"ping").expect("write");
    let mut got = [0u8; 4];
    peer.read_exact(&mut got).expect("read");
    assert_eq!(&got, b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_asks_the_broker_and_awaits_the_end() {
    let (_broker, client, mut conn) = connect("async-miss").await;
    let broker_side = tokio::task::spawn_blocking(move || {
        let req = match conn.recv() {
            Message::Open { req, service, .. } => {
                assert_eq!(service, "c");
                req
            }
            other => panic!("expected Open, got {other:?}"),
        };
        let peer = conn.push(8, req, Role::Requester, "c");
        (conn, peer)
    });
    let channel = client.open("c", Want::default()).await.expect("open");
    let _kept = broker_side.await.expect("broker side");
    assert!(!channel.prepared);
    assert_eq!(channel.id, 8);
    assert_eq!(client.stats().misses, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_is_answered_and_incoming_ends_are_accepted() {
    let (_broker, client, mut conn) = connect("async-incoming").await;
    let broker_side = tokio::task::spawn_blocking(move || {
        let req = match conn.recv() {
            Message::Register { req, service } => {
                assert_eq!(service, "me");
                req
            }
            other => panic!("expected Register, got {other:?}"),
        };
        conn.send(&Message::Ok { req }, None);
        let peer = conn.push(9, 0, Role::Responder, "me");
        (conn, peer)
    });
    client.register("me").await.expect("register");
    let channel = client.accept().await.expect("accept");
    let _kept = broker_side.await.expect("broker side");
    assert_eq!((channel.id, channel.role), (9, Role::Responder));
    assert!(client.try_incoming().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_drops_only_unused_ends() {
    let (_broker, client, mut conn) = connect("async-revoke").await;
    let unused = conn.push(10, 0, Role::Requester, "b");
    let mut used = conn.push(11, 0, Role::Requester, "b");
    used.write_all(b"x").expect("write");
    eventually("both ends arrive", || client.prepared("b") == 2).await;
    let (acks, _kept) = blocking(move || {
        conn.send(&Message::Revoke { channel: 10 }, None);
        let first = conn.recv();
        conn.send(&Message::Revoke { channel: 11 }, None);
        let second = conn.recv();
        ([first, second], (conn, unused, used))
    })
    .await;
    assert_eq!(
        acks,
        [
            Message::RevokeAck {
                channel: 10,
                dropped: true
            },
            Message::RevokeAck {
                channel: 11,
                dropped: false
            }
        ]
    );
    assert_eq!(client.prepared("b"), 1);
    assert_eq!(client.stats().revoked, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connection_fails_waiters_instead_of_hanging() {
    let (_broker, client, conn) = connect("async-closed").await;
    drop(conn);
    assert!(client.accept().await.is_none());
    assert!(client.closed().is_some());
    assert!(client.open("x", Want::default()).await.is_err());
}

#[test]
fn claims_are_flushed_on_a_runtime_without_timers() {
    // Only I/O enabled: the client must not rely on tokio's timer driver.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    let broker = FakeBroker::new("async-no-timers");
    let accepting = broker.accept_later();
    runtime.block_on(async {
        let client = AsyncClient::connect_to(&broker.path(), "tester")
            .await
            .expect("connecting");
        let broker_side = std::thread::spawn(move || {
            let mut conn = accepting.join().expect("accept thread");
            let peer = conn.push(7, 0, Role::Requester, "b");
            (conn.recv(), conn, peer)
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while client.prepared("b") == 0 {
            assert!(std::time::Instant::now() < deadline, "no pushed end");
            tokio::task::yield_now().await;
        }
        let channel = client.open("b", Want::default()).await.expect("open");
        assert!(channel.prepared);
        // The claim goes out on the flush timer while the runtime runs.
        while !broker_side.is_finished() {
            assert!(std::time::Instant::now() < deadline, "no claim");
            tokio::task::yield_now().await;
        }
        let (claim, _conn, _peer) = broker_side.join().expect("broker side");
        assert_eq!(claim, Message::Claimed { channel: 7 });
    });
}
