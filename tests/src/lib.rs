//! Shared pieces of resonance's integration tests and benchmarks.
//!
//! [`observe`] runs real traffic (child processes) under a freshly loaded
//! observer and returns what it saw; [`traffic_bin`] finds the helper binary
//! that generates that traffic; [`fork_child`] runs two halves of an
//! exchange in two real processes.

use std::{
    path::PathBuf,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use anyhow::{Result, bail};
use resonance::{
    observer::{Observer, ObserverOptions},
    report::InteractionRecord,
};

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
    match Observer::start(&ObserverOptions::default()) {
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
/// the running executable (`target/*/traffic` for both benchmarks in
/// `target/*/` and test binaries in `target/*/deps/`).
pub fn traffic_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("RESONANCE_TRAFFIC_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("traffic"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from("traffic"))
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
