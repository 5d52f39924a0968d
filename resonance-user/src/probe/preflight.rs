//! What the machine must offer before anything is loaded, checked once so
//! the user gets one clear sentence instead of a verifier log.

use std::{fs, path::Path};

/// Where the running kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Something the machine lacks.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// Neither root nor the BPF capabilities.
    #[error(
        "resonance needs root (or CAP_BPF and CAP_PERFMON) to load its eBPF probes; \
         run it with sudo"
    )]
    NotPrivileged,
    /// tracefs is not mounted and mounting it failed.
    #[error(
        "tracefs is not mounted at {TRACEFS} and mounting it failed ({0}): \
         resonance attaches to syscall tracepoints listed there"
    )]
    NoTracefs(std::io::Error),
    /// No `/sys/kernel/btf/vmlinux`.
    #[error(
        "this kernel publishes no BTF ({VMLINUX_BTF} is missing; it needs \
         CONFIG_DEBUG_INFO_BTF=y): resonance reads kernel struct layouts from it"
    )]
    NoBtf,
}

/// Where tracepoint ids are read from.
pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Checks privileges and BTF, and mounts tracefs if nobody has.
pub fn preflight() -> Result<(), PreflightError> {
    if !has_bpf_privileges() {
        return Err(PreflightError::NotPrivileged);
    }
    if !Path::new(VMLINUX_BTF).is_file() {
        return Err(PreflightError::NoBtf);
    }
    ensure_tracefs()
}

/// Minimal hosts and VM guests often boot without tracefs mounted; the
/// kernel has it, it just is not visible. Mounting it is what `perf` and
/// `bpftrace` would ask the admin to do by hand.
fn ensure_tracefs() -> Result<(), PreflightError> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(());
    }
    nix::mount::mount(
        Some("tracefs"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|errno| PreflightError::NoTracefs(errno.into()))?;
    log::info!("mounted tracefs at {TRACEFS}");
    Ok(())
}

fn has_bpf_privileges() -> bool {
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let Some(effective) = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
    else {
        return false;
    };
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}
