//! Booting one kernel with the test initramfs in QEMU: [`ensure_installed`]
//! gets qemu-system-x86 from Debian, [`Accel`] is chosen from what the machine
//! offers, and [`boot`] streams the serial console, enforces the timeout and
//! turns the guest's marker lines into an [`Outcome`].

use std::{
    fs,
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::apt::{Mirrors, PrivateApt, Purpose, host_codename};
use crate::{cmd, debian};

/// Printed by the guest init once it runs, before any test.
pub const BOOTED_MARKER: &str = "RESONANCE-VM-BOOTED";
/// What the guest's console said besides its verdict.
#[derive(Debug, Default)]
pub struct Seen {
    /// The mode the probes attached in.
    pub probe_mode: Option<String>,
    /// Each test's name and whether it passed, as libtest printed them.
    pub tests: Vec<(String, bool)>,
}

/// Printed by the guest init with the mode the probes attach in.
pub const PROBE_MODE_MARKER: &str = "RESONANCE-VM-PROBE-MODE:";
/// Prefix of the guest's last word: `ok N` or `fail F/N`.
pub const RESULT_MARKER: &str = "RESONANCE-VM-RESULT:";

/// How long a KVM guest may take to reach init before we call KVM broken.
const KVM_BOOT_LIMIT: Duration = Duration::from_secs(30);

/// Makes sure `qemu-system-x86_64` is installed. On bookworm it comes from
/// bookworm-backports, the same version as the preinstalled qemu-utils;
/// bookworm's own qemu-system-x86 would remove qemu-utils.
pub fn ensure_installed(cache: &Path) -> Result<()> {
    if debian::installed("qemu-system-x86") {
        return Ok(());
    }
    let result = if host_codename().as_deref() == Some("bookworm") {
        install_from_backports(cache)
    } else {
        debian::ensure(&["qemu-system-x86"])
    };
    result.context("qemu-system-x86_64 not found and installing it failed")
}

fn install_from_backports(cache: &Path) -> Result<()> {
    if !debian::is_root() {
        bail!("installing qemu-system-x86 from bookworm-backports needs root (run xtask as root)");
    }
    // Only the host's own suites plus backports: a list that also named
    // trixie could pull trixie libraries into the host.
    let apt = PrivateApt::ensure(
        &cache.join("apt-host"),
        &Mirrors::from_system(),
        &[
            "bookworm",
            "bookworm-updates",
            "bookworm-security",
            "bookworm-backports",
        ],
        Purpose::Install,
    )?;
    cmd::status(apt.command("apt-get").args([
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "-t",
        "bookworm-backports",
        "qemu-system-x86",
    ]))
}

/// How QEMU runs the guest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Accel {
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
    /// Software emulation: slower, but works everywhere.
    Tcg,
}

impl Accel {
    /// KVM when /dev/kvm can be opened and is backed by kvm_intel or
    /// kvm_amd. Other back ends (e.g. kvm_pvm, which only runs PVM-aware
    /// guests) hang or abort stock kernels, so they count as no KVM.
    /// `RESONANCE_VM_ACCEL=kvm|tcg` overrides the guess, for diagnosing it.
    pub fn detect() -> Self {
        match std::env::var("RESONANCE_VM_ACCEL").as_deref() {
            Ok("kvm") => return Self::Kvm,
            Ok("tcg") => return Self::Tcg,
            _ => {}
        }
        let openable = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        let hardware = ["kvm_intel", "kvm_amd"]
            .iter()
            .any(|m| Path::new("/sys/module").join(m).exists());
        let other = fs::read_dir("/sys/module")
            .map(|entries| {
                entries.filter_map(|e| e.ok()).any(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.starts_with("kvm_") && name != "kvm_intel" && name != "kvm_amd"
                })
            })
            .unwrap_or(false);
        if openable && hardware && !other {
            Self::Kvm
        } else {
            Self::Tcg
        }
    }

    /// The name QEMU and reports use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        }
    }
}

/// What the guest reported.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Every test executable passed.
    Passed {
        /// How many test executables ran.
        total: u32,
    },
    /// Some test executables failed.
    Failed {
        /// How many failed.
        failed: u32,
        /// How many ran.
        total: u32,
    },
}

/// Parses a result marker line (`RESONANCE-VM-RESULT: ok 3`, `... fail 1/3`).
pub fn parse_result(line: &str) -> Option<Verdict> {
    let rest = line.trim().strip_prefix(RESULT_MARKER)?.trim();
    let (word, count) = rest.split_once(' ')?;
    match word {
        "ok" => Some(Verdict::Passed {
            total: count.trim().parse().ok()?,
        }),
        "fail" => {
            let (failed, total) = count.trim().split_once('/')?;
            Some(Verdict::Failed {
                failed: failed.parse().ok()?,
                total: total.parse().ok()?,
            })
        }
        _ => None,
    }
}

/// How one boot ended.
#[derive(Debug)]
pub enum Outcome {
    /// The guest printed a result line.
    Reported(Verdict),
    /// The guest reached init but ended without a result line.
    NoResult,
    /// The guest never reached init.
    NoBoot,
    /// The time limit passed; QEMU was killed.
    TimedOut,
}

/// How a boot echoes the guest's serial console.
pub struct Console<'a> {
    /// Every line; otherwise only the marker lines.
    pub echo_all: bool,
    /// Put before each echoed line.
    pub prefix: &'a str,
}

/// Boots `vmlinuz` with `initramfs`, echoing the serial console as
/// `console` says, and waits at most `limit` for QEMU to exit.
pub fn boot(
    vmlinuz: &Path,
    initramfs: &Path,
    accel: Accel,
    cmdline_extra: &str,
    limit: Duration,
    console: &Console,
    seen: &mut Seen,
) -> Result<Outcome> {
    let mut command = Command::new("qemu-system-x86_64");
    command
        .args(["-nographic", "-no-reboot", "-smp", "2"])
        .arg("-m")
        .arg(memory_mib(initramfs).to_string())
        // No network card: the tests use loopback only, and without one
        // the firmware skips its network boot ROM.
        .args(["-nic", "none"])
        .args(["-accel", accel.name()])
        // TCG's `max` model offers the newest CPU features it emulates;
        // under KVM `host` passes the real CPU through.
        .args(["-cpu", if accel == Accel::Kvm { "host" } else { "max" }])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 quiet {cmdline_extra}").trim())
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut child = command
        .spawn()
        .context("starting qemu-system-x86_64 (is qemu-system-x86 installed?)")?;
    let stdout = child.stdout.take().context("qemu has no stdout")?;
    let (lines_tx, lines) = mpsc::channel::<String>();
    let (echo, prefix) = (console.echo_all, format!("    {}", console.prefix));
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let line = without_escapes(&String::from_utf8_lossy(&line));
            if echo || line.starts_with("RESONANCE-VM") {
                println!("{prefix}{line}");
            }
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let (mut booted, mut verdict) = (false, None);
    let killed = loop {
        match lines.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                booted |= line.contains(BOOTED_MARKER);
                if let Some(mode) = line.trim().strip_prefix(PROBE_MODE_MARKER) {
                    seen.probe_mode = Some(mode.trim().to_owned());
                }
                seen.tests.extend(crate::corruption::test_outcome(&line));
                verdict = parse_result(&line).or(verdict);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // The console closed: QEMU has exited.
            Err(mpsc::RecvTimeoutError::Disconnected) => break None,
        }
        let elapsed = start.elapsed();
        let kvm_stuck = accel == Accel::Kvm && !booted && elapsed > KVM_BOOT_LIMIT;
        if elapsed > limit || kvm_stuck {
            let _ = child.kill();
            break Some(if kvm_stuck {
                Outcome::NoBoot
            } else {
                Outcome::TimedOut
            });
        }
    };
    let status = child.wait().context("waiting for qemu")?;
    let _ = reader.join();
    if killed.is_none() && !status.success() {
        eprintln!("xtask: qemu exited with {status}");
    }
    Ok(match (killed, verdict) {
        (Some(outcome), _) => outcome,
        (None, Some(verdict)) => Outcome::Reported(verdict),
        (None, None) if booted => Outcome::NoResult,
        (None, None) => Outcome::NoBoot,
    })
}

/// A console line without carriage returns and terminal escape sequences
/// (the firmware clears the screen), so the echo stays readable.
fn without_escapes(line: &str) -> String {
    let mut clean = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                // CSI `ESC [ params letter`, else a two-character escape.
                if chars.next_if_eq(&'[').is_some() {
                    while chars.next().is_some_and(|c| !c.is_ascii_alphabetic()) {}
                } else {
                    chars.next();
                }
            }
            '\r' => {}
            c => clean.push(c),
        }
    }
    clean
}

/// Guest RAM: room for the image twice (the archive and its unpacked
/// files) on top of what the kernel and the tests need.
fn memory_mib(initramfs: &Path) -> u64 {
    let image_mib = fs::metadata(initramfs).map(|m| m.len() >> 20).unwrap_or(0);
    (768 + 2 * image_mib).max(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_are_parsed() {
        assert_eq!(
            parse_result("RESONANCE-VM-RESULT: ok 3"),
            Some(Verdict::Passed { total: 3 })
        );
        assert_eq!(
            parse_result("  RESONANCE-VM-RESULT: fail 1/4\r"),
            Some(Verdict::Failed {
                failed: 1,
                total: 4
            })
        );
        assert_eq!(parse_result("RESONANCE-VM-RESULT: maybe 1"), None);
        assert_eq!(parse_result("RESONANCE-VM-RESULT: fail 1"), None);
        assert_eq!(parse_result("RESONANCE-VM-RESULT: ok"), None);
        assert_eq!(parse_result("test result: ok. 3 passed"), None);
    }

    #[test]
    fn console_escapes_are_dropped() {
        assert_eq!(
            without_escapes("\x1bc\x1b[?7l\x1b[2JRESONANCE-VM-BOOTED 6.1\r"),
            "RESONANCE-VM-BOOTED 6.1"
        );
        assert_eq!(without_escapes("plain"), "plain");
    }
}
