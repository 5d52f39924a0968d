//! Listening Unix sockets for the control socket and the broker: a socket
//! file whose server is gone (a crash, a `kill -9`) is replaced, one that
//! still answers is refused, so a second agent cannot steal the first
//! one's clients.

use std::path::{Path, PathBuf};

/// Why a socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Something answers on it.
    #[error("another process is already serving {0}")]
    Busy(PathBuf),
    /// Creating its folder, removing the stale file or binding failed.
    #[error("{path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Binds `path` (creating its folder), replacing a stale socket file and
/// refusing a live one. Must be called inside a tokio runtime.
pub fn listen(path: &Path) -> Result<tokio::net::UnixListener, ListenError> {
    let io = |source| ListenError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ListenError::Busy(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    tokio::net::UnixListener::bind(path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stale_file_is_replaced_and_a_live_socket_refused() {
        let dir = std::env::temp_dir().join(format!("resonance-listen-{}", std::process::id()));
        let path = dir.join("nested/s.sock");
        let first = listen(&path).expect("a fresh path");
        assert!(matches!(listen(&path), Err(ListenError::Busy(_))));
        drop(first);
        // The file stays behind a dropped listener: stale, so replaced.
        assert!(path.exists());
        let _second = listen(&path).expect("the stale file replaced");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
