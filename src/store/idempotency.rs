//! `Idempotency-Key`: one run per (owner, key) within a day. A claim is one `INSERT … ON
//! CONFLICT DO NOTHING`, so of many concurrent requests with one key exactly one wins, in one
//! process or in several sharing the database; the others are told which run the key names.

use anyhow::{Context, Result};
use sqlx::Row;

use super::Store;

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
    /// `body_hash`. A key older than [`KEY_LIFETIME_MS`] is claimed anew.
    pub async fn claim_key(&self, owner: &str, key: &str, body_hash: &str, run_id: &str, now_ms: i64) -> Result<Claim> {
        for _ in 0..3 {
            let inserted = sqlx::query(
                "INSERT INTO idempotency (owner, key, body_hash, run_id, created_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (owner, key) DO NOTHING",
            )
            .bind(owner)
            .bind(key)
            .bind(body_hash)
            .bind(run_id)
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
                "UPDATE idempotency SET body_hash = $1, run_id = $2, created_at = $3 \
                 WHERE owner = $4 AND key = $5 AND created_at = $6",
            )
            .bind(body_hash)
            .bind(run_id)
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
