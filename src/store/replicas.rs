//! Gateway replicas sharing one PostgreSQL database: registration and heartbeat in `replicas`,
//! where each replica can be reached, and the runs of replicas that stopped heartbeating.
//! Heartbeat ages are computed with the database's clock on both sides (written and compared
//! in SQL), so replicas on hosts whose clocks disagree still agree on who is dead. PostgreSQL
//! only: with SQLite there is one gateway.

use std::time::Duration;

use anyhow::{Context, Result};
use sqlx::{AssertSqlSafe, Row};

use super::runs::{COLUMNS, decode};
use super::{RunRecord, Store, over_ids};

/// The database's clock in unix milliseconds (PostgreSQL: replicas share only PostgreSQL).
pub(super) const DB_NOW_MS: &str = "CAST(extract(epoch from clock_timestamp()) * 1000 AS BIGINT)";

/// Rows of replicas dead this long are removed (kept until then for the "last seen" in
/// messages about their runs).
const FORGET_AFTER_MS: i64 = 24 * 3600 * 1000;

/// What a queued or running run holds across every replica: each a column of `runs` that a
/// unique index keeps to one queued/running run (migrations 0002 and 0005).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    Session,
    Branch,
    StateKey,
}

impl Held {
    fn column(self) -> &'static str {
        match self {
            Held::Session => "session_id",
            Held::Branch => "branch_hold",
            Held::StateKey => "state_hold",
        }
    }

    fn index(self) -> &'static str {
        match self {
            Held::Session => "runs_one_active_per_session",
            Held::Branch => "runs_one_active_per_branch",
            Held::StateKey => "runs_one_active_per_state_key",
        }
    }
}

/// A registered replica as another one sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: String,
    /// Where it is reached (`ADVERTISE_URL`).
    pub url: String,
    /// Milliseconds since its last heartbeat, by the database's clock.
    pub age_ms: i64,
}

impl Peer {
    /// Heartbeat within `dead`.
    pub fn alive(&self, dead: Duration) -> bool {
        self.age_ms <= millis(dead)
    }
}

pub(super) fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

/// Which hold `e` refused a second queued/running run of (a violation of one of the unique
/// indexes of [`Held`]), if that is what it is.
pub fn taken(e: &anyhow::Error) -> Option<Held> {
    e.chain().find_map(|cause| {
        let d = cause.downcast_ref::<sqlx::Error>()?.as_database_error()?;
        [Held::Session, Held::Branch, Held::StateKey].into_iter().find(|held| {
            d.constraint() == Some(held.index())
                || (d.code().as_deref() == Some("23505") && d.message().contains(held.index()))
        })
    })
}

impl Store {
    /// Registers `id` at `url` or renews its heartbeat (an upsert: a replica forgotten by the
    /// others comes back with its next heartbeat).
    pub async fn heartbeat(&self, id: &str, url: &str) -> Result<()> {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO replicas (id, advertise_url, heartbeat_at) VALUES ($1, $2, {DB_NOW_MS}) \
             ON CONFLICT (id) DO UPDATE SET advertise_url = EXCLUDED.advertise_url, heartbeat_at = EXCLUDED.heartbeat_at"
        )))
        .bind(id)
        .bind(url)
        .execute(&self.write)
        .await
        .with_context(|| format!("heartbeat of replica {id}"))?;
        Ok(())
    }

    /// Removes `id` from the replicas (graceful shutdown, once its runs have ended).
    pub async fn deregister(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM replicas WHERE id = $1")
            .bind(id)
            .execute(&self.write)
            .await
            .with_context(|| format!("deregistering replica {id}"))?;
        Ok(())
    }

    /// The replica `id`, if registered.
    pub async fn peer(&self, id: &str) -> Result<Option<Peer>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, advertise_url, {DB_NOW_MS} - heartbeat_at FROM replicas WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.read)
        .await
        .with_context(|| format!("reading replica {id}"))?;
        row.map(|r| peer(&r)).transpose()
    }

    /// Every registered replica, live or not, by id.
    pub async fn peers(&self) -> Result<Vec<Peer>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, advertise_url, {DB_NOW_MS} - heartbeat_at FROM replicas ORDER BY id"
        )))
        .fetch_all(&self.read)
        .await
        .context("reading the replicas")?;
        rows.iter().map(peer).collect()
    }

    /// Every queued/running run of a replica other than `me` whose heartbeat is older than
    /// `dead` (or that is not registered at all) becomes interrupted with reason `replica_lost`,
    /// ended at `now_ms`; returns those runs. One statement: when several replicas sweep at
    /// once, each run is ended by exactly one of them (the others' guard no longer matches).
    /// Also forgets replicas dead for a day.
    pub async fn interrupt_lost(&self, me: &str, dead: Duration, now_ms: i64) -> Result<Vec<RunRecord>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "UPDATE runs SET state = 'interrupted', reason = 'replica_lost', finished_at = $1 \
             WHERE state IN ('queued', 'running') AND instance <> $2 AND NOT EXISTS \
             (SELECT 1 FROM replicas r WHERE r.id = runs.instance AND r.heartbeat_at >= {DB_NOW_MS} - $3) \
             RETURNING {COLUMNS}"
        )))
        .bind(now_ms)
        .bind(me)
        .bind(millis(dead))
        .fetch_all(&self.write)
        .await
        .context("interrupting the runs of lost replicas")?;
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM replicas WHERE heartbeat_at < {DB_NOW_MS} - $1"
        )))
        .bind(FORGET_AFTER_MS)
        .execute(&self.write)
        .await
        .context("forgetting long-dead replicas")?;
        rows.iter().map(decode).collect()
    }

    /// Ends the queued/running run that holds `value` (a session, branch or state key) although
    /// nothing runs it: one of `me` (the caller, which has claimed the same in memory for the
    /// run being created, does not have it: its end was never recorded) or of a replica dead
    /// for `dead`. Returns whether one was ended (then the new run may be recorded).
    pub async fn release_stale(&self, held: Held, value: &str, me: &str, dead: Duration, now_ms: i64) -> Result<bool> {
        let ended = sqlx::query(AssertSqlSafe(format!(
            "UPDATE runs SET state = 'interrupted', finished_at = $1, \
             reason = CASE WHEN instance = $2 THEN 'gateway_lost' ELSE 'replica_lost' END \
             WHERE {} = $3 AND state IN ('queued', 'running') AND (instance = $2 OR NOT EXISTS \
             (SELECT 1 FROM replicas r WHERE r.id = runs.instance AND r.heartbeat_at >= {DB_NOW_MS} - $4))",
            held.column()
        )))
        .bind(now_ms)
        .bind(me)
        .bind(value)
        .bind(millis(dead))
        .execute(&self.write)
        .await
        .with_context(|| format!("releasing {} {value}", held.column()))?
        .rows_affected();
        Ok(ended > 0)
    }

    /// Those of `run_ids` whose record is final (another replica declared them lost while this
    /// one still runs them).
    pub async fn final_among(&self, run_ids: &[String]) -> Result<Vec<String>> {
        if run_ids.is_empty() {
            return Ok(Vec::new());
        }
        let finals = "SELECT run_id FROM runs WHERE state IN ('finished', 'interrupted') AND run_id IN";
        let rows = over_ids(finals, run_ids)
            .fetch_all(&self.read)
            .await
            .context("reading run states")?;
        rows.iter().map(|r| Ok(r.try_get::<String, _>(0)?)).collect()
    }
}

fn peer(row: &sqlx::any::AnyRow) -> Result<Peer> {
    Ok(Peer {
        id: row.try_get(0)?,
        url: row.try_get(1)?,
        age_ms: row.try_get(2)?,
    })
}
