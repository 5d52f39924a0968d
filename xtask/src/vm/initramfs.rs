//! A newc ("070701") cpio archive writer, the format the kernel unpacks as an
//! initramfs. [`Archive`] collects entries in memory and [`Archive::finish`]
//! appends the trailer; the guest image is small enough (a few test binaries
//! and busybox) that building it in memory is simpler than streaming.

use std::collections::BTreeSet;

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// A newc archive being built; parent folders are added implicitly.
#[derive(Default)]
pub struct Archive {
    bytes: Vec<u8>,
    next_ino: u32,
    dirs: BTreeSet<String>,
    names: BTreeSet<String>,
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self {
            next_ino: 1,
            ..Self::default()
        }
    }

    /// Adds a folder (and its parents) unless it is already there.
    pub fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.dirs.insert(path.to_owned());
        self.entry(path, S_IFDIR | 0o755, 2, (0, 0), &[]);
    }

    /// Adds a regular file with permission bits `perm` (e.g. 0o755).
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        let path = self.prepare(path);
        self.entry(&path, S_IFREG | (perm & 0o7777), 1, (0, 0), data);
    }

    /// Adds a symbolic link at `path` pointing to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) {
        let path = self.prepare(path);
        self.entry(&path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes());
    }

    /// Adds a character device node (e.g. /dev/console, 5:1), which the
    /// kernel needs before devtmpfs is mounted to give init a console.
    pub fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        let path = self.prepare(path);
        self.entry(&path, S_IFCHR | (perm & 0o7777), 1, (major, minor), &[]);
    }

    /// Whether an entry (other than a folder) exists at `path`.
    pub fn contains(&self, path: &str) -> bool {
        self.names.contains(path.trim_matches('/'))
    }

    /// Appends the trailer and returns the archive's bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry(TRAILER, 0, 1, (0, 0), &[]);
        self.bytes
    }

    fn prepare(&mut self, path: &str) -> String {
        let path = path.trim_matches('/').to_owned();
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.names.insert(path.clone());
        path
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        let ino = if name == TRAILER { 0 } else { self.next_ino };
        self.next_ino += 1;
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: fixed, so the same inputs give the same image
            u32::try_from(data.len()).unwrap_or(u32::MAX),
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            u32::try_from(name.len() + 1).unwrap_or(u32::MAX),
            0, // check: unused by newc
        ];
        self.bytes.extend_from_slice(MAGIC.as_bytes());
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    /// Header + name and file data each end on a 4-byte boundary.
    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One entry read back: name, mode, rdev and data.
    #[derive(Debug, PartialEq)]
    struct Entry {
        name: String,
        mode: u32,
        rdev: (u32, u32),
        data: Vec<u8>,
    }

    /// An independent newc reader, strict about magic, padding and trailer.
    fn parse(bytes: &[u8]) -> Vec<Entry> {
        let mut entries = Vec::new();
        let mut at = 0;
        loop {
            assert_eq!(at % 4, 0, "entry not aligned at {at}");
            let header = &bytes[at..at + 110];
            assert_eq!(&header[..6], b"070701", "bad magic at {at}");
            let field = |i: usize| {
                let text = std::str::from_utf8(&header[6 + i * 8..14 + i * 8]).unwrap();
                u32::from_str_radix(text, 16).unwrap() as usize
            };
            let (mode, size, rdev) = (field(1), field(6), (field(9), field(10)));
            let namesize = field(11);
            let name_start = at + 110;
            let name = &bytes[name_start..name_start + namesize];
            assert_eq!(name.last(), Some(&0), "name not NUL-terminated");
            let name = String::from_utf8(name[..namesize - 1].to_vec()).unwrap();
            let data_start = (name_start + namesize).next_multiple_of(4);
            let data = bytes[data_start..data_start + size].to_vec();
            at = (data_start + size).next_multiple_of(4);
            if name == TRAILER {
                assert_eq!(at, bytes.len(), "bytes after the trailer");
                return entries;
            }
            entries.push(Entry {
                name,
                mode: mode as u32,
                rdev: (rdev.0 as u32, rdev.1 as u32),
                data,
            });
        }
    }

    #[test]
    fn written_archive_parses_back() {
        let mut archive = Archive::new();
        archive.char_device("/dev/console", 0o600, 5, 1);
        archive.file("init", 0o755, b"#!/bin/sh\necho hi\n");
        archive.file("/tests/a/b/odd", 0o644, b"12345");
        archive.symlink("bin/sh", "busybox");
        archive.dir("tests/a");
        assert!(archive.contains("/bin/sh"));
        assert!(!archive.contains("bin/ls"));
        let entries = parse(&archive.finish());
        let summary: Vec<(&str, u32)> = entries.iter().map(|e| (e.name.as_str(), e.mode)).collect();
        assert_eq!(
            summary,
            [
                ("dev", 0o040_755),
                ("dev/console", 0o020_600),
                ("init", 0o100_755),
                ("tests", 0o040_755),
                ("tests/a", 0o040_755),
                ("tests/a/b", 0o040_755),
                ("tests/a/b/odd", 0o100_644),
                ("bin", 0o040_755),
                ("bin/sh", 0o120_777),
            ]
        );
        assert_eq!(entries[1].rdev, (5, 1));
        assert_eq!(entries[2].data, b"#!/bin/sh\necho hi\n");
        assert_eq!(entries[6].data, b"12345");
        assert_eq!(entries[8].data, b"busybox");
    }

    #[test]
    fn empty_archive_is_just_the_trailer() {
        let bytes = Archive::new().finish();
        assert!(parse(&bytes).is_empty());
        assert!(bytes.len().is_multiple_of(4));
    }
}
