//! Where xtask keeps what it builds or downloads: outside the clone, so a
//! fresh clone on the same machine reuses it.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// `$RESONANCE_CACHE_DIR`, else `$XDG_CACHE_HOME/resonance`, else
/// `$HOME/.cache/resonance`. Created if missing.
pub fn dir() -> Result<PathBuf> {
    let dir = if let Some(dir) = std::env::var_os("RESONANCE_CACHE_DIR") {
        PathBuf::from(dir)
    } else if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME") {
        PathBuf::from(xdg).join("resonance")
    } else {
        let home =
            std::env::var_os("HOME").context("neither RESONANCE_CACHE_DIR nor HOME is set")?;
        PathBuf::from(home).join(".cache/resonance")
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating cache folder {}", dir.display()))?;
    Ok(dir)
}
