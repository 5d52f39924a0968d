//! Making a fresh machine ready to build: every step checks first, so a
//! second run does nothing it does not need to.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Result;

use crate::{cache, debian, toolchain};

/// Debian packages every build needs (C toolchain for bundled C crates).
const BUILD_PACKAGES: &[&str] = &["build-essential", "pkg-config"];

/// What child cargo runs need on top of our own environment.
pub struct BuildEnv {
    /// Folder with the bpf-linker built for the eBPF toolchain.
    pub bpf_linker_dir: PathBuf,
}

impl BuildEnv {
    /// Puts bpf-linker first on PATH, where the eBPF build looks for it.
    pub fn apply(&self, command: &mut Command) {
        let mut path = OsString::from(self.bpf_linker_dir.as_os_str());
        if let Some(old) = std::env::var_os("PATH") {
            path.push(":");
            path.push(old);
        }
        command.env("PATH", path);
    }
}

/// Ensures the toolchain, bpf-linker and packages; returns the environment.
pub fn ensure(root: &Path) -> Result<BuildEnv> {
    debian::ensure(BUILD_PACKAGES)?;
    let ebpf_toolchain = toolchain::ebpf_toolchain(root)?;
    toolchain::ensure_nightly(&ebpf_toolchain)?;
    let cache = cache::dir()?;
    let bpf_linker_dir = toolchain::ensure_bpf_linker(&cache, &ebpf_toolchain)?;
    Ok(BuildEnv { bpf_linker_dir })
}
