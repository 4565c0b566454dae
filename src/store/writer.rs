//! Group commit for SQLite. SQLite commits one transaction at a time, and each commit appends
//! every page it touched (the row and each index) to the WAL, so a commit per statement caps the
//! store below what the gateway needs (about 5 000 statements/s measured here, for ~1 800 runs/s
//! × 3 writes). The hot writes (insert, mark running, finish, callback status) therefore go to one
//! thread that takes whatever is queued, runs it in one transaction and answers each caller once
//! that transaction has committed: nobody is told "written" before it is durable, and one commit
//! carries many statements.
//!
//! The thread owns its own connection (rusqlite, on the same bundled SQLite as sqlx) and runs a
//! batch start to end without handing each statement to another thread: through sqlx's SQLite
//! worker every `BEGIN`, statement and `COMMIT` was a round trip between threads, and a write took
//! 425 µs on average (`cligate_store_seconds`, 600 submits at one a time). PostgreSQL needs none
//! of this (its pool runs writes in parallel) and executes the same [`Op`]s through sqlx.
//!
//! Checkpoints (copying the WAL back into the database file) are never made inside a commit a run
//! waits for: a thread of their own makes the bulk of each, and this one finishes it between two
//! batches (see [`super::checkpoint`]).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use rusqlite::TransactionBehavior;
use sqlx::AnyConnection;
use tokio::sync::{mpsc, oneshot};

use super::checkpoint::Checkpoints;
use super::record::{Finish, RunRecord};

/// Statements per transaction at most.
const MAX_BATCH: usize = 512;
/// Writes waiting for the writer at most; callers wait for room beyond that.
const QUEUE: usize = 4096;

/// One write of the hot path.
#[derive(Debug)]
pub(super) enum Op {
    Insert(Box<RunRecord>),
    MarkRunning {
        run_id: String,
        at: i64,
    },
    /// With `log`, the run's whole log is kept in `run_logs` when the record was changed.
    Finish {
        run_id: String,
        end: Finish,
        log: Option<Vec<u8>>,
    },
    /// A final run's callback delivery status (JSON text); see `super::callbacks`.
    SetCallback {
        run_id: String,
        callback: String,
    },
}

/// A value bound to `$n` of an [`Op`]'s statement, the same for both databases.
#[derive(Debug)]
enum Param {
    Text(Option<String>),
    Int(Option<i64>),
    Blob(Vec<u8>),
}

fn text(s: &str) -> Param {
    Param::Text(Some(s.to_string()))
}

fn opt_text(s: Option<&str>) -> Param {
    Param::Text(s.map(str::to_string))
}

impl Op {
    /// The statement (portable SQL, `$1…$n`, each first used in the order of its number, so
    /// that SQLite's index of `$k` is `k`) and its values in that order.
    fn statement(&self) -> Result<(&'static str, Vec<Param>), serde_json::Error> {
        Ok(match self {
            Op::Insert(run) => (
                "INSERT INTO runs (run_id, session_id, cli, args, env_keys, model, mode, owner, instance, state, \
                 exit_code, reason, created_at, started_at, finished_at, stdout_bytes, stderr_bytes, log_bytes, \
                 detached, callback_url, callback, git, branch_hold, state_hold) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, \
                 $20, $21, $22, $23, $24)",
                vec![
                    text(&run.run_id),
                    text(&run.session_id),
                    text(&run.cli),
                    Param::Text(Some(serde_json::to_string(&run.args)?)),
                    Param::Text(Some(serde_json::to_string(&run.env_keys)?)),
                    opt_text(run.model.as_deref()),
                    text(run.mode.as_str()),
                    opt_text(run.owner.as_deref()),
                    text(&run.instance),
                    text(run.state.as_str()),
                    Param::Int(run.exit_code.map(i64::from)),
                    opt_text(run.reason.as_deref()),
                    Param::Int(Some(run.created_at)),
                    Param::Int(run.started_at),
                    Param::Int(run.finished_at),
                    Param::Int(Some(saturate(run.stdout_bytes))),
                    Param::Int(Some(saturate(run.stderr_bytes))),
                    Param::Int(Some(saturate(run.log_bytes))),
                    Param::Int(Some(i64::from(run.detached))),
                    opt_text(run.callback_url.as_deref()),
                    Param::Text(run.callback.as_ref().map(|v| v.to_string())),
                    Param::Text(run.git.as_ref().map(|v| v.to_string())),
                    opt_text(run.branch_hold.as_deref()),
                    opt_text(run.state_hold.as_deref()),
                ],
            ),
            Op::MarkRunning { run_id, at } => (
                "UPDATE runs SET state = 'running', started_at = $1 WHERE run_id = $2 AND state = 'queued'",
                vec![Param::Int(Some(*at)), text(run_id)],
            ),
            Op::Finish { run_id, end, .. } => (
                "UPDATE runs SET state = $1, exit_code = $2, reason = $3, finished_at = $4, stdout_bytes = $5, \
                 stderr_bytes = $6, log_bytes = $7, git = COALESCE($8, git) \
                 WHERE run_id = $9 AND state IN ('queued', 'running')",
                vec![
                    text(end.state.as_str()),
                    Param::Int(end.exit_code.map(i64::from)),
                    opt_text(end.reason.as_deref()),
                    Param::Int(Some(end.finished_at)),
                    Param::Int(Some(saturate(end.stdout_bytes))),
                    Param::Int(Some(saturate(end.stderr_bytes))),
                    Param::Int(Some(saturate(end.log_bytes))),
                    Param::Text(end.git.as_ref().map(|v| v.to_string())),
                    text(run_id),
                ],
            ),
            Op::SetCallback { run_id, callback } => (
                "UPDATE runs SET callback = $1 WHERE run_id = $2 AND state IN ('finished', 'interrupted')",
                vec![text(callback), text(run_id)],
            ),
        })
    }

    /// The statement that follows when the first changed a row: a finished run's kept log.
    fn follow_up(&self) -> Option<(&'static str, Vec<Param>)> {
        match self {
            Op::Finish {
                run_id, log: Some(log), ..
            } => Some((
                "INSERT INTO run_logs (run_id, content) VALUES ($1, $2)",
                vec![text(run_id), Param::Blob(log.clone())],
            )),
            _ => None,
        }
    }

    /// Runs the statement through sqlx (PostgreSQL); returns the rows it changed. A follow-up
    /// statement runs after it (outside a transaction: without it the log is read from its file,
    /// which is only reused once both are written).
    pub(super) async fn execute(&self, conn: &mut AnyConnection) -> Result<u64, sqlx::Error> {
        async fn run(conn: &mut AnyConnection, (sql, params): (&'static str, Vec<Param>)) -> Result<u64, sqlx::Error> {
            let mut query = sqlx::query(sql);
            for p in params {
                query = match p {
                    Param::Text(v) => query.bind(v),
                    Param::Int(v) => query.bind(v),
                    Param::Blob(v) => query.bind(v),
                };
            }
            Ok(query.execute(&mut *conn).await?.rows_affected())
        }
        let changed = run(conn, self.statement().map_err(|e| sqlx::Error::Encode(e.into()))?).await?;
        if changed == 1
            && let Some(next) = self.follow_up()
        {
            run(conn, next).await?;
        }
        Ok(changed)
    }

    /// Runs the statement (and its follow-up) in the writer's transaction; returns the rows the
    /// first changed.
    fn execute_sqlite(&self, tx: &rusqlite::Transaction) -> Result<u64> {
        fn run(tx: &rusqlite::Transaction, (sql, params): (&'static str, Vec<Param>)) -> Result<u64> {
            let mut stmt = tx.prepare_cached(sql)?;
            for (i, p) in params.iter().enumerate() {
                // `$k` is the k-th parameter: the statements use them in order (a unit test
                // checks each).
                let index = i + 1;
                match p {
                    Param::Text(v) => stmt.raw_bind_parameter(index, v)?,
                    Param::Int(v) => stmt.raw_bind_parameter(index, v)?,
                    Param::Blob(v) => stmt.raw_bind_parameter(index, v)?,
                }
            }
            Ok(stmt.raw_execute()? as u64)
        }
        let changed = run(tx, self.statement()?)?;
        if changed == 1
            && let Some(next) = self.follow_up()
        {
            run(tx, next)?;
        }
        Ok(changed)
    }
}

/// Byte counts are checked by the callers; this only keeps a cast from wrapping.
fn saturate(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

type Job = (Op, oneshot::Sender<Result<u64, String>>);

/// The handle of the writer thread; the thread ends when the last handle is dropped.
#[derive(Debug, Clone)]
pub(super) struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Opens the database at `path` (which exists, in WAL mode) for writing and starts the thread.
    pub(super) fn start(path: &Path) -> Result<Writer> {
        let conn = super::checkpoint::open(path).context("opening the database for writing")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        // No checkpoint inside a commit: see `super::checkpoint`.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let checkpoints = Checkpoints::start(path);
        let (jobs, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("cligate-store-writer".into())
            .spawn(move || run(conn, rx, checkpoints))
            .context("starting the store's writer thread")?;
        Ok(Writer { jobs })
    }

    /// Queues `op` and waits until the transaction holding it has committed.
    pub(super) async fn write(&self, op: Op) -> Result<u64> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send((op, tx))
            .await
            .map_err(|_| anyhow!("the store's writer has stopped"))?;
        rx.await
            .map_err(|_| anyhow!("the store's writer has stopped"))?
            .map_err(|e| anyhow!(e))
    }
}

/// Commits what is queued, in batches. SQLite's automatic checkpoint ran inside the commit that
/// crossed its threshold (1000 pages, every 40–80 runs here), so the runs waiting for that commit
/// waited for the checkpoint's copying and two `fsync`s too (latency p99 3–4× the p50); it is off,
/// and after each batch's callers have their answers [`Checkpoints::committed`] sees to them.
fn run(mut conn: rusqlite::Connection, mut rx: mpsc::Receiver<Job>, mut checkpoints: Checkpoints) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Some(job) = rx.blocking_recv() {
        batch.push(job);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let results = commit(&mut conn, &batch);
        for ((_, reply), result) in batch.drain(..).zip(results) {
            let _ = reply.send(result);
        }
        checkpoints.committed(&conn);
    }
}

/// Runs `batch` in one transaction. A statement that fails (e.g. a duplicate run id) fails alone
/// (SQLite undoes just that statement); a failed commit fails them all.
fn commit(conn: &mut rusqlite::Connection, batch: &[Job]) -> Vec<Result<u64, String>> {
    let all = |e: rusqlite::Error| vec![Err(e.to_string()); batch.len()];
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return all(e),
    };
    let results = batch
        .iter()
        .map(|(op, _)| op.execute_sqlite(&tx).map_err(|e| format!("{e:#}")))
        .collect();
    match tx.commit() {
        Ok(()) => results,
        Err(e) => all(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RecordState;

    /// Every hot statement uses `$1…$n` in order, so binding by position binds `$k` to the
    /// k-th value; and each runs on the real schema, with a row to change.
    #[test]
    fn each_statement_numbers_its_parameters_in_order() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        let mut migrations: Vec<_> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        migrations.sort();
        for m in migrations {
            conn.execute_batch(&std::fs::read_to_string(m).unwrap()).unwrap();
        }
        let end = Finish {
            state: RecordState::Finished,
            exit_code: Some(0),
            reason: None,
            finished_at: 2,
            stdout_bytes: 3,
            stderr_bytes: 4,
            log_bytes: 5,
            git: Some(serde_json::json!({"pushed": true})),
        };
        let ops = [
            Op::Insert(Box::new(RunRecord::queued("r", "s", "true", "i", 1))),
            Op::MarkRunning {
                run_id: "r".into(),
                at: 1,
            },
            Op::Finish {
                run_id: "r".into(),
                end,
                log: Some(b"{}\n".to_vec()),
            },
            Op::SetCallback {
                run_id: "r".into(),
                callback: "{}".into(),
            },
        ];
        for op in &ops {
            let (sql, params) = op.statement().unwrap();
            let stmt = conn.prepare(sql).unwrap();
            assert_eq!(stmt.parameter_count(), params.len(), "{sql}");
            for k in 1..=params.len() {
                assert_eq!(stmt.parameter_name(k), Some(format!("${k}").as_str()), "{sql}");
            }
            drop(stmt);
            let tx = conn.transaction().unwrap();
            assert_eq!(op.execute_sqlite(&tx).unwrap(), 1, "{sql}");
            tx.commit().unwrap();
        }
        let row: (String, i64, i64, String, String) = conn
            .query_row(
                "SELECT state, finished_at, log_bytes, git, callback FROM runs WHERE run_id = 'r'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .unwrap();
        assert_eq!(row, ("finished".into(), 2, 5, r#"{"pushed":true}"#.into(), "{}".into()));
    }
}
