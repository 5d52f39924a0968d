//! One agent per state folder: two agents writing one history store and
//! one saved model double-count every byte and overwrite each other's
//! model. The lock is `flock` on a file in the folder, so it goes with the
//! process (a crash or kill -9 leaves nothing to clean up), and the file
//! holds the holder's pid for the refusal to name.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, Write},
    path::{Path, PathBuf},
};

/// The lock file's name in the state folder.
pub const LOCK_FILE_NAME: &str = "agent.lock";

/// Why the state folder could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum StateLockError {
    /// Another agent holds it.
    #[error(
        "another resonance agent (pid {holder}) is using the state folder {dir}; \
         stop it, or give this one its own --state-dir"
    )]
    Held {
        /// The folder.
        dir: PathBuf,
        /// The holder's pid as it wrote it ("unknown" if unreadable).
        holder: String,
    },
    /// The folder or the lock file could not be created or locked.
    #[error("locking the state folder {dir}: {source}")]
    Io {
        /// The folder.
        dir: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

/// The state folder, held for as long as this lives.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateLock {
    /// Creates `dir` if needed and takes it, or says who holds it.
    pub fn take(dir: &Path) -> Result<Self, StateLockError> {
        let io = |source| StateLockError::Io {
            dir: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE_NAME))
            .map_err(io)?;
        // An flock(LOCK_EX | LOCK_NB) on Linux, released when the file closes.
        if let Err(error) = file.try_lock() {
            if let std::fs::TryLockError::Error(error) = error {
                return Err(io(error));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(StateLockError::Held {
                dir: dir.to_owned(),
                holder: if holder.is_empty() { "unknown" } else { holder }.to_owned(),
            });
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_taker_is_refused_with_the_holders_pid_until_the_first_lets_go() {
        let dir = std::env::temp_dir().join(format!("resonance-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = StateLock::take(&dir).expect("the first take");
        // flock locks belong to the open file, so a second open in this
        // process conflicts as a second agent's would.
        let refused = StateLock::take(&dir).expect_err("a second take while held");
        let message = refused.to_string();
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        drop(first);
        StateLock::take(&dir).expect("a take after the holder let go");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
