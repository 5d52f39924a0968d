//! The pinned nightly that builds the eBPF programs, and bpf-linker built
//! against that nightly's own LLVM.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::cmd;

/// bpf-linker release we build; it must support the nightly's LLVM major.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// The eBPF toolchain named in `resonance-ebpf/rust-toolchain.toml`.
pub fn ebpf_toolchain(root: &Path) -> Result<String> {
    pinned_channel(&root.join("resonance-ebpf/rust-toolchain.toml"))
}

/// The host toolchain named in the workspace's `rust-toolchain.toml`.
pub fn host_toolchain(root: &Path) -> Result<String> {
    pinned_channel(&root.join("rust-toolchain.toml"))
}

/// The `channel = "..."` of a rust-toolchain.toml file.
fn pinned_channel(path: &Path) -> Result<String> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|value| value.trim().trim_matches('"').to_owned())
        .next()
        .with_context(|| format!("no `channel = \"...\"` line in {}", path.display()))
}

/// Components the eBPF build (rust-src) and its lint (clippy) need.
const NIGHTLY_COMPONENTS: &[&str] = &["rust-src", "clippy"];

/// Installs the toolchain with its components unless rustup has them all.
pub fn ensure_nightly(toolchain: &str) -> Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", toolchain])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let complete = NIGHTLY_COMPONENTS
        .iter()
        .all(|component| installed.lines().any(|line| line.starts_with(component)));
    if complete {
        return Ok(());
    }
    let mut command = Command::new("rustup");
    command.args(["toolchain", "install", toolchain, "--profile", "minimal"]);
    for component in NIGHTLY_COMPONENTS {
        command.args(["--component", component]);
    }
    cmd::status(&mut command)
}

/// Returns the folder holding a bpf-linker linked against `toolchain`'s LLVM,
/// building it first if the cache lacks it.
pub fn ensure_bpf_linker(cache: &Path, toolchain: &str) -> Result<PathBuf> {
    let root = cache.join(format!("bpf-linker-{BPF_LINKER_VERSION}-{toolchain}"));
    let bin = root.join("bin");
    if bin.join("bpf-linker").is_file() {
        return Ok(bin);
    }
    let sysroot = rustc_output(toolchain, &["--print", "sysroot"])?;
    let llvm_major = llvm_major(&rustc_output(toolchain, &["-vV"])?)?;
    let llvm_prefix = cache.join(format!("llvm-{toolchain}"));
    link_llvm(Path::new(sysroot.trim()), &llvm_prefix.join("lib"))?;
    cmd::status(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--locked", "--no-default-features"])
            .args(["--version", BPF_LINKER_VERSION])
            .args(["--features", &format!("llvm-{llvm_major}")])
            .arg("--root")
            .arg(&root)
            .env("LLVM_PREFIX", &llvm_prefix)
            // The workspace's rust-toolchain.toml must not leak into the
            // install; bpf-linker builds with the stable toolchain.
            .current_dir(cache),
    )?;
    if !bin.join("bpf-linker").is_file() {
        bail!(
            "cargo install finished but {} is missing",
            bin.join("bpf-linker").display()
        );
    }
    Ok(bin)
}

fn rustc_output(toolchain: &str, args: &[&str]) -> Result<String> {
    let output = cmd::output(
        Command::new("rustc")
            .arg(format!("+{toolchain}"))
            .args(args),
    )?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The LLVM major version from `rustc -vV` (`LLVM version: 22.1.4`).
fn llvm_major(version_info: &str) -> Result<u32> {
    version_info
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version:"))
        .and_then(|v| v.trim().split('.').next())
        .and_then(|major| major.parse().ok())
        .context("rustc -vV printed no `LLVM version:` line")
}

/// bpf-linker's build script wants `$LLVM_PREFIX/lib/libLLVM.so` and the
/// exact soname; the nightly ships the library under its own name only.
fn link_llvm(sysroot: &Path, lib_dir: &Path) -> Result<()> {
    let sysroot_lib = sysroot.join("lib");
    let library = fs::read_dir(&sysroot_lib)
        .with_context(|| format!("listing {}", sysroot_lib.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", sysroot_lib.display()))?;
    let soname = library
        .file_name()
        .context("library path has no file name")?;
    fs::create_dir_all(lib_dir).with_context(|| format!("creating {}", lib_dir.display()))?;
    for name in [std::ffi::OsStr::new("libLLVM.so"), soname] {
        let link = lib_dir.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&library, &link)
            .with_context(|| format!("linking {} to {}", link.display(), library.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_is_read_from_rustc_version_info() {
        let info = "rustc 1.97.0-nightly\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(info).unwrap(), 22);
        assert!(llvm_major("rustc 1.0\n").is_err());
    }
}
