//! The channel broker against real client processes (the resonance-client
//! examples): policy denials, budgets, TTL revocation and bad input. The
//! broker runs in this process so its descriptors can be counted.

use std::{
    io::{Read, Write},
    os::{
        fd::AsFd,
        unix::{fs::PermissionsExt, net::UnixStream, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use resonance::{
    config::BrokerSettings,
    handout::{Broker, BrokerMetrics, BrokerView},
};
use resonance_client::{
    proto::{Message, code},
    wire,
};
use resonance_tests::{Reaped, serial, wait_for, write_until_full};
use serde_json::Value;

struct InProcessBroker {
    path: PathBuf,
    dir: PathBuf,
    metrics: BrokerMetrics,
    view: BrokerView,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for InProcessBroker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A scratch folder every user can enter (the denial tests run clients as
/// nobody), holding copies of the example binaries nobody can execute.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("resonance-broker-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a scratch folder");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod scratch");
    for name in ["requester", "responder"] {
        std::fs::copy(example(name), dir.join(name)).expect("copying an example binary");
    }
    dir
}

/// An example binary, built by cargo as a binary of this crate.
fn example(name: &str) -> PathBuf {
    resonance_tests::helper_bin(name)
}

fn start_broker(name: &str, tweak: impl FnOnce(&mut BrokerSettings)) -> InProcessBroker {
    let dir = scratch(name);
    let mut settings = BrokerSettings {
        socket: dir.join("broker.sock"),
        mode: "0666".into(),
        ttl: Duration::from_secs(2),
        ..BrokerSettings::default()
    };
    tweak(&mut settings);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let broker = match Broker::bind(&settings, &prometheus::Registry::new()) {
                Ok(broker) => broker,
                Err(error) => panic!("binding the broker: {error}"),
            };
            let _ = ready_tx.send((broker.metrics(), broker.view()));
            tokio::select! {
                _ = broker.run() => {}
                _ = stop_rx => {}
            }
        });
    });
    let (metrics, view) = ready_rx.recv().expect("the broker did not start");
    InProcessBroker {
        path: dir.join("broker.sock"),
        dir,
        metrics,
        view,
        stop: Some(stop_tx),
        thread: Some(thread),
    }
}

impl InProcessBroker {
    fn responder(&self, service: &str) -> Reaped {
        let mut child = Command::new(self.dir.join("responder"))
            .arg("--socket")
            .arg(&self.path)
            .args(["--service", service])
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the responder");
        let mut line = [0u8; 6];
        let stdout = child.stdout.as_mut().expect("responder stdout");
        stdout
            .read_exact(&mut line)
            .expect("the responder did not get ready");
        assert_eq!(&line, b"ready\n");
        drop(child.stdout.take());
        Reaped(child)
    }

    fn requester(&self, args: &[&str], uid: Option<u32>) -> std::process::Output {
        let mut command = Command::new(self.dir.join("requester"));
        command.arg("--socket").arg(&self.path).args(args);
        if let Some(uid) = uid {
            command.uid(uid).gid(uid);
        }
        command.output().expect("running the requester")
    }
}

fn summary(output: &std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "requester failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("bad summary {stdout:?}: {e}"))
}

fn total(vec: &prometheus::IntCounterVec) -> u64 {
    BrokerMetrics::total(vec)
}

fn open_fds() -> usize {
    fd_targets().len()
}

/// What each of this process's descriptors points at, sorted.
fn fd_targets() -> Vec<String> {
    let mut targets: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|entry| {
                    std::fs::read_link(entry.path())
                        .map_or_else(|_| "?".to_owned(), |t| t.display().to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    targets.sort();
    targets
}

/// The descriptor count once it holds still for 200 ms (what an earlier
/// test left behind may still be closing).
fn settled_fds() -> Vec<String> {
    let mut last = fd_targets();
    for _ in 0..25 {
        std::thread::sleep(Duration::from_millis(200));
        let now = fd_targets();
        if now.len() == last.len() {
            return now;
        }
        last = now;
    }
    last
}

#[test]
fn another_uid_cannot_take_or_open_a_service_and_each_denial_is_counted() {
    let _serial = serial();
    let broker = start_broker("policy", |_| {});
    let _responder = broker.responder("responder");
    let nobody = Command::new(broker.dir.join("responder"))
        .arg("--socket")
        .arg(&broker.path)
        .args(["--service", "responder"])
        .uid(65534)
        .gid(65534)
        .output()
        .expect("running a responder as nobody");
    let stderr = String::from_utf8_lossy(&nobody.stderr);
    assert_eq!(nobody.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("may not register service \"responder\""),
        "{stderr}"
    );
    assert_eq!(total(&broker.metrics.denials), 1);

    let opener = broker.requester(&["--count", "1"], Some(65534));
    let stderr = String::from_utf8_lossy(&opener.stderr);
    assert_eq!(opener.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("may not open channels"), "{stderr}");
    assert_eq!(total(&broker.metrics.denials), 2);

    // The owner's own uid is still served.
    let ok = summary(&broker.requester(&["--count", "5", "--interval-ms", "1"], None));
    assert_eq!(ok["verified"], 5);
}

#[test]
fn over_budget_preparations_are_skipped_and_clients_are_served_on_demand() {
    let _serial = serial();
    let broker = start_broker("budget", |s| s.max_idle = 0);
    let _responder = broker.responder("responder");
    let out = summary(&broker.requester(&["--count", "40", "--interval-ms", "10"], None));
    assert_eq!(out["verified"], 40);
    assert_eq!(out["hits"], 0);
    assert_eq!(out["misses"], 40);
    assert!(
        total(&broker.metrics.skipped) > 0,
        "the predictor never asked for a channel"
    );
    assert_eq!(total(&broker.metrics.created), 40);
}

#[test]
fn unused_channels_expire_and_are_revoked_but_held_ones_are_not() {
    let _serial = serial();
    let broker = start_broker("ttl", |s| s.ttl = Duration::from_millis(150));
    let _responder = broker.responder("responder");
    // Every channel is held twice as long as the TTL before it is used:
    // a revoked one would fail the exchange.
    let out = summary(&broker.requester(
        &[
            "--count",
            "30",
            "--interval-ms",
            "20",
            "--hold-ms",
            "300",
            "--linger-ms",
            "1500",
            "--warmup",
            "0",
        ],
        None,
    ));
    assert_eq!(out["verified"], 30);
    assert!(out["hits"].as_u64() > Some(0), "{out}");
    let m = &broker.metrics;
    assert!(total(&m.revocations) > 0, "nothing expired");
    assert!(total(&m.waste) > 0, "nothing counted as waste");
    assert!(
        out["revoked"].as_u64() > Some(0),
        "the requester was never told: {out}"
    );
    assert_eq!(total(&m.hits) + total(&m.misses), 30);
    assert!(total(&m.waste) + total(&m.hits) <= total(&m.created));
}

/// Connects, optionally says Hello, sends `bytes` (with a descriptor if
/// asked) and returns the error code the broker answered, after checking
/// it then closed the connection.
fn rejected_with(path: &Path, hello: bool, bytes: &[u8], with_fd: bool) -> u16 {
    let stream = UnixStream::connect(path).expect("connecting");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reader = wire::FrameReader::new();
    if hello {
        wire::send(stream.as_fd(), &Message::Hello { name: "bad".into() }, None).expect("hello");
        let (welcome, _) = reader.read_frame(stream.as_fd()).expect("welcome");
        assert!(matches!(welcome, Message::Welcome { .. }), "{welcome:?}");
    }
    let (read_end, _write_end) = std::io::pipe().expect("pipe");
    let fd = with_fd.then(|| read_end.as_fd());
    wire::send_raw(stream.as_fd(), bytes, fd).expect("sending");
    let (answer, _) = reader.read_frame(stream.as_fd()).expect("an error frame");
    let Message::Error { code, .. } = answer else {
        panic!("expected an error, got {answer:?}")
    };
    let mut rest = Vec::new();
    let closed = (&stream).read_to_end(&mut rest).map(|_| rest.is_empty());
    assert!(
        matches!(closed, Ok(true)),
        "the broker kept the connection open"
    );
    code
}

/// Opening a service nobody serves fails that open, with its request id,
/// and nothing else: the same client goes on to open one that is served
/// (it used to lose its whole connection).
#[test]
fn an_open_of_an_unknown_service_fails_only_that_open() {
    let _serial = serial();
    let broker = start_broker("unknown", |_| {});
    let _responder = broker.responder("responder");
    let client = resonance_client::Client::connect_to(&broker.path, "asker").expect("connecting");
    match client.open("nobody-serves-this") {
        Err(resonance_client::ClientError::Refused { code, message }) => {
            assert_eq!(code, code::UNKNOWN_SERVICE, "{message}");
            assert!(message.contains("nobody-serves-this"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let channel = client
        .open("responder")
        .expect("the next open on the same connection");
    assert!(!channel.prepared);
}

#[test]
fn bad_input_closes_only_that_connection_and_leaks_no_descriptor() {
    let _serial = serial();
    let broker = start_broker("bad", |_| {});
    let _responder = broker.responder("responder");
    let warm = summary(&broker.requester(&["--count", "3", "--interval-ms", "1"], None));
    assert_eq!(warm["verified"], 3);
    let before_targets = settled_fds();
    let before = before_targets.len();

    // A Register whose string length runs past the frame.
    let mut garbage = b"\x10\x00\x00\x00\x01\x02\x00\x00garbage!\xff\xff\xff\xff".to_vec();
    garbage[4] = resonance_client::proto::VERSION;
    assert_eq!(
        rejected_with(&broker.path, false, &garbage, false),
        code::MALFORMED
    );
    garbage[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        rejected_with(&broker.path, true, &garbage, false),
        code::TOO_LARGE
    );
    let mut wrong_version = Message::Hello { name: "x".into() }.encode();
    wrong_version[4] = 9;
    assert_eq!(
        rejected_with(&broker.path, false, &wrong_version, false),
        code::VERSION
    );
    let claimed = Message::Claimed { channel: 1 }.encode();
    assert_eq!(
        rejected_with(&broker.path, true, &claimed, true),
        code::UNEXPECTED_FDS
    );
    assert_eq!(
        rejected_with(&broker.path, false, &claimed, false),
        code::PROTOCOL
    );
    // Vanishing mid-handshake: half a Hello, then gone.
    {
        let mut stream = UnixStream::connect(&broker.path).expect("connecting");
        stream
            .write_all(
                &Message::Hello {
                    name: "gone".into(),
                }
                .encode()[..5],
            )
            .expect("half");
    }

    // Everyone else is still served.
    let after_bad = summary(&broker.requester(&["--count", "10", "--interval-ms", "1"], None));
    assert_eq!(after_bad["verified"], 10);
    assert!(total(&broker.metrics.rejected) >= 5);
    let settled = wait_for(Duration::from_secs(10), || {
        (open_fds() == before).then_some(())
    });
    assert!(
        settled.is_some(),
        "descriptors: {before} before, {} after\nbefore: {before_targets:?}\nafter: {:?}",
        open_fds(),
        fd_targets()
    );
}

#[test]
fn recurring_opens_hit_prepared_channels_and_the_observer_names_both_services() {
    let _serial = serial();
    let broker = start_broker("e2e", |_| {});
    let mut out = Value::Null;
    let records = resonance_tests::observe(|| {
        let _responder = broker.responder("responder");
        out = summary(&broker.requester(
            &["--count", "300", "--interval-ms", "25", "--warmup", "30"],
            None,
        ));
        Ok(())
    });
    assert_eq!(out["verified"], 300, "{out}");
    let hits = out["hits_after_warmup"].as_f64().unwrap_or(0.0);
    let opens = out["opens_after_warmup"].as_f64().unwrap_or(1.0);
    assert!(
        hits / opens >= 0.9,
        "hit ratio {} after warm-up: {out}",
        hits / opens
    );
    let sent = out["bytes_sent"]
        .as_u64()
        .expect("bytes_sent in the summary");
    let received = out["bytes_received"]
        .as_u64()
        .expect("bytes_received in the summary");
    let bytes = |src: &str, dst: &str| -> u64 {
        records
            .iter()
            .filter(|r| {
                r.src_comm == src && r.dst_comm.as_deref() == Some(dst) && r.kind == "unix_stream"
            })
            .map(|r| r.bytes)
            .sum()
    };
    assert_eq!(
        bytes("requester", "responder"),
        sent,
        "requester -> responder: {} of {sent}",
        bytes("requester", "responder")
    );
    assert_eq!(
        bytes("responder", "requester"),
        received,
        "responder -> requester: {} of {received}",
        bytes("responder", "requester")
    );
    assert!(total(&broker.metrics.hits) >= 270);
}

/// A writer floods each pipe it gets with the same burst, finds it full
/// and reports that; each next channel for the pair is larger, until the
/// burst fits and the writer no longer blocks. Pre-creation is off so each
/// open is planned right after the previous report.
#[test]
fn a_writer_that_fills_its_pipe_gets_larger_ones_until_it_stops_blocking() {
    use resonance_client::{ChannelKind, ChannelUsage, Client, Want};
    let _serial = serial();
    let broker = start_broker("flood", |s| {
        s.default_capacity = 4096;
        s.nonblocking = true;
        s.threshold = 2.0;
    });
    let responder = Client::connect_to(&broker.path, "flood-db").expect("responder connects");
    responder.register("flood-db").expect("registering");
    let requester = Client::connect_to(&broker.path, "flood-web").expect("requester connects");
    const BURST: usize = 16 << 10;
    let want = Want {
        kind: Some(ChannelKind::Pipe),
        burst: 0,
    };
    let mut history = Vec::new();
    // Nobody reads: the responder's ends wait in its queue, so the pipes
    // keep a reader and writes only ever stop at a full buffer.
    let mut held = Vec::new();
    for _ in 0..8 {
        let channel = requester
            .open_on_demand("flood-db", want)
            .expect("opening on demand");
        let written = write_until_full(&channel.fd, BURST);
        let blocked = written < BURST;
        history.push((channel.config.capacity, blocked));
        requester
            .report(
                &channel,
                ChannelUsage {
                    bytes: written as u64,
                    max_fill: written as u32,
                    writer_blocked: blocked,
                },
            )
            .expect("reporting");
        held.push(channel);
        if !blocked {
            break;
        }
    }
    assert_eq!(history.first(), Some(&(4096, true)), "{history:?}");
    assert!(
        history.windows(2).all(|w| w[1].0 > w[0].0),
        "each channel after a blocked writer is larger: {history:?}"
    );
    let &(capacity, blocked) = history.last().expect("at least one channel");
    assert!(!blocked && capacity as usize >= BURST, "{history:?}");
    assert_eq!(
        broker
            .metrics
            .adjustments
            .with_label_values(&["flood-web", "flood-db", "capacity", "up"])
            .get(),
        history.len() as u64 - 1,
        "one capacity adjustment per blocked writer: {history:?}"
    );
    // What `resonance explain` shows: the decision in force and its reason,
    // once the last (fire-and-forget) report has arrived.
    let reports = history.len() as u64;
    let snapshot = wait_for(Duration::from_secs(10), || {
        broker
            .view
            .pair("flood-web", "flood-db")
            .filter(|s| s.reports == reports)
    })
    .expect("the broker never got every report");
    assert_eq!(snapshot.capacity, Some(capacity));
    let reason = snapshot.capacity_reason.unwrap_or_default();
    assert!(reason.contains("blocked"), "{reason}");
    assert_eq!(snapshot.created, history.len() as u64);
    assert_eq!(snapshot.last_writer_blocked, Some(false));
}

/// Adaptation bounds that cannot hold are refused at start, not clamped
/// into something nobody configured.
#[test]
fn inverted_threshold_bounds_are_refused() {
    // Serial like the others: its runtime's descriptors would otherwise
    // show up in the fd count of the leak test running beside it.
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("resonance-broker-{}-bounds", std::process::id()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for (min, max) in [(0.9, 0.5), (-0.1, 0.5), (0.3, 1.5)] {
        let settings = BrokerSettings {
            socket: dir.join("broker.sock"),
            threshold_min: min,
            threshold_max: max,
            ..BrokerSettings::default()
        };
        let bound = runtime
            .block_on(async { Broker::bind(&settings, &prometheus::Registry::new()).map(drop) });
        let error = bound.expect_err("inverted or out-of-range bounds");
        assert!(error.to_string().contains("threshold_min"), "{error}");
        assert!(
            !settings.socket.exists(),
            "a refused broker left its socket"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A periodic pattern that stops: the broker keeps preparing the channels
/// the model still expects from the period, they expire unused, and within
/// eleven seconds of the stop the waste has fallen, to nothing or under a
/// risen threshold.
#[test]
fn a_pattern_that_stops_wastes_less_and_less() {
    let _serial = serial();
    // A fixed threshold, where each pair adapts its own margin (under the
    // waste budget the budget is the one control).
    let broker = start_broker("stop", |s| {
        s.ttl = Duration::from_millis(200);
        s.threshold = 0.5;
        s.waste_budget = 0.0;
    });
    let _responder = broker.responder("responder");
    const OPENS: u64 = 30;
    let requester = {
        let path = broker.path.clone();
        let binary = broker.dir.join("requester");
        std::thread::spawn(move || {
            Command::new(binary)
                .arg("--socket")
                .arg(&path)
                .args(["--count", "30", "--interval-ms", "300", "--warmup", "0"])
                // Stays connected, doing nothing, after the pattern stops.
                .args(["--linger-ms", "12000"])
                .output()
                .expect("running the requester")
        })
    };
    let m = &broker.metrics;
    let stopped = wait_for(Duration::from_secs(30), || {
        (total(&m.hits) + total(&m.misses) >= OPENS).then(std::time::Instant::now)
    })
    .expect("the requester's opens were never all served");
    let at_stop = broker
        .view
        .pair("requester", "responder")
        .expect("the pair's feedback")
        .threshold
        .unwrap_or(0.0);
    let waste_at = |after: Duration| {
        std::thread::sleep((stopped + after).saturating_duration_since(std::time::Instant::now()));
        total(&m.waste)
    };
    let w0 = total(&m.waste);
    let w3 = waste_at(Duration::from_secs(3));
    let w8 = waste_at(Duration::from_secs(8));
    let w11 = waste_at(Duration::from_secs(11));
    let snapshot = broker
        .view
        .pair("requester", "responder")
        .expect("the pair's feedback");
    let output = requester.join().expect("requester thread");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let early = w3 - w0;
    let late = w11 - w8;
    assert!(
        early > 0,
        "the stopped pattern wasted nothing at first: {snapshot:?}"
    );
    // Waste per second in the last three seconds is below the first three's.
    assert!(
        late < early,
        "waste did not fall: {early} then {late}; {snapshot:?}"
    );
    // Either the model stopped expecting the pair (one channel per TTL at
    // most since a second goes only to bursts, so a few expiries) or the
    // pair's margin rose: the waste has stopped or the threshold is up.
    let threshold = snapshot.threshold.unwrap_or(0.0);
    assert!(
        late == 0 || threshold > at_stop,
        "still wasting ({late} in 8-11 s) at an unchanged threshold {at_stop}: {snapshot:?}"
    );
    println!(
        "stopped pattern: waste {early} in the first 3 s, {late} in 8-11 s; threshold {at_stop:.2} -> {threshold:.2} ({:?})",
        snapshot.threshold_reason
    );
}

/// Label sets of a pair family and the value of the `_other` one.
fn label_sets(vec: &prometheus::IntCounterVec) -> (usize, u64) {
    use prometheus::core::Collector;
    let metrics: Vec<_> = vec
        .collect()
        .into_iter()
        .flat_map(|family| family.get_metric().to_vec())
        .collect();
    let other = metrics
        .iter()
        .filter(|m| m.get_label().iter().all(|l| l.value() == "_other"))
        .map(|m| m.get_counter().get_value() as u64)
        .sum();
    (metrics.len(), other)
}

#[test]
fn pairs_beyond_the_caps_fold_into_other_and_old_pair_state_is_forgotten() {
    use resonance_client::{Client, Want};
    let _serial = serial();
    const PAIRS: usize = 8;
    let broker = start_broker("caps", |s| {
        s.threshold = 2.0;
        s.metric_pairs = 3;
        s.max_pairs = 4;
    });
    let responder = Client::connect_to(&broker.path, "caps-db").expect("responder connects");
    responder.register("caps-db").expect("registering");
    let mut held = Vec::new();
    for n in 0..PAIRS {
        let requester =
            Client::connect_to(&broker.path, &format!("caps-r{n}")).expect("requester connects");
        for _ in 0..2 {
            let channel = requester
                .open_on_demand("caps-db", Want::default())
                .expect("opening on demand");
            held.push(channel);
        }
    }
    let m = &broker.metrics;
    // Three pairs keep their labels; the other five share `_other`, two
    // opens each.
    assert_eq!(label_sets(&m.misses), (4, 2 * (PAIRS as u64 - 3)));
    assert_eq!(label_sets(&m.created), (4, 2 * (PAIRS as u64 - 3)));
    assert_eq!(total(&m.misses), 2 * PAIRS as u64);
    // Per-pair state keeps the four most recent pairs.
    assert_eq!(broker.view.pairs(), 4);
    assert!(broker.view.pair("caps-r0", "caps-db").is_none());
    assert!(broker.view.pair("caps-r3", "caps-db").is_none());
    assert!(broker.view.pair("caps-r4", "caps-db").is_some());
    assert!(broker.view.pair("caps-r7", "caps-db").is_some());
}

/// A pair's second open is a hit on a fresh broker: right after its first
/// open the model has no timing for it, and a fresh host's chance for a
/// new pair (one in twelve, until its own new pairs show how they recur)
/// clears the waste budget's starting threshold (its floor, 0.02).
#[test]
fn a_new_pairs_second_open_finds_a_prepared_channel() {
    use resonance_client::Client;
    let _serial = serial();
    let broker = start_broker("second", |_| {});
    let responder = Client::connect_to(&broker.path, "second-db").expect("responder connects");
    responder.register("second-db").expect("registering");
    let requester = Client::connect_to(&broker.path, "second-web").expect("requester connects");
    let first = requester.open("second-db").expect("first open");
    assert!(
        !first.prepared,
        "nothing could be prepared before the first open"
    );
    // The broker prepares within a pass (every few ms); the push needs a
    // moment to reach the requester's inbox.
    std::thread::sleep(Duration::from_millis(300));
    let second = requester.open("second-db").expect("second open");
    assert!(second.prepared, "the second open was served on demand");
    // The client tells the broker of its claims in the background.
    let counted = wait_for(Duration::from_secs(5), || {
        (total(&broker.metrics.hits) == 1).then_some(())
    });
    assert!(counted.is_some(), "the broker never counted the hit");
}
