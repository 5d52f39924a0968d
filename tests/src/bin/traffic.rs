//! Real traffic for the integration tests and benchmarks: each subcommand
//! moves a known number of bytes over one kind of channel between two real
//! processes, so the tests can check the observer's figures exactly.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::net::{UnixDatagram, UnixListener, UnixStream},
    thread::sleep,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use resonance_tests::fork_child;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> Result<&str> {
        args.get(i)
            .map(String::as_str)
            .with_context(|| format!("missing argument {i}; see the source for usage"))
    };
    let number = |i: usize| -> Result<u64> {
        arg(i)?
            .parse()
            .with_context(|| format!("argument {i} is not a number"))
    };
    match arg(0)? {
        // unix-server PATH REQUESTS REQUEST_BYTES REPLY_BYTES DELAY_MS
        "unix-server" => unix_server(arg(1)?, number(2)?, number(3)?, number(4)?, number(5)?),
        // unix-client PATH REQUESTS REQUEST_BYTES REPLY_BYTES
        "unix-client" => unix_client(arg(1)?, number(2)?, number(3)?, number(4)?),
        // socketpair-fork CHILD_TO_PARENT PARENT_TO_CHILD
        "socketpair-fork" => socketpair_fork(number(1)?, number(2)?),
        // dgram-server PATH COUNT SIZE / dgram-client PATH COUNT SIZE
        "dgram-server" => dgram_server(arg(1)?, number(2)?, number(3)?),
        "dgram-client" => dgram_client(arg(1)?, number(2)?, number(3)?),
        // tcp-fork CHILD_TO_PARENT PARENT_TO_CHILD
        "tcp-fork" => tcp_fork(number(1)?, number(2)?),
        // connect-missing PATH
        "connect-missing" => connect_missing(arg(1)?),
        // write-file PATH BYTES (e.g. into a FIFO)
        "write-file" => write_file(arg(1)?, number(2)?),
        // pipe-pingpong ROUNDS: 1-byte round trips over two pipes
        "pipe-pingpong" => pipe_pingpong(number(1)?),
        // unix-pingpong ROUNDS: 1-byte round trips over a Unix stream
        // socketpair
        "unix-pingpong" => unix_pingpong(number(1)?),
        // pipe-stream BYTES: 64 KiB writes through one pipe
        "pipe-stream" => pipe_stream(number(1)?),
        // pipe-burst CAPACITY BURST WRITE: BURST bytes in WRITE-byte writes
        // into a pipe of CAPACITY bytes whose reader starts 100 ms late
        "pipe-burst" => pipe_burst(number(1)?, number(2)?, number(3)?),
        // pipe-paced COUNT INTERVAL_MS DELAY_MS: COUNT 1,000-byte writes
        // INTERVAL_MS apart; the reader takes each DELAY_MS after it was
        // written (0: a reader already waiting, like cat)
        "pipe-paced" => pipe_paced(number(1)?, number(2)?, number(3)?),
        // pipe-saturated TOTAL READ READ_MS: TOTAL bytes written in 4 KiB
        // writes as fast as the pipe takes them; the reader takes READ
        // bytes every READ_MS, so the pipe stays full
        "pipe-saturated" => pipe_saturated(number(1)?, number(2)?, number(3)?),
        // fd-reuse: descriptor numbers that change meaning (close, dup2,
        // fork), for the probes' descriptor cache; prints the forked
        // child's pid
        "fd-reuse" => fd_reuse(),
        other => bail!("unknown traffic kind {other}"),
    }
}

fn unix_server(
    path: &str,
    requests: u64,
    request_bytes: u64,
    reply_bytes: u64,
    delay_ms: u64,
) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).with_context(|| format!("binding {path}"))?;
    println!("ready");
    std::io::stdout().flush()?;
    let (mut stream, _) = listener.accept().context("accepting")?;
    let mut request = vec![0u8; request_bytes as usize];
    let reply = vec![b'r'; reply_bytes as usize];
    for _ in 0..requests {
        stream
            .read_exact(&mut request)
            .context("reading a request")?;
        sleep(Duration::from_millis(delay_ms));
        stream.write_all(&reply).context("writing a reply")?;
    }
    Ok(())
}

fn unix_client(path: &str, requests: u64, request_bytes: u64, reply_bytes: u64) -> Result<()> {
    let mut stream = UnixStream::connect(path).with_context(|| format!("connecting to {path}"))?;
    let request = vec![b'q'; request_bytes as usize];
    let mut reply = vec![0u8; reply_bytes as usize];
    for _ in 0..requests {
        stream.write_all(&request).context("writing a request")?;
        stream.read_exact(&mut reply).context("reading a reply")?;
    }
    Ok(())
}

fn socketpair_fork(child_to_parent: u64, parent_to_child: u64) -> Result<()> {
    let (mut parent_end, mut child_end) = UnixStream::pair().context("socketpair")?;
    fork_child(
        || {
            child_end.write_all(&vec![b'c'; child_to_parent as usize])?;
            let mut back = vec![0u8; parent_to_child as usize];
            child_end.read_exact(&mut back)?;
            Ok(())
        },
        || {
            let mut got = vec![0u8; child_to_parent as usize];
            parent_end.read_exact(&mut got)?;
            parent_end.write_all(&vec![b'p'; parent_to_child as usize])?;
            Ok(())
        },
    )
}

fn dgram_server(path: &str, count: u64, size: u64) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let socket = UnixDatagram::bind(path).with_context(|| format!("binding {path}"))?;
    println!("ready");
    std::io::stdout().flush()?;
    let mut buffer = vec![0u8; size as usize + 1];
    for _ in 0..count {
        socket.recv(&mut buffer).context("receiving a datagram")?;
    }
    Ok(())
}

fn dgram_client(path: &str, count: u64, size: u64) -> Result<()> {
    let socket = UnixDatagram::unbound().context("socket")?;
    socket
        .connect(path)
        .with_context(|| format!("connecting to {path}"))?;
    let datagram = vec![b'd'; size as usize];
    for _ in 0..count {
        socket.send(&datagram).context("sending a datagram")?;
    }
    Ok(())
}

fn tcp_fork(child_to_parent: u64, parent_to_child: u64) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    let address = listener.local_addr()?;
    fork_child(
        || {
            let mut stream = TcpStream::connect(address)?;
            stream.write_all(&vec![b'c'; child_to_parent as usize])?;
            let mut back = vec![0u8; parent_to_child as usize];
            stream.read_exact(&mut back)?;
            Ok(())
        },
        || {
            let (mut stream, _) = listener.accept()?;
            let mut got = vec![0u8; child_to_parent as usize];
            stream.read_exact(&mut got)?;
            stream.write_all(&vec![b'p'; parent_to_child as usize])?;
            Ok(())
        },
    )
}

fn connect_missing(path: &str) -> Result<()> {
    match UnixStream::connect(path) {
        Ok(_) => bail!("{path} unexpectedly exists"),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("connecting to {path}")),
    }
}

fn write_file(path: &str, bytes: u64) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("opening {path}"))?;
    let chunk = vec![b'f'; 65_536];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Prints the elapsed ns of the whole exchange on stdout.
fn pipe_pingpong(rounds: u64) -> Result<()> {
    let (mut to_child_r, mut to_child_w) = std::io::pipe()?;
    let (mut to_parent_r, mut to_parent_w) = std::io::pipe()?;
    let start = std::time::Instant::now();
    fork_child(
        || {
            let mut byte = [0u8; 1];
            for _ in 0..rounds {
                to_child_r.read_exact(&mut byte)?;
                to_parent_w.write_all(&byte)?;
            }
            Ok(())
        },
        || {
            let mut byte = [7u8; 1];
            for _ in 0..rounds {
                to_child_w.write_all(&byte)?;
                to_parent_r.read_exact(&mut byte)?;
            }
            Ok(())
        },
    )?;
    println!("{}", start.elapsed().as_nanos());
    Ok(())
}

/// Prints the elapsed ns of the whole exchange on stdout.
fn unix_pingpong(rounds: u64) -> Result<()> {
    let (mut parent_end, mut child_end) = UnixStream::pair().context("socketpair")?;
    let start = std::time::Instant::now();
    fork_child(
        || {
            let mut byte = [0u8; 1];
            for _ in 0..rounds {
                child_end.read_exact(&mut byte)?;
                child_end.write_all(&byte)?;
            }
            Ok(())
        },
        || {
            let mut byte = [7u8; 1];
            for _ in 0..rounds {
                parent_end.write_all(&byte)?;
                parent_end.read_exact(&mut byte)?;
            }
            Ok(())
        },
    )?;
    println!("{}", start.elapsed().as_nanos());
    Ok(())
}

/// Reads exactly `bytes` from `reader` in 64 KiB reads.
fn read_all(reader: &mut impl Read, bytes: u64) -> Result<()> {
    let mut buffer = vec![0u8; 65_536];
    let mut got = 0u64;
    while got < bytes {
        let n = reader.read(&mut buffer)?;
        if n == 0 {
            bail!("pipe closed after {got} bytes");
        }
        got += n as u64;
    }
    Ok(())
}

/// Prints the elapsed ns of the whole transfer on stdout.
fn pipe_stream(bytes: u64) -> Result<()> {
    let (mut reader, mut writer) = std::io::pipe()?;
    let start = std::time::Instant::now();
    fork_child(
        || read_all(&mut reader, bytes),
        || {
            let chunk = vec![b's'; 65_536];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                writer.write_all(&chunk[..n])?;
                left -= n as u64;
            }
            Ok(())
        },
    )?;
    println!("{}", start.elapsed().as_nanos());
    Ok(())
}

fn pipe_burst(capacity: u64, burst: u64, write: u64) -> Result<()> {
    use std::os::fd::AsRawFd;
    let (mut reader, mut writer) = std::io::pipe()?;
    let capacity = libc::c_int::try_from(capacity).context("capacity too large")?;
    // SAFETY: fcntl on a pipe fd we own.
    if unsafe { libc::fcntl(writer.as_raw_fd(), libc::F_SETPIPE_SZ, capacity) } < 0 {
        bail!(
            "F_SETPIPE_SZ {capacity}: {}",
            std::io::Error::last_os_error()
        );
    }
    fork_child(
        || {
            sleep(Duration::from_millis(100));
            read_all(&mut reader, burst)
        },
        || {
            let chunk = vec![b'b'; usize::try_from(write)?];
            let mut left = burst;
            while left > 0 {
                let n = left.min(write) as usize;
                writer.write_all(&chunk[..n])?;
                left -= n as u64;
            }
            Ok(())
        },
    )
}

/// One process: 1,000 bytes through its own pipe A; A's write end closed
/// and its number reused by /dev/zero (12,288 bytes read there, which must
/// not count); pipe B's write end dup2'd onto that number (777 bytes
/// written through it); then a forked child writes 333 bytes through the
/// inherited number, which the parent reads.
fn fd_reuse() -> Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let (mut a_read, mut a_write) = std::io::pipe()?;
    a_write.write_all(&[b'a'; 1000])?;
    let mut buffer = vec![0u8; 12_288];
    a_read.read_exact(&mut buffer[..1000])?;
    let number = a_write.as_raw_fd();
    drop(a_write);
    let mut zero = std::fs::File::open("/dev/zero")?;
    if zero.as_raw_fd() != number {
        bail!(
            "/dev/zero got fd {}, not the freed {number}",
            zero.as_raw_fd()
        );
    }
    zero.read_exact(&mut buffer)?;
    let (mut b_read, b_write) = std::io::pipe()?;
    // SAFETY: dup2 onto a descriptor this function owns (`zero`), which
    // from here on refers to pipe B's write end.
    if unsafe { libc::dup2(b_write.as_raw_fd(), number) } != number {
        bail!("dup2: {}", std::io::Error::last_os_error());
    }
    drop(b_write);
    // SAFETY: `number` is open (dup2 above) and owned by `zero`, which is
    // forgotten so it is closed once, by `through`.
    let mut through = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(number) });
    std::mem::forget(zero);
    through.write_all(&[b'b'; 777])?;
    b_read.read_exact(&mut buffer[..777])?;
    fork_child(
        || {
            through.write_all(&[b'c'; 333])?;
            Ok(())
        },
        || {
            b_read.read_exact(&mut buffer[..333])?;
            Ok(())
        },
    )
}

/// Writes `count` messages of 1,000 bytes `interval_ms` apart into a pipe
/// whose reader takes each one `delay_ms` after it was due: a known wait.
fn pipe_paced(count: u64, interval_ms: u64, delay_ms: u64) -> Result<()> {
    let (mut reader, mut writer) = std::io::pipe()?;
    let start = std::time::Instant::now();
    let due = move |i: u64| start + Duration::from_millis(i * interval_ms);
    fork_child(
        || {
            let mut message = [0u8; 1000];
            for i in 0..count {
                if delay_ms > 0 {
                    let at = due(i) + Duration::from_millis(delay_ms);
                    sleep(at.saturating_duration_since(std::time::Instant::now()));
                }
                reader.read_exact(&mut message)?;
            }
            Ok(())
        },
        || {
            let message = [b'p'; 1000];
            for i in 0..count {
                sleep(due(i).saturating_duration_since(std::time::Instant::now()));
                writer.write_all(&message)?;
            }
            Ok(())
        },
    )
}

/// A writer that keeps the pipe full and a reader that takes `read` bytes
/// every `read_ms`: each byte waits about the pipe's size over the
/// reader's rate, however long the transfer runs.
fn pipe_saturated(total: u64, read: u64, read_ms: u64) -> Result<()> {
    let (mut reader, mut writer) = std::io::pipe()?;
    fork_child(
        || {
            let mut buffer = vec![0u8; usize::try_from(read)?];
            let mut got = 0;
            while got < total {
                sleep(Duration::from_millis(read_ms));
                let want = (total - got).min(read) as usize;
                reader.read_exact(&mut buffer[..want])?;
                got += want as u64;
            }
            Ok(())
        },
        || {
            let chunk = [b's'; 4096];
            let mut left = total;
            while left > 0 {
                let n = left.min(4096) as usize;
                writer.write_all(&chunk[..n])?;
                left -= n as u64;
            }
            Ok(())
        },
    )
}
