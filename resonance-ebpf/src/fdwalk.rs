//! File descriptor → channel end, by walking the current task's file table
//! with offsets from the running kernel's BTF.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use resonance_common::{ChannelKind, fifo_end};

use crate::globals::{offset, offsets_loaded, page_size};

const S_IFMT: u16 = 0o170000;
const S_IFIFO: u16 = 0o010000;
const S_IFSOCK: u16 = 0o140000;
const PIPEFS_MAGIC: u64 = 0x5049_5045;
const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCK_STREAM: u16 = 1;
const SOCK_DGRAM: u16 = 2;
const SOCK_SEQPACKET: u16 = 5;

/// A resolved channel end.
#[derive(Clone, Copy)]
pub struct Object {
    /// What it is.
    pub kind: ChannelKind,
    /// Id of this end (see `FlowKey::end`).
    pub end: u64,
    /// Id of the end data goes to / comes from; 0 = not known.
    pub peer: u64,
    /// Kernel address of the pipe's or FIFO's `pipe_inode_info` (0 for
    /// sockets): only writers follow it, to see whether the pipe has room.
    /// Stable while the descriptor is open (a FIFO's is freed only when its
    /// last opener closes).
    pub pipe: u64,
    /// The pipe's size in slots (`max_usage`) when it was resolved; 0 for
    /// sockets. A hint only: `F_SETPIPE_SZ` may change it later.
    pub slots: u32,
}

/// What a descriptor turned out to be.
#[derive(Clone, Copy)]
pub enum Resolved {
    /// A channel end the observer follows.
    Followed(Object),
    /// An open file of a kind the observer ignores (regular file, tty,
    /// eventfd, a socket of another family, ...).
    Ignored,
    /// Nothing could be told: no such descriptor, or a read failed.
    Unknown,
}

#[inline(always)]
fn read<T>(base: u64, offset: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one fails.
    unsafe { bpf_probe_read_kernel((base + offset) as *const T).ok() }
}

/// The current task (as an address).
#[inline(always)]
pub fn current_task() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_get_current_task() }
}

/// Parent's tgid of the current task (0 if unreadable).
#[inline(always)]
pub fn current_ppid() -> u32 {
    let task = current_task();
    read::<u64>(task, offset!(task_real_parent))
        .and_then(|parent| read::<u32>(parent, offset!(task_tgid)))
        .unwrap_or(0)
}

/// Resolves `fd` of the current task; `None` for anything not followed.
#[inline(always)]
pub fn resolve(fd: i64) -> Option<Object> {
    match walk(fd) {
        Resolved::Followed(object) => Some(object),
        Resolved::Ignored | Resolved::Unknown => None,
    }
}

/// Walks the current task's file table to what `fd` refers to.
#[inline(always)]
pub fn walk(fd: i64) -> Resolved {
    match open_file(fd) {
        Some((file, inode, mode)) => match mode & S_IFMT {
            S_IFIFO => resolve_pipe(inode).map_or(Resolved::Ignored, Resolved::Followed),
            S_IFSOCK => resolve_socket(file, inode).map_or(Resolved::Ignored, Resolved::Followed),
            _ => Resolved::Ignored,
        },
        None => Resolved::Unknown,
    }
}

/// The open file behind `fd`: (file, inode, i_mode) addresses and mode.
#[inline(always)]
fn open_file(fd: i64) -> Option<(u64, u64, u16)> {
    if !offsets_loaded() || !(0..=0xFF_FFFF).contains(&fd) {
        return None;
    }
    let task = current_task();
    let files: u64 = read(task, offset!(task_files))?;
    let fdt: u64 = read(files, offset!(files_fdt))?;
    let max_fds: u32 = read(fdt, offset!(fdtable_max_fds))?;
    if fd as u64 >= max_fds as u64 {
        return None;
    }
    let fd_array: u64 = read(fdt, offset!(fdtable_fd))?;
    let file: u64 = read(fd_array, (fd as u64) * 8)?;
    if file == 0 {
        return None;
    }
    let inode: u64 = read(file, offset!(file_inode))?;
    let mode: u16 = read(inode, offset!(inode_mode))?;
    Some((file, inode, mode))
}

#[inline(always)]
fn resolve_pipe(inode: u64) -> Option<Object> {
    let pipe: u64 = read(inode, offset!(inode_pipe)).unwrap_or(0);
    let slots = pipe_slots(pipe).map_or(0, |(_, max_usage)| max_usage);
    let ino: u64 = read(inode, offset!(inode_ino))?;
    let sb: u64 = read(inode, offset!(inode_sb))?;
    let magic: u64 = read(sb, offset!(sb_magic))?;
    if magic == PIPEFS_MAGIC {
        // pipefs and sockfs share the kernel's inode counter, so their
        // numbers never collide with each other.
        return Some(Object {
            kind: ChannelKind::Pipe,
            end: ino,
            peer: ino,
            pipe,
            slots,
        });
    }
    let dev: u32 = read(sb, offset!(sb_dev))?;
    let end = fifo_end(dev, ino);
    Some(Object {
        kind: ChannelKind::Fifo,
        end,
        peer: end,
        pipe,
        slots,
    })
}

#[inline(always)]
fn resolve_socket(file: u64, inode: u64) -> Option<Object> {
    let socket: u64 = read(file, offset!(file_private_data))?;
    let sock_type: u16 = read(socket, offset!(socket_type))?;
    let sk: u64 = read(socket, offset!(socket_sk))?;
    if sk == 0 {
        return None;
    }
    let family: u16 = read(sk, offset!(sock_family))?;
    match family {
        AF_UNIX => {
            let kind = match sock_type {
                SOCK_STREAM => ChannelKind::UnixStream,
                SOCK_DGRAM => ChannelKind::UnixDgram,
                SOCK_SEQPACKET => ChannelKind::UnixSeqpacket,
                _ => return None,
            };
            let end: u64 = read(inode, offset!(inode_ino))?;
            Some(Object {
                kind,
                end,
                peer: unix_peer(sk).unwrap_or(0),
                pipe: 0,
                slots: 0,
            })
        }
        AF_INET if sock_type == SOCK_STREAM => tcp_loopback(sk),
        AF_INET6 if sock_type == SOCK_STREAM => tcp6_loopback(sk),
        _ => None,
    }
}

/// Slots in use and slots in all of the pipe at `pipe` (a
/// `pipe_inode_info`), or `None` if they cannot be read.
#[inline(always)]
fn pipe_slots(pipe: u64) -> Option<(u32, u32)> {
    if pipe == 0 {
        return None;
    }
    // head, tail and max_usage sit together (checked when the offsets are
    // read): one read of four words instead of three reads.
    let words = read::<[u32; 4]>(pipe, offset!(pipe_head))?;
    let word = |field: u64| {
        let index = (field.wrapping_sub(offset!(pipe_head)) / 4) as usize;
        words.get(index).copied()
    };
    let head = word(offset!(pipe_head))?;
    let tail = word(offset!(pipe_tail))?;
    let max_usage = word(offset!(pipe_max_usage))?;
    Some((head.wrapping_sub(tail), max_usage))
}

/// Syscall-entry view: whether a write of `count` bytes (or a writev of
/// `count` buffers) finds the pipe too full to take everything at once:
/// the writer then waits for the reader (or gets EAGAIN). Free space is
/// counted in whole slots of one page, so a partly filled last page is not
/// credited and a write that could merge into it may be counted; a writev
/// is counted only when no slot is free.
#[inline(always)]
pub fn pipe_would_block(pipe: u64, count: u64) -> bool {
    let Some((used, max_usage)) = pipe_slots(pipe) else {
        return false;
    };
    let free_slots = max_usage.saturating_sub(used) as u64;
    count > free_slots * page_size()
}

/// Syscall-exit view for the exit-only hot path, which cannot look at the
/// pipe before the write: the write met a full pipe if it moved more than
/// the pipe holds (it must have waited), or it left no slot free.
/// `written` is the write's result in bytes.
#[inline(always)]
pub fn pipe_left_full(pipe: u64, written: u64) -> bool {
    let Some((used, max_usage)) = pipe_slots(pipe) else {
        return false;
    };
    used >= max_usage || written > max_usage as u64 * page_size()
}

/// Whether a read of `read` bytes took a full pipe's worth: the pipe, not
/// the reader, set how much it got, and its writer was waiting (or would
/// have been) for room.
#[inline(always)]
pub fn pipe_read_full(pipe: u64, read: u64) -> bool {
    let Some((_, max_usage)) = pipe_slots(pipe) else {
        return false;
    };
    max_usage > 0 && read >= max_usage as u64 * page_size()
}

/// Inode number of a Unix socket's connected peer.
#[inline(always)]
fn unix_peer(sk: u64) -> Option<u64> {
    let peer_sk: u64 = read(sk, offset!(unix_peer))?;
    if peer_sk == 0 {
        return None;
    }
    let peer_socket: u64 = read(peer_sk, offset!(sock_socket))?;
    if peer_socket == 0 {
        return None;
    }
    read(peer_socket + offset!(socket_to_inode), offset!(inode_ino))
}

/// A connected IPv4 TCP socket whose peer is on this host.
#[inline(always)]
fn tcp_loopback(sk: u64) -> Option<Object> {
    let daddr: u32 = read(sk, offset!(sock_daddr))?;
    let saddr: u32 = read(sk, offset!(sock_rcv_saddr))?;
    let dport_be: u16 = read(sk, offset!(sock_dport))?;
    let sport: u16 = read(sk, offset!(sock_num))?;
    // Addresses are in network order: the first octet is the low byte here.
    let loopback = (daddr & 0xff) == 127 || (daddr == saddr && daddr != 0);
    if !loopback || dport_be == 0 {
        return None;
    }
    let dport = u16::from_be(dport_be);
    Some(Object {
        kind: ChannelKind::TcpLoopback,
        end: tcp_end_id(saddr, sport, daddr, dport),
        peer: tcp_end_id(daddr, dport, saddr, sport),
        pipe: 0,
        slots: 0,
    })
}

/// A connected IPv6 TCP socket whose peer is on this host: `::1`, an
/// IPv4-mapped `::ffff:127.x.y.z` (an IPv6 socket talking to IPv4
/// loopback), or the socket's own address. Each address is folded to 32
/// bits for the end id: a mapped one to its IPv4 address, so a dual-stack
/// server's end agrees with its IPv4 client's, any other by xor, alike on
/// both ends.
#[inline(always)]
fn tcp6_loopback(sk: u64) -> Option<Object> {
    let daddr_at = offset!(sock_v6_daddr);
    let saddr_at = offset!(sock_v6_rcv_saddr);
    if daddr_at == 0 || saddr_at == 0 {
        return None;
    }
    let daddr: [u32; 4] = read(sk, daddr_at)?;
    let saddr: [u32; 4] = read(sk, saddr_at)?;
    let dport_be: u16 = read(sk, offset!(sock_dport))?;
    let sport: u16 = read(sk, offset!(sock_num))?;
    // Network order in memory: ::1 ends in bytes 0,0,0,1, read here as
    // the little-endian word 0x0100_0000; ::ffff:a.b.c.d has 0xffff_0000
    // as its third word and the IPv4 address, first octet low, as its last.
    let mapped = |a: [u32; 4]| a[0] == 0 && a[1] == 0 && a[2] == 0xffff_0000;
    let is_one = daddr == [0, 0, 0, 0x0100_0000];
    let mapped_loopback = mapped(daddr) && (daddr[3] & 0xff) == 127;
    let own = daddr == saddr && daddr != [0; 4];
    if !(is_one || mapped_loopback || own) || dport_be == 0 {
        return None;
    }
    let fold = |a: [u32; 4]| {
        if mapped(a) {
            a[3]
        } else {
            a[0] ^ a[1].rotate_left(8) ^ a[2].rotate_left(16) ^ a[3]
        }
    };
    let (local, remote) = (fold(saddr), fold(daddr));
    let dport = u16::from_be(dport_be);
    Some(Object {
        kind: ChannelKind::TcpLoopback,
        end: tcp_end_id(local, sport, remote, dport),
        peer: tcp_end_id(remote, dport, local, sport),
        pipe: 0,
        slots: 0,
    })
}

/// Id of the TCP end at (local) looking at (remote). The top bit keeps it
/// apart from inode numbers; the peer's id is the same function with the
/// sides swapped, so both ends agree without talking to each other.
#[inline(always)]
fn tcp_end_id(local_ip: u32, local_port: u16, remote_ip: u32, remote_port: u16) -> u64 {
    let ips = ((local_ip as u64) << 32) | remote_ip as u64;
    let ports = ((local_port as u64) << 16) | remote_port as u64;
    let mut h =
        (ips ^ ports.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h | (1 << 63)
}
