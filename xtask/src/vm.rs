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
//! Each pass (the normal suite, or one that must fail) boots every kernel;
//! the boots of all passes share one pool of `RESONANCE_VM_JOBS` guests at a
//! time (`vm-test`: one; `test`: [`parallel_jobs`]). A summary table ends the
//! run and any unexpected result makes the command fail.
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

/// How long one kernel may take by default: boot, tests and power-off. The
/// slowest guests (5.10 and 6.1 under TCG) take about 500 s alone.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(900);

/// How much longer a guest may take when it shares the host with others:
/// beside one another, 5.10 and 6.1 took 693-822 s each under TCG
/// (2026-12-03), too near [`DEFAULT_TIMEOUT`] for a limit that is only
/// there to catch a hung guest.
fn shared_timeout(alone: Duration, jobs: usize) -> Duration {
    if jobs > 1 { alone * 5 / 3 } else { alone }
}

/// What `cargo xtask vm-test` was asked to do.
pub struct Options {
    /// `--kernel` values; empty means [`DEFAULT_KERNELS`].
    pub kernels: Vec<String>,
    /// Limit for one kernel booted alone; guests that share the host get
    /// more (see `shared_timeout`).
    pub timeout: Duration,
    /// Cargo profile of the guest executables.
    pub profile: String,
    /// Each pass boots every kernel once; all boots of all passes share one
    /// pool of `RESONANCE_VM_JOBS` (default [`Options::default_jobs`]) guests.
    pub passes: Vec<Pass>,
    /// How many guests boot at once when `RESONANCE_VM_JOBS` is not set.
    pub default_jobs: usize,
}

/// One run of the suite on every kernel, with its own guest image.
pub struct Pass {
    /// Short name for the summary and the image file ("normal", "corrupted").
    pub name: String,
    /// Pass only if the tests run and fail on every kernel as the corrupted
    /// offset must make them (see `corruption::verdict`): the suite proves
    /// it catches a fault injected through a `RESONANCE_*` variable.
    pub expect_failure: bool,
    /// Variables set in the guest on top of the host's `RESONANCE_*` ones.
    pub guest_env: Vec<(String, String)>,
}

/// How many guests `cargo xtask test` boots at once: one per host core, at
/// most two. A guest under TCG keeps about one host core busy (sampled: 0.86
/// to 1.04 cores), so more than the cores only stretches each boot towards
/// its timeout.
pub fn parallel_jobs() -> usize {
    thread::available_parallelism()
        .map(|cores| cores.get())
        .unwrap_or(1)
        .clamp(1, 2)
}

/// Boots each kernel once per pass and runs every integration test of
/// `resonance-tests` inside; fails if any boot's result is not the expected
/// one.
pub fn run(root: &Path, env: &BuildEnv, options: &Options) -> Result<()> {
    let Options {
        kernels,
        timeout,
        profile,
        passes,
        default_jobs,
    } = options;
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
    let images = passes
        .iter()
        .map(|pass| write_image(root, &cache, &payload, pass))
        .collect::<Result<Vec<_>>>()?;

    let jobs = jobs_from_env(*default_jobs)?;
    let boots = boot_order(passes.len(), kernels.len());
    let timeout = shared_timeout(*timeout, jobs.min(boots.len()));
    let fallback = KvmFallback::new(Accel::detect());
    let next = AtomicUsize::new(0);
    let finished: Mutex<Vec<Option<Row>>> = Mutex::new(boots.iter().map(|_| None).collect());
    let tests = payload.tests.len();
    thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..jobs.min(boots.len()))
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    loop {
                        let index = next.fetch_add(1, Ordering::SeqCst);
                        let Some(&(pass_index, kernel_index)) = boots.get(index) else {
                            return Ok(());
                        };
                        let (pass, kernel) = (&passes[pass_index], &kernels[kernel_index]);
                        let boot = Boot {
                            image: &images[pass_index],
                            pass: &pass.name,
                            timeout,
                            expect_failure: pass.expect_failure,
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
        "{:<10} {:<14} {:<34} {:<5} {:>8}  result",
        "pass", "kernel", "package", "accel", "wall s"
    );
    for Row {
        pass,
        kernel,
        accel,
        result: (_, text),
        seconds,
    } in &rows
    {
        eprintln!(
            "{:<10} {:<14} {:<34} {:<5} {:>8.1}  {}",
            pass,
            kernel.label,
            kernel.package,
            accel.name(),
            seconds,
            text
        );
    }
    let failed: Vec<String> = rows
        .iter()
        .filter(|row| !row.result.0)
        .map(|row| format!("{} ({})", row.kernel.label, row.pass))
        .collect();
    if !failed.is_empty() {
        bail!("VM tests did not end as expected on: {}", failed.join(", "));
    }
    Ok(())
}

/// Writes one pass's guest image where QEMU will read it. One image per
/// clone and pass: runs from two clones at once must not boot each other's
/// tests, and two passes in one pool must not boot each other's variables.
fn write_image(
    root: &Path,
    cache: &Path,
    payload: &guest::Payload,
    pass: &Pass,
) -> Result<std::path::PathBuf> {
    let image = guest::image(payload, cache, &pass.guest_env)?;
    let image_path = cache.join(format!("initramfs-{:016x}-{}.cpio", fnv1a(root), pass.name));
    let partial = image_path.with_extension(format!("cpio.{}", std::process::id()));
    fs::write(&partial, &image).with_context(|| format!("writing {}", partial.display()))?;
    fs::rename(&partial, &image_path)
        .with_context(|| format!("moving {} into place", image_path.display()))?;
    eprintln!(
        "xtask: {} guest image {} ({} MiB, {} test executables)",
        pass.name,
        image_path.display(),
        image.len() >> 20,
        payload.tests.len()
    );
    Ok(image_path)
}

/// The (pass, kernel) boots in the order they start: every kernel of the
/// first pass, then every kernel of the next, so a pool of any size keeps
/// the summary's order and the first pass's verdicts come first.
fn boot_order(passes: usize, kernels: usize) -> Vec<(usize, usize)> {
    (0..passes)
        .flat_map(|pass| (0..kernels).map(move |kernel| (pass, kernel)))
        .collect()
}

/// How many guests boot at once: `RESONANCE_VM_JOBS`, else `default`.
fn jobs_from_env(default: usize) -> Result<usize> {
    parse_jobs(std::env::var("RESONANCE_VM_JOBS").ok().as_deref(), default)
}

fn parse_jobs(value: Option<&str>, default: usize) -> Result<usize> {
    match value {
        None => Ok(default),
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
    /// The pass's name, for the summary.
    pass: &'a str,
    timeout: Duration,
    expect_failure: bool,
    /// Test executables in the image.
    tests: usize,
    /// Put before each echoed console line.
    prefix: String,
}

/// One boot's line of the summary.
struct Row<'a> {
    pass: &'a str,
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
    boot: &Boot<'a>,
    fallback: &KvmFallback,
) -> Result<Row<'a>> {
    let Boot {
        image,
        pass,
        timeout,
        expect_failure,
        tests,
        ref prefix,
    } = *boot;
    let mut accel = fallback.current();
    eprintln!(
        "xtask: booting {} ({}) under {}, {pass} pass",
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
    eprintln!(
        "xtask: {} ({pass} pass): {} in {seconds:.1} s",
        kernel.label, result.1
    );
    Ok(Row {
        pass,
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
    fn the_variable_overrides_the_default_number_of_guests() {
        assert_eq!(parse_jobs(None, 1).unwrap(), 1);
        assert_eq!(parse_jobs(None, 2).unwrap(), 2);
        assert_eq!(parse_jobs(Some(" 3 "), 1).unwrap(), 3);
        assert_eq!(parse_jobs(Some("1"), 2).unwrap(), 1);
        for bad in ["0", "-1", "two", ""] {
            let error = parse_jobs(Some(bad), 2).unwrap_err().to_string();
            assert!(error.contains("RESONANCE_VM_JOBS"), "{error}");
        }
    }

    #[test]
    fn every_kernel_boots_once_per_pass_first_pass_first() {
        assert_eq!(
            boot_order(2, 3),
            [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
        );
        assert_eq!(boot_order(1, 2), [(0, 0), (0, 1)]);
        assert!(boot_order(0, 3).is_empty());
    }

    #[test]
    fn guests_that_share_the_host_get_more_time() {
        let alone = Duration::from_secs(900);
        assert_eq!(shared_timeout(alone, 1), alone);
        assert_eq!(shared_timeout(alone, 2), Duration::from_secs(1500));
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
