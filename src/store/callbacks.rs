//! The callback delivery status of detached runs (the `callback` column, a JSON object written by
//! [`crate::callbacks`]). Only final runs carry one: the guard is in the `WHERE` clause.
//!
//! The status is written through the same path as a run's end (the group-commit writer on
//! SQLite): a delivery writes it two or three times (pending, then once per attempt), which at a
//! high run rate is the same order of writes as the runs themselves, so it batches with them
//! instead of taking the single write connection for a commit of its own each time.

use anyhow::{Context, Result};
use sqlx::Row;

use super::Store;
use super::writer::Op;

impl Store {
    /// Replaces the callback status of a finished or interrupted run. Returns false when the run
    /// is unknown or not final.
    pub async fn set_callback(&self, run_id: &str, callback: &serde_json::Value) -> Result<bool> {
        let op = Op::SetCallback {
            run_id: run_id.to_string(),
            callback: callback.to_string(),
        };
        let changed = self
            .write_op(op)
            .await
            .with_context(|| format!("recording the callback of run {run_id}"))?;
        Ok(changed == 1)
    }

    /// The final detached runs of `instance` with a `callback_url` whose delivery is not done:
    /// never started (e.g. interrupted at recovery, or the gateway died right after the run
    /// ended) or still `pending`. Oldest end first.
    pub async fn pending_callbacks(&self, instance: &str) -> Result<Vec<String>> {
        // The LIKE narrows the rows in SQL (the JSON is written compactly by serde_json, and a
        // `"state":"` inside a string value would be escaped); the decode below decides.
        let rows = sqlx::query(
            "SELECT run_id, callback FROM runs WHERE instance = $1 AND detached = 1 AND callback_url IS NOT NULL \
             AND state IN ('finished', 'interrupted') \
             AND (callback IS NULL OR callback LIKE '%\"state\":\"pending\"%') \
             ORDER BY finished_at, run_id",
        )
        .bind(instance)
        .fetch_all(&self.read)
        .await
        .with_context(|| format!("reading the pending callbacks of instance {instance}"))?;
        let mut ids = Vec::new();
        for row in &rows {
            let run_id: String = row.try_get(0)?;
            let callback: Option<String> = row.try_get(1)?;
            let pending = match callback.and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok()) {
                None => true,
                Some(v) => v.get("state").and_then(|s| s.as_str()) == Some("pending"),
            };
            if pending {
                ids.push(run_id);
            }
        }
        Ok(ids)
    }
}
