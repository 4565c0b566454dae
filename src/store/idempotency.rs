//! `Idempotency-Key`: one run per (owner, key) within a day. A claim is one `INSERT … ON
//! CONFLICT DO NOTHING`, so of many concurrent requests with one key exactly one wins, in one
//! process or in several sharing the database; the others are told which run the key names.
//!
//! A claim is committed before its run's record (an attached run may wait for a slot in
//! between), and it records the claiming instance: a claim whose gateway died in that window
//! names a run nobody will record, and would hold its key for the rest of the day. The instance's
//! next start ([`Store::forget_unstarted_keys`]), or the replicas that see it dead
//! ([`Store::forget_lost_replicas_keys`]), forget such claims, so a retry starts the run.

use anyhow::{Context, Result};
use sqlx::{AssertSqlSafe, Row};

use super::Store;
use super::replicas::{DB_NOW_MS, millis};

/// How long a key names its run.
pub const KEY_LIFETIME_MS: i64 = 24 * 3600 * 1000;

/// The outcome of [`Store::claim_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is now this request's: start the run it names.
    New,
    /// The key already names a run, for a body with this hash.
    Taken { body_hash: String, run_id: String },
}

impl Store {
    /// Claims `key` of `owner` (`""` without tokens) for a new run `run_id` of a body with
    /// `body_hash`, started by gateway `instance`. A key older than [`KEY_LIFETIME_MS`] is
    /// claimed anew.
    pub async fn claim_key(
        &self,
        owner: &str,
        key: &str,
        body_hash: &str,
        (run_id, instance): (&str, &str),
        now_ms: i64,
    ) -> Result<Claim> {
        for _ in 0..3 {
            let inserted = sqlx::query(
                "INSERT INTO idempotency (owner, key, body_hash, run_id, instance, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (owner, key) DO NOTHING",
            )
            .bind(owner)
            .bind(key)
            .bind(body_hash)
            .bind(run_id)
            .bind(instance)
            .bind(now_ms)
            .execute(&self.write)
            .await
            .context("claiming an idempotency key")?
            .rows_affected();
            if inserted == 1 {
                return Ok(Claim::New);
            }
            let row =
                sqlx::query("SELECT body_hash, run_id, created_at FROM idempotency WHERE owner = $1 AND key = $2")
                    .bind(owner)
                    .bind(key)
                    .fetch_optional(&self.write)
                    .await
                    .context("reading an idempotency key")?;
            let Some(row) = row else { continue }; // released meanwhile: try again
            let created_at: i64 = row.try_get("created_at")?;
            if created_at > now_ms - KEY_LIFETIME_MS {
                return Ok(Claim::Taken {
                    body_hash: row.try_get("body_hash")?,
                    run_id: row.try_get("run_id")?,
                });
            }
            // Expired: take it over, unless another request just did.
            let replaced = sqlx::query(
                "UPDATE idempotency SET body_hash = $1, run_id = $2, instance = $3, created_at = $4 \
                 WHERE owner = $5 AND key = $6 AND created_at = $7",
            )
            .bind(body_hash)
            .bind(run_id)
            .bind(instance)
            .bind(now_ms)
            .bind(owner)
            .bind(key)
            .bind(created_at)
            .execute(&self.write)
            .await
            .context("renewing an idempotency key")?
            .rows_affected();
            if replaced == 1 {
                return Ok(Claim::New);
            }
        }
        anyhow::bail!("the idempotency key '{key}' changed hands three times while being claimed")
    }

    /// Gives a claimed key back (its run could not be started), so a retry can start one.
    pub async fn release_key(&self, owner: &str, key: &str, run_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM idempotency WHERE owner = $1 AND key = $2 AND run_id = $3")
            .bind(owner)
            .bind(key)
            .bind(run_id)
            .execute(&self.write)
            .await
            .context("releasing an idempotency key")?;
        Ok(())
    }

    /// At `instance`'s start, before it serves: forgets its claims whose run has no record. The
    /// process that claimed them is gone (it was this instance), so their runs will never be
    /// recorded. Returns how many were forgotten.
    pub async fn forget_unstarted_keys(&self, instance: &str) -> Result<u64> {
        Ok(sqlx::query(
            "DELETE FROM idempotency WHERE instance = $1 \
             AND NOT EXISTS (SELECT 1 FROM runs WHERE runs.run_id = idempotency.run_id)",
        )
        .bind(instance)
        .execute(&self.write)
        .await
        .context("forgetting the idempotency keys of runs that never started")?
        .rows_affected())
    }

    /// The same for the claims of replicas other than `me` whose heartbeat is older than `dead`
    /// (registered replicas only: one that deregistered shut down cleanly, and gave back the
    /// keys of the runs it did not start). Returns how many were forgotten.
    pub async fn forget_lost_replicas_keys(&self, me: &str, dead: std::time::Duration) -> Result<u64> {
        Ok(sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM idempotency WHERE instance IN \
             (SELECT id FROM replicas WHERE id <> $1 AND heartbeat_at < {DB_NOW_MS} - $2) \
             AND NOT EXISTS (SELECT 1 FROM runs WHERE runs.run_id = idempotency.run_id)"
        )))
        .bind(me)
        .bind(millis(dead))
        .execute(&self.write)
        .await
        .context("forgetting the idempotency keys of lost replicas")?
        .rows_affected())
    }

    /// Forgets keys older than [`KEY_LIFETIME_MS`].
    pub async fn expire_keys(&self, now_ms: i64) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM idempotency WHERE created_at <= $1")
            .bind(now_ms - KEY_LIFETIME_MS)
            .execute(&self.write)
            .await
            .context("expiring idempotency keys")?
            .rows_affected())
    }
}
