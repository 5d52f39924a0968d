//! Reading buckets back: per-bucket history over a window, exact totals,
//! and the known pairs.

use std::path::Path;

use resonance_common::HIST_BUCKETS;
use rusqlite::{Connection, Row, params};

use super::{
    BucketRow, MAX_BUCKET, Resolution, Store, StoreError, Totals, batch::Sums, codec, sql_error,
};
use crate::aggregate::Histogram;

const NS_PER_S: u64 = 1_000_000_000;

/// A count as SQLite stores it: signed 64 bits, saturating (a count past
/// 2^63 is not expected; clamping beats SQLite's silent float conversion).
pub fn to_sql_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The stored columns of one bucket, before validation.
pub struct StoredSums {
    pub width_s: i64,
    interactions: i64,
    messages: i64,
    bytes: i64,
    errors: i64,
    latency_hist: Vec<u8>,
}

impl StoredSums {
    /// Reads `width_s, interactions, messages, bytes, errors, latency_hist`
    /// starting at column `first`.
    pub fn from_row(first: usize) -> impl Fn(&Row<'_>) -> rusqlite::Result<StoredSums> {
        move |row| {
            Ok(StoredSums {
                width_s: row.get(first)?,
                interactions: row.get(first + 1)?,
                messages: row.get(first + 2)?,
                bytes: row.get(first + 3)?,
                errors: row.get(first + 4)?,
                latency_hist: row.get(first + 5)?,
            })
        }
    }

    /// Checks the values and decodes the histogram; `context` names the row
    /// for the error.
    pub fn decode(&self, path: &Path, context: impl Fn() -> String) -> Result<Sums, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            path: path.to_owned(),
            detail: format!("{}: {detail}", context()),
        };
        let count = |name: &str, value: i64| {
            u64::try_from(value).map_err(|_| corrupt(format!("negative {name} {value}")))
        };
        if self.width_s <= 0 {
            return Err(corrupt(format!("width_s {} is not positive", self.width_s)));
        }
        let counts = codec::decode(&self.latency_hist)
            .map_err(|error| corrupt(format!("latency_hist: {error}")))?;
        if counts
            .iter()
            .try_fold(0u64, |sum, c| sum.checked_add(*c))
            .is_none()
        {
            return Err(corrupt(
                "latency_hist: total count overflows 64 bits".to_owned(),
            ));
        }
        let mut latency = [0u64; HIST_BUCKETS];
        latency.copy_from_slice(&counts);
        Ok(Sums {
            interactions: count("interactions", self.interactions)?,
            messages: count("messages", self.messages)?,
            bytes: count("bytes", self.bytes)?,
            errors: count("errors", self.errors)?,
            latency,
        })
    }
}

impl Store {
    /// Buckets of every kind between `src` and `dst` that overlap
    /// `[since_ns, until_ns)`, in time order (then wider first, then kind).
    /// Each sample is in exactly one row: fine rows where they still exist,
    /// coarse rows for older times. A coarse row and the fine rows of the
    /// same minute can both appear while a roll-up is only partly done;
    /// their contents never overlap.
    pub fn history(
        &self,
        src: &str,
        dst: &str,
        since_ns: u64,
        until_ns: u64,
    ) -> Result<Vec<BucketRow>, StoreError> {
        if until_ns <= since_ns {
            return Ok(Vec::new());
        }
        // A bucket [start, start + width) overlaps the window when
        // start < until and start + width > since; in whole seconds that is
        // start_s < ceil(until) and end_s > floor(since).
        let since_s = to_sql_int(since_ns / NS_PER_S);
        let until_s = to_sql_int(until_ns.div_ceil(NS_PER_S));
        let max_width = to_sql_int(MAX_BUCKET.as_secs());
        let mut rows = Vec::new();
        for resolution in [Resolution::Fine, Resolution::Coarse] {
            let table = resolution.table();
            let mut statement = self
                .conn
                .prepare_cached(&format!(
                    "SELECT p.kind, b.start_s,
                            b.width_s, b.interactions, b.messages, b.bytes, b.errors,
                            b.latency_hist
                     FROM pairs p
                     JOIN services s ON s.id = p.src
                     JOIN services d ON d.id = p.dst
                     JOIN {table} b ON b.pair = p.id
                     WHERE s.name = ?1 AND d.name = ?2
                       AND b.start_s > ?3 - ?5 AND b.start_s < ?4
                       AND b.start_s + b.width_s > ?3"
                ))
                .map_err(sql_error(&self.path, "preparing the history query"))?;
            let stored = statement
                .query_map(params![src, dst, since_s, until_s, max_width], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, i64>(1)?,
                        StoredSums::from_row(2)(row)?,
                    ))
                })
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(sql_error(&self.path, "reading history"))?;
            for (kind, start_s, stored) in stored {
                let context = || format!("{table} {src} -> {dst} {kind} start_s {start_s}");
                let sums = stored.decode(&self.path, context)?;
                let start_ns = u64::try_from(start_s)
                    .ok()
                    .and_then(|s| s.checked_mul(NS_PER_S))
                    .ok_or_else(|| StoreError::Corrupt {
                        path: self.path.clone(),
                        detail: format!("{}: start_s out of range", context()),
                    })?;
                rows.push(BucketRow {
                    start_ns,
                    // Positive, checked by decode.
                    width_ns: (stored.width_s as u64).saturating_mul(NS_PER_S),
                    resolution,
                    src: src.to_owned(),
                    dst: dst.to_owned(),
                    kind,
                    interactions: sums.interactions,
                    messages: sums.messages,
                    bytes: sums.bytes,
                    errors: sums.errors,
                    latency: Histogram::from_buckets(&sums.latency),
                });
            }
        }
        rows.sort_by(|a, b| {
            (a.start_ns, std::cmp::Reverse(a.width_ns), &a.kind).cmp(&(
                b.start_ns,
                std::cmp::Reverse(b.width_ns),
                &b.kind,
            ))
        });
        Ok(rows)
    }

    /// Exact sums over the buckets [`history`](Self::history) returns for
    /// the same arguments.
    pub fn totals(
        &self,
        src: &str,
        dst: &str,
        since_ns: u64,
        until_ns: u64,
    ) -> Result<Totals, StoreError> {
        Ok(Totals::from_rows(
            &self.history(src, dst, since_ns, until_ns)?,
        ))
    }
}

impl Totals {
    /// Sums bucket rows and merges their histograms, saturating: the values
    /// come from a file, and `Histogram::merge` would overflow on absurd ones.
    pub fn from_rows(rows: &[BucketRow]) -> Totals {
        let mut sums = Sums::default();
        for row in rows {
            let mut latency = [0u64; HIST_BUCKETS];
            for (slot, count) in latency.iter_mut().zip(row.latency.buckets()) {
                *slot = *count;
            }
            sums.merge(&Sums {
                interactions: row.interactions,
                messages: row.messages,
                bytes: row.bytes,
                errors: row.errors,
                latency,
            });
        }
        // Keep the grand total within u64 so `Histogram::count` cannot overflow.
        let mut budget = u64::MAX;
        for slot in sums.latency.iter_mut() {
            *slot = (*slot).min(budget);
            budget -= *slot;
        }
        let latency = Histogram::from_buckets(&sums.latency);
        Totals {
            buckets: rows.len(),
            interactions: sums.interactions,
            messages: sums.messages,
            bytes: sums.bytes,
            errors: sums.errors,
            latency_p50_ns: latency.quantile(0.5),
            latency_p99_ns: latency.quantile(0.99),
            latency,
        }
    }
}

/// Every (src, dst, kind) in name order.
pub fn pairs(conn: &Connection, path: &Path) -> Result<Vec<(String, String, String)>, StoreError> {
    let mut statement = conn
        .prepare_cached(
            "SELECT s.name, d.name, p.kind
             FROM pairs p
             JOIN services s ON s.id = p.src
             JOIN services d ON d.id = p.dst
             ORDER BY 1, 2, 3",
        )
        .map_err(sql_error(path, "preparing the pair list"))?;
    statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .and_then(|rows| rows.collect())
        .map_err(sql_error(path, "listing pairs"))
}
