//! Probe modes this kernel's verifier has refused, remembered.
//!
//! The verifier is deterministic: the same object with the same offsets on
//! the same kernel is refused again. A refusal for complexity (the
//! verifier walked its million instructions) takes seconds natively and
//! minutes in an emulated guest, and every start of the agent, the CLI or
//! a test would pay it again before falling back. So a refusal is noted,
//! keyed by kernel release and a digest of the object, the settings and
//! the offsets, in this process and in a file under the temporary folder;
//! later attempts of that mode fail at once and say where the note is
//! (delete the file to try again).

use std::{
    collections::HashSet,
    io::Write,
    path::PathBuf,
    sync::{Mutex, PoisonError},
};

use super::ProbeMode;

/// The notes' file name in the temporary folder.
const FILE_NAME: &str = "resonance-refused-probe-modes";

static IN_PROCESS: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// What identifies one attempt: kernel, object, settings, offsets, mode.
#[derive(Clone, Debug)]
pub struct Attempt {
    key: String,
}

impl Attempt {
    /// The attempt of `mode` with `digest` (of the object and everything
    /// written into it) on the running kernel.
    pub fn new(mode: ProbeMode, digest: u64) -> Self {
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        Self {
            key: format!("{release} {digest:016x} {mode}"),
        }
    }

    /// Where a refusal of it was noted, if one was.
    pub fn refused_before(&self) -> Option<PathBuf> {
        let mut seen = IN_PROCESS.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.get_or_insert_with(HashSet::new).contains(&self.key) {
            return Some(path());
        }
        let text = std::fs::read_to_string(path()).ok()?;
        text.lines().any(|line| line == self.key).then(path)
    }

    /// Notes that the kernel refused it. Failing to write the file only
    /// costs the next process the attempt.
    pub fn note_refused(&self) {
        IN_PROCESS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(HashSet::new)
            .insert(self.key.clone());
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path())
            .and_then(|mut file| writeln!(file, "{}", self.key));
        if let Err(error) = written {
            log::debug!(
                "could not note the refusal in {}: {error}",
                path().display()
            );
        }
    }
}

fn path() -> PathBuf {
    std::env::temp_dir().join(FILE_NAME)
}

/// FNV-1a over `parts`: stable across builds and runs, unlike std's
/// hasher, so a note written by one process means the same to the next.
pub fn digest(parts: &[&[u8]]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for part in parts {
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_remembered_for_that_digest_and_mode_only() {
        let digest = digest(&[b"object", &std::process::id().to_le_bytes()]);
        let refused = Attempt::new(ProbeMode::TpBtf, digest);
        assert_eq!(refused.refused_before(), None);
        refused.note_refused();
        assert_eq!(refused.refused_before(), Some(path()));
        assert_eq!(
            Attempt::new(ProbeMode::RawTp, digest).refused_before(),
            None
        );
        assert_eq!(
            Attempt::new(ProbeMode::TpBtf, digest ^ 1).refused_before(),
            None
        );
    }

    #[test]
    fn the_digest_separates_parts_and_is_stable() {
        assert_ne!(digest(&[b"ab", b"c"]), digest(&[b"a", b"bc"]));
        assert_eq!(digest(&[b"x"]), digest(&[b"x"]));
    }
}
