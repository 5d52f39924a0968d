//! `cargo xtask`: everything a fresh Debian machine needs to build, run, test
//! and benchmark resonance, done idempotently with caches outside the clone.
//!
//! `bootstrap` makes the toolchain ready (pinned nightly + rust-src, a
//! bpf-linker built against that nightly's LLVM, Debian packages); the other
//! commands call it first, then drive cargo.

mod bench;
mod bootstrap;
mod cache;
mod cmd;
mod corruption;
mod debian;
mod package;
mod toolchain;
mod vm;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use corruption::{CORRUPT_OFFSET_ENV, CORRUPTED_FIELD};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, run, test and benchmark resonance"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building needs (nightly rust-src, bpf-linker, packages).
    Bootstrap,
    /// Build the agent (release) with its embedded eBPF programs.
    Build,
    /// Build, load the probes and print what they see (`resonance observe`).
    Run {
        /// Arguments passed to `resonance` (default: `observe --duration 10s`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Formatting, clippy, unit and integration tests (real eBPF: needs root).
    Test,
    /// Build the Debian package (target/debian/resonance_VERSION_ARCH.deb).
    Package,
    /// Formatting and clippy only.
    Lint,
    /// Write a synthetic trace (`resonance gen-trace`, release build), e.g.
    /// `--scenario web --seed 1 --output web.jsonl`.
    GenTrace {
        /// Arguments passed to `resonance gen-trace`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Integration tests inside QEMU on real Debian kernels (default: 6.1 and
    /// 6.12). `RESONANCE_*` variables of this command reach the tests.
    VmTest {
        /// Kernel to boot: 6.1, 6.12, 6.12-trixie or a linux-image-* package
        /// name; repeat for several.
        #[arg(long)]
        kernel: Vec<String>,
        /// Seconds one kernel may take (boot, tests, power-off).
        #[arg(long, default_value_t = vm::DEFAULT_TIMEOUT.as_secs())]
        timeout: u64,
        /// Cargo profile for the test executables run in the guest.
        #[arg(long, default_value = vm::DEFAULT_PROFILE)]
        profile: String,
        /// Succeed only if the tests run and fail on every kernel, e.g. with
        /// RESONANCE_TEST_CORRUPT_OFFSET set.
        #[arg(long)]
        expect_failure: bool,
    },
    /// Benchmarks, each printing ratios against a baseline from the same run.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Command::Bootstrap => bootstrap::ensure(&root).map(|_| ()),
        Command::Build => {
            let env = bootstrap::ensure(&root)?;
            build_agent(&root, &env)
        }
        Command::Run { args } => {
            let env = bootstrap::ensure(&root)?;
            build_agent(&root, &env)?;
            let args = if args.is_empty() {
                vec![
                    "observe".to_owned(),
                    "--duration".to_owned(),
                    "10s".to_owned(),
                ]
            } else {
                args
            };
            cmd::run(&root, &env, &root.join("target/release/resonance"), &args)
        }
        Command::Package => {
            let env = bootstrap::ensure(&root)?;
            debian::ensure(PACKAGE_TOOLS)?;
            build_agent(&root, &env)?;
            package::build(&root).map(|_| ())
        }
        Command::Lint => {
            let env = bootstrap::ensure(&root)?;
            lint(&root, &env)
        }
        Command::Test => {
            let env = bootstrap::ensure(&root)?;
            // The agent tests check a live scrape with promtool and have a
            // real Prometheus server scrape the agent; the real-trace test
            // records PostgreSQL + pgbench and redis-server +
            // redis-benchmark.
            debian::ensure(TEST_PACKAGES)?;
            debian::ensure(PACKAGE_TOOLS)?;
            lint(&root, &env)?;
            // The package test installs the package this run builds.
            build_agent(&root, &env)?;
            let deb = package::build(&root)?;
            let mut test = std::process::Command::new("cargo");
            test.current_dir(&root).env("RESONANCE_DEB", &deb);
            env.apply(&mut test);
            cmd::status(test.args([
                "test",
                "--workspace",
                "--exclude",
                "resonance-ebpf",
                // Every feature of every crate (the async client's tests
                // need resonance-client's `tokio`).
                "--all-features",
                "--no-fail-fast",
            ]))?;
            observer_tests_pass_in_every_mode(&root, &env)?;
            corrupted_offset_is_caught_on_host(&root, &env)?;
            // The same kernel tests on Debian 5.10, 6.1 and 6.12 in QEMU, and
            // once more with the corrupted offset, which must fail there too;
            // the six boots share the host's cores.
            let options = vm::Options {
                kernels: Vec::new(),
                timeout: vm::DEFAULT_TIMEOUT,
                profile: vm::DEFAULT_PROFILE.to_owned(),
                passes: vec![
                    vm::Pass {
                        name: "normal".to_owned(),
                        expect_failure: false,
                        guest_env: Vec::new(),
                    },
                    vm::Pass {
                        name: "corrupted".to_owned(),
                        expect_failure: true,
                        guest_env: vec![(
                            corruption::CORRUPT_OFFSET_ENV.to_owned(),
                            corruption::CORRUPTED_FIELD.to_owned(),
                        )],
                    },
                ],
                default_jobs: vm::parallel_jobs(),
            };
            vm::run(&root, &env, &options)
        }
        Command::GenTrace { args } => {
            let env = bootstrap::ensure(&root)?;
            build_agent(&root, &env)?;
            // Runs in the caller's directory so a relative --output lands there.
            let mut command = std::process::Command::new(root.join("target/release/resonance"));
            command.arg("gen-trace").args(&args);
            env.apply(&mut command);
            cmd::status(&mut command)
        }
        Command::VmTest {
            kernel,
            timeout,
            profile,
            expect_failure,
        } => {
            let env = bootstrap::ensure(&root)?;
            let options = vm::Options {
                kernels: kernel,
                timeout: std::time::Duration::from_secs(timeout),
                profile,
                passes: vec![vm::Pass {
                    name: if expect_failure {
                        "must-fail"
                    } else {
                        "normal"
                    }
                    .to_owned(),
                    expect_failure,
                    guest_env: Vec::new(),
                }],
                default_jobs: 1,
            };
            vm::run(&root, &env, &options)
        }
        Command::Bench { which } => {
            let env = bootstrap::ensure(&root)?;
            bench::run(&root, &env, which)
        }
    }
}

/// Builds the `resonance` binary in release mode (run, build, gen-trace).
fn build_agent(root: &std::path::Path, env: &bootstrap::BuildEnv) -> Result<()> {
    cmd::cargo(
        root,
        env,
        &["build", "--release", "--package", "resonance-user"],
    )
}

/// The agent's variable that forces a probe mode.
const PROBE_MODE_ENV: &str = "RESONANCE_PROBE_MODE";
/// The modes besides the default one (the best the host loads, which the
/// workspace run above used): the raw_tp flavour of the hot path and the
/// classic tracepoint fallback.
const OTHER_PROBE_MODES: &[&str] = &["raw_tp", "tracepoint"];

/// The kernel tests once more in each other probe mode: every mode must
/// count the same bytes.
fn observer_tests_pass_in_every_mode(
    root: &std::path::Path,
    env: &bootstrap::BuildEnv,
) -> Result<()> {
    for mode in OTHER_PROBE_MODES {
        eprintln!("xtask: the kernel tests with {PROBE_MODE_ENV}={mode}");
        // The pipe-growth tests too: the full-pipe reports must come in
        // every mode.
        let mut command = kernel_tests(root, env, &["observer", "grow"], PROBE_MODE_ENV, mode);
        cmd::status(&mut command).with_context(|| format!("the kernel tests in {mode} mode"))?;
    }
    Ok(())
}

/// `cargo test` of the kernel test executables `tests` with one variable
/// set.
fn kernel_tests(
    root: &std::path::Path,
    env: &bootstrap::BuildEnv,
    tests: &[&str],
    variable: &str,
    value: &str,
) -> std::process::Command {
    let mut command = std::process::Command::new("cargo");
    command.args(["test", "--package", "resonance-tests"]);
    for test in tests {
        command.args(["--test", test]);
    }
    command.env(variable, value).current_dir(root);
    env.apply(&mut command);
    command
}

/// Runs the kernel tests with one offset deliberately wrong: they must fail.
fn corrupted_offset_is_caught_on_host(
    root: &std::path::Path,
    env: &bootstrap::BuildEnv,
) -> Result<()> {
    let mut command = kernel_tests(
        root,
        env,
        &["observer"],
        CORRUPT_OFFSET_ENV,
        CORRUPTED_FIELD,
    );
    eprintln!("xtask: the kernel tests must fail with {CORRUPT_OFFSET_ENV}={CORRUPTED_FIELD}");
    // Captured, not shown: this run is meant to fail, and its failure lines
    // would read like a broken suite.
    let output = command.output().context("running cargo test")?;
    if output.status.success() {
        anyhow::bail!(
            "the kernel tests passed with {CORRUPT_OFFSET_ENV}={CORRUPTED_FIELD}: they would not notice a wrong offset"
        );
    }
    let tests: Vec<(String, bool)> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(corruption::test_outcome)
        .collect();
    let caught = corruption::verdict(&tests).with_context(|| {
        format!(
            "cargo test with {CORRUPT_OFFSET_ENV}={CORRUPTED_FIELD}:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    eprintln!("xtask: good, {caught}");
    Ok(())
}

/// What `cargo xtask package` runs besides dpkg-deb: dpkg-shlibdeps for
/// the dependencies, strip, and the completions' and pages' gzip.
const PACKAGE_TOOLS: &[&str] = &["dpkg-dev", "binutils", "gzip"];

/// Debian packages the test suite runs besides the build's own:
/// `prometheus` (promtool and the server), `postgresql` (initdb, postgres,
/// pgbench), `redis-server` and `redis-tools` (redis-benchmark).
const TEST_PACKAGES: &[&str] = &[
    "prometheus",
    // The package test: lintian's verdict, adduser for the maintainer
    // script.
    "lintian",
    "adduser",
    "postgresql",
    "redis-server",
    "redis-tools",
    // The completion and man page tests load them in real shells and check
    // the pages with groff and man-db's lexgrog.
    "zsh",
    "fish",
    "groff-base",
    "man-db",
    // systemd-analyze verifies the unit and rates its hardening.
    "systemd",
    // The TLS endpoint test scrapes with curl.
    "curl",
];

/// fmt and clippy for the host crates (default and all features), and
/// clippy for the eBPF crate with its own nightly and target.
fn lint(root: &std::path::Path, env: &bootstrap::BuildEnv) -> Result<()> {
    cmd::cargo(root, env, &["fmt", "--all", "--", "--check"])?;
    // With the default features and with all of them: code behind a feature
    // must be clean, and so must the build that leaves it out.
    for features in [None, Some("--all-features")] {
        let mut args = vec![
            "clippy",
            "--workspace",
            "--exclude",
            "resonance-ebpf",
            "--all-targets",
        ];
        args.extend(features);
        args.extend(["--", "-D", "warnings"]);
        cmd::cargo(root, env, &args)?;
    }
    let toolchain = toolchain::ebpf_toolchain(root)?;
    let mut clippy = std::process::Command::new("rustup");
    clippy
        .args([
            "run",
            &toolchain,
            "cargo",
            "clippy",
            "--package",
            "resonance-ebpf",
        ])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--", "-D", "warnings"])
        .current_dir(root.join("resonance-ebpf"));
    env.apply(&mut clippy);
    cmd::status(&mut clippy)
}

/// The workspace root: xtask lives one level below it.
fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}
