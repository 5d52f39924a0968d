//! Single interaction starts (table `starts`, the trace's events: broker
//! opens and what the probes observed): what the broker's model retrains
//! from. Written by the flushes, read back by time range, deleted
//! past `starts_retention` by `maintain`. Names are stored as text rather
//! than as service ids: the rows are short-lived and the bucket tables'
//! retention forgets services the starts may still name.

use std::path::Path;

use rusqlite::{Transaction, params};

use super::{Start, Store, StoreError, query::to_sql_int, sql_error};

/// Inserts `starts` inside the flush transaction.
pub fn insert(tx: &Transaction<'_>, path: &Path, starts: &[Start]) -> Result<(), StoreError> {
    if starts.is_empty() {
        return Ok(());
    }
    let mut statement = tx
        .prepare_cached("INSERT INTO starts (ts_ns, src, dst, kind) VALUES (?1, ?2, ?3, ?4)")
        .map_err(sql_error(path, "preparing to record starts"))?;
    for start in starts {
        statement
            .execute(params![
                to_sql_int(start.ts_ns),
                start.src,
                start.dst,
                start.kind
            ])
            .map_err(sql_error(path, "recording a start"))?;
    }
    Ok(())
}

/// Deletes the starts before `cutoff_ns`; returns how many.
pub fn expire(tx: &Transaction<'_>, path: &Path, cutoff_ns: u64) -> Result<usize, StoreError> {
    tx.execute(
        "DELETE FROM starts WHERE ts_ns < ?1",
        [to_sql_int(cutoff_ns)],
    )
    .map_err(sql_error(path, "deleting starts past retention"))
}

impl Store {
    /// Keeps one interaction start; nothing reaches the file before the
    /// next [`flush`](Self::flush).
    pub fn add_start(&mut self, start: Start) {
        self.starts.push(start);
    }

    /// The stored starts with `from_ns <= ts_ns < to_ns`, in time order
    /// (starts not flushed yet are not included).
    pub fn starts(&self, from_ns: u64, to_ns: u64) -> Result<Vec<Start>, StoreError> {
        let path = &self.path;
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT ts_ns, src, dst, kind FROM starts
                 WHERE ts_ns >= ?1 AND ts_ns < ?2 ORDER BY ts_ns, rowid",
            )
            .map_err(sql_error(path, "preparing to read starts"))?;
        let rows = statement
            .query_map(params![to_sql_int(from_ns), to_sql_int(to_ns)], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                ))
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(sql_error(path, "reading starts"))?;
        rows.into_iter()
            .map(|(ts, src, dst, kind)| {
                let ts_ns = u64::try_from(ts).map_err(|_| StoreError::Corrupt {
                    path: path.to_owned(),
                    detail: format!("starts row {src} -> {dst} has a negative time {ts}"),
                })?;
                Ok(Start {
                    ts_ns,
                    src,
                    dst,
                    kind,
                    bytes: 0,
                    latency_ns: 0,
                    error: false,
                })
            })
            .collect()
    }
}
