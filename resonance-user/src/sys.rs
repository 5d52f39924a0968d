//! Raw system calls of the broker, in one place: creating and sizing the
//! kernel channels ([`pipe`], [`socketpair`], [`set_pipe_size`],
//! [`set_socket_buffers`], [`set_nonblocking`]), reading a connection's
//! credentials ([`peer_cred`]) and the socket file's owner and mode.
//! Frames and `SCM_RIGHTS` live in [`wire`] (shared with the client crate).
//! Every descriptor comes back as an `OwnedFd`.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

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

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `pipe2(O_CLOEXEC | extra)`: (read end, write end). `extra` may hold
/// `O_DIRECT` (packet mode) and `O_NONBLOCK`.
pub fn pipe(extra: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into a live array.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | extra) })?;
    // SAFETY: both descriptors are new and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `socketpair(AF_UNIX, kind | SOCK_CLOEXEC | extra)`.
pub fn socketpair(kind: libc::c_int, extra: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into a live array.
    check(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            kind | libc::SOCK_CLOEXEC | extra,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: both descriptors are new and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The inode number behind `fd` (what the probes key a pipe or socket by).
pub fn inode(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: an all-zero stat is a valid value for fstat to overwrite.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into the stat we own; the fd is borrowed live.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.st_ino)
}

/// `F_SETPIPE_SZ`; returns the capacity the kernel actually set (a power of
/// two pages, at least the request).
pub fn set_pipe_size(fd: BorrowedFd<'_>, bytes: u32) -> io::Result<u32> {
    // SAFETY: fcntl on a live descriptor.
    let set =
        check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, bytes as libc::c_int) })?;
    Ok(set as u32)
}

/// `SO_SNDBUF` and `SO_RCVBUF` (the kernel doubles the value for its own
/// bookkeeping).
pub fn set_socket_buffers(fd: BorrowedFd<'_>, bytes: u32) -> io::Result<()> {
    let value = bytes as libc::c_int;
    for option in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: setsockopt reads one int from a live variable.
        check(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&value as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        })?;
    }
    Ok(())
}

/// Sets `O_NONBLOCK` on a descriptor (a file status flag: it travels with
/// the open file description to whoever receives it).
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl on a live descriptor.
    let flags = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

/// `SO_PEERCRED` of a connected Unix socket.
pub fn peer_cred(fd: BorrowedFd<'_>) -> io::Result<Cred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into a live ucred.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok(Cred {
        pid: cred.pid as u32,
        uid: cred.uid,
        gid: cred.gid,
    })
}

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
    // SAFETY: setting a signal's disposition to the default has no other
    // effect on this process.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// Lifts `RLIMIT_MEMLOCK`: kernels before 5.11 charge BPF maps to it (the
/// observer's maps take tens of MiB, far above the usual 64 KiB or 8 MiB),
/// later ones to the memory cgroup instead. Fails without
/// `CAP_SYS_RESOURCE`, which newer kernels do not need.
pub fn raise_memlock_limit() -> io::Result<()> {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads one valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The kernel's page size, which is also the size of one pipe buffer slot.
pub fn page_size() -> io::Result<u64> {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).map_err(|_| io::Error::last_os_error())
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
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
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

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Drops every capability but `keep` from this process's bounding,
/// ambient, inheritable, permitted and effective sets, for good: nothing
/// the process runs later can regain them. Returns the capabilities still
/// held (those of `keep` it had).
///
/// The bounding set is trimmed only when the process holds `CAP_SETPCAP`
/// (root does; an agent started as the `resonance` user with ambient
/// capabilities does not, and needs not: once its ambient and inheritable
/// sets are empty, nothing it runs can gain a capability from it).
pub fn drop_capabilities_except(keep: &[u32]) -> io::Result<u64> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40)
        .min(63);
    let keep_mask = keep.iter().fold(0u64, |mask, &cap| mask | (1u64 << cap));
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two CapData words for version 3, which `data`
    // holds; the header is valid.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let effective = u64::from(data[0].effective) | (u64::from(data[1].effective) << 32);
    if effective & (1u64 << cap::SETPCAP) != 0 {
        for cap in 0..=last {
            if keep_mask & (1u64 << cap) == 0 {
                // SAFETY: prctl with integer arguments only.
                let rc =
                    unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
                // EINVAL: a capability this kernel does not know.
                if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                    return Err(io::Error::last_os_error());
                }
            }
        }
    }
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let permitted = u64::from(data[0].permitted) | (u64::from(data[1].permitted) << 32);
    let held = permitted & keep_mask;
    let words = [held as u32, (held >> 32) as u32];
    for (word, value) in data.iter_mut().zip(words) {
        *word = CapData {
            effective: value,
            permitted: value,
            inheritable: 0,
        };
    }
    // SAFETY: as for capget; capset only reads.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(held)
}
