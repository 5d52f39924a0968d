//! The Debian package as a sysadmin meets it: lintian's verdict, a real
//! `dpkg -i` into this machine, the installed binary, unit, man pages and
//! completions, then `dpkg -r` (only the conffiles stay) and `dpkg --purge`
//! (nothing stays). `cargo xtask test` builds the package first and names
//! it in `RESONANCE_DEB`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// The variable `cargo xtask test` names the package in.
const DEB_ENV: &str = "RESONANCE_DEB";

const CONFFILES: &[&str] = &["/etc/resonance/resonance.toml", "/etc/default/resonance"];

fn package() -> PathBuf {
    let path = std::env::var_os(DEB_ENV).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{DEB_ENV} names no package: run `cargo xtask test`, or `cargo xtask package` and set {DEB_ENV} to the .deb")
    });
    assert!(path.is_file(), "{DEB_ENV}={} is no file", path.display());
    path
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// dpkg's status word for the package (`install ok installed`,
/// `deinstall ok config-files`), or empty when dpkg does not know it.
fn status() -> String {
    let out = run("dpkg-query", &["-W", "-f=${Status}", "resonance"]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Whether anything (a file, or a link, even a dangling one) is at `path`.
fn exists(path: &str) -> bool {
    Path::new(path).symlink_metadata().is_ok()
}

#[test]
fn the_package_passes_lintian_installs_works_and_leaves_nothing_on_purge() {
    let deb = package();
    let deb = deb.to_str().expect("a UTF-8 package path");

    // lintian, pedantic; every override is in packaging/debian with why.
    let lintian = run("lintian", &["--pedantic", "--no-tag-display-limit", deb]);
    let tags = String::from_utf8_lossy(&lintian.stdout);
    assert!(
        lintian.status.success() && tags.trim().is_empty(),
        "lintian:\n{tags}{}",
        String::from_utf8_lossy(&lintian.stderr)
    );

    // A leftover of an interrupted run would make this test about it.
    if !status().is_empty() {
        ok("dpkg", &["--purge", "resonance"]);
    }
    ok("dpkg", &["-i", deb]);
    assert_eq!(status(), "install ok installed");
    let files: Vec<String> = ok("dpkg", &["-L", "resonance"])
        .lines()
        .map(str::to_owned)
        .collect();

    let version = ok("/usr/bin/resonance", &["--version"]);
    assert!(version.starts_with("resonance "), "{version}");
    let user = ok("getent", &["passwd", "resonance"]);
    assert!(user.trim_end().ends_with(":/usr/sbin/nologin"), "{user}");
    assert!(
        exists("/etc/systemd/system/multi-user.target.wants/resonance.service"),
        "enabled on installation, as Debian services are"
    );
    // The installed unit, against the installed binary and man pages.
    let verify = run(
        "systemd-analyze",
        &["verify", "/lib/systemd/system/resonance.service"],
    );
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let conffiles = ok("dpkg-query", &["-W", "-f=${Conffiles}", "resonance"]);
    for conffile in CONFFILES {
        assert!(conffile_listed(&conffiles, conffile), "{conffiles}");
    }

    let pages: Vec<&String> = files
        .iter()
        .filter(|f| f.starts_with("/usr/share/man/man1/") && f.ends_with(".1.gz"))
        .collect();
    let subcommands = ok("/usr/bin/resonance", &["--help"]);
    let listed = subcommands
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter(|l| !l.trim_start().starts_with("help"))
        .count();
    assert_eq!(
        pages.len(),
        listed + 1,
        "one page per subcommand: {pages:?}"
    );
    for page in pages {
        let out = Command::new("man")
            .args(["-l", page])
            .env("MANWIDTH", "80")
            .output()
            .expect("man (Debian package man-db)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && out.stderr.is_empty() && text.contains("SYNOPSIS"),
            "man -l {page}:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (shell, script) in [
        ("bash", "/usr/share/bash-completion/completions/resonance"),
        ("zsh", "/usr/share/zsh/vendor-completions/_resonance"),
        (
            "fish",
            "/usr/share/fish/vendor_completions.d/resonance.fish",
        ),
    ] {
        assert!(files.iter().any(|f| f == script), "{script} not packaged");
        ok(shell, &["-n", script]);
    }

    // What the agent would leave in its state folder, for purge to remove.
    std::fs::create_dir_all("/var/lib/resonance").unwrap();
    std::fs::write("/var/lib/resonance/resonance.db", b"history").unwrap();

    ok("dpkg", &["-r", "resonance"]);
    assert_eq!(status(), "deinstall ok config-files");
    for file in &files {
        let path = Path::new(file);
        if CONFFILES.contains(&file.as_str()) {
            assert!(path.is_file(), "{file} is a conffile: it stays on remove");
        } else if path.is_dir() {
            // Shared folders (/usr/share/man/man1) stay; our own only
            // around a conffile.
            let holds_conffile = CONFFILES.iter().any(|c| c.starts_with(&format!("{file}/")));
            assert!(
                !file.contains("resonance") || holds_conffile,
                "{file} left after dpkg -r"
            );
        } else {
            assert!(!exists(file), "{file} left after dpkg -r");
        }
    }
    ok("dpkg", &["--purge", "resonance"]);
    assert_eq!(status(), "", "dpkg still knows the package after purge");
    for path in [
        "/etc/resonance",
        "/etc/default/resonance",
        "/var/lib/resonance",
        "/etc/systemd/system/multi-user.target.wants/resonance.service",
        "/etc/systemd/system/resonance.service",
        "/usr/share/doc/resonance",
    ] {
        assert!(!exists(path), "{path} left after purge");
    }
}

/// Whether `dpkg-query`'s `${Conffiles}` (lines of ` PATH MD5`) lists `path`.
fn conffile_listed(conffiles: &str, path: &str) -> bool {
    conffiles
        .lines()
        .any(|line| line.split_whitespace().next() == Some(path))
}
