//! Retention: fine buckets past `fine_retention` are summed into coarse
//! buckets and deleted, coarse buckets past `coarse_retention` are deleted,
//! and pairs without buckets are forgotten; so are single interaction
//! starts past `starts_retention`. One transaction, so a crash
//! midway changes nothing; running it twice does nothing the second time.

use std::{collections::BTreeMap, time::Instant};

use rusqlite::{TransactionBehavior, params};

use super::{
    MaintainStats, Resolution, Store, StoreError,
    batch::Sums,
    query::{StoredSums, to_sql_int},
    sql_error, starts, write,
};

impl Store {
    /// Rolls up and deletes what is past its retention at `now_ns` (Unix
    /// epoch ns). A bucket is past retention when its end is.
    pub fn maintain(&mut self, now_ns: u64) -> Result<MaintainStats, StoreError> {
        let started = Instant::now();
        let path = &self.path;
        let now_s = to_sql_int(now_ns / 1_000_000_000);
        let fine_cutoff = now_s.saturating_sub(to_sql_int(self.config.fine_retention.as_secs()));
        let coarse_cutoff =
            now_s.saturating_sub(to_sql_int(self.config.coarse_retention.as_secs()));
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_error(path, "starting the maintenance transaction"))?;

        // `start_s < cutoff` lets the start_s index narrow the scan.
        let expired = tx
            .prepare(
                "SELECT pair, start_s,
                        width_s, interactions, messages, bytes, errors, latency_hist
                 FROM buckets_fine
                 WHERE start_s < ?1 AND start_s + width_s <= ?1",
            )
            .and_then(|mut statement| {
                statement
                    .query_map([fine_cutoff], |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, i64>(1)?,
                            StoredSums::from_row(2)(row)?,
                        ))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(sql_error(path, "reading fine buckets past retention"))?;
        let mut rolled: BTreeMap<(i64, i64), Sums> = BTreeMap::new();
        for (pair, start_s, stored) in &expired {
            let context = || format!("buckets_fine pair {pair} start_s {start_s}");
            let sums = stored.decode(path, context)?;
            // Fine widths divide the coarse width and both align on the
            // epoch, so a fine bucket lies inside the coarse one holding its
            // start.
            let coarse_start = start_s - start_s.rem_euclid(self.coarse_s);
            rolled
                .entry((*pair, coarse_start))
                .or_default()
                .merge(&sums);
        }
        for ((pair, coarse_start), sums) in &rolled {
            write::merge_bucket(
                &tx,
                path,
                Resolution::Coarse,
                *pair,
                *coarse_start,
                self.coarse_s,
                sums,
            )?;
        }
        let fine_rolled = tx
            .execute(
                "DELETE FROM buckets_fine WHERE start_s < ?1 AND start_s + width_s <= ?1",
                [fine_cutoff],
            )
            .map_err(sql_error(path, "deleting rolled-up fine buckets"))?;
        let coarse_deleted = tx
            .execute(
                "DELETE FROM buckets_coarse WHERE start_s < ?1 AND start_s + width_s <= ?1",
                [coarse_cutoff],
            )
            .map_err(sql_error(path, "deleting coarse buckets past retention"))?;
        let pairs_deleted = tx
            .execute(
                "DELETE FROM pairs
                 WHERE NOT EXISTS (SELECT 1 FROM buckets_fine f WHERE f.pair = pairs.id)
                   AND NOT EXISTS (SELECT 1 FROM buckets_coarse c WHERE c.pair = pairs.id)",
                params![],
            )
            .map_err(sql_error(path, "forgetting pairs without buckets"))?;
        tx.execute(
            "DELETE FROM services
             WHERE id NOT IN (SELECT src FROM pairs UNION SELECT dst FROM pairs)",
            params![],
        )
        .map_err(sql_error(path, "forgetting services without pairs"))?;
        let starts_cutoff = now_ns.saturating_sub(
            u64::try_from(self.config.starts_retention.as_nanos()).unwrap_or(u64::MAX),
        );
        let starts_deleted = starts::expire(&tx, path, starts_cutoff)?;
        tx.commit()
            .map_err(sql_error(path, "committing the maintenance transaction"))?;
        if pairs_deleted > 0 {
            // Cached ids may name deleted rows; flushes look them up again.
            self.pair_ids.clear();
        }
        Ok(MaintainStats {
            fine_rolled,
            coarse_written: rolled.len(),
            coarse_deleted,
            pairs_deleted,
            starts_deleted,
            duration: started.elapsed(),
        })
    }
}
