//! What runs inside the guest: [`build`] compiles the integration tests and
//! helper binaries of `resonance-tests` as static musl executables and
//! returns a [`Payload`]; [`image`] packs it with busybox and [`INIT`] into a
//! newc initramfs.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use super::initramfs::Archive;
use crate::{bootstrap::BuildEnv, cmd, debian};

/// The target the guest binaries are built for: static, so the guest needs
/// no C library.
pub const TARGET: &str = "x86_64-unknown-linux-musl";

/// The package whose integration tests and bins go into the guest.
const PACKAGE: &str = "resonance-tests";

/// The integration tests that run in the guest: everything that exercises
/// the kernel. The agent tests stay on the host, where a real Prometheus
/// server and promtool exist.
const GUEST_TESTS: &[&str] = &["observer", "vm_smoke", "doctor"];

/// Where busybox-static installs its binary.
const BUSYBOX: &str = "/bin/busybox";

/// PID 1 of the guest: mounts what the observer needs, runs every test
/// executable under /tests, reports through marker lines that
/// `qemu::parse_result` reads, and powers off.
pub const INIT: &str = r#"#!/bin/sh
export PATH=/bin
mnt() {
    mount -t "$1" "$1" "$2" 2>/dev/null || echo "RESONANCE-VM-WARNING: cannot mount $1 on $2"
}
mnt proc /proc
mnt sysfs /sys
mnt devtmpfs /dev
mnt tmpfs /tmp
mnt tmpfs /run
mnt bpf /sys/fs/bpf
mnt tracefs /sys/kernel/tracing
mnt debugfs /sys/kernel/debug
mnt cgroup2 /sys/fs/cgroup
# Loopback starts down in a fresh kernel; socket tests need it.
ip link set lo up 2>/dev/null || echo "RESONANCE-VM-WARNING: cannot bring up lo"
# No `ulimit -l`: on 5.10, which charges BPF maps to RLIMIT_MEMLOCK, the
# programs must lift it themselves, as on a real host.
echo "RESONANCE-VM-BOOTED $(uname -r)"
export CI=true RESONANCE_TRAFFIC_BIN=/bin/traffic RESONANCE_BIN=/bin/resonance RUST_BACKTRACE=1
# RESONANCE_* variables given to `cargo xtask vm-test` on the host.
[ -f /etc/resonance.env ] && . /etc/resonance.env
cd /tmp
# The mode the probes pick on this kernel, for the summary table.
mode=$(/bin/resonance observe --duration 1s 2>&1 >/dev/null | sed -n 's/.*probes attached in \([a-z_]*\) mode.*/\1/p' | head -n 1)
echo "RESONANCE-VM-PROBE-MODE: ${mode:-none}"
total=0
failed=0
for test in /tests/*; do
    [ -x "$test" ] || continue
    total=$((total + 1))
    echo "RESONANCE-VM-TEST: ${test##*/}"
    if "$test" --test-threads=1; then
        echo "RESONANCE-VM-TEST-END: ${test##*/} ok"
    else
        failed=$((failed + 1))
        echo "RESONANCE-VM-TEST-END: ${test##*/} FAILED"
    fi
done
if [ "$failed" -eq 0 ]; then
    echo "RESONANCE-VM-RESULT: ok $total"
else
    echo "RESONANCE-VM-RESULT: fail $failed/$total"
fi
sync
poweroff -f
"#;

/// Host-side variables that must not reach the guest: paths of this machine
/// and the `RESONANCE_VM_*` knobs of xtask itself.
fn host_only(name: &str) -> bool {
    name == "RESONANCE_CACHE_DIR" || name.starts_with("RESONANCE_VM_")
}

/// The executables to run in the guest.
pub struct Payload {
    /// Integration-test executables: (target name, path).
    pub tests: Vec<(String, PathBuf)>,
    /// Helper binaries, e.g. `traffic`: (name, path).
    pub bins: Vec<(String, PathBuf)>,
}

/// Makes sure the musl target and busybox are there.
pub fn ensure_tools() -> Result<()> {
    // musl-tools: the bundled SQLite is C, built for the musl target too.
    debian::ensure(&["busybox-static", "musl-tools"])?;
    let toolchain = crate::toolchain::host_toolchain(&crate::workspace_root())?;
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed", "--toolchain", &toolchain])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == TARGET)
        })
        .unwrap_or(false);
    if !installed {
        cmd::status(Command::new("rustup").args([
            "target",
            "add",
            TARGET,
            "--toolchain",
            &toolchain,
        ]))
        .with_context(|| format!("adding the {TARGET} target to toolchain {toolchain}"))?;
    }
    Ok(())
}

/// Builds [`GUEST_TESTS`], the bins of `resonance-tests` and the
/// `resonance` binary for [`TARGET`] with the cargo profile `profile`.
pub fn build(root: &Path, env: &BuildEnv, profile: &str) -> Result<Payload> {
    let mut args = vec![
        "test",
        "--profile",
        profile,
        "--package",
        PACKAGE,
        "--no-run",
    ];
    for test in GUEST_TESTS {
        args.extend(["--test", test]);
    }
    let tests = cargo_artifacts(root, env, &args)?
        .into_iter()
        .filter(|a| a.test && a.kind == "test")
        .map(|a| (a.name, a.executable))
        .collect();
    let bins = cargo_artifacts(
        root,
        env,
        &[
            "build",
            "--profile",
            profile,
            "--package",
            PACKAGE,
            "--bins",
        ],
    )?
    .into_iter()
    .chain(cargo_artifacts(
        root,
        env,
        &[
            "build",
            "--profile",
            profile,
            "--package",
            "resonance-user",
            "--bin",
            "resonance",
        ],
    )?)
    .filter(|a| !a.test && a.kind == "bin")
    .map(|a| (a.name, a.executable))
    .collect();
    Ok(Payload { tests, bins })
}

/// One executable cargo reported.
#[derive(Debug, PartialEq)]
struct Artifact {
    name: String,
    kind: String,
    test: bool,
    executable: PathBuf,
}

/// Runs cargo for [`TARGET`] with JSON messages and returns the executables.
fn cargo_artifacts(root: &Path, env: &BuildEnv, args: &[&str]) -> Result<Vec<Artifact>> {
    let mut command = Command::new("cargo");
    command
        .args(args)
        .args([
            "--target",
            TARGET,
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(root)
        .stderr(Stdio::inherit());
    env.apply(&mut command);
    eprintln!("xtask: running cargo {} --target {TARGET}", args.join(" "));
    let output = command.output().context("starting cargo")?;
    if !output.status.success() {
        bail!(
            "cargo {} --target {TARGET} failed: {}",
            args.join(" "),
            output.status
        );
    }
    parse_artifacts(&String::from_utf8_lossy(&output.stdout))
}

/// The executables in cargo's `--message-format=json` output.
fn parse_artifacts(json_lines: &str) -> Result<Vec<Artifact>> {
    let mut artifacts = Vec::new();
    for line in json_lines.lines().filter(|l| l.starts_with('{')) {
        let message: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("cargo printed bad JSON: {line}"))?;
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(executable) = message["executable"].as_str() else {
            continue;
        };
        let target = &message["target"];
        artifacts.push(Artifact {
            name: target["name"].as_str().unwrap_or_default().to_owned(),
            kind: target["kind"][0].as_str().unwrap_or_default().to_owned(),
            test: message["profile"]["test"].as_bool().unwrap_or(false),
            executable: PathBuf::from(executable),
        });
    }
    Ok(artifacts)
}

/// Packs the payload, busybox, [`INIT`] and the passed-through environment
/// into a newc initramfs.
pub fn image(payload: &Payload, scratch: &Path, extra_env: &[(String, String)]) -> Result<Vec<u8>> {
    let mut archive = Archive::new();
    for dir in ["proc", "sys", "dev", "tmp", "run", "etc", "tests", "bin"] {
        archive.dir(dir);
    }
    archive.char_device("dev/console", 0o600, 5, 1);
    archive.char_device("dev/null", 0o666, 1, 3);
    archive.file("init", 0o755, INIT.as_bytes());
    archive.file(
        "etc/resonance.env",
        0o644,
        env_file(std::env::vars().chain(extra_env.iter().cloned())).as_bytes(),
    );

    let busybox = fs::read(BUSYBOX).with_context(|| format!("reading {BUSYBOX}"))?;
    archive.file("bin/busybox", 0o755, &busybox);
    let list = cmd::output(Command::new(BUSYBOX).arg("--list"))?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if !applet.is_empty() && !applet.contains('/') && applet != "busybox" {
            archive.symlink(&format!("bin/{applet}"), "busybox");
        }
    }
    for (name, path) in &payload.bins {
        let data = without_debug_info(path, scratch)?;
        archive.file(&format!("bin/{name}"), 0o755, &data);
        // Tests that use `env!("CARGO_BIN_EXE_<name>")` look at the host path.
        if let Some(host_path) = path.to_str()
            && !archive.contains(host_path)
        {
            archive.symlink(host_path, &format!("/bin/{name}"));
        }
    }
    for (name, path) in &payload.tests {
        let data = without_debug_info(path, scratch)?;
        archive.file(&format!("tests/{name}"), 0o755, &data);
    }
    Ok(archive.finish())
}

/// The executable at `path` without its DWARF sections: a sixth of the size,
/// which keeps the image (unpacked in guest RAM, slowly under TCG) small.
/// Symbols stay, so backtraces still name functions.
fn without_debug_info(path: &Path, scratch: &Path) -> Result<Vec<u8>> {
    fs::create_dir_all(scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let stripped = scratch.join(format!("stripped.{}", std::process::id()));
    cmd::output(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(path)
            .arg(&stripped),
    )
    .with_context(|| {
        format!(
            "stripping debug info from {} (objcopy is in binutils)",
            path.display()
        )
    })?;
    let data = fs::read(&stripped).with_context(|| format!("reading {}", stripped.display()));
    let _ = fs::remove_file(&stripped);
    data
}

/// Shell `export` lines for the `RESONANCE_*` variables (plus `RUST_LOG`
/// and `RUST_BACKTRACE`)
/// of the host, so e.g. `RESONANCE_TEST_CORRUPT_OFFSET` reaches the tests.
fn env_file(vars: impl Iterator<Item = (String, String)>) -> String {
    let mut text = String::new();
    let mut vars: Vec<(String, String)> = vars
        .filter(|(name, _)| {
            (name.starts_with("RESONANCE_") || name == "RUST_LOG" || name == "RUST_BACKTRACE")
                && !host_only(name)
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
        .collect();
    vars.sort();
    for (name, value) in vars {
        text.push_str(&format!(
            "export {name}='{}'\n",
            value.replace('\'', r"'\''")
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_resonance_variables_pass_quoted() {
        let vars = [
            ("HOME", "/somewhere"),
            ("RESONANCE_CACHE_DIR", "/cache"),
            ("RESONANCE_VM_ACCEL", "tcg"),
            ("RESONANCE_TEST_CORRUPT_OFFSET", "sk_family"),
            ("RESONANCE_X", "it's"),
            ("RUST_LOG", "debug"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert_eq!(
            env_file(vars.into_iter()),
            "export RESONANCE_TEST_CORRUPT_OFFSET='sk_family'\n\
             export RESONANCE_X='it'\\''s'\n\
             export RUST_LOG='debug'\n"
        );
    }

    #[test]
    fn test_and_bin_executables_are_found_in_cargo_json() {
        let json = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"resonance_tests"},"profile":{"test":false},"executable":null}
{"reason":"compiler-artifact","target":{"kind":["test"],"name":"vm_smoke"},"profile":{"test":true},"executable":"/t/vm_smoke-1"}
{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"traffic"},"profile":{"test":false},"executable":"/t/traffic"}
{"reason":"build-finished","success":true}
"#;
        let found = parse_artifacts(json).unwrap();
        assert_eq!(
            found,
            [
                Artifact {
                    name: "vm_smoke".to_owned(),
                    kind: "test".to_owned(),
                    test: true,
                    executable: PathBuf::from("/t/vm_smoke-1"),
                },
                Artifact {
                    name: "traffic".to_owned(),
                    kind: "bin".to_owned(),
                    test: false,
                    executable: PathBuf::from("/t/traffic"),
                },
            ]
        );
        assert!(parse_artifacts("{not json").is_err());
    }
}
