//! Retention: finished runs older than `RUN_RETENTION_DAYS`, or beyond `RUN_RETENTION_BYTES`
//! of logs, are removed with their logs; a running run never is.

use std::time::Duration;

use crate::store::time::now_ms;

use super::Runs;

impl Runs {
    /// Removes finished runs (record, then log) older than `RUN_RETENTION_DAYS`, then the oldest
    /// while the finished runs' logs hold more than `RUN_RETENTION_BYTES`. A run that is queued or
    /// running is never removed (the store refuses to delete one). Returns how many were removed.
    pub async fn retain(&self) -> anyhow::Result<u64> {
        // Idempotency keys name their run for a day.
        self.store.expire_keys(now_ms()).await?;
        self.retain_with(self.config.run_retention, self.config.run_retention_bytes)
            .await
    }

    /// [`Runs::retain`] with explicit bounds.
    pub async fn retain_with(&self, max_age: Option<Duration>, max_bytes: Option<u64>) -> anyhow::Result<u64> {
        let mut removed = 0u64;
        if let Some(age) = max_age {
            let cutoff = now_ms() - age.as_millis().min(i64::MAX as u128) as i64;
            loop {
                let batch = self.store.finished_before(cutoff, 500).await?;
                if batch.is_empty() {
                    break;
                }
                removed += self.remove(batch.iter().map(|(id, _)| id.clone()).collect()).await?;
            }
        }
        if let Some(max) = max_bytes {
            let mut total = self.store.total_log_bytes_finished().await?;
            while total > max {
                let batch = self.store.finished_oldest_first(200).await?;
                if batch.is_empty() {
                    break;
                }
                let mut ids = Vec::new();
                for (id, bytes, _) in batch {
                    if total <= max {
                        break;
                    }
                    total = total.saturating_sub(bytes);
                    ids.push(id);
                }
                removed += self.remove(ids).await?;
            }
        }
        if removed > 0 {
            self.metrics.retention_removed.inc_by(removed);
            tracing::info!(removed, "retention removed finished runs");
        }
        Ok(removed)
    }

    /// Deletes records, then their logs (a crash in between leaves only a file, never a record
    /// without its log).
    pub(super) async fn remove(&self, run_ids: Vec<String>) -> anyhow::Result<u64> {
        if run_ids.is_empty() {
            return Ok(0);
        }
        let deleted = self.store.delete(&run_ids).await?;
        for id in &run_ids {
            if let Err(e) = self.logs.remove(id) {
                tracing::warn!(run_id = id.as_str(), error = %e, "cannot remove a run's log");
            }
        }
        Ok(deleted)
    }
}
