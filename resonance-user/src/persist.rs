//! Small state files (the broker's model and feedback) written so that a
//! crash leaves the previous file whole: written beside it, synced, then
//! renamed over it.

use std::{
    fs::File,
    io::{BufReader, BufWriter},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Serialize, de::DeserializeOwned};

/// Writes `value` as JSON to `path` atomically; `what` names it in errors.
pub fn write_json(path: &Path, value: &impl Serialize, what: &str) -> Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let file = File::create(&temporary)
        .with_context(|| format!("creating {what} {}", temporary.display()))?;
    let mut writer = BufWriter::new(file);
    serde_json::to_writer(&mut writer, value)
        .with_context(|| format!("writing {what} {}", temporary.display()))?;
    let file = writer
        .into_inner()
        .map_err(|error| error.into_error())
        .with_context(|| format!("flushing {what} {}", temporary.display()))?;
    file.sync_all()
        .with_context(|| format!("syncing {what} {}", temporary.display()))?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("replacing {what} {}", path.display()))
}

/// Reads JSON written by [`write_json`]; `what` names it in errors.
pub fn read_json<T: DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let file = File::open(path).with_context(|| format!("opening {what} {}", path.display()))?;
    serde_json::from_reader(BufReader::new(file))
        .with_context(|| format!("decoding {what} {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back_and_no_temporary_stays() {
        let dir = std::env::temp_dir().join(format!("resonance-persist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        write_json(&path, &vec![1u32, 2, 3], "state").unwrap();
        let back: Vec<u32> = read_json(&path, "state").unwrap();
        assert_eq!(back, [1, 2, 3]);
        assert!(!dir.join("state.json.tmp").exists());
        std::fs::write(&path, b"[1,").unwrap();
        let error = read_json::<Vec<u32>>(&path, "state").unwrap_err();
        assert!(format!("{error:#}").contains("decoding state"), "{error:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
