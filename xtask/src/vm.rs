//! `cargo xtask vm-test`: the integration tests on real Debian kernels in
//! QEMU. [`run`] ties the parts together:
//!
//! - [`kernels`] resolves `--kernel` names to Debian packages through a
//!   private apt configuration ([`apt`]) and caches each vmlinuz;
//! - [`guest`] builds the test executables for musl and packs them, busybox
//!   and an init script into a newc image ([`initramfs`]);
//! - [`qemu`] boots each kernel with that image and reads the verdict the
//!   guest prints on its serial console.
//!
//! Kernels run one after another, or `RESONANCE_VM_JOBS` at a time; a
//! summary table ends the run and any failure makes the command fail.
//!
//! The host's `RESONANCE_*` variables (except `RESONANCE_CACHE_DIR` and the
//! `RESONANCE_VM_*` knobs of xtask) are exported to the tests in the guest.
//! So a deliberately broken run is
//! `RESONANCE_TEST_CORRUPT_OFFSET=<field> cargo xtask vm-test --expect-failure`,
//! which succeeds only if the tests ran and failed on every kernel.

mod apt;
mod guest;
mod initramfs;
mod kernels;
mod qemu;

use std::{
    fs,
    path::Path,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

pub use kernels::DEFAULT as DEFAULT_KERNELS;

use crate::{bootstrap::BuildEnv, cache};
use qemu::{Accel, Outcome, Verdict};

/// The cargo profile the guest executables are built with by default.
/// Emulated (TCG) code runs the observer tests about twice as fast optimised
/// (6.12: 72 s instead of 180 s for the 7 observer tests), which outweighs
/// the longer first build once two or more kernels run.
pub const DEFAULT_PROFILE: &str = "release";

/// How long one kernel may take by default: boot, tests and power-off. Two
/// kernels at this limit still fit `cargo xtask test` in 30 minutes.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(900);

/// What `cargo xtask vm-test` was asked to do.
pub struct Options {
    /// `--kernel` values; empty means [`DEFAULT_KERNELS`].
    pub kernels: Vec<String>,
    /// Limit for one kernel.
    pub timeout: Duration,
    /// Cargo profile of the guest executables.
    pub profile: String,
    /// Pass only if the tests run and fail on every kernel as the corrupted
    /// offset must make them (see `corruption_verdict`): the suite proves
    /// it catches a fault injected through a `RESONANCE_*` variable.
    pub expect_failure: bool,
    /// Variables set in the guest on top of the host's `RESONANCE_*` ones.
    pub guest_env: Vec<(String, String)>,
}

/// Boots each kernel and runs every integration test of `resonance-tests`
/// inside; fails if any kernel's result is not the expected one.
pub fn run(root: &Path, env: &BuildEnv, options: &Options) -> Result<()> {
    let Options {
        kernels,
        timeout,
        profile,
        expect_failure,
        guest_env,
    } = options;
    let (timeout, expect_failure) = (*timeout, *expect_failure);
    let names: Vec<&str> = if kernels.is_empty() {
        DEFAULT_KERNELS.to_vec()
    } else {
        kernels.iter().map(String::as_str).collect()
    };
    let specs = names
        .into_iter()
        .map(kernels::KernelSpec::parse)
        .collect::<Result<Vec<_>>>()?;
    let cache = cache::dir()?.join("vm");
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;

    guest::ensure_tools()?;
    qemu::ensure_installed(&cache)?;
    let kernels = kernels::ensure(&cache, &specs)?;

    let payload = guest::build(root, env, profile)?;
    if payload.tests.is_empty() {
        bail!("resonance-tests has no integration tests to run in the guest");
    }
    let image = guest::image(&payload, &cache, guest_env)?;
    // One image per clone: runs from two clones at once must not boot each
    // other's tests.
    let image_path = cache.join(format!("initramfs-{:016x}.cpio", fnv1a(root)));
    let partial = image_path.with_extension(format!("cpio.{}", std::process::id()));
    fs::write(&partial, &image).with_context(|| format!("writing {}", partial.display()))?;
    fs::rename(&partial, &image_path)
        .with_context(|| format!("moving {} into place", image_path.display()))?;
    eprintln!(
        "xtask: guest image {} ({} MiB, {} test executables)",
        image_path.display(),
        image.len() >> 20,
        payload.tests.len()
    );

    let jobs = jobs_from_env()?;
    let fallback = KvmFallback::new(Accel::detect());
    let next = AtomicUsize::new(0);
    let finished: Mutex<Vec<Option<Row>>> = Mutex::new(kernels.iter().map(|_| None).collect());
    let tests = payload.tests.len();
    thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..jobs.min(kernels.len()))
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    loop {
                        let index = next.fetch_add(1, Ordering::SeqCst);
                        let Some(kernel) = kernels.get(index) else {
                            return Ok(());
                        };
                        let boot = Boot {
                            image: &image_path,
                            timeout,
                            expect_failure,
                            tests,
                            // One guest's console is echoed as it was; several
                            // at once are told apart by their kernel's label.
                            prefix: if jobs > 1 {
                                format!("{} | ", kernel.label)
                            } else {
                                "| ".to_owned()
                            },
                        };
                        let row = boot_one(kernel, &boot, &fallback)?;
                        if let Ok(mut rows) = finished.lock() {
                            rows[index] = Some(row);
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("a guest's worker thread panicked"))??;
        }
        Ok(())
    })?;
    let rows: Vec<Row> = finished
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a guest's worker thread panicked"))?
        .into_iter()
        .flatten()
        .collect();

    eprintln!();
    eprintln!(
        "{:<14} {:<34} {:<5} {:>8}  result",
        "kernel", "package", "accel", "wall s"
    );
    for Row {
        kernel,
        accel,
        result: (_, text),
        seconds,
    } in &rows
    {
        eprintln!(
            "{:<14} {:<34} {:<5} {:>8.1}  {}",
            kernel.label,
            kernel.package,
            accel.name(),
            seconds,
            text
        );
    }
    let failed: Vec<&str> = rows
        .iter()
        .filter(|row| !row.result.0)
        .map(|row| row.kernel.label.as_str())
        .collect();
    if !failed.is_empty() {
        if expect_failure {
            bail!(
                "the suite did not fail as expected on: {}",
                failed.join(", ")
            );
        }
        bail!("VM tests failed on: {}", failed.join(", "));
    }
    Ok(())
}

/// How many guests boot at once: `RESONANCE_VM_JOBS`, default 1. A guest
/// under TCG keeps about one host core busy (its tests run one at a time),
/// so on two cores two guests at once take about half the wall time.
fn jobs_from_env() -> Result<usize> {
    parse_jobs(std::env::var("RESONANCE_VM_JOBS").ok().as_deref())
}

fn parse_jobs(value: Option<&str>) -> Result<usize> {
    match value {
        None => Ok(1),
        Some(value) => match value.trim().parse::<usize>() {
            Ok(jobs) if jobs >= 1 => Ok(jobs),
            _ => bail!("RESONANCE_VM_JOBS={value:?}: expected a whole number of at least 1"),
        },
    }
}

/// The accelerator guests boot with: KVM until one guest fails to reach
/// init under it, TCG for every boot after that.
struct KvmFallback(Mutex<Accel>);

impl KvmFallback {
    fn new(detected: Accel) -> Self {
        Self(Mutex::new(detected))
    }

    fn current(&self) -> Accel {
        self.0.lock().map(|accel| *accel).unwrap_or(Accel::Tcg)
    }

    fn give_up_kvm(&self) {
        if let Ok(mut accel) = self.0.lock() {
            *accel = Accel::Tcg;
        }
    }
}

/// What every boot of one run shares.
struct Boot<'a> {
    image: &'a Path,
    timeout: Duration,
    expect_failure: bool,
    /// Test executables in the image.
    tests: usize,
    /// Put before each echoed console line.
    prefix: String,
}

/// One kernel's line of the summary.
struct Row<'a> {
    kernel: &'a kernels::Kernel,
    accel: Accel,
    /// Whether it passed, and how it ended.
    result: (bool, String),
    seconds: f64,
}

/// Boots one kernel (under TCG again if KVM never reaches init) and judges
/// how it ended.
fn boot_one<'a>(
    kernel: &'a kernels::Kernel,
    boot: &Boot,
    fallback: &KvmFallback,
) -> Result<Row<'a>> {
    let Boot {
        image,
        timeout,
        expect_failure,
        tests,
        ref prefix,
    } = *boot;
    let mut accel = fallback.current();
    eprintln!(
        "xtask: booting {} ({}) under {}",
        kernel.label,
        kernel.package,
        accel.name()
    );
    // The smoke test checks the guest really runs the kernel we meant.
    let cmdline = format!("RESONANCE_EXPECT_KERNEL_RELEASE={}", kernel.release);
    let start = Instant::now();
    let mut seen = qemu::Seen::default();
    let console = qemu::Console {
        echo_all: !expect_failure,
        prefix,
    };
    let mut boot_under = |accel: Accel| {
        qemu::boot(
            &kernel.vmlinuz,
            image,
            accel,
            &cmdline,
            timeout,
            &console,
            &mut seen,
        )
    };
    let mut outcome = boot_under(accel)?;
    if accel == Accel::Kvm && matches!(outcome, Outcome::NoBoot) {
        eprintln!(
            "xtask: {} never reached init under KVM; retrying with TCG, \
             and using TCG for the remaining kernels",
            kernel.label
        );
        accel = Accel::Tcg;
        fallback.give_up_kvm();
        outcome = boot_under(accel)?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let mut result = describe(&outcome, tests, timeout);
    if let Some(mode) = &seen.probe_mode {
        result.1 = format!("{}, probes in {mode} mode", result.1);
    }
    if expect_failure {
        result = match (outcome, crate::corruption::verdict(&seen.tests)) {
            (Outcome::Reported(Verdict::Failed { .. }), Ok(caught)) => {
                (true, format!("failed as expected: {}; {caught}", result.1))
            }
            (Outcome::Reported(Verdict::Failed { .. }), Err(error)) => {
                (false, format!("UNEXPECTED: {}; {error:#}", result.1))
            }
            _ => (false, format!("UNEXPECTED: {}", result.1)),
        };
    }
    eprintln!("xtask: {}: {} in {seconds:.1} s", kernel.label, result.1);
    Ok(Row {
        kernel,
        accel,
        result,
        seconds,
    })
}

/// A stable short name for a path (FNV-1a over its bytes).
fn fnv1a(path: &Path) -> u64 {
    path.as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

/// Whether a boot passed, and a one-line description of how it ended.
fn describe(outcome: &Outcome, expected: usize, timeout: Duration) -> (bool, String) {
    match outcome {
        Outcome::Reported(Verdict::Passed { total }) if *total as usize == expected => {
            (true, format!("ok ({total} test executables)"))
        }
        Outcome::Reported(Verdict::Passed { total }) => (
            false,
            format!("FAILED: the guest ran {total} of {expected} test executables"),
        ),
        Outcome::Reported(Verdict::Failed { failed, total }) => (
            false,
            format!("FAILED: {failed} of {total} test executables failed"),
        ),
        Outcome::NoResult => (
            false,
            "FAILED: the guest stopped without reporting a result".to_owned(),
        ),
        Outcome::NoBoot => (false, "FAILED: the guest never reached init".to_owned()),
        Outcome::TimedOut => (
            false,
            format!(
                "FAILED: timed out after {} s, QEMU killed",
                timeout.as_secs()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_differ_per_clone_and_stay_put() {
        assert_eq!(fnv1a(Path::new("")), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(Path::new("a")), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(fnv1a(Path::new("/x/one")), fnv1a(Path::new("/x/two")));
    }

    #[test]
    fn guests_boot_one_at_a_time_unless_told_otherwise() {
        assert_eq!(parse_jobs(None).unwrap(), 1);
        assert_eq!(parse_jobs(Some(" 2 ")).unwrap(), 2);
        for bad in ["0", "-1", "two", ""] {
            let error = parse_jobs(Some(bad)).unwrap_err().to_string();
            assert!(error.contains("RESONANCE_VM_JOBS"), "{error}");
        }
    }

    #[test]
    fn only_a_full_passing_run_passes() {
        let limit = Duration::from_secs(9);
        let passed = |total| Outcome::Reported(Verdict::Passed { total });
        assert!(describe(&passed(2), 2, limit).0);
        let (ok, text) = describe(&passed(1), 2, limit);
        assert!(!ok && text.contains("1 of 2"), "{text}");
        let failed = Outcome::Reported(Verdict::Failed {
            failed: 1,
            total: 2,
        });
        assert!(!describe(&failed, 2, limit).0);
        assert!(!describe(&Outcome::NoResult, 2, limit).0);
        assert!(!describe(&Outcome::NoBoot, 2, limit).0);
        let (ok, text) = describe(&Outcome::TimedOut, 2, limit);
        assert!(!ok && text.contains("9 s"), "{text}");
    }
}
