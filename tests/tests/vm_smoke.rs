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
