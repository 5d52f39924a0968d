//! Log lines for a terminal or for the journal. Under systemd, stderr is a
//! stream to journald (`JOURNAL_STREAM` names its device and inode): there
//! the journal stamps each line itself, so ours carry no timestamp, and
//! the level goes in front as a syslog priority (`<3>` error ... `<7>`
//! debug), which journald reads as the entry's priority.

use std::{io::Write, os::unix::fs::MetadataExt};

use log::Level;

/// Sets up the logger for where stderr goes (`RUST_LOG` filters, `info`
/// by default).
pub fn init() {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if stderr_is_journal() {
        builder.format(|out, record| {
            writeln!(
                out,
                "<{}>{}: {}",
                priority(record.level()),
                record.target(),
                record.args()
            )
        });
    }
    builder.init();
}

/// The syslog priority journald gives a line with this level.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Whether stderr is the stream `JOURNAL_STREAM` names (systemd sets it for
/// the service's stdout and stderr; a child whose stderr was redirected
/// inherits the variable but not the stream).
fn stderr_is_journal() -> bool {
    let Some(expected) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stderr) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    expected.to_string_lossy() == format!("{}:{}", stderr.dev(), stderr.ino())
}
