//! A scripted stand-in for the agent's broker: tests drive it frame by
//! frame to check what the client does with each.

#![allow(dead_code)]

use std::{
    os::{
        fd::{AsFd, OwnedFd},
        unix::net::{UnixListener, UnixStream},
    },
    path::PathBuf,
    time::Duration,
};

use resonance_client::{
    ChannelConfig, ChannelKind, Peer, Role,
    proto::Message,
    wire::{self, FrameReader},
};

/// A listening fake broker in its own directory.
pub struct FakeBroker {
    dir: PathBuf,
    listener: UnixListener,
}

impl FakeBroker {
    /// Listens in a fresh directory named after `test`.
    pub fn new(test: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("resonance-client-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the test directory");
        let listener = UnixListener::bind(dir.join("broker.sock")).expect("binding");
        Self { dir, listener }
    }

    /// Where clients connect.
    pub fn path(&self) -> PathBuf {
        self.dir.join("broker.sock")
    }

    /// Accepts one client and completes the handshake.
    pub fn accept(&self) -> Conn {
        accept_on(&self.listener)
    }

    /// [`FakeBroker::accept`] on a thread of its own, for clients that
    /// connect from the same thread.
    pub fn accept_later(&self) -> std::thread::JoinHandle<Conn> {
        let listener = self.listener.try_clone().expect("cloning the listener");
        std::thread::spawn(move || accept_on(&listener))
    }
}

fn accept_on(listener: &UnixListener) -> Conn {
    {
        let (stream, _) = listener.accept().expect("accepting");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        let mut conn = Conn {
            stream,
            reader: FrameReader::new(),
        };
        match conn.recv() {
            Message::Hello { .. } => {}
            other => panic!("expected Hello, got {other:?}"),
        }
        conn.send(
            &Message::Welcome {
                client: 1,
                pid: std::process::id(),
                uid: 0,
                gid: 0,
            },
            None,
        );
        conn
    }
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The broker's side of one client connection.
pub struct Conn {
    stream: UnixStream,
    reader: FrameReader,
}

impl Conn {
    /// The next frame from the client (fails the test after 5 s).
    pub fn recv(&mut self) -> Message {
        let (message, fd) = self
            .reader
            .read_frame(self.stream.as_fd())
            .expect("reading a frame from the client");
        assert!(fd.is_none(), "clients send no descriptors");
        message
    }

    /// Sends a frame to the client.
    pub fn send(&self, message: &Message, fd: Option<&OwnedFd>) {
        wire::send(self.stream.as_fd(), message, fd.map(|f| f.as_fd())).expect("sending");
    }

    /// Sends one end of a new socketpair as channel `id` (`req` 0: pushed
    /// ahead of time) and returns the other end.
    pub fn push(&self, id: u64, req: u64, role: Role, service: &str) -> UnixStream {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let message = Message::Channel {
            channel: id,
            req,
            role,
            service: service.to_owned(),
            peer: Peer {
                service: "peer".to_owned(),
                pid: 1,
                uid: 0,
                gid: 0,
            },
            config: ChannelConfig {
                kind: ChannelKind::Stream,
                capacity: 4096,
                nonblocking: false,
                write_size: 4096,
                flush_us: 0,
            },
        };
        self.send(&message, Some(&OwnedFd::from(theirs)));
        ours
    }
}

/// Polls `done` every millisecond for up to 5 s.
pub fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}
