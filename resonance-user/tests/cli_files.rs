//! What a package installs besides the binary, made by the binary itself:
//! shell completions that real shells load and complete with, and man
//! pages that groff renders without a warning, one per subcommand.

use std::process::Command;

fn resonance(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_resonance"))
        .args(args)
        .output()
        .expect("running resonance")
}

/// The subcommands `resonance --help` lists.
fn subcommands() -> Vec<String> {
    let help = String::from_utf8(resonance(&["--help"]).stdout).unwrap();
    help.lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// A program the test needs, or a loud failure saying which Debian package
/// has it (`cargo xtask test` installs them).
fn needed(name: &str, package: &str) -> String {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .expect("running sh");
    assert!(
        found.status.success(),
        "{name} is not installed: `apt-get install {package}` (cargo xtask test installs it)"
    );
    String::from_utf8(found.stdout).unwrap().trim().to_owned()
}

fn script(shell: &str) -> std::path::PathBuf {
    let out = resonance(&["completions", shell]);
    assert!(out.status.success(), "{out:?}");
    let path = std::env::temp_dir().join(format!(
        "resonance-completion-{}.{shell}",
        std::process::id()
    ));
    std::fs::write(&path, out.stdout).unwrap();
    path
}

#[test]
fn bash_completes_subcommands_and_options() {
    let bash = needed("bash", "bash");
    let path = script("bash");
    let complete = |words: &str| -> String {
        let program = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 )); \
             _resonance resonance \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            path.display()
        );
        let out = Command::new(&bash).args(["-c", &program]).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let first = complete("resonance ob");
    assert_eq!(first.trim(), "observe", "{first}");
    let every = complete("resonance ''");
    for sub in subcommands() {
        assert!(
            every.lines().any(|w| w == sub),
            "{sub} missing from {every}"
        );
    }
    let option = complete("resonance replay --thr");
    assert_eq!(option.trim(), "--threshold", "{option}");
    let _ = std::fs::remove_file(path);
}

#[test]
fn fish_completes_subcommands() {
    let fish = needed("fish", "fish");
    let path = script("fish");
    let out = Command::new(&fish)
        .args([
            "--no-config",
            "-c",
            &format!("source {}; complete -C 'resonance hist'", path.display()),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.starts_with("history"), "{stdout}");
    let _ = std::fs::remove_file(path);
}

#[test]
fn zsh_loads_the_completion_function() {
    let zsh = needed("zsh", "zsh");
    let path = script("zsh");
    let program = format!(
        "autoload -U compinit && compinit -u -D && source {} && whence -w _resonance",
        path.display()
    );
    let out = Command::new(&zsh)
        .args(["-f", "-c", &program])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("_resonance: function"), "{stdout}");
    let _ = std::fs::remove_file(path);
}

#[test]
fn an_unknown_shell_is_refused_with_the_known_ones() {
    let out = resonance(&["completions", "tcsh"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bash") && stderr.contains("fish"),
        "{stderr}"
    );
}

#[test]
fn every_subcommand_has_a_man_page_groff_renders_cleanly() {
    needed("groff", "groff-base");
    needed("lexgrog", "man-db");
    let dir = std::env::temp_dir().join(format!("resonance-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = resonance(&["manpages", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let mut expected: Vec<String> = subcommands()
        .iter()
        .map(|sub| format!("resonance-{sub}.1"))
        .collect();
    expected.push("resonance.1".to_owned());
    expected.sort();
    let mut written: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(written, expected);
    for page in &written {
        let path = dir.join(page);
        let check = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            check.status.success() && check.stderr.is_empty(),
            "{page}: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        // What mandb indexes for whatis and apropos.
        let name = page.trim_end_matches(".1");
        let indexed = Command::new("lexgrog").arg(&path).output().unwrap();
        let indexed = String::from_utf8_lossy(&indexed.stdout);
        assert!(
            indexed.contains(&format!("\"{name} - ")),
            "{page}: lexgrog reads {indexed}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The systemd unit the package installs: `systemd-analyze verify` accepts
/// it (with the binary and its man pages where the unit says they are,
/// here the built binary and pages made by it), and `systemd-analyze
/// security` rates it at most as exposed as Debian's own
/// `prometheus.service`, rated in the same run (4.0 "OK" on Debian 12),
/// and at most 3.0.
#[test]
fn the_unit_verifies_and_is_no_more_exposed_than_debians_prometheus() {
    let analyze = needed("systemd-analyze", "systemd");
    let prometheus = std::path::Path::new("/lib/systemd/system/prometheus.service");
    assert!(
        prometheus.is_file(),
        "no {}: `apt-get install prometheus` (cargo xtask test installs it)",
        prometheus.display()
    );
    let dir = std::env::temp_dir().join(format!("resonance-unit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("man/man1")).unwrap();
    let pages = resonance(&["manpages", dir.join("man/man1").to_str().unwrap()]);
    assert!(pages.status.success(), "{pages:?}");
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/resonance.service"
    ))
    .expect("reading packaging/resonance.service");
    assert!(unit.contains("ExecStart=/usr/bin/resonance run"), "{unit}");
    let path = dir.join("resonance.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/resonance", env!("CARGO_BIN_EXE_resonance")),
    )
    .unwrap();
    let verify = Command::new(&analyze)
        .arg("verify")
        .arg(&path)
        .env("MANPATH", dir.join("man"))
        .output()
        .unwrap();
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let exposure = |unit: &std::path::Path| -> f64 {
        let out = Command::new(&analyze)
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(unit)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|line| {
                let rest = line.split("Overall exposure level for ").nth(1)?;
                rest.split(": ")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no exposure level for {}: {text}", unit.display()))
    };
    let ours = exposure(&path);
    let theirs = exposure(prometheus);
    assert!(
        ours <= theirs && ours <= 3.0,
        "resonance.service is rated {ours} (at most 3.0 wanted), Debian's prometheus.service {theirs}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
