//! A responder: serves every channel opened to it from one epoll loop.
//!
//! Each request is a little-endian u32 length and that many bytes; the
//! answer is the same bytes XORed with 0x5a, so the requester can check both
//! directions. Two modes:
//!
//! - `responder --socket BROKER [--service NAME]`: registers NAME (default
//!   `responder`) with the broker and serves the channels it hands out;
//!   prepared ones join the epoll set as soon as they arrive, before the
//!   requester uses them.
//! - `responder --listen PATH`: a plain listening Unix socket, accepting in
//!   the same epoll loop (the baseline the broker is compared with).
//!
//! Prints `ready` on stdout once it serves; runs until killed or until its
//! broker connection ends.

use std::{
    collections::HashMap,
    io::Write,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
    os::unix::net::UnixListener,
    path::PathBuf,
};

use resonance_client::Client;

const EVENT_TOKEN: u64 = u64::MAX;

fn main() {
    if let Err(error) = run() {
        eprintln!("responder: {error}");
        std::process::exit(3);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut socket = None;
    let mut listen = None;
    let mut service = "responder".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--socket" => socket = Some(PathBuf::from(value()?)),
            "--listen" => listen = Some(PathBuf::from(value()?)),
            "--service" => service = value()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    // SAFETY: epoll_create1 returns a new descriptor or -1.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: just created and owned here.
    let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
    let mut conns: HashMap<RawFd, (OwnedFd, Vec<u8>)> = HashMap::new();
    let client;
    let listener;
    if let Some(path) = listen {
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path)?;
        l.set_nonblocking(true)?;
        add(&epoll, l.as_raw_fd(), EVENT_TOKEN)?;
        listener = Some(l);
        client = None;
    } else {
        let path = socket.ok_or("--socket or --listen is required")?;
        let c = Client::connect_to(&path, &resonance_client::client::default_name())?;
        c.register(&service)?;
        add(&epoll, c.incoming_fd().as_raw_fd(), EVENT_TOKEN)?;
        client = Some(c);
        listener = None;
    }
    println!("ready");
    std::io::stdout().flush()?;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
    loop {
        // SAFETY: events has room for 64 entries.
        let n = unsafe { libc::epoll_wait(epoll.as_raw_fd(), events.as_mut_ptr(), 64, -1) };
        if n < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error.into());
        }
        for event in &events[..n as usize] {
            let token = event.u64;
            if token == EVENT_TOKEN {
                if let Some(client) = &client {
                    while let Some(channel) = client.try_incoming() {
                        add(
                            &epoll,
                            channel.fd.as_raw_fd(),
                            channel.fd.as_raw_fd() as u64,
                        )?;
                        conns.insert(channel.fd.as_raw_fd(), (channel.fd, Vec::new()));
                    }
                    if let Some(why) = client.closed() {
                        return Err(format!("broker connection ended: {why}").into());
                    }
                }
                if let Some(listener) = &listener {
                    while let Ok((stream, _)) = listener.accept() {
                        let fd = OwnedFd::from(stream);
                        add(&epoll, fd.as_raw_fd(), fd.as_raw_fd() as u64)?;
                        conns.insert(fd.as_raw_fd(), (fd, Vec::new()));
                    }
                }
                continue;
            }
            let raw = token as RawFd;
            if !serve(&mut conns, raw) {
                // Closing the fd removes it from the epoll set.
                conns.remove(&raw);
            }
        }
    }
}

fn add(epoll: &OwnedFd, fd: RawFd, token: u64) -> std::io::Result<()> {
    let mut event = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: token,
    };
    // SAFETY: registering a live fd with our epoll instance.
    if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Reads what is there and answers every whole request; false when the
/// channel is finished (EOF or error).
fn serve(conns: &mut HashMap<RawFd, (OwnedFd, Vec<u8>)>, raw: RawFd) -> bool {
    let Some((fd, buf)) = conns.get_mut(&raw) else {
        return false;
    };
    let mut chunk = [0u8; 65536];
    // SAFETY: reading into a live buffer from a descriptor we own.
    let n = unsafe { libc::read(fd.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
    if n <= 0 {
        return false;
    }
    buf.extend_from_slice(&chunk[..n as usize]);
    while buf.len() >= 4 {
        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if buf.len() < 4 + len {
            break;
        }
        let reply: Vec<u8> = buf[4..4 + len].iter().map(|b| b ^ 0x5a).collect();
        buf.drain(..4 + len);
        if write_all(fd.as_fd(), &reply).is_err() {
            return false;
        }
    }
    true
}

fn write_all(fd: std::os::fd::BorrowedFd<'_>, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: writing from a live buffer to a descriptor we hold.
        let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}
