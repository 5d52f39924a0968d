//! The agent's system calls, in one place: creating and sizing the kernel
//! channels ([`pipe`], [`socketpair`], [`set_pipe_size`],
//! [`set_socket_buffers`], [`set_nonblocking`]), reading a connection's
//! credentials ([`peer_cred`]), limits, clocks and capabilities. Frames and
//! `SCM_RIGHTS` live in [`wire`] (shared with the client crate). Every
//! descriptor comes back as an `OwnedFd`.
//!
//! Through nix's safe wrappers, and the `caps` crate for the capability
//! sets, which nix does not cover (`capget`, `capset`, `PR_CAPBSET_DROP`,
//! `PR_CAP_AMBIENT`); `libc::syscall` only for [`pidfd_open`] and
//! [`pidfd_getfd`], which nix 0.32 lacks.

use std::{
    io,
    os::fd::{BorrowedFd, OwnedFd},
    path::Path,
};

use nix::{
    fcntl::{FcntlArg, OFlag, fcntl},
    sys::socket::{self, AddressFamily, SockFlag, sockopt},
};

pub use nix::sys::socket::SockType;
pub use resonance_client::wire;

/// Credentials of the process at the other end of a Unix socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cred {
    /// Process id (at connect time).
    pub pid: u32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// `pipe2(O_CLOEXEC)`: (read end, write end); `packet` adds `O_DIRECT`
/// (each write one packet), `nonblocking` `O_NONBLOCK`.
pub fn pipe(packet: bool, nonblocking: bool) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut flags = OFlag::O_CLOEXEC;
    flags.set(OFlag::O_DIRECT, packet);
    flags.set(OFlag::O_NONBLOCK, nonblocking);
    Ok(nix::unistd::pipe2(flags)?)
}

/// `socketpair(AF_UNIX, kind | SOCK_CLOEXEC)`, `SOCK_NONBLOCK` too when
/// `nonblocking`.
pub fn socketpair(kind: SockType, nonblocking: bool) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut flags = SockFlag::SOCK_CLOEXEC;
    flags.set(SockFlag::SOCK_NONBLOCK, nonblocking);
    Ok(socket::socketpair(AddressFamily::Unix, kind, None, flags)?)
}

/// The inode number behind `fd` (what the probes key a pipe or socket by).
pub fn inode(fd: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(nix::sys::stat::fstat(fd)?.st_ino)
}

/// `F_SETPIPE_SZ`; returns the capacity the kernel actually set (a power of
/// two pages, at least the request).
pub fn set_pipe_size(fd: BorrowedFd<'_>, bytes: u32) -> io::Result<u32> {
    let request = i32::try_from(bytes).unwrap_or(i32::MAX);
    let set = fcntl(fd, FcntlArg::F_SETPIPE_SZ(request))?;
    Ok(u32::try_from(set).unwrap_or(0))
}

/// `F_GETPIPE_SZ`: the pipe's capacity in bytes.
pub fn pipe_size(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let size = fcntl(fd, FcntlArg::F_GETPIPE_SZ)?;
    Ok(u32::try_from(size).unwrap_or(0))
}

/// `pidfd_open(pid, 0)`: a descriptor that names this process and no
/// later one that reuses its pid. Through `libc::syscall`: nix 0.32 has no
/// wrapper for it.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes two integers and touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    owned(fd)
}

/// `pidfd_getfd(pidfd, fd, 0)`: a duplicate, in this process, of
/// descriptor `fd` of the process `pidfd` names (it needs ptrace access to
/// it: `CAP_SYS_PTRACE` for other users' processes). The duplicate is
/// close-on-exec. Through `libc::syscall`: nix 0.32 has no wrapper for it.
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, fd: i32) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_getfd takes three integers and touches no memory of
    // ours; `pidfd` is borrowed, so it stays open during the call.
    let duplicate = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    owned(duplicate)
}

/// A raw `syscall` result that is a new descriptor, as an `OwnedFd`.
fn owned(result: libc::c_long) -> io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(result).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned `fd` as a new descriptor of ours,
    // which nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A number from a `/proc/sys` file, `None` if unreadable.
pub fn sysctl_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `SO_SNDBUF` and `SO_RCVBUF` (the kernel doubles the value for its own
/// bookkeeping).
pub fn set_socket_buffers(fd: BorrowedFd<'_>, bytes: u32) -> io::Result<()> {
    let value = bytes as usize;
    socket::setsockopt(&fd, sockopt::SndBuf, &value)?;
    socket::setsockopt(&fd, sockopt::RcvBuf, &value)?;
    Ok(())
}

/// Sets `O_NONBLOCK` on a descriptor (a file status flag: it travels with
/// the open file description to whoever receives it).
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// `SO_PEERCRED` of a connected Unix socket.
pub fn peer_cred(fd: BorrowedFd<'_>) -> io::Result<Cred> {
    let cred = socket::getsockopt(&fd, sockopt::PeerCredentials)?;
    Ok(Cred {
        pid: u32::try_from(cred.pid()).unwrap_or(0),
        uid: cred.uid(),
        gid: cred.gid(),
    })
}

pub use wire::shutdown;

/// `/proc/sys/fs/pipe-max-size`: the largest pipe an unprivileged (no
/// `CAP_SYS_RESOURCE`) process may ask for; 1 MiB if unreadable.
pub fn pipe_max_size() -> u32 {
    std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20)
}

/// Restores SIGPIPE's default action (Rust starts programs with it
/// ignored), so writing to a closed pipe ends the process as it ends `cat`.
pub fn default_sigpipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: the default disposition installs no handler of ours, so
    // nothing can run in signal context (the reason nix marks this unsafe).
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

/// Lifts `RLIMIT_MEMLOCK`: kernels before 5.11 charge BPF maps to it (the
/// observer's maps take tens of MiB, far above the usual 64 KiB or 8 MiB),
/// later ones to the memory cgroup instead. Fails without
/// `CAP_SYS_RESOURCE`, which newer kernels do not need.
pub fn raise_memlock_limit() -> io::Result<()> {
    use nix::sys::resource::{RLIM_INFINITY, Resource, setrlimit};
    Ok(setrlimit(
        Resource::RLIMIT_MEMLOCK,
        RLIM_INFINITY,
        RLIM_INFINITY,
    )?)
}

/// The kernel's page size, which is also the size of one pipe buffer slot.
pub fn page_size() -> io::Result<u64> {
    use nix::unistd::{SysconfVar, sysconf};
    sysconf(SysconfVar::PAGE_SIZE)?
        .and_then(|size| u64::try_from(size).ok())
        .ok_or_else(|| io::Error::other("sysconf(_SC_PAGESIZE) gave no size"))
}

/// The systemd unit of a process (the last `*.service` or `*.scope`
/// component of its cgroup path), if any.
pub fn systemd_unit(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    path.rsplit('/')
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
        .map(str::to_owned)
}

/// The gid of a group named in `/etc/group`, or a numeric gid.
pub fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse() {
        return Some(gid);
    }
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.parse().ok()
    })
}

/// Sets a socket file's mode and, if given, its group.
pub fn set_socket_access(path: &Path, mode: u32, gid: Option<u32>) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}
/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    use nix::time::{ClockId, clock_gettime};
    // CLOCK_MONOTONIC cannot fail on Linux; 0 would only make a time
    // look old.
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |ts| {
        (ts.tv_sec() as u64).saturating_mul(1_000_000_000) + ts.tv_nsec() as u64
    })
}

/// Capability numbers (`linux/capability.h`) the agent names.
pub mod cap {
    /// Read any file and search any folder (other users' `/proc/PID`).
    pub const DAC_READ_SEARCH: u32 = 2;
    /// Changing capability sets beyond one's own: the bounding set.
    pub const SETPCAP: u32 = 8;
    /// ptrace access checks: `/proc/PID/exe` of others, `pidfd_getfd`.
    pub const SYS_PTRACE: u32 = 19;
    /// Resource limits: RLIMIT_MEMLOCK, pipes past pipe-max-size.
    pub const SYS_RESOURCE: u32 = 24;
    /// The `bpf()` system call, which kernels with
    /// `unprivileged_bpf_disabled` refuse without it even on a map the
    /// process already holds.
    pub const BPF: u32 = 39;
}

/// Drops every capability but `keep` from this thread's bounding,
/// ambient, inheritable, permitted and effective sets, for good: nothing
/// it runs later can regain them. Returns the capabilities still held
/// (those of `keep` it had) as a bit mask.
///
/// The bounding set is trimmed only when the thread holds `CAP_SETPCAP`
/// (root does; an agent started as the `resonance` user with ambient
/// capabilities does not, and needs not: once its ambient and inheritable
/// sets are empty, nothing it runs can gain a capability from it).
pub fn drop_capabilities_except(keep: &[u32]) -> io::Result<u64> {
    use caps::{CapSet, Capability, CapsHashSet};
    let failed = |error: caps::errors::CapsError| io::Error::other(error.to_string());
    let keep: CapsHashSet = caps::all()
        .into_iter()
        .filter(|cap| keep.contains(&u32::from(cap.index())))
        .collect();
    let effective = caps::read(None, CapSet::Effective).map_err(failed)?;
    if effective.contains(&Capability::CAP_SETPCAP) {
        for cap in caps::all() {
            // A capability this kernel does not know reads as absent.
            if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
                caps::drop(None, CapSet::Bounding, cap).map_err(failed)?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(failed)?;
    caps::clear(None, CapSet::Inheritable).map_err(failed)?;
    let permitted = caps::read(None, CapSet::Permitted).map_err(failed)?;
    let held: CapsHashSet = permitted.intersection(&keep).copied().collect();
    // Effective first: it must stay within the permitted set at each step.
    caps::set(None, CapSet::Effective, &held).map_err(failed)?;
    caps::set(None, CapSet::Permitted, &held).map_err(failed)?;
    Ok(held.iter().fold(0, |mask, cap| mask | cap.bitmask()))
}
