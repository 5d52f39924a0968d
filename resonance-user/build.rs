//! Builds the eBPF programs (resonance-ebpf) with the pinned nightly and
//! embeds them: a plain `cargo build` works once `cargo xtask bootstrap` (or
//! any xtask command) has installed the toolchain and bpf-linker.

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

fn main() -> Result<()> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    let ebpf_dir = manifest_dir
        .parent()
        .context("resonance-user has no parent folder")?
        .join("resonance-ebpf");
    let toolchain = ebpf_toolchain(&ebpf_dir)?;
    println!(
        "cargo:rerun-if-changed={}",
        ebpf_dir.join("rust-toolchain.toml").display()
    );
    println!("cargo:rerun-if-env-changed=RESONANCE_CACHE_DIR");
    put_bpf_linker_on_path(&toolchain);
    // aya-build passes every line the nested cargo prints on as a
    // `warning:` of this crate; quiet, it prints only what matters (the
    // compiler's own warnings and errors about the eBPF code).
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { env::set_var("CARGO_TERM_QUIET", "true") };
    let root_dir = ebpf_dir
        .to_str()
        .context("resonance-ebpf path is not UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "resonance-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
    .context(
        "building the eBPF programs failed; `cargo xtask bootstrap` installs the pinned \
         nightly with rust-src and bpf-linker",
    )
}

/// The channel pinned in `resonance-ebpf/rust-toolchain.toml`.
fn ebpf_toolchain(ebpf_dir: &Path) -> Result<String> {
    let path = ebpf_dir.join("rust-toolchain.toml");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|value| value.trim().trim_matches('"').to_owned())
        .next()
        .with_context(|| format!("no channel in {}", path.display()))
}

/// xtask keeps bpf-linker in its cache, built for this toolchain; make a
/// plain `cargo build` find it there too.
fn put_bpf_linker_on_path(toolchain: &str) {
    let Some(cache) = cache_dir() else { return };
    let Ok(entries) = fs::read_dir(&cache) else {
        return;
    };
    let suffix = format!("-{toolchain}");
    let linker_dir = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("bpf-linker-") && n.ends_with(&suffix))
        })
        .map(|path| path.join("bin"))
        .find(|bin| bin.join("bpf-linker").is_file());
    if let Some(linker_dir) = linker_dir {
        let mut path = OsString::from(linker_dir.as_os_str());
        if let Some(old) = env::var_os("PATH") {
            path.push(":");
            path.push(old);
        }
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { env::set_var("PATH", path) };
    }
}

fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = env::var_os("RESONANCE_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(xdg) = env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(xdg).join("resonance"));
    }
    env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/resonance"))
}
