//! The receiver of datagrams sent to a Unix address.
//!
//! A datagram socket without a peer (`sendto` with an address each time:
//! `sd_notify`, syslog clients that never connect) has no peer in the
//! kernel for the probes to read, so its flow would join no reader. The
//! probes report the address a flow starts sending to, and every bind of a
//! Unix datagram socket; the socket bound there (from those reports, or
//! for sockets bound before the probes, from `/proc/net/unix`, which lists
//! every bound socket's inode and path) becomes the flow's peer.

use std::collections::HashMap;

/// Where peerless datagram ends send, and who is bound there.
#[derive(Debug, Default)]
pub struct Addressed {
    /// Sending end → the path it last started sending to, and the inode
    /// of the socket bound there when that was seen.
    by_end: HashMap<u64, (String, Option<u64>)>,
    /// Path → inode of the socket bound there, as the probes saw it bound
    /// (newest bind wins; survives the socket, which may be gone by the
    /// time a short exchange's flows are read).
    announced: HashMap<String, u64>,
    /// Path → inode of the socket bound there, as `/proc/net/unix` last
    /// listed it.
    bound: HashMap<String, u64>,
    /// When `bound` was read (monotonic ns), 0 for never.
    read_ns: u64,
    /// Whether `bound` was read during the current pass over the flows.
    fresh: bool,
}

/// How long a reading of `/proc/net/unix` answers for paths it has (a
/// path it lacks is read again at once).
const FRESH_NS: u64 = 1_000_000_000;
/// Binds remembered at most; past it the oldest are forgotten wholesale
/// (they are then found in `/proc/net/unix` while they live).
const MAX_ANNOUNCED: usize = 65_536;

impl Addressed {
    /// Socket `end` was bound to `path`.
    pub fn bound(&mut self, path: String, end: u64) {
        if self.announced.len() >= MAX_ANNOUNCED {
            self.announced.clear();
        }
        self.announced.insert(path, end);
    }

    /// `end` started sending to `path` at `now_ns`: the receiver is looked
    /// up at once, while it is surely still bound there.
    pub fn sends_to(&mut self, end: u64, path: String, now_ns: u64) {
        let receiver = match self.announced.get(&path) {
            Some(inode) => Some(*inode),
            None => {
                let stale = now_ns.saturating_sub(self.read_ns) >= FRESH_NS;
                if stale || !self.bound.contains_key(&path) {
                    self.read(now_ns);
                }
                self.bound.get(&path).copied()
            }
        };
        self.by_end.insert(end, (path, receiver));
    }

    /// A new pass over the flows begins: a receiver not found yet is
    /// looked for once more in it.
    pub fn start_reading(&mut self) {
        self.fresh = false;
    }

    /// The inode of the socket bound where `end` sends, if known.
    pub fn receiver(&mut self, end: u64) -> Option<u64> {
        let (path, receiver) = self.by_end.get(&end)?;
        if let Some(inode) = receiver {
            return Some(*inode);
        }
        let path = path.clone();
        if !self.fresh {
            self.fresh = true;
            self.read(crate::sys::monotonic_ns());
        }
        let found = self
            .announced
            .get(&path)
            .or_else(|| self.bound.get(&path))
            .copied();
        if let Some(entry) = self.by_end.get_mut(&end) {
            entry.1 = found;
        }
        found
    }

    /// Keeps only the ends `keep` says are still sending.
    pub fn retain(&mut self, mut keep: impl FnMut(u64) -> bool) {
        self.by_end.retain(|end, _| keep(*end));
    }

    fn read(&mut self, now_ns: u64) {
        self.read_ns = now_ns;
        match std::fs::read_to_string("/proc/net/unix") {
            Ok(text) => self.bound = bound_sockets(&text),
            Err(error) => log::debug!("reading /proc/net/unix: {error}"),
        }
    }
}

/// Path → inode of every bound socket in `/proc/net/unix` text (columns
/// Num RefCount Protocol Flags Type St Inode Path; abstract names begin
/// with `@`). Of two sockets on one path (an unlinked one still open), the
/// newer, with the higher inode number, wins.
fn bound_sockets(text: &str) -> HashMap<String, u64> {
    let mut bound: HashMap<String, u64> = HashMap::new();
    for line in text.lines().skip(1) {
        // Seven space-padded columns, then the path, which may hold spaces.
        let mut rest = line;
        let mut inode = None;
        for column in 0..7 {
            rest = rest.trim_start();
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            if column == 6 {
                inode = rest[..end].parse::<u64>().ok();
            }
            rest = &rest[end..];
        }
        let path = rest.trim_start();
        let Some(inode) = inode.filter(|_| !path.is_empty()) else {
            continue;
        };
        let entry = bound.entry(path.to_owned()).or_insert(inode);
        *entry = (*entry).max(inode);
    }
    bound
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC_NET_UNIX: &str = "\
Num       RefCount Protocol Flags    Type St Inode Path
ffff8881: 00000002 00000000 00010000 0001 01 20105 /run/systemd/notify
ffff8882: 00000003 00000000 00000000 0002 01 31337 /tmp/with space/log
ffff8883: 00000002 00000000 00000000 0002 01 31338 @abstract
ffff8884: 00000003 00000000 00000000 0001 03 40001
ffff8885: 00000002 00000000 00000000 0002 01 31400 /tmp/with space/log
";

    #[test]
    fn bound_paths_map_to_the_newest_inode_and_unbound_sockets_are_skipped() {
        let bound = bound_sockets(PROC_NET_UNIX);
        assert_eq!(bound.get("/run/systemd/notify"), Some(&20105));
        assert_eq!(bound.get("/tmp/with space/log"), Some(&31400));
        assert_eq!(bound.get("@abstract"), Some(&31338));
        assert_eq!(bound.len(), 3);
    }

    #[test]
    fn ends_without_a_known_path_have_no_receiver_and_forgotten_ends_go() {
        let mut addressed = Addressed {
            bound: bound_sockets(PROC_NET_UNIX),
            fresh: true,
            read_ns: 10,
            ..Addressed::default()
        };
        // Within a second of the reading: answered from it.
        addressed.sends_to(7, "@abstract".to_owned(), 20);
        addressed.by_end.insert(8, ("/nowhere".to_owned(), None));
        assert_eq!(addressed.receiver(7), Some(31338));
        assert_eq!(addressed.receiver(8), None);
        assert_eq!(addressed.receiver(9), None);
        addressed.retain(|end| end == 8);
        assert_eq!(addressed.receiver(7), None);
    }

    #[test]
    fn a_bind_the_probes_saw_wins_over_the_listing_and_outlives_its_socket() {
        let mut addressed = Addressed {
            bound: bound_sockets(PROC_NET_UNIX),
            fresh: true,
            read_ns: 10,
            ..Addressed::default()
        };
        // Rebound since the listing, and gone from any later one.
        addressed.bound("@abstract".to_owned(), 99);
        addressed.bound("/tmp/short-lived".to_owned(), 100);
        addressed.sends_to(1, "@abstract".to_owned(), 20);
        addressed.sends_to(2, "/tmp/short-lived".to_owned(), 20);
        assert_eq!(addressed.receiver(1), Some(99));
        assert_eq!(addressed.receiver(2), Some(100));
    }
}
