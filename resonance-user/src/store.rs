//! Embedded time-series store: per (source, destination, kind) pair,
//! fixed-width buckets of counts, bytes, errors and a latency histogram, in
//! an SQLite file (WAL mode) in the state folder.
//!
//! [`Store`] is the one handle. [`Store::add`] sums [`PairSample`]s into an
//! in-memory `batch::Batch` (no SQL on the event path); [`Store::flush`]
//! writes the batch into the fine buckets in one transaction, merging with
//! rows already there; [`Store::maintain`] (module `retention`) rolls fine
//! buckets past their retention into coarse ones and drops coarse buckets
//! past theirs; [`Store::history`] and [`Store::totals`] (module `query`)
//! read both resolutions back as [`BucketRow`]s and [`Totals`]. Histograms
//! are stored as compact BLOBs (module `codec`); the tables are created by
//! numbered migrations (module `schema`). Separately, [`Store::add_start`]
//! keeps single interaction starts (the broker's opens, which its model
//! retrains from), written by the same flushes and kept for
//! `starts_retention` (module `starts`). Only this module and its children
//! write SQL. [`StoreConfig`] sets bucket widths and retentions.
//!
//! The agent owns one [`Store::open`] handle and calls `flush` and
//! `maintain` on its own schedule (nothing here runs a timer). Readers in
//! other processes use [`Store::open_read_only`]; WAL lets them read while
//! the agent writes. A `Store` is `Send` but not `Sync`.
//!
//! Durability: every flush is one transaction; with WAL and
//! `synchronous=NORMAL` a killed process loses at most what was added since
//! its last flush, and a power cut at most the last few flushes, never the
//! file's consistency.

mod batch;
mod codec;
mod query;
mod retention;
mod schema;
mod starts;
mod write;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::aggregate::Histogram;

pub use codec::CodecError;

/// State folder used when none is given.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/resonance";

/// Name of the database file inside the state folder.
pub const DB_FILE_NAME: &str = "resonance.db";

/// Widest bucket accepted, so a time-range query knows how far before its
/// start a bucket overlapping it can begin.
pub const MAX_BUCKET: Duration = Duration::from_secs(86_400);

/// How long SQLite waits for another connection's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Activity of one pair over a short interval, as the agent reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PairSample {
    /// When the activity happened, Unix epoch ns; picks the bucket.
    pub at_ns: u64,
    /// Source service name.
    pub src: String,
    /// Destination service name.
    pub dst: String,
    /// Channel kind ("pipe", "unix_stream", ...).
    pub kind: String,
    /// Interactions started.
    pub interactions: u64,
    /// Messages (writes or sends).
    pub messages: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Failed calls.
    pub errors: u64,
    /// Latency counts per bucket, laid out as `resonance_common::histogram`
    /// (`HIST_BUCKETS` buckets; counts past the last are added to it).
    pub latency: Vec<u64>,
}

/// Bucket widths and how long each resolution is kept (the `[store]`
/// section of the agent's config).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Width of the buckets flushes write (whole seconds).
    #[serde(
        deserialize_with = "crate::units::duration",
        serialize_with = "crate::units::write_duration"
    )]
    pub fine_bucket: Duration,
    /// Age after which fine buckets are rolled up into coarse ones.
    #[serde(
        deserialize_with = "crate::units::duration",
        serialize_with = "crate::units::write_duration"
    )]
    pub fine_retention: Duration,
    /// Width of the rolled-up buckets (a whole multiple of `fine_bucket`).
    #[serde(
        deserialize_with = "crate::units::duration",
        serialize_with = "crate::units::write_duration"
    )]
    pub coarse_bucket: Duration,
    /// Age after which coarse buckets are deleted.
    #[serde(
        deserialize_with = "crate::units::duration",
        serialize_with = "crate::units::write_duration"
    )]
    pub coarse_retention: Duration,
    /// Age after which single interaction starts are deleted.
    #[serde(
        deserialize_with = "crate::units::duration",
        serialize_with = "crate::units::write_duration"
    )]
    pub starts_retention: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            fine_bucket: Duration::from_secs(10),
            fine_retention: Duration::from_secs(86_400),
            coarse_bucket: Duration::from_secs(60),
            coarse_retention: Duration::from_secs(30 * 86_400),
            starts_retention: Duration::from_secs(3 * 3600),
        }
    }
}

impl StoreConfig {
    /// Checks the widths nest and fit the query window, and returns them in
    /// seconds (fine, coarse).
    fn validate(&self) -> Result<(i64, i64), StoreError> {
        let whole_seconds = |name: &str, d: Duration| {
            if d.subsec_nanos() != 0 || d.is_zero() || d > MAX_BUCKET {
                Err(StoreError::Config(format!(
                    "{name} must be a whole number of seconds between 1 s and {} s, not {d:?}",
                    MAX_BUCKET.as_secs()
                )))
            } else {
                // At most 86 400, so it fits.
                Ok(d.as_secs() as i64)
            }
        };
        let fine = whole_seconds("fine_bucket", self.fine_bucket)?;
        let coarse = whole_seconds("coarse_bucket", self.coarse_bucket)?;
        if coarse % fine != 0 {
            return Err(StoreError::Config(format!(
                "coarse_bucket ({coarse} s) must be a whole multiple of fine_bucket ({fine} s)"
            )));
        }
        if self.fine_retention < self.fine_bucket || self.coarse_retention < self.fine_retention {
            return Err(StoreError::Config(format!(
                "retentions must satisfy fine_bucket <= fine_retention <= coarse_retention, \
                 not {:?} / {:?} / {:?}",
                self.fine_bucket, self.fine_retention, self.coarse_retention
            )));
        }
        Ok((fine, coarse))
    }
}

/// What went wrong, with the file it happened to.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state folder could not be created.
    #[error("creating the state folder {path}")]
    CreateDir {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A read-only open found no file.
    #[error("no history at {path}: is the agent running with this --state-dir?")]
    Missing {
        /// The database file looked for.
        path: PathBuf,
    },
    /// The file exists but is not an SQLite database.
    #[error("{path} is not an SQLite database (not a resonance store); move it away")]
    NotADatabase {
        /// The file.
        path: PathBuf,
    },
    /// The file is an SQLite database belonging to something else.
    #[error(
        "{path} is an SQLite database of another program (it has tables but no resonance schema version); refusing to change it"
    )]
    Foreign {
        /// The file.
        path: PathBuf,
    },
    /// The file was written by a newer resonance.
    #[error(
        "{path} has schema version {found}, newer than version {supported} this build understands; use a newer resonance"
    )]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
        /// The latest version this build knows.
        supported: i64,
    },
    /// A read-only open found a schema this build would first migrate.
    #[error(
        "{path} has schema version {found}, older than {supported}; the agent upgrades it when it next opens it"
    )]
    OlderSchema {
        /// The file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
        /// The version this build reads.
        supported: i64,
    },
    /// The configuration cannot work.
    #[error("invalid store configuration: {0}")]
    Config(String),
    /// SQLite failed.
    #[error("{what} in {path}")]
    Sql {
        /// The file.
        path: PathBuf,
        /// The step that failed.
        what: &'static str,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// A stored value is not one this store writes.
    #[error("corrupt row in {path}: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Which table and row, and what is wrong with it.
        detail: String,
    },
}

/// Turns an SQLite error at step `what` into a [`StoreError`], singling out
/// files that are not databases at all.
fn sql_error<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(rusqlite::Error) -> StoreError + 'a {
    move |source| {
        if source.sqlite_error_code() == Some(ErrorCode::NotADatabase) {
            StoreError::NotADatabase {
                path: path.to_owned(),
            }
        } else {
            StoreError::Sql {
                path: path.to_owned(),
                what,
                source,
            }
        }
    }
}

/// Outcome of a [`Store::flush`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlushStats {
    /// (pair, bucket) rows inserted or merged.
    pub rows: usize,
    /// Wall time of the flush, transaction included.
    pub duration: Duration,
}

/// Outcome of a [`Store::maintain`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaintainStats {
    /// Fine buckets rolled up and deleted.
    pub fine_rolled: usize,
    /// Coarse buckets inserted or merged by the roll-up.
    pub coarse_written: usize,
    /// Coarse buckets deleted past their retention.
    pub coarse_deleted: usize,
    /// Pairs (and their services) forgotten because no bucket is left.
    pub pairs_deleted: usize,
    /// Interaction starts deleted past their retention.
    pub starts_deleted: usize,
    /// Wall time, transaction included.
    pub duration: Duration,
}

/// One interaction start, as [`Store::add_start`] keeps it: the trace's
/// event (its time, pair and kind are stored; bytes, latency and error are
/// figures of the buckets and read back as zero).
pub use crate::trace::TraceEvent as Start;

/// Which table a bucket came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resolution {
    /// `buckets_fine`: what flushes write.
    Fine,
    /// `buckets_coarse`: fine buckets rolled up by `maintain`.
    Coarse,
}

impl Resolution {
    /// The table holding this resolution.
    fn table(self) -> &'static str {
        match self {
            Resolution::Fine => "buckets_fine",
            Resolution::Coarse => "buckets_coarse",
        }
    }
}

/// One stored bucket of one pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketRow {
    /// Start of the bucket, Unix epoch ns.
    pub start_ns: u64,
    /// Width of the bucket in ns.
    pub width_ns: u64,
    /// Fine or rolled up.
    pub resolution: Resolution,
    /// Source service.
    pub src: String,
    /// Destination service.
    pub dst: String,
    /// Channel kind.
    pub kind: String,
    /// Interactions started.
    pub interactions: u64,
    /// Messages.
    pub messages: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Failed calls.
    pub errors: u64,
    /// Latency histogram.
    pub latency: Histogram,
}

/// Exact sums over a window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Totals {
    /// Buckets summed.
    pub buckets: usize,
    /// Interactions started.
    pub interactions: u64,
    /// Messages.
    pub messages: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Failed calls.
    pub errors: u64,
    /// All latency samples merged.
    pub latency: Histogram,
    /// Median latency (bucket middle), `None` without samples.
    pub latency_p50_ns: Option<u64>,
    /// 99th percentile latency, `None` without samples.
    pub latency_p99_ns: Option<u64>,
}

/// Handle on one store file; see the module documentation.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// Fine and coarse bucket widths in seconds, from the validated config.
    fine_s: i64,
    coarse_s: i64,
    config: StoreConfig,
    batch: batch::Batch,
    /// Row ids of pairs already in the file, so flushes skip the lookups.
    pair_ids: HashMap<batch::PairKey, i64>,
    /// Starts added since the last successful flush.
    starts: Vec<Start>,
}

impl Store {
    /// Opens (creating it and its folder if needed) the store at `path`:
    /// WAL mode, `synchronous=NORMAL`, schema migrated to the latest version.
    pub fn open(path: &Path, config: StoreConfig) -> Result<Store, StoreError> {
        let (fine_s, coarse_s) = config.validate()?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                path: parent.to_owned(),
                source,
            })?;
        }
        let mut conn = Connection::open(path).map_err(sql_error(path, "opening the database"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(sql_error(path, "setting the busy timeout"))?;
        // The first statement that reads the file: a foreign file fails here.
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(sql_error(path, "switching to WAL mode"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            log::warn!(
                "{}: journal mode is {mode}, not WAL; crash safety is reduced",
                path.display()
            );
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql_error(path, "setting synchronous=NORMAL"))?;
        if schema::version(&conn).map_err(sql_error(path, "reading the schema version"))? == 0 {
            let tables: i64 = conn
                .query_row(
                    "SELECT count(*) FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'",
                    [],
                    |row| row.get(0),
                )
                .map_err(sql_error(path, "listing existing tables"))?;
            if tables > 0 {
                return Err(StoreError::Foreign {
                    path: path.to_owned(),
                });
            }
        }
        schema::migrate(&mut conn).map_err(|error| match error {
            schema::MigrateError::Newer(found) => StoreError::NewerSchema {
                path: path.to_owned(),
                found,
                supported: schema::LATEST,
            },
            schema::MigrateError::Sql(what, source) => sql_error(path, what)(source),
        })?;
        Ok(Store {
            conn,
            path: path.to_owned(),
            fine_s,
            coarse_s,
            config,
            batch: batch::Batch::default(),
            pair_ids: HashMap::new(),
            starts: Vec::new(),
        })
    }

    /// Opens an existing store for reading only (the `history` command):
    /// never creates, migrates or writes, so it is safe next to a running
    /// agent. A missing file is [`StoreError::Missing`].
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing {
                path: path.to_owned(),
            });
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(sql_error(path, "opening the database read-only"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(sql_error(path, "setting the busy timeout"))?;
        let found =
            schema::version(&conn).map_err(sql_error(path, "reading the schema version"))?;
        if found > schema::LATEST {
            return Err(StoreError::NewerSchema {
                path: path.to_owned(),
                found,
                supported: schema::LATEST,
            });
        }
        if found < schema::LATEST {
            return Err(StoreError::OlderSchema {
                path: path.to_owned(),
                found,
                supported: schema::LATEST,
            });
        }
        let config = StoreConfig::default();
        let (fine_s, coarse_s) = config.validate()?;
        Ok(Store {
            conn,
            path: path.to_owned(),
            fine_s,
            coarse_s,
            config,
            batch: batch::Batch::default(),
            pair_ids: HashMap::new(),
            starts: Vec::new(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Sums `sample` into memory; nothing reaches the file before the next
    /// [`flush`](Self::flush).
    pub fn add(&mut self, sample: &PairSample) {
        self.batch.add(sample, self.fine_s);
    }

    /// (pair, bucket) rows and starts waiting for the next flush.
    pub fn pending_rows(&self) -> usize {
        self.batch.len() + self.starts.len()
    }

    /// Writes everything added since the last successful flush in one
    /// transaction, adding to rows already in the file. On error nothing is
    /// written and the samples stay in memory for the next attempt.
    pub fn flush(&mut self) -> Result<FlushStats, StoreError> {
        let started = Instant::now();
        if self.batch.is_empty() && self.starts.is_empty() {
            return Ok(FlushStats {
                rows: 0,
                duration: started.elapsed(),
            });
        }
        let rows = self.batch.rows();
        let path = &self.path;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql_error(path, "starting the flush transaction"))?;
        let mut new_ids: HashMap<batch::PairKey, i64> = HashMap::new();
        for (key, start_s, sums) in &rows {
            let pair = match self.pair_ids.get(key).or_else(|| new_ids.get(key)) {
                Some(&id) => id,
                None => {
                    let id = write::pair_id(&tx, path, key)?;
                    new_ids.insert(key.clone(), id);
                    id
                }
            };
            write::merge_bucket(
                &tx,
                path,
                Resolution::Fine,
                pair,
                *start_s,
                self.fine_s,
                sums,
            )?;
        }
        starts::insert(&tx, path, &self.starts)?;
        tx.commit()
            .map_err(sql_error(path, "committing the flush transaction"))?;
        let written = rows.len() + self.starts.len();
        drop(rows);
        self.pair_ids.extend(new_ids);
        self.batch.clear();
        self.starts.clear();
        Ok(FlushStats {
            rows: written,
            duration: started.elapsed(),
        })
    }

    /// Every (src, dst, kind) the file knows, in name order.
    pub fn pairs(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        query::pairs(&self.conn, &self.path)
    }
}

#[cfg(test)]
mod tests;
