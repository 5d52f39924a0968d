//! The kernel facts the observer builds on, checked wherever the suite runs:
//! on the host and inside each `cargo xtask vm-test` guest.

use std::fs;

/// The observer reads field offsets from the running kernel's own BTF.
#[test]
fn kernel_btf_is_readable() {
    let btf = fs::read("/sys/kernel/btf/vmlinux").expect("reading /sys/kernel/btf/vmlinux");
    // BTF starts with magic 0xeb9f in the machine's byte order.
    assert!(btf.len() > 1024, "kernel BTF is only {} bytes", btf.len());
    assert_eq!(
        u16::from_ne_bytes([btf[0], btf[1]]),
        0xeb9f,
        "bad BTF magic"
    );
}

/// The guest runs the kernel xtask meant to boot (it passes the release in
/// `RESONANCE_EXPECT_KERNEL_RELEASE`); elsewhere the release must be readable.
#[test]
fn kernel_release_is_the_expected_one() {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")
        .expect("reading /proc/sys/kernel/osrelease");
    let release = release.trim();
    assert!(!release.is_empty(), "empty kernel release");
    println!("kernel release: {release}");
    if let Ok(expected) = std::env::var("RESONANCE_EXPECT_KERNEL_RELEASE") {
        assert_eq!(release, expected, "running kernel is not the expected one");
    }
}

/// Tracepoints are listed through tracefs (mounted by the guest init); the
/// syscall tracepoints exist on every kernel we support, while e.g.
/// `sock:sock_send_length` is only on newer ones, so it is just reported.
#[test]
fn tracefs_lists_syscall_tracepoints() {
    let events = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|dir| fs::read_to_string(format!("{dir}/available_events")).ok())
        .expect("no available_events: tracefs is not mounted");
    let has = |event: &str| events.lines().any(|line| line.trim() == event);
    assert!(
        has("syscalls:sys_enter_write"),
        "tracefs lists {} events but not syscalls:sys_enter_write",
        events.lines().count()
    );
    println!(
        "sock:sock_send_length present: {}",
        has("sock:sock_send_length")
    );
}
