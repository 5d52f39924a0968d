//! Row writes shared by flush and roll-up: pair ids and merging a bucket
//! into the row already stored for it.

use std::path::Path;

use rusqlite::{OptionalExtension, Transaction, params};

use super::{
    Resolution, StoreError,
    batch::{PairKey, Sums},
    codec,
    query::{StoredSums, to_sql_int},
    sql_error,
};

/// Row id of `key`'s pair, inserting it and its services if new.
pub fn pair_id(tx: &Transaction<'_>, path: &Path, key: &PairKey) -> Result<i64, StoreError> {
    let src = service_id(tx, path, &key.src)?;
    let dst = service_id(tx, path, &key.dst)?;
    tx.prepare_cached(
        "INSERT INTO pairs (src, dst, kind) VALUES (?1, ?2, ?3)
         ON CONFLICT (src, dst, kind) DO UPDATE SET kind = excluded.kind
         RETURNING id",
    )
    .and_then(|mut statement| statement.query_row(params![src, dst, key.kind], |row| row.get(0)))
    .map_err(sql_error(path, "recording a pair"))
}

/// Row id of service `name`, inserting it if new.
fn service_id(tx: &Transaction<'_>, path: &Path, name: &str) -> Result<i64, StoreError> {
    // Look up first: most services are shared by many pairs, and an upsert
    // would rewrite the row every time.
    let existing = tx
        .prepare_cached("SELECT id FROM services WHERE name = ?1")
        .and_then(|mut statement| statement.query_row([name], |row| row.get(0)).optional())
        .map_err(sql_error(path, "looking up a service"))?;
    if let Some(id) = existing {
        return Ok(id);
    }
    tx.prepare_cached("INSERT INTO services (name) VALUES (?1) RETURNING id")
        .and_then(|mut statement| statement.query_row([name], |row| row.get(0)))
        .map_err(sql_error(path, "recording a service"))
}

/// Adds `sums` to the bucket (`pair`, `start_s`) of `resolution`, creating
/// it with width `width_s` if absent.
///
/// The merge happens here rather than in an SQL upsert because histograms
/// are BLOBs and because SQLite turns overflowing integer sums into floats;
/// counts saturate instead.
pub fn merge_bucket(
    tx: &Transaction<'_>,
    path: &Path,
    resolution: Resolution,
    pair: i64,
    start_s: i64,
    width_s: i64,
    sums: &Sums,
) -> Result<(), StoreError> {
    let table = resolution.table();
    let existing: Option<StoredSums> = tx
        .prepare_cached(&format!(
            "SELECT width_s, interactions, messages, bytes, errors, latency_hist
             FROM {table} WHERE pair = ?1 AND start_s = ?2"
        ))
        .and_then(|mut statement| {
            statement
                .query_row(params![pair, start_s], StoredSums::from_row(0))
                .optional()
        })
        .map_err(sql_error(path, "reading a bucket to merge into"))?;
    let (width_s, merged) = match existing {
        None => (width_s, sums.clone()),
        Some(stored) => {
            let context = || format!("{table} pair {pair} start_s {start_s}");
            let mut merged = stored.decode(path, context)?;
            merged.merge(sums);
            // A width change between runs: keep the wider, which covers both.
            (stored.width_s.max(width_s), merged)
        }
    };
    tx.prepare_cached(&format!(
        "INSERT OR REPLACE INTO {table}
             (pair, start_s, width_s, interactions, messages, bytes, errors,
              latency_count, latency_hist)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
    ))
    .and_then(|mut statement| {
        statement.execute(params![
            pair,
            start_s,
            width_s,
            to_sql_int(merged.interactions),
            to_sql_int(merged.messages),
            to_sql_int(merged.bytes),
            to_sql_int(merged.errors),
            to_sql_int(merged.latency_count()),
            codec::encode(&merged.latency),
        ])
    })
    .map_err(sql_error(path, "writing a bucket"))?;
    Ok(())
}
