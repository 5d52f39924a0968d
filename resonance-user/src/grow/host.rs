//! The host side of growing a pipe: borrowing another process's
//! descriptor (`pidfd_open`, `pidfd_getfd`), checking it is still the pipe
//! the probes reported, resizing it, and reading from `/proc` who holds a
//! pipe and how many pipes a user has.

use std::{
    collections::{HashMap, HashSet},
    fs, io,
    os::{
        fd::{AsFd, OwnedFd},
        unix::fs::MetadataExt,
    },
};

use nix::{errno::Errno, fcntl::OFlag, sys::stat};
use resonance_common::{ChannelKind, fifo_end};

use super::decide::Limits;
use crate::{decode::End, sys};

/// Why a pipe could not be borrowed: each a counted non-event.
#[derive(Debug, thiserror::Error)]
pub enum BorrowError {
    /// The process exited before the agent got to it.
    #[error("the process has exited")]
    ProcessGone,
    /// The descriptor was closed, or now names something else.
    #[error("the descriptor no longer refers to that pipe")]
    PipeClosed,
    /// The kernel refused the agent access to the process's descriptors.
    #[error("access to the process's descriptors refused: {0}")]
    Refused(io::Error),
    /// Anything else.
    #[error("{0}")]
    Failed(io::Error),
}

/// A duplicate of another process's pipe descriptor; dropping it closes
/// only the duplicate.
#[derive(Debug)]
pub struct BorrowedPipe {
    fd: OwnedFd,
}

impl BorrowedPipe {
    /// Duplicates descriptor `fd` of process `pid`, if it still refers to
    /// the pipe or FIFO `end`.
    pub fn borrow(pid: u32, fd: i32, end: End) -> Result<Self, BorrowError> {
        let pidfd = sys::pidfd_open(pid).map_err(|error| match errno(&error) {
            Errno::ESRCH => BorrowError::ProcessGone,
            Errno::EPERM | Errno::EACCES => BorrowError::Refused(error),
            _ => BorrowError::Failed(error),
        })?;
        let duplicate =
            sys::pidfd_getfd(pidfd.as_fd(), fd).map_err(|error| match errno(&error) {
                Errno::EBADF => BorrowError::PipeClosed,
                Errno::ESRCH => BorrowError::ProcessGone,
                Errno::EPERM | Errno::EACCES => BorrowError::Refused(error),
                _ => BorrowError::Failed(error),
            })?;
        let stat = nix::sys::stat::fstat(duplicate.as_fd())
            .map_err(|error| BorrowError::Failed(error.into()))?;
        let is_fifo = is_fifo(stat.st_mode);
        if !is_fifo || end_id(end.kind, stat.st_dev, stat.st_ino) != Some(end.id) {
            return Err(BorrowError::PipeClosed);
        }
        Ok(Self { fd: duplicate })
    }

    /// Its capacity, bytes.
    pub fn size(&self) -> io::Result<u64> {
        sys::pipe_size(self.fd.as_fd()).map(u64::from)
    }

    /// Sets its capacity; returns what the kernel set.
    pub fn resize(&self, bytes: u64) -> io::Result<u64> {
        let request = u32::try_from(bytes).unwrap_or(u32::MAX);
        sys::set_pipe_size(self.fd.as_fd(), request).map(u64::from)
    }
}

/// The errno behind an I/O error (0 when it has none).
fn errno(error: &io::Error) -> Errno {
    Errno::from_raw(error.raw_os_error().unwrap_or(0))
}

/// Whether a `st_mode` is a pipe's or FIFO's.
fn is_fifo(mode: u32) -> bool {
    let format = stat::SFlag::S_IFMT.bits();
    mode & format == stat::SFlag::S_IFIFO.bits()
}

/// The probes' end id of a pipe (its pipefs inode) or FIFO (device and
/// inode, see [`fifo_end`]).
fn end_id(kind: ChannelKind, dev: u64, ino: u64) -> Option<u64> {
    match kind {
        ChannelKind::Pipe => Some(ino),
        ChannelKind::Fifo => {
            // The kernel's s_dev packs major << 20 | minor; userspace's
            // dev_t packs them another way.
            let major = u32::try_from(stat::major(dev)).ok()?;
            let minor = u32::try_from(stat::minor(dev)).ok()?;
            Some(fifo_end((major << 20) | minor, ino))
        }
        _ => None,
    }
}

/// `/proc/sys/fs`'s pipe limits and the page size.
pub fn read_limits() -> Limits {
    Limits {
        pipe_max_size: u64::from(sys::pipe_max_size()),
        user_pages_soft: sys::sysctl_u64("/proc/sys/fs/pipe-user-pages-soft").unwrap_or(0),
        user_pages_hard: sys::sysctl_u64("/proc/sys/fs/pipe-user-pages-hard").unwrap_or(0),
        page_size: sys::page_size().unwrap_or(4096),
    }
}

/// Who holds a pipe, and how many pipes its writer's user has, from one
/// walk of `/proc`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holders {
    /// Processes holding it open for reading.
    pub readers: Vec<u32>,
    /// Processes holding it open for writing.
    pub writers: Vec<u32>,
    /// Distinct anonymous pipes held by the processes of the user asked
    /// about (each a guess of its default size: what the others were set
    /// to is not visible without borrowing each).
    pub user_pipes: u64,
    /// Owner uid of the writer process.
    pub uid: Option<u32>,
}

/// Walks `/proc` for the holders of `end` and the pipes of `writer`'s
/// user. Processes that vanish during the walk are skipped.
pub fn holders(end: End, writer: u32) -> Holders {
    let uid = fs::metadata(format!("/proc/{writer}"))
        .ok()
        .map(|m| m.uid());
    let mut found = Holders {
        uid,
        ..Holders::default()
    };
    let mut user_pipes = HashSet::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let owner = entry.metadata().ok().map(|m| m.uid());
        let same_user = owner.is_some() && owner == uid;
        for (fd, target) in descriptors(pid) {
            let id = match target.strip_prefix("pipe:[") {
                Some(rest) => {
                    let ino = rest.trim_end_matches(']').parse::<u64>().ok();
                    if same_user && let Some(ino) = ino {
                        user_pipes.insert(ino);
                    }
                    if end.kind != ChannelKind::Pipe {
                        continue;
                    }
                    ino
                }
                None if end.kind == ChannelKind::Fifo && target.starts_with('/') => {
                    fs::metadata(format!("/proc/{pid}/fd/{fd}"))
                        .ok()
                        .filter(|m| is_fifo(m.mode()))
                        .and_then(|m| end_id(ChannelKind::Fifo, m.dev(), m.ino()))
                }
                None => continue,
            };
            if id != Some(end.id) {
                continue;
            }
            match access_mode(pid, fd) {
                Some(OFlag::O_RDONLY) => push_once(&mut found.readers, pid),
                Some(OFlag::O_WRONLY) => push_once(&mut found.writers, pid),
                Some(_) => {
                    push_once(&mut found.readers, pid);
                    push_once(&mut found.writers, pid);
                }
                None => {}
            }
        }
    }
    found.user_pipes = user_pipes.len() as u64;
    found
}

/// Whether `pid` still holds pipe or FIFO `end` open.
pub fn holds(pid: u32, end: End) -> bool {
    descriptors(pid)
        .into_iter()
        .any(|(fd, target)| match end.kind {
            ChannelKind::Pipe => target == format!("pipe:[{}]", end.id),
            _ => {
                fs::metadata(format!("/proc/{pid}/fd/{fd}"))
                    .ok()
                    .and_then(|m| end_id(end.kind, m.dev(), m.ino()))
                    == Some(end.id)
            }
        })
}

/// `pid`'s descriptors and what each links to.
fn descriptors(pid: u32) -> Vec<(u32, String)> {
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let fd = entry.file_name().to_str()?.parse().ok()?;
            let target = fs::read_link(entry.path()).ok()?;
            Some((fd, target.to_string_lossy().into_owned()))
        })
        .collect()
}

/// `O_RDONLY`, `O_WRONLY` or `O_RDWR` of `pid`'s descriptor `fd`, from
/// the `flags:` line (octal) of its fdinfo.
fn access_mode(pid: u32, fd: u32) -> Option<OFlag> {
    let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    parse_access_mode(&info)
}

fn parse_access_mode(fdinfo: &str) -> Option<OFlag> {
    let flags = fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("flags:"))?
        .trim();
    let flags = OFlag::from_bits_retain(i32::from_str_radix(flags, 8).ok()?);
    Some(flags & OFlag::O_ACCMODE)
}

fn push_once(pids: &mut Vec<u32>, pid: u32) {
    if !pids.contains(&pid) {
        pids.push(pid);
    }
}

/// Holders walks kept for a short while: the reports of one pipe come in
/// a burst (its 1st, 2nd, 4th, ... blocked write), and one walk serves
/// them all.
#[derive(Debug, Default)]
pub struct HoldersCache {
    by_end: HashMap<(u64, u32), (u64, Holders)>,
}

impl HoldersCache {
    /// How long a walk stays good, ns.
    const FRESH_NS: u64 = 1_000_000_000;

    /// The holders of `end` for `writer`, walking `/proc` unless a walk at
    /// most a second old answers.
    pub fn get(&mut self, end: End, writer: u32, now_ns: u64) -> Holders {
        self.by_end
            .retain(|_, (at, _)| now_ns.saturating_sub(*at) < Self::FRESH_NS);
        self.by_end
            .entry((end.id, writer))
            .or_insert_with(|| (now_ns, holders(end, writer)))
            .1
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_access_mode_comes_from_the_octal_flags_line() {
        let reader = "pos:\t0\nflags:\t0100000\nmnt_id:\t15\nino:\t12345\n";
        let writer = "pos:\t0\nflags:\t02000001\nmnt_id:\t15\n";
        assert_eq!(parse_access_mode(reader), Some(OFlag::O_RDONLY));
        assert_eq!(parse_access_mode(writer), Some(OFlag::O_WRONLY));
        assert_eq!(parse_access_mode("pos:\t0\n"), None);
        assert_eq!(parse_access_mode("flags:\tzz\n"), None);
    }

    #[test]
    fn a_pipe_borrowed_from_this_process_is_resized_and_a_stale_one_refused() {
        let (read, write) = sys::pipe(false, false).expect("pipe");
        let ino = sys::inode(read.as_fd()).expect("inode");
        let end = End {
            kind: ChannelKind::Pipe,
            id: ino,
            peer: ino,
        };
        let pid = std::process::id();
        use std::os::fd::AsRawFd;
        let borrowed = BorrowedPipe::borrow(pid, write.as_raw_fd(), end).expect("borrow");
        let before = borrowed.size().expect("size");
        let set = borrowed.resize(before * 2).expect("resize");
        assert_eq!(set, before * 2);
        assert_eq!(
            u64::from(sys::pipe_size(read.as_fd()).expect("size")),
            before * 2
        );
        let other = End { id: ino + 1, ..end };
        assert!(matches!(
            BorrowedPipe::borrow(pid, write.as_raw_fd(), other),
            Err(BorrowError::PipeClosed)
        ));
        let holders = holders(end, pid);
        assert_eq!(holders.readers, vec![pid]);
        assert_eq!(holders.writers, vec![pid]);
        assert!(holders.user_pipes >= 1);
        assert!(holds(pid, end));
        drop((read, write));
        // The borrowed duplicate still holds it.
        assert!(holds(pid, end));
        drop(borrowed);
        assert!(!holds(pid, end));
    }
}
