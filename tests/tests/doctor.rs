//! `resonance doctor` on this host: as root it finds what the host has
//! (the running kernel, its BTF, the probe modes that load here) and exits
//! 0; as nobody it says which capabilities are missing, what to do, and
//! exits non-zero.

use std::process::Command;

use resonance_tests::resonance_bin;

#[test]
fn as_root_the_doctor_reports_this_host_and_the_mode_the_agent_uses() {
    let output = Command::new(resonance_bin())
        .args(["doctor", "--json"])
        .output()
        .expect("running resonance doctor");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let checks: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("doctor --json is JSON");
    let find = |what: &str| {
        checks
            .as_array()
            .and_then(|all| all.iter().find(|c| c["what"] == what))
            .unwrap_or_else(|| panic!("no {what} check in {checks}"))
            .clone()
    };
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(find("kernel")["found"], release.trim());
    assert_eq!(find("kernel BTF")["status"], "ok");
    assert_eq!(find("capabilities")["status"], "ok");
    // The same choice the observer makes: the first mode that loads.
    let used: Vec<_> = checks
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["found"]
                .as_str()
                .is_some_and(|f| f.contains("the agent uses this one"))
        })
        .collect();
    assert_eq!(used.len(), 1, "{checks}");
    let observed = Command::new(resonance_bin())
        .args(["observe", "--duration", "1s"])
        .env_remove("RESONANCE_PROBE_MODE")
        .output()
        .expect("running resonance observe");
    let log = String::from_utf8_lossy(&observed.stderr);
    let mode = used[0]["what"]
        .as_str()
        .unwrap()
        .trim_start_matches("mode ");
    assert!(
        log.contains(&format!("probes attached in {mode} mode")),
        "doctor says {mode}; observe logged: {log}"
    );
    let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size").unwrap();
    assert!(
        find("pipe limits")["found"]
            .as_str()
            .unwrap()
            .contains(&format!("largest pipe {} bytes", max.trim())),
        "{checks}"
    );
}

/// Run from a copy anyone can reach: the checkout may lie in a folder
/// only root can enter.
#[test]
fn as_nobody_the_doctor_names_the_missing_capabilities_and_fails() {
    use std::os::unix::{fs::PermissionsExt, process::CommandExt};
    let dir = std::env::temp_dir().join(format!("resonance-doctor-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).expect("creating a folder for the copy");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let binary = dir.join("resonance");
    std::fs::copy(resonance_bin(), &binary).expect("copying resonance");
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = Command::new(&binary)
        .arg("doctor")
        .uid(65534)
        .gid(65534)
        .output()
        .expect("running resonance doctor as nobody");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stdout}");
    assert!(
        stderr.contains("cannot run here yet: capabilities"),
        "{stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains("MISSING") && l.contains("capabilities"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        lines[at + 1].contains("-> run as root or with CAP_BPF and CAP_PERFMON"),
        "{stdout}"
    );
    assert!(stdout.contains("not tried without privileges"), "{stdout}");
}
