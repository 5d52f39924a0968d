//! `cargo xtask package`: the Debian package, put together with `dpkg-deb`
//! from the release binary, the files under `packaging/` and those the
//! binary writes about itself (man pages, shell completions).
//!
//! Why `dpkg-deb` and not cargo-deb: the binary is already built by xtask
//! (the eBPF half needs the pinned nightly and bpf-linker), so a second
//! build tool would add a crate tree to compile on every fresh machine and
//! hide what the package holds; here every installed path, mode and
//! maintainer script is in this file or in `packaging/`.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::cmd;

/// Where the package and its staging tree go, under `target/`.
const OUT_DIR: &str = "target/debian";

/// Builds `target/debian/resonance_VERSION_ARCH.deb` from the release
/// binary (which must exist) and returns its path.
pub fn build(root: &Path) -> Result<PathBuf> {
    let binary = root.join("target/release/resonance");
    let packaging = root.join("packaging");
    let out = root.join(OUT_DIR);
    let stage = out.join("stage");
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("clearing {}", stage.display()))?;
    }
    fs::create_dir_all(&stage)?;

    let version = version(&binary)?;
    let arch = text(Command::new("dpkg").arg("--print-architecture"))?;

    let bin = stage.join("usr/bin/resonance");
    make_parent(&bin)?;
    // As dh_strip would: debug info and notes out, the embedded eBPF
    // object (read-only data) untouched.
    cmd::status(
        Command::new("strip")
            .args([
                "--strip-unneeded",
                "--remove-section=.comment",
                "--remove-section=.note",
            ])
            .arg("-o")
            .arg(&bin)
            .arg(&binary),
    )?;
    set_mode(&bin, 0o755)?;

    install(
        &packaging.join("resonance.service"),
        &stage.join("lib/systemd/system/resonance.service"),
    )?;
    install(
        &packaging.join("resonance.toml"),
        &stage.join("etc/resonance/resonance.toml"),
    )?;
    install(
        &packaging.join("debian/default"),
        &stage.join("etc/default/resonance"),
    )?;
    install(
        &packaging.join("debian/copyright"),
        &stage.join("usr/share/doc/resonance/copyright"),
    )?;
    install(
        &packaging.join("debian/lintian-overrides"),
        &stage.join("usr/share/lintian/overrides/resonance"),
    )?;
    let changelog = stage.join("usr/share/doc/resonance/changelog.gz");
    install(
        &packaging.join("debian/changelog"),
        &changelog.with_extension(""),
    )?;
    gzip(&changelog.with_extension(""))?;

    let man = stage.join("usr/share/man/man1");
    fs::create_dir_all(&man)?;
    cmd::status(Command::new(&binary).arg("manpages").arg(&man))?;
    for page in fs::read_dir(&man)? {
        let page = page?.path();
        set_mode(&page, 0o644)?;
        gzip(&page)?;
    }
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/resonance"),
        ("zsh", "usr/share/zsh/vendor-completions/_resonance"),
        ("fish", "usr/share/fish/vendor_completions.d/resonance.fish"),
    ] {
        let script = cmd::output(Command::new(&binary).args(["completions", shell]))?.stdout;
        let path = stage.join(path);
        make_parent(&path)?;
        fs::write(&path, script)?;
        set_mode(&path, 0o644)?;
    }

    let control_dir = stage.join("DEBIAN");
    fs::create_dir_all(&control_dir)?;
    for script in ["postinst", "prerm", "postrm"] {
        let path = control_dir.join(script);
        fs::copy(packaging.join("debian").join(script), &path)?;
        set_mode(&path, 0o755)?;
    }
    let conffiles = control_dir.join("conffiles");
    fs::write(
        &conffiles,
        "/etc/resonance/resonance.toml\n/etc/default/resonance\n",
    )?;
    set_mode(&conffiles, 0o644)?;
    let md5sums = md5sums(&stage)?;
    let md5_path = control_dir.join("md5sums");
    fs::write(&md5_path, md5sums)?;
    set_mode(&md5_path, 0o644)?;
    let template = fs::read_to_string(packaging.join("debian/control"))?;
    let control = template
        .replace("@VERSION@", &version)
        .replace("@ARCH@", &arch)
        .replace("@DEPENDS@", &shared_library_depends(&out, &bin)?)
        .replace("@INSTALLED_SIZE@", &installed_size_kib(&stage)?.to_string());
    let control_path = control_dir.join("control");
    fs::write(&control_path, control)?;
    set_mode(&control_path, 0o644)?;
    dirs_readable(&stage)?;

    let deb = out.join(format!("resonance_{version}_{arch}.deb"));
    cmd::status(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    eprintln!("xtask: package {}", deb.display());
    Ok(deb)
}

/// The version the binary reports (`resonance 0.1.0`).
fn version(binary: &Path) -> Result<String> {
    let line = text(Command::new(binary).arg("--version"))?;
    match line.split_whitespace().nth(1) {
        Some(version) => Ok(version.to_owned()),
        None => bail!("{} --version printed {line:?}", binary.display()),
    }
}

/// A command's standard output, trimmed.
fn text(command: &mut Command) -> Result<String> {
    let output = cmd::output(command)?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn make_parent(path: &Path) -> Result<()> {
    let parent = path
        .parent()
        .with_context(|| format!("{} has no parent", path.display()))?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// Copies a file in as 0644.
fn install(from: &Path, to: &Path) -> Result<()> {
    make_parent(to)?;
    fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    set_mode(to, 0o644)
}

/// `gzip -9n` in place (no name or time stamp: the same bytes each build).
fn gzip(path: &Path) -> Result<()> {
    cmd::status(Command::new("gzip").args(["-9nf"]).arg(path))
}

/// Every staged folder 0755 whatever the umask (lintian checks them).
fn dirs_readable(dir: &Path) -> Result<()> {
    set_mode(dir, 0o755)?;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            dirs_readable(&path)?;
        }
    }
    Ok(())
}

/// `DEBIAN/md5sums`: every file outside `DEBIAN/` and the conffiles
/// (dpkg keeps those apart), as `md5sum` prints them.
fn md5sums(stage: &Path) -> Result<String> {
    let mut files = Vec::new();
    collect_files(stage, stage, &mut files)?;
    files.retain(|f| !f.starts_with("DEBIAN/") && !f.starts_with("etc/"));
    files.sort();
    let output = cmd::output(Command::new("md5sum").args(&files).current_dir(stage))?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn collect_files(root: &Path, dir: &Path, files: &mut Vec<String>) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(root, &path, files)?;
        } else {
            let relative = path.strip_prefix(root)?;
            files.push(relative.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// The libraries the binary links, as Debian dependencies with versions
/// (`libc6 (>= 2.34), libgcc-s1 (>= 4.2)`), from `dpkg-shlibdeps`.
fn shared_library_depends(out: &Path, binary: &Path) -> Result<String> {
    // dpkg-shlibdeps reads the package's control file from ./debian.
    let work = out.join("shlibdeps");
    fs::create_dir_all(work.join("debian"))?;
    fs::write(
        work.join("debian/control"),
        "Source: resonance\n\nPackage: resonance\nArchitecture: any\n",
    )?;
    let line = text(
        Command::new("dpkg-shlibdeps")
            .arg("-O")
            .arg(binary)
            .current_dir(&work),
    )?;
    match line.strip_prefix("shlibs:Depends=") {
        Some(depends) if !depends.is_empty() => Ok(depends.to_owned()),
        _ => bail!("dpkg-shlibdeps printed {line:?}"),
    }
}

/// `Installed-Size`: the staged files in KiB, as dpkg-gencontrol counts.
fn installed_size_kib(stage: &Path) -> Result<u64> {
    let mut files = Vec::new();
    collect_files(stage, stage, &mut files)?;
    let mut kib = 0;
    for file in files.iter().filter(|f| !f.starts_with("DEBIAN/")) {
        let bytes = fs::metadata(stage.join(file))?.len();
        kib += bytes.div_ceil(1024);
    }
    Ok(kib)
}
