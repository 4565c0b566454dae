//! Writes and reads of run records. Every statement is portable SQL run through the `Any`
//! driver; state guards live in the `WHERE` clauses, so a final record is never changed whoever
//! calls.

use anyhow::{Context, Result, anyhow, bail};
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::cursor::Cursor;
use super::record::{Finish, ListQuery, RecordState, RunMode, RunRecord};
use super::writer::Op;
use super::{ListError, Store, over_ids};

/// Every column of `runs`, in the order [`decode`] reads them.
pub(super) const COLUMNS: &str = "run_id, session_id, cli, args, env_keys, model, mode, owner, instance, state, \
     exit_code, reason, created_at, started_at, finished_at, stdout_bytes, stderr_bytes, log_bytes, detached, \
     callback_url, callback, git";

/// The largest page of [`Store::list`].
pub const MAX_LIMIT: u32 = 1000;
/// The page size when none is asked for.
pub const DEFAULT_LIMIT: u32 = 50;

impl Store {
    /// Records a new run (any state; normally [`RecordState::Queued`]).
    pub async fn insert(&self, run: &RunRecord) -> Result<()> {
        for n in [run.stdout_bytes, run.stderr_bytes, run.log_bytes] {
            count(n)?;
        }
        self.write_op(Op::Insert(Box::new(run.clone())))
            .await
            .with_context(|| format!("recording run {}", run.run_id))?;
        Ok(())
    }

    /// Queued → running. Returns false when the run is not queued (unknown, or already further).
    pub async fn mark_running(&self, run_id: &str, started_at_ms: i64) -> Result<bool> {
        let op = Op::MarkRunning {
            run_id: run_id.to_string(),
            at: started_at_ms,
        };
        let changed = self
            .write_op(op)
            .await
            .with_context(|| format!("marking run {run_id} running"))?;
        Ok(changed == 1)
    }

    /// Queued/running → finished or interrupted, with the end's details. Returns false when the
    /// run is unknown or already final: a final record is never changed again.
    pub async fn finish(&self, run_id: &str, end: &Finish) -> Result<bool> {
        self.finish_with_log(run_id, end, None).await
    }

    /// [`Store::finish`], keeping `log` (the run's whole log) with the record when it is changed:
    /// from then on the log is read from here ([`Store::kept_log`]), not from its file.
    pub async fn finish_with_log(&self, run_id: &str, end: &Finish, log: Option<Vec<u8>>) -> Result<bool> {
        if !end.state.is_final() {
            bail!("finish: {} is not a final state", end.state.as_str());
        }
        for n in [end.stdout_bytes, end.stderr_bytes, end.log_bytes] {
            count(n)?;
        }
        let op = Op::Finish {
            run_id: run_id.to_string(),
            end: end.clone(),
            log,
        };
        let changed = self
            .write_op(op)
            .await
            .with_context(|| format!("finishing run {run_id}"))?;
        Ok(changed == 1)
    }

    /// One hot-path write: through the group-commit writer on SQLite, straight to the pool on
    /// PostgreSQL.
    pub(super) async fn write_op(&self, op: Op) -> Result<u64> {
        match &self.writer {
            Some(writer) => writer.write(op).await,
            None => {
                let mut conn = self.write.acquire().await?;
                Ok(op.execute(&mut conn).await?)
            }
        }
    }

    /// The log kept with a finished run's record ([`Store::finish_with_log`]), if any.
    pub async fn kept_log(&self, run_id: &str) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT content FROM run_logs WHERE run_id = $1")
            .bind(run_id)
            .fetch_optional(&self.read)
            .await
            .with_context(|| format!("reading the log of run {run_id}"))?;
        Ok(row.map(|r| r.try_get::<Vec<u8>, _>(0)).transpose()?)
    }

    /// Which of `ids` name a record (any instance's), for the start-up's account of the files
    /// in the log directory.
    pub async fn recorded_ids(&self, ids: &[String]) -> Result<std::collections::HashSet<String>> {
        let mut known = std::collections::HashSet::new();
        for chunk in ids.chunks(256) {
            let rows = over_ids("SELECT run_id FROM runs WHERE run_id IN", chunk)
                .fetch_all(&self.read)
                .await
                .context("reading which logs have records")?;
            for row in rows {
                known.insert(row.try_get::<String, _>(0)?);
            }
        }
        Ok(known)
    }

    /// The record of `run_id`, if any.
    pub async fn get(&self, run_id: &str) -> Result<Option<RunRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {COLUMNS} FROM runs WHERE run_id = $1")))
            .bind(run_id)
            .fetch_optional(&self.read)
            .await
            .with_context(|| format!("reading run {run_id}"))?;
        row.as_ref().map(decode).transpose()
    }

    /// The newest record of a session (sessions are re-used across runs).
    pub async fn latest_by_session(&self, session_id: &str) -> Result<Option<RunRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM runs WHERE session_id = $1 ORDER BY created_at DESC, run_id DESC LIMIT 1"
        )))
        .bind(session_id)
        .fetch_optional(&self.read)
        .await
        .with_context(|| format!("reading session {session_id}"))?;
        row.as_ref().map(decode).transpose()
    }

    /// One page of records, newest first by `(created_at, run_id)`, and the cursor of the next
    /// page (`None` on the last). Records inserted while paging (newer than the first page) never
    /// shift later pages.
    pub async fn list(&self, query: &ListQuery) -> Result<(Vec<RunRecord>, Option<String>), ListError> {
        let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ListError::Invalid(format!(
                "limit must be 1 to {MAX_LIMIT}, not {limit}"
            )));
        }
        let cursor = match &query.cursor {
            None => None,
            Some(text) => Some(Cursor::decode(text).ok_or_else(|| ListError::Invalid("malformed cursor".into()))?),
        };
        let filters = list_filters(query);
        let sql = list_sql(query, cursor.is_some());
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for (_, value) in filters {
            if let Some(v) = value {
                q = q.bind(v.to_string());
            }
        }
        if let Some(c) = &cursor {
            q = q.bind(c.created_at).bind(c.run_id.clone());
        }
        let rows = q
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.read)
            .await
            .context("listing runs")
            .map_err(ListError::Store)?;
        let mut records = rows
            .iter()
            .map(decode)
            .collect::<Result<Vec<_>>>()
            .map_err(ListError::Store)?;
        let next_cursor = if records.len() > limit as usize {
            records.truncate(limit as usize);
            records.last().map(|r| {
                Cursor {
                    created_at: r.created_at,
                    run_id: r.run_id.clone(),
                }
                .encode()
            })
        } else {
            None
        };
        Ok((records, next_cursor))
    }

    /// Every queued/running run of `instance` becomes interrupted with `reason`, ended at
    /// `now_ms`; returns them as they now are (e.g. to tell their callbacks). Runs of other
    /// instances and final runs are untouched.
    pub async fn interrupt_instance(&self, instance: &str, reason: &str, now_ms: i64) -> Result<Vec<RunRecord>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "UPDATE runs SET state = 'interrupted', reason = $1, finished_at = $2 \
             WHERE instance = $3 AND state IN ('queued', 'running') RETURNING {COLUMNS}"
        )))
        .bind(reason)
        .bind(now_ms)
        .bind(instance)
        .fetch_all(&self.write)
        .await
        .with_context(|| format!("interrupting the runs of instance {instance}"))?;
        let mut records = rows.iter().map(decode).collect::<Result<Vec<_>>>()?;
        records.sort_by(|a, b| (b.created_at, &b.run_id).cmp(&(a.created_at, &a.run_id)));
        Ok(records)
    }

    /// The queued/running runs of `instance`, newest first.
    pub async fn running_of_instance(&self, instance: &str) -> Result<Vec<RunRecord>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM runs WHERE instance = $1 AND state IN ('queued', 'running') \
             ORDER BY created_at DESC, run_id DESC"
        )))
        .bind(instance)
        .fetch_all(&self.read)
        .await
        .with_context(|| format!("reading the runs of instance {instance}"))?;
        rows.iter().map(decode).collect()
    }
}

/// A byte count as the database's BIGINT.
fn count(n: u64) -> Result<i64> {
    i64::try_from(n).map_err(|_| anyhow!("byte count {n} is too large to store"))
}

/// The column filters of a list query, in the order of their parameters.
fn list_filters(query: &ListQuery) -> [(&'static str, Option<&str>); 4] {
    [
        ("state", query.state.map(|s| s.as_str())),
        ("cli", query.cli.as_deref()),
        ("session_id", query.session_id.as_deref()),
        ("owner", query.owner.as_deref()),
    ]
}

/// The SQL of a list query (`$n` for each filter given, the cursor's two values, the limit).
/// A state filter also names its partial index's own condition: there is no index on the state
/// column itself (see `migrations/*/0006_state_indexes.sql`), and SQLite only uses a partial index
/// for a query that repeats its `WHERE` term.
fn list_sql(query: &ListQuery, cursor: bool) -> String {
    let mut sql = format!("SELECT {COLUMNS} FROM runs WHERE 1 = 1");
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };
    for (column, value) in list_filters(query) {
        if value.is_some() {
            sql.push_str(&format!(" AND {column} = ${}", next()));
        }
    }
    match query.state {
        Some(RecordState::Queued | RecordState::Running) => sql.push_str(" AND state IN ('queued', 'running')"),
        Some(RecordState::Interrupted) => sql.push_str(" AND state = 'interrupted'"),
        // Most records: read in order from runs_newest.
        Some(RecordState::Finished) | None => {}
    }
    if cursor {
        sql.push_str(&format!(" AND (created_at, run_id) < (${}, ${})", next(), next()));
    }
    sql.push_str(&format!(" ORDER BY created_at DESC, run_id DESC LIMIT ${}", next()));
    sql
}

/// A row of [`COLUMNS`] → record.
pub(super) fn decode(row: &AnyRow) -> Result<RunRecord> {
    let text = |i: usize| -> Result<String> { Ok(row.try_get::<String, _>(i)?) };
    let opt_text = |i: usize| -> Result<Option<String>> { Ok(row.try_get::<Option<String>, _>(i)?) };
    let int = |i: usize| -> Result<i64> { Ok(row.try_get::<i64, _>(i)?) };
    let opt_int = |i: usize| -> Result<Option<i64>> { Ok(row.try_get::<Option<i64>, _>(i)?) };
    let unsigned = |i: usize| -> Result<u64> { Ok(u64::try_from(int(i)?)?) };
    let run_id = text(0)?;
    let bad = |what: &str| anyhow!("run {run_id}: stored {what} is invalid");
    let mode = text(6)?;
    let state = text(9)?;
    Ok(RunRecord {
        session_id: text(1)?,
        cli: text(2)?,
        args: serde_json::from_str(&text(3)?).map_err(|_| bad("args"))?,
        env_keys: serde_json::from_str(&text(4)?).map_err(|_| bad("env_keys"))?,
        model: opt_text(5)?,
        mode: RunMode::parse(&mode).ok_or_else(|| bad("mode"))?,
        owner: opt_text(7)?,
        instance: text(8)?,
        state: RecordState::parse(&state).ok_or_else(|| bad("state"))?,
        exit_code: opt_int(10)?
            .map(|c| i32::try_from(c).map_err(|_| bad("exit_code")))
            .transpose()?,
        reason: opt_text(11)?,
        created_at: int(12)?,
        started_at: opt_int(13)?,
        finished_at: opt_int(14)?,
        stdout_bytes: unsigned(15)?,
        stderr_bytes: unsigned(16)?,
        log_bytes: unsigned(17)?,
        detached: int(18)? != 0,
        callback_url: opt_text(19)?,
        callback: opt_text(20)?
            .map(|t| serde_json::from_str(&t).map_err(|_| bad("callback")))
            .transpose()?,
        git: opt_text(21)?
            .map(|t| serde_json::from_str(&t).map_err(|_| bad("git")))
            .transpose()?,
        run_id,
        branch_hold: None,
        state_hold: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `plan` reads the index `name`.
    fn reads(plan: &str, name: &str) -> bool {
        plan.split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .any(|w| w == ["INDEX", name])
    }

    /// The plan SQLite makes for `sql` (its steps, joined).
    fn plan(db: &std::path::Path, sql: &str) -> String {
        let conn = rusqlite::Connection::open(db).unwrap();
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
        let steps = stmt
            .query_map(rusqlite::params_from_iter(nulls), |row| row.get::<_, String>(3))
            .unwrap();
        steps.map(Result::unwrap).collect::<Vec<_>>().join("; ")
    }

    /// Each filter of a listing, with and without the cursor, reads an index in the listing's
    /// order, with nothing sorted in memory: without an index on the state column, the partial
    /// ones for queued/running and for interrupted records and `runs_newest` for finished ones;
    /// the cli, session and owner filters their own. The listing indexes are ascending (see
    /// `migrations/sqlite/0008_ascending_indexes.sql`) and read backwards. So do an instance's
    /// active runs and a session's latest run.
    #[tokio::test]
    async fn each_filter_reads_an_index_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let _store = Store::open(None, dir.path()).await.unwrap();
        let db = dir.path().join("cligate.db");
        let state = |state| ListQuery {
            state,
            ..ListQuery::default()
        };
        let cases = [
            (state(Some(RecordState::Queued)), "runs_active_newest"),
            (state(Some(RecordState::Running)), "runs_active_newest"),
            (state(Some(RecordState::Interrupted)), "runs_interrupted_newest"),
            (state(Some(RecordState::Finished)), "runs_newest"),
            (state(None), "runs_newest"),
            (
                ListQuery {
                    cli: Some("codex".into()),
                    ..ListQuery::default()
                },
                "runs_cli_newest",
            ),
            (
                ListQuery {
                    session_id: Some("s".into()),
                    ..ListQuery::default()
                },
                "runs_session_newest",
            ),
            (
                ListQuery {
                    owner: Some("alice".into()),
                    ..ListQuery::default()
                },
                "runs_owner_newest",
            ),
        ];
        for (query, index) in cases {
            for cursor in [false, true] {
                let plan = plan(&db, &list_sql(&query, cursor));
                assert!(reads(&plan, index), "{query:?}: {plan}");
                assert!(!plan.contains("TEMP B-TREE"), "{query:?}: {plan}");
            }
        }
        let active = "SELECT run_id FROM runs WHERE instance = 'i' AND state IN ('queued', 'running') \
                      ORDER BY created_at DESC, run_id DESC";
        let active = plan(&db, active);
        assert!(reads(&active, "runs_active_newest"), "{active}");
        let latest =
            format!("SELECT {COLUMNS} FROM runs WHERE session_id = $1 ORDER BY created_at DESC, run_id DESC LIMIT 1");
        let latest = plan(&db, &latest);
        assert!(
            reads(&latest, "runs_session_newest") && !latest.contains("TEMP B-TREE"),
            "{latest}"
        );
    }
}
