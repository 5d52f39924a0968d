//! The broker's rules driven directly, without a socket: decoded messages
//! in, each connection's queue out (real pipes and socketpairs are made,
//! since that is what the queue carries).

use super::*;

use tokio::sync::mpsc::UnboundedReceiver;

fn core(tweak: impl FnOnce(&mut BrokerSettings)) -> Core {
    let mut settings = BrokerSettings::default();
    tweak(&mut settings);
    let metrics = BrokerMetrics::new(&Registry::new(), 100).expect("metrics");
    Core::new(&settings, metrics, 1 << 20)
}

/// A connection as the I/O layer would add it: this process's
/// credentials, and the queue the writer task would send.
fn connect(core: &mut Core) -> (u64, UnboundedReceiver<Out>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let cred = Cred {
        pid: std::process::id(),
        uid: 0,
        gid: 0,
    };
    (core.add_connection(cred, tx), rx)
}

/// Everything queued for a connection so far.
fn sent(rx: &mut UnboundedReceiver<Out>) -> Vec<(Message, bool)> {
    let mut out = Vec::new();
    while let Ok(item) = rx.try_recv() {
        if let Out::Frame(message, fd) = item {
            out.push((message, fd.is_some()));
        }
    }
    out
}

fn hello(core: &mut Core, name: &str) -> (u64, UnboundedReceiver<Out>) {
    let (id, mut rx) = connect(core);
    core.handle(
        id,
        Message::Hello {
            name: name.to_owned(),
        },
    )
    .unwrap_or_else(|reject| panic!("Hello refused: {}", reject.message));
    let welcome = sent(&mut rx);
    assert!(
        matches!(welcome.as_slice(), [(Message::Welcome { client, .. }, false)] if *client == id),
        "{welcome:?}"
    );
    (id, rx)
}

/// A connection that said Hello and registered `service` (answered Ok).
fn serving(core: &mut Core, service: &str) -> (u64, UnboundedReceiver<Out>) {
    let (id, mut rx) = hello(core, service);
    core.handle(
        id,
        Message::Register {
            req: 1,
            service: service.to_owned(),
        },
    )
    .expect("register");
    assert!(matches!(
        sent(&mut rx).as_slice(),
        [(Message::Ok { req: 1 }, false)]
    ));
    (id, rx)
}

#[test]
fn the_first_message_must_be_a_single_hello() {
    let mut core = core(|_| {});
    let (id, _rx) = connect(&mut core);
    let early = core.handle(
        id,
        Message::Register {
            req: 1,
            service: "db".into(),
        },
    );
    assert!(early.is_err_and(|r| r.code == code::PROTOCOL && r.message.contains("Hello")));
    let (id, _rx) = hello(&mut core, "web");
    let twice = core.handle(id, Message::Hello { name: "web".into() });
    assert!(twice.is_err_and(|r| r.message.contains("twice")));
}

/// An open is answered with the requester's end and the responder gets
/// the other; an open of a service nobody serves fails alone.
#[test]
fn an_open_hands_both_ends_and_an_unknown_service_fails_only_that_open() {
    let mut core = core(|s| s.threshold = 2.0);
    let (_db, mut db_rx) = serving(&mut core, "db");
    let (web, mut web_rx) = hello(&mut core, "web");
    core.handle(
        web,
        Message::Open {
            req: 7,
            service: "nosuch".into(),
            want: Want::default(),
        },
    )
    .expect("an unknown service is no protocol error");
    let answer = sent(&mut web_rx);
    assert!(
        matches!(answer.as_slice(), [(Message::Error { req: 7, code, .. }, false)] if *code == code::UNKNOWN_SERVICE),
        "{answer:?}"
    );
    core.handle(
        web,
        Message::Open {
            req: 8,
            service: "db".into(),
            want: Want::default(),
        },
    )
    .expect("open");
    let to_web = sent(&mut web_rx);
    let to_db = sent(&mut db_rx);
    assert!(
        matches!(
            to_web.as_slice(),
            [(
                Message::Channel {
                    req: 8,
                    role: Role::Requester,
                    ..
                },
                true
            )]
        ),
        "{to_web:?}"
    );
    assert!(
        matches!(
            to_db.as_slice(),
            [(
                Message::Channel {
                    req: 0,
                    role: Role::Responder,
                    ..
                },
                true
            )]
        ),
        "{to_db:?}"
    );
    let feedback = core
        .feedback
        .get(&("web".into(), "db".into()))
        .expect("the pair");
    assert_eq!((feedback.created, feedback.misses), (1, 1));
}

/// After a few opens the pair is due: a pass pushes a prepared channel
/// (request 0) to both, a claim counts a hit, and a requester that leaves
/// with one unclaimed counts it as waste.
#[test]
fn a_pass_prepares_a_claim_is_a_hit_and_a_departure_wastes_what_is_left() {
    let mut core = core(|_| {});
    let (_db, mut db_rx) = serving(&mut core, "db");
    let (web, mut web_rx) = hello(&mut core, "web");
    for req in 10..13 {
        core.handle(
            web,
            Message::Open {
                req,
                service: "db".into(),
                want: Want::default(),
            },
        )
        .expect("open");
        std::thread::sleep(Duration::from_millis(20));
    }
    sent(&mut web_rx);
    sent(&mut db_rx);
    core.pass();
    let pushed = sent(&mut web_rx);
    let prepared: Vec<u64> = pushed
        .iter()
        .filter_map(|(message, fd)| match message {
            Message::Channel {
                channel, req: 0, ..
            } if *fd => Some(*channel),
            _ => None,
        })
        .collect();
    assert!(!prepared.is_empty(), "nothing prepared: {pushed:?}");
    assert_eq!(
        sent(&mut db_rx).len(),
        prepared.len(),
        "the responder gets each other end"
    );
    core.handle(
        web,
        Message::Claimed {
            channel: prepared[0],
        },
    )
    .expect("claim");
    let pair = ("web".to_owned(), "db".to_owned());
    assert_eq!(core.feedback.get(&pair).map(|f| f.hits), Some(1));
    core.pass();
    let ready = core.idle.values().filter(|idle| idle.pair == pair).count();
    assert!(ready >= 1, "a replacement after the hit");
    core.remove_connection(web);
    assert_eq!(
        core.feedback.get(&pair).map(|f| f.waste),
        Some(ready as u64),
        "what was left is wasted"
    );
    assert!(core.idle.is_empty());
}
