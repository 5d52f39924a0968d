//! Real traffic for the integration tests and benchmarks: each subcommand
//! moves a known number of bytes over one kind of channel between two real
//! processes, so the tests can check the observer's figures exactly.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::{
        fd::AsRawFd,
        unix::net::{UnixDatagram, UnixListener, UnixStream},
    },
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
        // dgram-send-to PATH COUNT SIZE sendto|sendmsg: the client without
        // connect, the address on every datagram (`@name`: abstract)
        "dgram-send-to" => dgram_send_to(arg(1)?, number(2)?, number(3)?, arg(4)?),
        // tcp-fork CHILD_TO_PARENT PARENT_TO_CHILD [LISTEN_IP CONNECT_IP]:
        // the parent listens on LISTEN_IP (127.0.0.1, or ::1, or :: for a
        // dual-stack listener), the child connects to CONNECT_IP
        "tcp-fork" => tcp_fork(
            number(1)?,
            number(2)?,
            args.get(3).map_or("127.0.0.1", String::as_str),
            args.get(4).map_or("127.0.0.1", String::as_str),
        ),
        // mmsg-fork BATCHES BATCH SIZE: the child sends BATCHES sendmmsg
        // calls of BATCH SIZE-byte datagrams over a Unix datagram
        // socketpair; the parent takes them with recvmmsg
        "mmsg-fork" => mmsg_fork(number(1)?, number(2)?, number(3)?),
        // splice-relay BYTES: the child writes BYTES into pipe A; the parent
        // splices A into pipe B; the child reads B (BYTES at most ~120 KiB:
        // the two pipes hold what is in flight)
        "splice-relay" => splice_relay(number(1)?),
        // tee-relay BYTES: the child writes BYTES (at most 64 KiB) into pipe
        // A; the parent tees A into pipe B, then reads A; the child reads B
        "tee-relay" => tee_relay(number(1)?),
        // sendfile-socket BYTES: the parent sendfiles a file of BYTES into
        // a Unix stream socketpair; the child reads it
        "sendfile-socket" => sendfile_socket(number(1)?),
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
        // fd-retire: descriptors freed (close, dup2, exec) right after
        // writes and reads the probes may still hold in their descriptor
        // cache (see `fd_retire`)
        "fd-retire" => fd_retire(),
        // write-fd FD COUNT SIZE: COUNT writes of SIZE bytes into the
        // inherited descriptor FD
        "write-fd" => write_fd(number(1)?, number(2)?, number(3)?),
        // stdin-reader CHUNK DELAY_US: reads stdin to EOF in CHUNK-byte
        // reads, pausing DELAY_US after each, and prints the bytes read,
        // its pipe's capacity (F_GETPIPE_SZ) first and at its largest, and
        // that of a new pipe made at EOF
        "stdin-reader" => stdin_reader(number(1)?, number(2)?),
        // pipesz SIZE PROGRAM ARGS...: sets its stdout pipe's capacity and
        // execs PROGRAM (what util-linux 2.39's pipesz does)
        "pipesz" => pipesz(number(1)?, &args[2..]),
        // write-then-close BYTES CHUNK SLEEP_MS: writes BYTES to stdout in
        // CHUNK-byte writes, closes it, reopens fd 1 on /dev/null and
        // lives SLEEP_MS more
        "write-then-close" => write_then_close(number(1)?, number(2)?, number(3)?),
        // pipe-capacity: prints the capacity of a new pipe
        "pipe-capacity" => {
            let (reader, _writer) = std::io::pipe()?;
            println!("{}", pipe_capacity(reader.as_raw_fd())?);
            Ok(())
        }
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

/// A Unix address: a path, or an abstract name for `@name`.
fn unix_address(path: &str) -> Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    Ok(match path.strip_prefix('@') {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name)?,
        None => std::os::unix::net::SocketAddr::from_pathname(path)?,
    })
}

fn dgram_server(path: &str, count: u64, size: u64) -> Result<()> {
    if !path.starts_with('@') {
        let _ = std::fs::remove_file(path);
    }
    let socket =
        UnixDatagram::bind_addr(&unix_address(path)?).with_context(|| format!("binding {path}"))?;
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

fn dgram_send_to(path: &str, count: u64, size: u64, how: &str) -> Result<()> {
    let socket = UnixDatagram::unbound().context("socket")?;
    let address = unix_address(path)?;
    let datagram = vec![b'd'; size as usize];
    for _ in 0..count {
        match how {
            "sendto" => {
                socket.send_to_addr(&datagram, &address).context("sendto")?;
            }
            "sendmsg" => send_msg_to(&socket, &datagram, path)?,
            other => bail!("dgram-send-to: {other} is neither sendto nor sendmsg"),
        }
    }
    Ok(())
}

/// One datagram through sendmsg with `msg_name` set, as sd_notify sends.
fn send_msg_to(socket: &UnixDatagram, datagram: &[u8], path: &str) -> Result<()> {
    // SAFETY: zeroed sockaddr_un is valid; the path is copied within its
    // bounds below.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let (bytes, start) = match path.strip_prefix('@') {
        Some(name) => (name.as_bytes(), 1),
        None => (path.as_bytes(), 0),
    };
    if start + bytes.len() >= address.sun_path.len() {
        bail!("{path} is too long for a Unix address");
    }
    for (slot, byte) in address.sun_path[start..].iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    let length = std::mem::size_of::<libc::sa_family_t>() + start + bytes.len();
    let mut vector = libc::iovec {
        iov_base: datagram.as_ptr() as *mut libc::c_void,
        iov_len: datagram.len(),
    };
    // SAFETY: zeroed msghdr is valid; every pointer set below outlives the
    // call.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_name = (&raw mut address).cast();
    header.msg_namelen = length as libc::socklen_t;
    header.msg_iov = &raw mut vector;
    header.msg_iovlen = 1;
    // SAFETY: a valid socket and a header whose buffers are alive.
    if unsafe { libc::sendmsg(socket.as_raw_fd(), &header, 0) } < 0 {
        bail!("sendmsg: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn tcp_fork(child_to_parent: u64, parent_to_child: u64, listen: &str, connect: &str) -> Result<()> {
    let listen: std::net::IpAddr = listen.parse().context("the listen address")?;
    let connect: std::net::IpAddr = connect.parse().context("the connect address")?;
    let listener = TcpListener::bind((listen, 0)).with_context(|| format!("binding {listen}"))?;
    let address = std::net::SocketAddr::new(connect, listener.local_addr()?.port());
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

fn mmsg_fork(batches: u64, batch: u64, size: u64) -> Result<()> {
    let (parent_end, child_end) = UnixDatagram::pair().context("socketpair")?;
    let batch = batch as usize;
    let size = size as usize;
    // One vector of `batch` messages over `batch` buffers, for either side.
    fn vector(buffers: &mut [Vec<u8>]) -> (Vec<libc::iovec>, Vec<libc::mmsghdr>) {
        let mut iovecs: Vec<libc::iovec> = buffers
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let messages = iovecs
            .iter_mut()
            .map(|iov| {
                // SAFETY: an all-zero msghdr is a valid empty header.
                let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
                header.msg_iov = iov;
                header.msg_iovlen = 1;
                libc::mmsghdr {
                    msg_hdr: header,
                    msg_len: 0,
                }
            })
            .collect();
        (iovecs, messages)
    }
    fork_child(
        || {
            let mut buffers = vec![vec![b'm'; size]; batch];
            for _ in 0..batches {
                let (_iovecs, mut messages) = vector(&mut buffers);
                let mut sent = 0;
                while sent < batch {
                    // SAFETY: `messages` points at live headers and buffers.
                    let n = unsafe {
                        libc::sendmmsg(
                            child_end.as_raw_fd(),
                            messages[sent..].as_mut_ptr(),
                            (batch - sent) as u32,
                            0,
                        )
                    };
                    if n < 0 {
                        return Err(std::io::Error::last_os_error().into());
                    }
                    sent += n as usize;
                }
            }
            Ok(())
        },
        || {
            let mut buffers = vec![vec![0u8; size + 1]; batch];
            let mut left = batches as usize * batch;
            while left > 0 {
                let (_iovecs, mut messages) = vector(&mut buffers);
                let want = left.min(batch);
                // SAFETY: as above; MSG_WAITFORONE returns once one came.
                let n = unsafe {
                    libc::recvmmsg(
                        parent_end.as_raw_fd(),
                        messages.as_mut_ptr(),
                        want as u32,
                        libc::MSG_WAITFORONE as _,
                        std::ptr::null_mut(),
                    )
                };
                if n < 0 {
                    return Err(std::io::Error::last_os_error().into());
                }
                left -= n as usize;
            }
            Ok(())
        },
    )
}

/// pipe2(O_CLOEXEC): (read end, write end).
fn pipe() -> Result<(std::fs::File, std::fs::File)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into a live array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe2: {}", std::io::Error::last_os_error());
    }
    use std::os::fd::FromRawFd;
    // SAFETY: both descriptors are new and ours alone.
    Ok(unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    })
}

fn read_exactly(mut from: &std::fs::File, bytes: u64) -> Result<()> {
    let mut buffer = vec![0u8; bytes as usize];
    from.read_exact(&mut buffer)?;
    Ok(())
}

fn splice_relay(bytes: u64) -> Result<()> {
    let (a_read, mut a_write) = pipe()?;
    let (b_read, b_write) = pipe()?;
    fork_child(
        || {
            a_write.write_all(&vec![b's'; bytes as usize])?;
            read_exactly(&b_read, bytes)
        },
        || {
            // First a move the kernel declines (flags it does not know), as
            // programs that try a move and fall back to read/write see one
            // (busybox's cat calling sendfile from a pipe on 5.10): the
            // observer must not count it as the channel's error.
            // SAFETY: as below; the kernel checks the flags first.
            let declined = unsafe {
                libc::splice(
                    a_read.as_raw_fd(),
                    std::ptr::null_mut(),
                    b_write.as_raw_fd(),
                    std::ptr::null_mut(),
                    1,
                    u32::MAX,
                )
            };
            let error = std::io::Error::last_os_error();
            if declined != -1 || error.raw_os_error() != Some(libc::EINVAL) {
                bail!("splice with unknown flags gave {declined} ({error}), not EINVAL");
            }
            let mut moved = 0;
            while moved < bytes {
                // SAFETY: splice between two live pipe descriptors.
                let n = unsafe {
                    libc::splice(
                        a_read.as_raw_fd(),
                        std::ptr::null_mut(),
                        b_write.as_raw_fd(),
                        std::ptr::null_mut(),
                        (bytes - moved) as usize,
                        0,
                    )
                };
                if n <= 0 {
                    bail!("splice: {}", std::io::Error::last_os_error());
                }
                moved += n as u64;
            }
            Ok(())
        },
    )
}

fn tee_relay(bytes: u64) -> Result<()> {
    let (a_read, mut a_write) = pipe()?;
    let (b_read, b_write) = pipe()?;
    fork_child(
        || {
            a_write.write_all(&vec![b't'; bytes as usize])?;
            read_exactly(&b_read, bytes)
        },
        || {
            // tee copies from the start of what A holds, without consuming:
            // wait until all of it is there, copy it once, then consume A.
            loop {
                let mut pending: libc::c_int = 0;
                // SAFETY: FIONREAD writes one int.
                unsafe { libc::ioctl(a_read.as_raw_fd(), libc::FIONREAD, &mut pending) };
                if pending as u64 >= bytes {
                    break;
                }
                sleep(Duration::from_millis(5));
            }
            // SAFETY: tee between two live pipe descriptors.
            let n =
                unsafe { libc::tee(a_read.as_raw_fd(), b_write.as_raw_fd(), bytes as usize, 0) };
            if n as u64 != bytes {
                bail!("tee moved {n}: {}", std::io::Error::last_os_error());
            }
            read_exactly(&a_read, bytes)
        },
    )
}

fn sendfile_socket(bytes: u64) -> Result<()> {
    let path = std::env::temp_dir().join(format!("resonance-sendfile-{}", std::process::id()));
    std::fs::write(&path, vec![b'f'; bytes as usize])?;
    let file = std::fs::File::open(&path)?;
    std::fs::remove_file(&path)?;
    let (parent_end, mut child_end) = UnixStream::pair().context("socketpair")?;
    fork_child(
        || {
            let mut buffer = vec![0u8; bytes as usize];
            child_end.read_exact(&mut buffer)?;
            Ok(())
        },
        || {
            let mut sent = 0;
            while sent < bytes {
                // SAFETY: sendfile from a live file into a live socket; the
                // kernel keeps the file offset (null offset).
                let n = unsafe {
                    libc::sendfile(
                        parent_end.as_raw_fd(),
                        file.as_raw_fd(),
                        std::ptr::null_mut(),
                        (bytes - sent) as usize,
                    )
                };
                if n <= 0 {
                    bail!("sendfile: {}", std::io::Error::last_os_error());
                }
                sent += n as u64;
            }
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

/// One process, whose descriptors are freed just after use, while the
/// probes may still keep their counts in the descriptor cache: pipe A, ten
/// 100-byte writes and reads, then both ends closed; pipe B, ten 50-byte
/// writes and reads, then pipe C's write end dup2'd onto B's write end and
/// ten 30-byte writes and reads through C; pipe D, ten 20-byte writes, then
/// an exec of `write-fd` with D's write end, which writes ten more (the
/// exec voids every cache entry of the process at once).
fn fd_retire() -> Result<()> {
    use std::os::unix::process::CommandExt;
    let ten = |size: usize, write: &mut dyn Write, read: &mut dyn Read| -> Result<()> {
        let mut buffer = vec![0u8; size];
        for _ in 0..10 {
            write.write_all(&buffer)?;
            read.read_exact(&mut buffer)?;
        }
        Ok(())
    };
    {
        let (mut a_read, mut a_write) = std::io::pipe()?;
        ten(100, &mut a_write, &mut a_read)?;
    }
    let (mut b_read, mut b_write) = std::io::pipe()?;
    ten(50, &mut b_write, &mut b_read)?;
    let (mut c_read, c_write) = std::io::pipe()?;
    // SAFETY: dup2 onto a descriptor `b_write` owns; from here on it is
    // pipe C's write end, closed once when `b_write` drops.
    if unsafe { libc::dup2(c_write.as_raw_fd(), b_write.as_raw_fd()) } < 0 {
        bail!("dup2: {}", std::io::Error::last_os_error());
    }
    drop(c_write);
    ten(30, &mut b_write, &mut c_read)?;
    let (d_read, mut d_write) = std::io::pipe()?;
    for _ in 0..10 {
        d_write.write_all(&[b'd'; 20])?;
    }
    for fd in [d_read.as_raw_fd(), d_write.as_raw_fd()] {
        // SAFETY: fcntl on descriptors we own: both must survive the exec
        // (the read end keeps the pipe writable).
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
            bail!("clearing FD_CLOEXEC: {}", std::io::Error::last_os_error());
        }
    }
    let error = std::process::Command::new(std::env::current_exe()?)
        .args(["write-fd", &d_write.as_raw_fd().to_string(), "10", "20"])
        .exec();
    bail!("exec write-fd: {error}")
}

fn write_fd(fd: u64, count: u64, size: u64) -> Result<()> {
    use std::os::fd::FromRawFd;
    let fd = i32::try_from(fd).context("descriptor out of range")?;
    // SAFETY: the descriptor was inherited for this purpose and is used
    // only through this file.
    let mut file = std::fs::File::from(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
    let buffer = vec![b'w'; usize::try_from(size).context("size too large")?];
    for _ in 0..count {
        file.write_all(&buffer)?;
    }
    Ok(())
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

/// `F_GETPIPE_SZ` of a pipe descriptor.
fn pipe_capacity(fd: i32) -> Result<u64> {
    // SAFETY: fcntl on a descriptor number; a bad one gets EBADF.
    let size = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
    if size < 0 {
        bail!("F_GETPIPE_SZ: {}", std::io::Error::last_os_error());
    }
    Ok(size as u64)
}

fn stdin_reader(chunk: u64, delay_us: u64) -> Result<()> {
    let first = pipe_capacity(0)?;
    let mut largest = first;
    let mut buffer = vec![0u8; usize::try_from(chunk).context("chunk too large")?];
    let mut stdin = std::io::stdin().lock();
    let mut total = 0u64;
    loop {
        let n = match stdin.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error.into()),
        };
        total += n as u64;
        largest = largest.max(pipe_capacity(0)?);
        if delay_us > 0 {
            sleep(Duration::from_micros(delay_us));
        }
    }
    // A new pipe made while stdin's is still held: what the user's next
    // pipe gets with this one's pages counted.
    let (fresh, _writer) = std::io::pipe()?;
    let fresh = pipe_capacity(fresh.as_raw_fd())?;
    println!("bytes={total} first={first} largest={largest} fresh={fresh}");
    Ok(())
}

fn pipesz(size: u64, command: &[String]) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let size = libc::c_int::try_from(size).context("size too large")?;
    // SAFETY: fcntl on our stdout.
    if unsafe { libc::fcntl(1, libc::F_SETPIPE_SZ, size) } < 0 {
        bail!("F_SETPIPE_SZ {size}: {}", std::io::Error::last_os_error());
    }
    let (program, rest) = command
        .split_first()
        .context("pipesz SIZE PROGRAM ARGS...")?;
    let error = std::process::Command::new(program).args(rest).exec();
    bail!("exec {program}: {error}")
}

fn write_then_close(bytes: u64, chunk: u64, sleep_ms: u64) -> Result<()> {
    let buffer = vec![b'w'; usize::try_from(chunk).context("chunk too large")?];
    {
        let mut stdout = std::io::stdout().lock();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk) as usize;
            stdout.write_all(&buffer[..n])?;
            left -= n as u64;
        }
        stdout.flush()?;
    }
    let null = std::fs::File::open("/dev/null")?;
    // SAFETY: dup2 onto our own fd 1, closing the pipe end it held.
    if unsafe { libc::dup2(null.as_raw_fd(), 1) } < 0 {
        bail!("dup2: {}", std::io::Error::last_os_error());
    }
    sleep(Duration::from_millis(sleep_ms));
    Ok(())
}
