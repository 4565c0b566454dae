//! Durable run records: every run gets a row in a database, SQLite in `DATA_DIR` by default or
//! PostgreSQL when `DATABASE_URL` says so. One code path serves both through sqlx's `Any` driver
//! with portable SQL: `$1, $2, …` placeholders, which PostgreSQL numbers natively and sqlx's SQLite
//! driver binds by the number in the name (checked by a test here; the store still uses them in
//! order). The schema lives in `migrations/{sqlite,postgres}` and is applied at start-up.
//!
//! - [`record`]: the record, its states and its API shape.
//! - [`runs`]: writes and reads of run records.
//! - [`callbacks`]: the callback delivery status of detached runs.
//! - [`retention`]: what the retention sweeper may delete, and deleting it.
//! - [`replicas`]: replicas sharing a PostgreSQL database: heartbeats, where each is reached,
//!   and the runs of dead ones.
//! - `writer`: group commit of the hot writes on SQLite.
//! - [`cursor`], [`time`]: the paging cursor and RFC 3339 formatting.

pub mod callbacks;
mod checkpoint;
pub mod cursor;
pub mod idempotency;
pub mod record;
pub mod replicas;
pub mod retention;
pub mod runs;
pub mod time;
mod writer;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, AnyPool};
use sqlx::{Connection, Executor};

pub use record::{Finish, ListQuery, RecordState, RunMode, RunRecord};

/// How long [`Store::open`] keeps trying to reach PostgreSQL (it may be starting alongside).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Which database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// The run store. Cheap to clone (the pools are shared).
#[derive(Debug, Clone)]
pub struct Store {
    /// Reads (and, on PostgreSQL, writes too).
    read: AnyPool,
    /// Writes. On SQLite a single connection for the writes that are not on a run's path
    /// (idempotency keys, retention, recovery): SQLite has one writer at a time anyway, and
    /// queueing in the pool is fair where several writers spinning on the busy lock are not.
    write: AnyPool,
    /// Group commit of insert/mark running/finish/callback status, on its own connection and
    /// thread; SQLite only.
    writer: Option<writer::Writer>,
    backend: Backend,
    /// Where the SQLite file is (for messages); `None` on PostgreSQL.
    sqlite_path: Option<PathBuf>,
    /// Retention considers only this replica's runs (see [`Store::scope_retention`]).
    retention_scope: Option<String>,
}

/// Why [`Store::list`] failed: the caller answers `Invalid` with 400.
#[derive(Debug)]
pub enum ListError {
    /// A malformed cursor or a limit outside 1..=1000; the text says which.
    Invalid(String),
    Store(anyhow::Error),
}

impl std::fmt::Display for ListError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListError::Invalid(why) => f.write_str(why),
            ListError::Store(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for ListError {}

impl From<sqlx::Error> for ListError {
    fn from(e: sqlx::Error) -> ListError {
        ListError::Store(e.into())
    }
}

impl Store {
    /// Opens the store and applies pending migrations.
    ///
    /// `None` (or blank) opens SQLite at `data_dir/cligate.db`, creating the directory and file
    /// (WAL journal, `synchronous=NORMAL`, 5 s busy timeout); `postgres://…`/`postgresql://…`
    /// opens PostgreSQL. Anything else is refused. Every error is one line naming `DATABASE_URL`
    /// or `DATA_DIR`. A PostgreSQL server that does not answer yet is retried for
    /// [`CONNECT_TIMEOUT`]. On SQLite it starts the group-commit writer thread.
    pub async fn open(database_url: Option<&str>, data_dir: &Path) -> Result<Store> {
        Store::open_within(database_url, data_dir, CONNECT_TIMEOUT).await
    }

    /// [`Store::open`], trying to reach PostgreSQL for at most `connect_timeout`.
    pub async fn open_within(database_url: Option<&str>, data_dir: &Path, connect_timeout: Duration) -> Result<Store> {
        sqlx::any::install_default_drivers();
        match database_url.map(str::trim).filter(|u| !u.is_empty()) {
            None => Store::open_sqlite(data_dir).await,
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Store::open_postgres(url, connect_timeout).await
            }
            Some(url) => bail!(
                "DATABASE_URL: '{}' is not a postgres:// or postgresql:// URL (leave it unset for SQLite in DATA_DIR)",
                redact(url)
            ),
        }
    }

    async fn open_sqlite(data_dir: &Path) -> Result<Store> {
        let dir = data_dir.display();
        std::fs::create_dir_all(data_dir).map_err(|e| anyhow!("DATA_DIR: cannot create '{dir}': {e}"))?;
        let path = data_dir.join("cligate.db");
        let url = sqlite_url(&path);
        let failed =
            |what: &str, e: sqlx::Error| anyhow!("DATA_DIR: cannot {what} '{}': {}", path.display(), one_line(e));
        let options = quiet(&url).map_err(|e| failed("open the database", e))?;
        // The journal mode is a property of the file: set it once, before the pools exist.
        let mut conn = sqlx::ConnectOptions::connect(&options)
            .await
            .map_err(|e| failed("open the database", e))?;
        conn.execute("PRAGMA journal_mode = WAL")
            .await
            .map_err(|e| failed("use the database", e))?;
        conn.close().await.map_err(|e| failed("use the database", e))?;
        let pool = |size: u32| {
            AnyPoolOptions::new()
                .max_connections(size)
                .acquire_timeout(Duration::from_secs(30))
                // A connection to a local file does not go stale: no ping (a round trip to the
                // connection's worker thread) before every use, which is every group commit.
                .test_before_acquire(false)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                        Ok(())
                    })
                })
                .connect_with(options.clone())
        };
        let write = pool(1).await.map_err(|e| failed("open the database", e))?;
        let read = pool(4).await.map_err(|e| failed("open the database", e))?;
        SQLITE_MIGRATIONS.run(&write).await.map_err(|e| {
            anyhow!(
                "DATA_DIR: cannot migrate the database '{}': {}",
                path.display(),
                one_line(e)
            )
        })?;
        let writer =
            writer::Writer::start(&path).map_err(|e| anyhow!("DATA_DIR: cannot write '{}': {e:#}", path.display()))?;
        Ok(Store {
            read,
            writer: Some(writer),
            write,
            backend: Backend::Sqlite,
            sqlite_path: Some(path),
            retention_scope: None,
        })
    }
}

/// Connection options for `url` that do not log every statement (sqlx logs each at DEBUG, which
/// would drown the gateway's own debug log); statements slower than a second are still logged.
fn quiet(url: &str) -> Result<sqlx::any::AnyConnectOptions, sqlx::Error> {
    use sqlx::ConnectOptions;
    use std::str::FromStr;
    Ok(sqlx::any::AnyConnectOptions::from_str(url)?
        .log_statements(tracing::log::LevelFilter::Off)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1)))
}

impl Store {
    async fn open_postgres(url: &str, connect_timeout: Duration) -> Result<Store> {
        let options = quiet(url).map_err(|e| anyhow!("DATABASE_URL: cannot use '{}': {}", redact(url), one_line(e)))?;
        let pool = match AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(connect_timeout)
            .connect_with(options)
            .await
        {
            Ok(pool) => pool,
            Err(e) => {
                // A pool time-out hides why: one direct attempt tells (refused, bad password, …).
                let why = match (&e, AnyConnection::connect(url).await) {
                    (sqlx::Error::PoolTimedOut, Err(direct)) => one_line(direct),
                    _ => one_line(e),
                };
                bail!("DATABASE_URL: cannot connect to '{}': {why}", redact(url));
            }
        };
        POSTGRES_MIGRATIONS
            .run(&pool)
            .await
            .map_err(|e| anyhow!("DATABASE_URL: cannot migrate '{}': {}", redact(url), one_line(e)))?;
        Ok(Store {
            read: pool.clone(),
            write: pool,
            writer: None,
            backend: Backend::Postgres,
            sqlite_path: None,
            retention_scope: None,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The SQLite file, when the store is SQLite.
    pub fn sqlite_path(&self) -> Option<&Path> {
        self.sqlite_path.as_deref()
    }

    /// One round trip to the database (readiness, latency metric).
    pub async fn ping(&self) -> Result<Duration> {
        let start = Instant::now();
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(start.elapsed())
    }

    /// Closes the pools, waiting for statements in flight.
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }
}

/// `{head} ($1, …, $n)` with each of `ids` bound in order: a statement over a list of run ids.
fn over_ids<'q>(head: &str, ids: &'q [String]) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    over_ids_then(head, ids, "")
}

/// [`over_ids`] with `tail` (SQL without parameters) after the list.
fn over_ids_then<'q>(
    head: &str,
    ids: &'q [String],
    tail: &str,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
    let mut q = sqlx::query(sqlx::AssertSqlSafe(format!("{head} ({}){tail}", marks.join(", "))));
    for id in ids {
        q = q.bind(id.as_str());
    }
    q
}

/// `sqlite://<path>?mode=rwc` with the path percent-encoded, so that any file name works.
fn sqlite_url(path: &Path) -> String {
    use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
    const SET: &AsciiSet = &CONTROLS
        .add(b' ')
        .add(b'"')
        .add(b'#')
        .add(b'%')
        .add(b'<')
        .add(b'>')
        .add(b'?')
        .add(b'`')
        .add(b'{')
        .add(b'}');
    let path = path.to_string_lossy();
    format!("sqlite://{}?mode=rwc", utf8_percent_encode(&path, SET))
}

/// The URL with its password (if any) replaced by `***`, for messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// An error's text on one line.
fn one_line(e: impl std::fmt::Display) -> String {
    e.to_string().split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(
            redact("postgres://u@h/db?password=secret&x=1"),
            "postgres://u@h/db?password=***&x=1"
        );
        assert_eq!(redact("postgresql://h/db"), "postgresql://h/db");
        assert_eq!(redact("mysql://a:b@c"), "mysql://a:***@c");
    }

    #[tokio::test]
    async fn sqlite_binds_dollar_placeholders_by_number() {
        use sqlx::Row;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(None, dir.path()).await.unwrap();
        let row = sqlx::query("SELECT $2, $1, $2 || $1")
            .bind("one")
            .bind("two")
            .fetch_one(&store.read)
            .await
            .unwrap();
        let got: Vec<String> = (0..3).map(|i| row.try_get(i).unwrap()).collect();
        assert_eq!(got, ["two", "one", "twoone"]);
    }

    #[test]
    fn sqlite_urls_survive_odd_file_names() {
        assert_eq!(
            sqlite_url(Path::new("/d ir/a?b#c.db")),
            "sqlite:///d%20ir/a%3Fb%23c.db?mode=rwc"
        );
    }
}
