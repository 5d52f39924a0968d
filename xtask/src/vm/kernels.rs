//! Debian kernels to boot: a [`KernelSpec`] (`6.1`, `6.12`, `6.12-trixie` or
//! an exact `linux-image-*` package name) is resolved against a private apt
//! configuration to the newest matching package, which is downloaded once
//! and reduced to its vmlinuz; a [`Kernel`] is that cached file.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use super::apt::{Mirrors, PrivateApt, Purpose};
use crate::cmd;

/// The kernels `cargo xtask vm-test` boots when none are named.
pub const DEFAULT: &[&str] = &["5.10", "6.1", "6.12"];

/// Suites the private kernel sources list covers.
const SUITES: &[&str] = &[
    "bullseye",
    "bullseye-updates",
    "bullseye-security",
    "bookworm",
    "bookworm-updates",
    "bookworm-security",
    "bookworm-backports",
    "trixie",
    "trixie-updates",
    "trixie-security",
];

/// Short names for kernel series: (name, version prefix, Debian tag). The
/// package is `linux-image-<prefix><N>[+<tag>[.M]]-amd64`.
const SERIES: &[(&str, &str, Option<&str>)] = &[
    ("5.10", "5.10.0-", None),
    ("6.1", "6.1.0-", None),
    ("6.12", "6.12.", Some("deb12")),
    ("6.12-bookworm", "6.12.", Some("deb12")),
    ("6.12-trixie", "6.12.", Some("deb13")),
];

/// What the user asked for on the command line.
#[derive(Debug, Clone, PartialEq)]
pub enum KernelSpec {
    /// A series from [`SERIES`]: the newest package of it.
    Series {
        /// As given, e.g. `6.12-trixie`.
        name: String,
        prefix: &'static str,
        tag: Option<&'static str>,
    },
    /// An exact package name.
    Package(String),
}

impl KernelSpec {
    /// Parses a `--kernel` value.
    pub fn parse(value: &str) -> Result<Self> {
        if value.starts_with("linux-image-") {
            return Ok(Self::Package(value.to_owned()));
        }
        SERIES
            .iter()
            .find(|(name, _, _)| *name == value)
            .map(|&(name, prefix, tag)| Self::Series {
                name: name.to_owned(),
                prefix,
                tag,
            })
            .with_context(|| {
                let names: Vec<&str> = SERIES.iter().map(|s| s.0).collect();
                format!(
                    "unknown kernel {value:?}: use one of {} or a package name like \
                     linux-image-6.1.0-56-amd64",
                    names.join(", ")
                )
            })
    }

    /// The name to show in reports.
    pub fn label(&self) -> &str {
        match self {
            Self::Series { name, .. } => name,
            Self::Package(name) => name,
        }
    }

    /// The version parts of `package` if it belongs to this series (plain
    /// amd64 flavour only: not cloud, rt, unsigned or dbg).
    fn version_of(&self, package: &str) -> Option<Vec<u64>> {
        let Self::Series { prefix, tag, .. } = self else {
            return None;
        };
        let version = package
            .strip_prefix("linux-image-")?
            .strip_suffix("-amd64")?;
        let rest = version.strip_prefix(prefix)?;
        let (number, suffix) = match rest.split_once('+') {
            Some((number, suffix)) => (number, Some(suffix)),
            None => (rest, None),
        };
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(number) {
            return None;
        }
        match (tag, suffix) {
            (None, None) => {}
            (Some(tag), Some(suffix)) => {
                // `deb12` or a rebuild like `deb12.1`.
                let after = suffix.strip_prefix(tag)?;
                if !(after.is_empty() || after.strip_prefix('.').is_some_and(all_digits)) {
                    return None;
                }
            }
            _ => return None,
        }
        Some(
            version
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap_or(0))
                .collect(),
        )
    }

    /// The newest package of this spec in `apt-cache search` output
    /// (`name - description` lines).
    fn pick(&self, search_output: &str) -> Option<String> {
        let names = search_output
            .lines()
            .filter_map(|line| line.split_whitespace().next());
        if let Self::Package(wanted) = self {
            return names.into_iter().find(|n| n == wanted).map(str::to_owned);
        }
        names
            .filter_map(|name| self.version_of(name).map(|v| (v, name)))
            .max()
            .map(|(_, name)| name.to_owned())
    }
}

/// A kernel ready to boot.
#[derive(Debug)]
pub struct Kernel {
    /// The spec it was resolved from, for reports.
    pub label: String,
    /// The Debian package it came from.
    pub package: String,
    /// `uname -r` of the kernel (from its vmlinuz file name).
    pub release: String,
    /// The cached kernel image.
    pub vmlinuz: PathBuf,
}

/// Resolves each spec to the newest matching package and makes sure its
/// vmlinuz is in the cache.
pub fn ensure(cache: &Path, specs: &[KernelSpec]) -> Result<Vec<Kernel>> {
    let apt = PrivateApt::ensure(
        &cache.join("apt-kernels"),
        &Mirrors::from_system(),
        SUITES,
        Purpose::Download,
    )
    .context("preparing the private apt configuration for Debian kernels")?;
    let output = cmd::output(apt.command("apt-cache").args([
        "search",
        "--names-only",
        "^linux-image-[0-9.]+[-+]",
    ]))?;
    let search = String::from_utf8_lossy(&output.stdout);
    specs
        .iter()
        .map(|spec| {
            let package = spec.pick(&search).with_context(|| {
                format!(
                    "no Debian kernel package matches {:?} in bullseye, bookworm, bookworm-backports or trixie",
                    spec.label()
                )
            })?;
            let (vmlinuz, release) = fetch(&apt, &cache.join("kernels"), &package)?;
            Ok(Kernel {
                label: spec.label().to_owned(),
                package,
                release,
                vmlinuz,
            })
        })
        .collect()
}

/// Downloads `package` and keeps only `boot/vmlinuz-*`, unless cached.
fn fetch(apt: &PrivateApt, kernels: &Path, package: &str) -> Result<(PathBuf, String)> {
    let dir = kernels.join(package);
    if let Some(found) = cached_vmlinuz(&dir)? {
        return Ok(found);
    }
    let work = kernels.join(format!("{package}.download"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    cmd::status(
        apt.command("apt-get")
            .args(["download", package])
            .current_dir(&work),
    )
    .with_context(|| format!("downloading the kernel package {package}"))?;
    let deb = fs::read_dir(&work)
        .with_context(|| format!("listing {}", work.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", work.display()))?;
    // Only /boot is needed; piping the data tarball through tar avoids
    // writing hundreds of megabytes of modules to disk.
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(&deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting dpkg-deb")?;
    let stdout = dpkg.stdout.take().context("dpkg-deb has no stdout")?;
    let tar = Command::new("tar")
        .args(["-x", "--wildcards", "./boot/vmlinuz-*"])
        .current_dir(&work)
        .stdin(stdout)
        .status()
        .context("starting tar")?;
    let dpkg = dpkg.wait().context("waiting for dpkg-deb")?;
    if !tar.success() || !dpkg.success() {
        bail!(
            "extracting boot/vmlinuz-* from {} failed (dpkg-deb {dpkg}, tar {tar})",
            deb.display()
        );
    }
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for entry in fs::read_dir(work.join("boot")).context("listing the extracted boot/")? {
        let path = entry?.path();
        if let Some(name) = path.file_name() {
            fs::rename(&path, dir.join(name))
                .with_context(|| format!("moving {} into the cache", path.display()))?;
        }
    }
    let _ = fs::remove_dir_all(&work);
    cached_vmlinuz(&dir)?.with_context(|| format!("{package} holds no boot/vmlinuz-*"))
}

/// The `vmlinuz-<release>` in `dir`, if there is one.
fn cached_vmlinuz(dir: &Path) -> Result<Option<(PathBuf, String)>> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(None);
    };
    for entry in entries {
        let path = entry?.path();
        let release = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
            .map(str::to_owned);
        if let Some(release) = release {
            return Ok(Some((path, release)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEARCH: &str = "\
linux-image-5.10.0-32-amd64 - Linux 5.10 for 64-bit PCs (signed)
linux-image-5.10.0-46-amd64 - Linux 5.10 for 64-bit PCs (signed)
linux-image-5.10.0-46-cloud-amd64 - Linux 5.10 for x86-64 cloud (signed)
linux-image-6.1.0-9-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.1.0-56-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.1.0-56-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-57-rt-amd64 - Linux 6.1 for 64-bit PCs, PREEMPT_RT (signed)
linux-image-6.1.0-57-amd64-dbg - Debug symbols for linux-image-6.1.0-57-amd64
linux-image-6.1.0-56-amd64-unsigned - Linux 6.1 for 64-bit PCs
linux-image-6.12.9+deb12-amd64 - Linux 6.12 for 64-bit PCs (signed)
linux-image-6.12.90+deb12.1-amd64 - Linux 6.12 for 64-bit PCs (signed)
linux-image-6.12.90+deb12-amd64 - Linux 6.12 for 64-bit PCs (signed)
linux-image-6.12.95+deb12-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-6.12.117+deb13-amd64 - Linux 6.12 for 64-bit PCs (signed)
linux-image-6.12.43+deb13-amd64 - Linux 6.12 for 64-bit PCs (signed)
linux-image-6.16.3+deb13-amd64 - Linux 6.16 for 64-bit PCs (signed)
";

    fn pick(spec: &str) -> Option<String> {
        KernelSpec::parse(spec).unwrap().pick(SEARCH)
    }

    #[test]
    fn newest_plain_amd64_kernel_of_each_series_is_picked() {
        assert_eq!(pick("5.10").as_deref(), Some("linux-image-5.10.0-46-amd64"));
        assert_eq!(pick("6.1").as_deref(), Some("linux-image-6.1.0-56-amd64"));
        assert_eq!(
            pick("6.12").as_deref(),
            Some("linux-image-6.12.90+deb12.1-amd64")
        );
        assert_eq!(
            pick("6.12-trixie").as_deref(),
            Some("linux-image-6.12.117+deb13-amd64")
        );
        assert_eq!(
            pick("linux-image-6.12.43+deb13-amd64").as_deref(),
            Some("linux-image-6.12.43+deb13-amd64")
        );
        assert_eq!(pick("linux-image-6.99.0-1-amd64"), None);
        assert_eq!(KernelSpec::parse("6.1").unwrap().pick(""), None);
    }

    #[test]
    fn unknown_series_is_refused_with_the_choices() {
        let error = KernelSpec::parse("4.19").unwrap_err().to_string();
        assert!(
            error.contains("5.10") && error.contains("6.12-trixie"),
            "{error}"
        );
    }
}
