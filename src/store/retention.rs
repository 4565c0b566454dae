//! What the retention sweeper may delete, and deleting it. Only ended runs (finished or
//! interrupted) are ever candidates: the `state` guard is in every statement, so not even a
//! wrong id list can remove a queued or running record. A store scoped to a replica
//! ([`Store::scope_retention`]) only considers that replica's runs: their logs are in its
//! `DATA_DIR`, so only it can remove record and log together.

use anyhow::{Context, Result};
use sqlx::{AssertSqlSafe, Row};

use super::{Store, over_ids, over_ids_then};

/// Ids per `DELETE … IN (…)` statement (well under every database's parameter limit).
const DELETE_CHUNK: usize = 500;

impl Store {
    /// From now on retention considers only the runs executed by `instance` (replicas sharing
    /// PostgreSQL each retain their own).
    pub fn scope_retention(&mut self, instance: &str) {
        self.retention_scope = Some(instance.to_string());
    }

    /// `AND instance = $n` when scoped.
    fn scope(&self, n: usize) -> String {
        match self.retention_scope {
            Some(_) => format!(" AND instance = ${n}"),
            None => String::new(),
        }
    }

    /// Ended runs that ended before `cutoff_ms`, oldest end first: `(run_id, log_bytes)`.
    pub async fn finished_before(&self, cutoff_ms: i64, limit: u32) -> Result<Vec<(String, u64)>> {
        let sql = format!(
            "SELECT run_id, log_bytes FROM runs WHERE state IN ('finished', 'interrupted') AND finished_at < $1{} \
             ORDER BY finished_at, run_id LIMIT $2",
            self.scope(3)
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(cutoff_ms).bind(i64::from(limit));
        if let Some(instance) = &self.retention_scope {
            q = q.bind(instance.as_str());
        }
        let rows = q.fetch_all(&self.read).await.context("listing expired runs")?;
        rows.iter()
            .map(|r| Ok((r.try_get::<String, _>(0)?, u64::try_from(r.try_get::<i64, _>(1)?)?)))
            .collect()
    }

    /// Ended runs, oldest end first: `(run_id, log_bytes, finished_at)` (for a byte bound).
    pub async fn finished_oldest_first(&self, limit: u32) -> Result<Vec<(String, u64, i64)>> {
        let sql = format!(
            "SELECT run_id, log_bytes, finished_at FROM runs WHERE state IN ('finished', 'interrupted'){} \
             ORDER BY finished_at, run_id LIMIT $1",
            self.scope(2)
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(i64::from(limit));
        if let Some(instance) = &self.retention_scope {
            q = q.bind(instance.as_str());
        }
        let rows = q.fetch_all(&self.read).await.context("listing ended runs")?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>(0)?,
                    u64::try_from(r.try_get::<i64, _>(1)?)?,
                    r.try_get::<Option<i64>, _>(2)?.unwrap_or(0),
                ))
            })
            .collect()
    }

    /// The log bytes of every ended run.
    pub async fn total_log_bytes_finished(&self) -> Result<u64> {
        let sql = format!(
            "SELECT CAST(COALESCE(SUM(log_bytes), 0) AS BIGINT) FROM runs WHERE state IN ('finished', 'interrupted'){}",
            self.scope(1)
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        if let Some(instance) = &self.retention_scope {
            q = q.bind(instance.as_str());
        }
        let row = q.fetch_one(&self.read).await.context("adding up log bytes")?;
        Ok(u64::try_from(row.try_get::<i64, _>(0)?)?)
    }

    /// Deletes the given runs that have ended, with their kept logs and idempotency keys;
    /// queued/running ones (and unknown ids) are left alone. Returns how many records were
    /// deleted.
    pub async fn delete(&self, run_ids: &[String]) -> Result<u64> {
        let mut deleted = 0;
        for chunk in run_ids.chunks(DELETE_CHUNK) {
            let runs = "DELETE FROM runs WHERE state IN ('finished', 'interrupted') AND run_id IN";
            deleted += over_ids(runs, chunk)
                .execute(&self.write)
                .await
                .context("deleting runs")?
                .rows_affected();
            // A kept log exists only for a final run, which the statement above deleted.
            over_ids("DELETE FROM run_logs WHERE run_id IN", chunk)
                .execute(&self.write)
                .await
                .context("deleting kept logs")?;
            // A key lives no longer than the record of its run: a retry after that starts a
            // new run, as after the key's 24 hours. Only keys whose record is gone: an id of a
            // run that was not deleted above keeps its keys.
            let gone = " AND NOT EXISTS (SELECT 1 FROM runs WHERE runs.run_id = idempotency.run_id)";
            over_ids_then("DELETE FROM idempotency WHERE run_id IN", chunk, gone)
                .execute(&self.write)
                .await
                .context("deleting the idempotency keys of deleted runs")?;
        }
        Ok(deleted)
    }
}
