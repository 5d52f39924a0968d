//! Schema migrations, tracked by `PRAGMA user_version`: version N means
//! migrations 1..=N have run. Each migration runs in its own transaction
//! with the version bump, so a crash leaves the previous version intact.
//!
//! The README's "Store schema" section documents the result; keep both in
//! step.

use rusqlite::{Connection, TransactionBehavior};

/// One SQL script per version, in order; append, never edit.
const MIGRATIONS: &[&str] = &[
    // 1: services, pairs, and the two bucket tables.
    "CREATE TABLE services (
         id   INTEGER PRIMARY KEY,
         name TEXT NOT NULL UNIQUE
     );
     CREATE TABLE pairs (
         id   INTEGER PRIMARY KEY,
         src  INTEGER NOT NULL REFERENCES services(id),
         dst  INTEGER NOT NULL REFERENCES services(id),
         kind TEXT NOT NULL,
         UNIQUE (src, dst, kind)
     );
     CREATE TABLE buckets_fine (
         pair          INTEGER NOT NULL REFERENCES pairs(id),
         start_s       INTEGER NOT NULL,
         width_s       INTEGER NOT NULL,
         interactions  INTEGER NOT NULL,
         messages      INTEGER NOT NULL,
         bytes         INTEGER NOT NULL,
         errors        INTEGER NOT NULL,
         latency_count INTEGER NOT NULL,
         latency_hist  BLOB NOT NULL,
         PRIMARY KEY (pair, start_s)
     ) WITHOUT ROWID;
     CREATE INDEX buckets_fine_start ON buckets_fine(start_s);
     CREATE TABLE buckets_coarse (
         pair          INTEGER NOT NULL REFERENCES pairs(id),
         start_s       INTEGER NOT NULL,
         width_s       INTEGER NOT NULL,
         interactions  INTEGER NOT NULL,
         messages      INTEGER NOT NULL,
         bytes         INTEGER NOT NULL,
         errors        INTEGER NOT NULL,
         latency_count INTEGER NOT NULL,
         latency_hist  BLOB NOT NULL,
         PRIMARY KEY (pair, start_s)
     ) WITHOUT ROWID;
     CREATE INDEX buckets_coarse_start ON buckets_coarse(start_s);",
    // 2: interaction starts (the broker's opens), for retraining its model.
    "CREATE TABLE starts (
         ts_ns INTEGER NOT NULL,
         src   TEXT NOT NULL,
         dst   TEXT NOT NULL,
         kind  TEXT NOT NULL
     );
     CREATE INDEX starts_ts ON starts(ts_ns);",
];

/// The schema version this build writes and understands.
pub const LATEST: i64 = MIGRATIONS.len() as i64;

/// Why the schema could not be brought up to date.
#[derive(Debug)]
pub enum MigrateError {
    /// The file was written by a newer build.
    Newer(i64),
    /// SQLite failed; `what` says at which step.
    Sql(&'static str, rusqlite::Error),
}

/// The file's schema version.
pub fn version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// Runs the migrations the file has not seen yet.
pub fn migrate(conn: &mut Connection) -> Result<(), MigrateError> {
    let found = version(conn).map_err(|e| MigrateError::Sql("reading the schema version", e))?;
    if found > LATEST {
        return Err(MigrateError::Newer(found));
    }
    for (index, script) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        let target = index as i64 + 1;
        // IMMEDIATE so two processes opening a new file do not both migrate.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| MigrateError::Sql("starting a migration", e))?;
        // Re-read inside the lock: another opener may have migrated already.
        let now = version(&tx).map_err(|e| MigrateError::Sql("reading the schema version", e))?;
        if now >= target {
            continue;
        }
        tx.execute_batch(script)
            .map_err(|e| MigrateError::Sql("applying a schema migration", e))?;
        tx.pragma_update(None, "user_version", target)
            .map_err(|e| MigrateError::Sql("recording the schema version", e))?;
        tx.commit()
            .map_err(|e| MigrateError::Sql("committing a schema migration", e))?;
    }
    Ok(())
}
