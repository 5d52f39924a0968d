//! Shared pieces of resonance's integration tests and benchmarks.
//!
//! [`observe`] runs real traffic (child processes) under a freshly loaded
//! observer and returns what it saw; [`traffic_bin`] finds the helper binary
//! that generates that traffic; [`fork_child`] runs two halves of an
//! exchange in two real processes; [`servers`] starts real PostgreSQL and
//! redis servers.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use resonance::{
    observer::{Observer, ObserverOptions},
    report::InteractionRecord,
};

pub mod agent;
pub mod servers;

/// One observer at a time: tests that measure latency must not share the
/// two cores with another test's traffic.
static SERIAL: Mutex<()> = Mutex::new(());

/// Takes the test-wide lock, surviving a poisoned one (a failed test must
/// not fail the others).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts an observer, or fails loudly: these tests exist to exercise the
/// real kernel, and a machine that cannot load the probes (no root, no BPF,
/// no BTF) must fail them, never skip them.
pub fn start_observer() -> Observer {
    start_observer_with(&ObserverOptions::default())
}

/// [`start_observer`] with options of the test's own (an idle gap, latency
/// left out).
pub fn start_observer_with(options: &ObserverOptions) -> Observer {
    match Observer::start(options) {
        Ok(observer) => observer,
        Err(error) => panic!(
            "the eBPF observer could not start, so this real-kernel test cannot run: {error}"
        ),
    }
}

/// Runs `traffic` (which must wait for its processes) under a new observer
/// and returns every interaction seen. Events are drained while the traffic
/// runs, as the agent does, so short-lived processes are attributed while
/// their /proc entries still exist.
pub fn observe(traffic: impl FnOnce() -> Result<()> + Send) -> Vec<InteractionRecord> {
    let mut observer = start_observer();
    let outcome = std::thread::scope(|scope| {
        let worker = scope.spawn(traffic);
        while !worker.is_finished() {
            observer.drain_events();
            std::thread::sleep(Duration::from_millis(1));
        }
        worker.join()
    });
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(error)) => panic!("generating traffic failed: {error:#}"),
        Err(_) => panic!("the traffic thread panicked"),
    }
    observer
        .interactions()
        .iter()
        .map(InteractionRecord::from)
        .collect()
}

/// The `traffic` helper binary: `RESONANCE_TRAFFIC_BIN` when set (inside a
/// VM guest the build tree does not exist), else the one cargo built next to
/// the running executable.
pub fn traffic_bin() -> PathBuf {
    helper_bin("traffic")
}

/// A helper binary of this crate (`traffic`, `requester`, `responder`):
/// `RESONANCE_<NAME>_BIN` when set, else the one cargo built.
pub fn helper_bin(name: &str) -> PathBuf {
    built_binary(
        name,
        &format!("RESONANCE_{}_BIN", name.to_ascii_uppercase()),
    )
}

/// The `resonance` binary: `RESONANCE_BIN` when set, else the one cargo
/// built next to the running executable.
pub fn resonance_bin() -> PathBuf {
    built_binary("resonance", "RESONANCE_BIN")
}

/// `target/*/NAME` for both benchmarks in `target/*/` and test binaries in
/// `target/*/deps/` (`variable` overrides it); panics with a clear message
/// when it is not built.
fn built_binary(name: &str, variable: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(variable) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the {name} binary is not built next to {}; set {variable}",
                exe.display()
            )
        })
}

/// A plain HTTP GET on loopback; returns (status code, body).
pub fn http_get(address: std::net::SocketAddr, path_and_query: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path_and_query} HTTP/1.0\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// Polls `check` every 100 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A child process killed (SIGKILL) and reaped when dropped, so a failing
/// test leaves nothing running.
pub struct Reaped(pub std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Forks: the child runs `child` and exits (0 on success), the parent runs
/// `parent` and then waits for the child. Fails if either half failed.
pub fn fork_child(
    child: impl FnOnce() -> Result<()>,
    parent: impl FnOnce() -> Result<()>,
) -> Result<()> {
    // SAFETY: the helper binaries that call this are single-threaded, so the
    // child may run arbitrary code after fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork failed: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        // Die with the parent: a killed parent must not leave the child
        // blocked forever on a pipe whose other end it still holds itself.
        // SAFETY: prctl with these arguments only sets a flag on this process.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        let code = match child() {
            Ok(()) => 0,
            Err(error) => {
                eprintln!("child failed: {error:#}");
                1
            }
        };
        // SAFETY: leaving the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let parent_result = parent();
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    parent_result?;
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("child process failed (status {status})");
    }
    Ok(())
}

/// Writes `total` bytes in page-sized writes into `fd` (a pipe's write
/// end), made non-blocking, until the pipe is full; returns how many went
/// in.
pub fn write_until_full(fd: &std::os::fd::OwnedFd, total: usize) -> usize {
    use std::{io::Write, os::fd::AsRawFd};
    // SAFETY: fcntl on a descriptor the caller owns.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    let mut file = std::fs::File::from(fd.try_clone().expect("dup of the write end"));
    let page = [0x5au8; 4096];
    let mut written = 0;
    while written < total {
        match file.write(&page[..page.len().min(total - written)]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("writing into the channel: {e}"),
        }
    }
    written
}

/// Spawns a server that prints `ready` once it listens, and waits for
/// that line.
pub fn spawn_ready(mut command: Command, what: &str) -> Result<Child> {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("{what} did not get ready: {line:?}");
    }
    Ok(child)
}

/// "made YYYY-MM-DD on kernel K (N CPUs, load L)": the line a benchmark's
/// Markdown table carries, so a table in the docs says when and where it
/// was measured.
pub fn when_and_where() -> String {
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "made {date} on kernel {} ({} CPUs, load {})",
        kernel.trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace().next().unwrap_or("?")
    )
}
