//! Installing Debian packages the build or the tests need.

use std::process::Command;

use anyhow::{Result, bail};

use crate::cmd;

/// Makes sure every package in `packages` is installed: installs the missing
/// ones with apt-get when running as root, otherwise names them and fails.
pub fn ensure(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "these Debian packages are missing and installing them needs root: {} \
             (run `apt-get install {}` as root, or run xtask as root)",
            missing.join(", "),
            missing.join(" ")
        );
    }
    cmd::status(Command::new("apt-get").args(["update", "-q"]))?;
    cmd::status(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Whether dpkg reports `package` as installed.
pub fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
        })
        .unwrap_or(false)
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // `id -u` keeps xtask free of libc for one call.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
