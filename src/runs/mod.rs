//! The run service: the one place that creates runs and owns their life — submit (record, admit,
//! plan, start), stop, and one finish hook (record, log, metrics, the `run finished` line, the
//! slot). HTTP handlers only parse, call it and answer; every reader of a run's output (the
//! attached `/run` body, `/runs/{id}/stream`, `/log`, `/events`) gets a [`Source`](crate::runlog::Source) from here.
//!
//! Here: the service itself, its start-up (recovery of runs a crash left), stop and shutdown.
//! `submit` creates and starts runs, `life` is a run's task and its finish hook, `read` answers
//! for records and sources, `retention` removes old runs.

mod life;
mod read;
mod retention;
mod submit;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::auth::Caller;
use crate::callbacks::{self, Callbacks};
use crate::config::Config;
use crate::exec::Executor;
use crate::metrics::Metrics;
use crate::run::Run;
use crate::run::containment::Containment;
use crate::run::frame::EndReason;
use crate::run::registry::Registry;
use crate::runlog::LogDir;
use crate::store::time::now_ms;
use crate::store::{Finish, RecordState, Store};
use crate::telemetry::clip;
use crate::workspace::Workspaces;

/// How a run was asked for.
enum Submit {
    /// `POST /run`: admitted already, streamed to its client.
    Attached,
    /// `POST /runs`: answered at once, recorded `queued` or `running`.
    Detached {
        state: RecordState,
        callback_url: Option<String>,
    },
}

/// Why a run was not started, or a run could not be found. The API maps each to a status.
#[derive(Debug)]
pub enum Refusal {
    /// The session id is running (409).
    Conflict(String),
    /// No slot now (503 with `Retry-After`).
    Overloaded(String),
    /// The gateway cannot take runs (503): shutting down, disk nearly full.
    Unavailable(String),
    /// The gateway's own storage failed (503): the run store, a log file, a directory. The
    /// caller is told `what`; the `cause` (the database's or the system's words, which may name
    /// databases, hosts and paths) is for the operator's log only.
    Failed { what: &'static str, cause: String },
    /// No such run, or not the caller's (404).
    NotFound(String),
    /// A bad query (400).
    Invalid(String),
    /// An `Idempotency-Key` reused with another body (422).
    KeyReused(String),
    /// The run's branch or state key is in use by a queued or running run (409 `busy`).
    Busy(String),
}

impl Refusal {
    pub fn failed(what: &'static str, cause: impl std::fmt::Display) -> Refusal {
        Refusal::Failed {
            what,
            cause: format!("{cause:#}"),
        }
    }
}

/// An `Idempotency-Key` and the hash of the request it came with (route and canonical body).
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: String,
    pub body_hash: String,
}

/// What a submit did.
#[derive(Debug)]
pub enum Submitted {
    /// A new run, recorded in this state.
    Started(Arc<Run>, RecordState),
    /// The `Idempotency-Key` already names this run (same request within 24 h): nothing new
    /// was started.
    Again(String),
}

/// The run service.
#[derive(Debug)]
pub struct Runs {
    pub config: Arc<Config>,
    pub store: Store,
    pub logs: LogDir,
    pub admission: Admission,
    pub metrics: Arc<Metrics>,
    /// The runs executing in this process.
    pub registry: Arc<Registry>,
    /// Every run's supervising task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// The HTTP workers' runtime, where attached runs execute whichever runtime their request
    /// was served on (a connection that follows a log is served at a lower priority, see
    /// [`crate::priority`], and what a run's task starts inherits its thread's priority).
    pub requests_runtime: tokio::runtime::Handle,
    /// How a run's processes are kept together and ended (cgroup or `/proc` marker).
    pub containment: Arc<Containment>,
    /// Where CLIs run: local processes or docker containers.
    pub executor: Arc<dyn Executor>,
    /// Delivers detached runs' callbacks once they end (see [`crate::callbacks`]).
    pub callbacks: Callbacks,
    /// Branches, worktrees and state homes (see [`crate::workspace`]).
    pub workspaces: Arc<Workspaces>,
}

impl Runs {
    /// Opens the run store `config` names (applying its migrations).
    pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
        let mut store = Store::open_within(
            config.database_url.as_ref().map(|u| u.as_str()),
            &config.data_dir,
            config.database_connect_timeout,
        )
        .await?;
        if store.backend() == crate::store::Backend::Postgres {
            // Replicas may share the database; each removes only runs whose logs it holds.
            store.scope_retention(&config.instance);
        }
        Ok(store)
    }

    /// Opens the log directory over `store` (see [`Runs::open_store`]), and accounts for the runs
    /// a crashed predecessor of this instance left: they become `interrupted` (`gateway_lost`)
    /// with their logs repaired.
    pub async fn open(
        config: Arc<Config>,
        store: Store,
        metrics: Arc<Metrics>,
        containment: Arc<Containment>,
        executor: Arc<dyn Executor>,
    ) -> anyhow::Result<Runs> {
        // The files there before this process makes ready files of its own: logs, or ready files
        // of an earlier process (taken up once recovery is done).
        let mut found = Vec::new();
        let logs = LogDir::open(config.data_dir.join("logs"))
            .and_then(|logs| {
                found = logs.log_ids()?;
                logs.in_memory(config.run_log_in_memory).keep_spares()
            })
            .map_err(|e| {
                anyhow::anyhow!(
                    "DATA_DIR: cannot create '{}': {e}",
                    config.data_dir.join("logs").display()
                )
            })?;
        let callbacks = Callbacks::new(
            callbacks::Settings::from_config(&config),
            store.clone(),
            metrics.clone(),
        )?;
        let workspaces = Arc::new(Workspaces::open(&config)?);
        let runs = Runs {
            callbacks,
            workspaces,
            admission: Admission::new(
                config.max_concurrent,
                config.max_queued,
                config.queue_timeout,
                metrics.clone(),
            ),
            store,
            logs,
            metrics,
            registry: Arc::new(Registry::default()),
            tasks: TaskTracker::new(),
            requests_runtime: tokio::runtime::Handle::current(),
            containment,
            executor,
            config,
        };
        runs.recover().await?;
        runs.adopt_ready_files(found).await?;
        // After recovery, so that runs it interrupted get their callbacks too.
        runs.callbacks.resume().await?;
        Ok(runs)
    }

    /// Marks this instance's unfinished records `interrupted`, cuts torn log tails, and forgets
    /// the idempotency keys it claimed for runs it never got to record.
    async fn recover(&self) -> anyhow::Result<()> {
        let forgotten = self.store.forget_unstarted_keys(self.instance()).await?;
        if forgotten > 0 {
            tracing::warn!(
                keys = forgotten,
                "idempotency keys forgotten: the gateway that claimed them died before their runs started"
            );
        }
        let lost = self.store.running_of_instance(self.instance()).await?;
        for record in &lost {
            let size = self.logs.repair(&record.run_id).unwrap_or(0);
            self.store
                .finish(
                    &record.run_id,
                    &Finish {
                        state: RecordState::Interrupted,
                        exit_code: None,
                        reason: Some("gateway_lost".into()),
                        finished_at: now_ms(),
                        stdout_bytes: record.stdout_bytes,
                        stderr_bytes: record.stderr_bytes,
                        log_bytes: size,
                        git: None,
                    },
                )
                .await?;
            tracing::warn!(
                run_id = record.run_id.as_str(),
                session_id = clip(&record.session_id),
                log_bytes = size,
                "run interrupted: the gateway that ran it is gone"
            );
        }
        Ok(())
    }

    /// Takes the files in the log directory that no record names into the pool of ready files
    /// (see [`crate::runlog`]): ready files of an earlier process, or logs of runs that were
    /// never recorded. A log with a record, of any instance, stays.
    async fn adopt_ready_files(&self, found: Vec<String>) -> anyhow::Result<()> {
        if found.is_empty() {
            return Ok(());
        }
        let known = self.store.recorded_ids(&found).await?;
        let unknown: Vec<String> = found.into_iter().filter(|id| !known.contains(id)).collect();
        let count = unknown.len();
        let logs = self.logs.clone();
        let adopted = tokio::task::spawn_blocking(move || logs.adopt(unknown)).await?;
        tracing::debug!(
            files = count,
            ready = adopted,
            "log files without a record taken up as ready files"
        );
        Ok(())
    }

    pub fn instance(&self) -> &str {
        &self.config.instance
    }

    /// Asks a running run to end; `NotFound` when it is not running or not the caller's.
    pub fn stop(&self, caller: &Caller, run: Option<Arc<Run>>, name: &str) -> Result<(), Refusal> {
        let not_running = || Refusal::NotFound(format!("{name} is not running"));
        let run = run
            .filter(|r| caller.may_see(r.owner.as_deref()))
            .ok_or_else(not_running)?;
        match run.stop(EndReason::Stopped) {
            true => Ok(()),
            false => Err(not_running()),
        }
    }

    /// Shutdown: no new runs; running runs get `grace` to finish, then are ended.
    pub async fn shut_down(&self, grace: Duration) {
        self.drain(grace).await;
        self.close().await;
    }

    /// The first half of [`Runs::shut_down`]: no new runs; running runs get `grace` to finish,
    /// then are ended. The store still answers afterwards (a replica deregisters then).
    pub async fn drain(&self, grace: Duration) {
        self.admission.close();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_err() {
            self.registry.stop_all(EndReason::Shutdown);
            // Each run needs its kill grace, plus time for the engine to remove containers.
            let bound = self.config.kill_grace + Duration::from_secs(30);
            if tokio::time::timeout(bound, self.tasks.wait()).await.is_err() {
                tracing::error!("runs did not end in time; exiting anyway");
            }
        }
    }

    /// The second half of [`Runs::shut_down`]: callbacks stop, the store closes.
    pub async fn close(&self) {
        self.callbacks.shut_down().await;
        self.store.close().await;
    }
}
