//! The run service: the one place that creates runs and owns their life — submit (record, admit,
//! plan, start), stop, and one finish hook (record, log, metrics, the `run finished` line, the
//! slot). HTTP handlers only parse, call it and answer; every reader of a run's output (the
//! attached `/run` body, `/runs/{id}/stream`, `/log`, `/events`) gets a [`Source`] from here.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio_util::task::TaskTracker;

use crate::admission::{Admission, Refused, Reservation};
use crate::auth::Caller;
use crate::callbacks::{self, Callbacks};
use crate::config::Config;
use crate::exec::{Executor, Launch};
use crate::metrics::{CleanupLabels, CliLabels, CodeLabels, FinishLabels, Metrics, StreamLabels};
use crate::run::containment::Containment;
use crate::run::frame::{EndReason, Frame};
use crate::run::registry::{Registration, Registry};
use crate::run::request::RunSpec;
use crate::run::supervisor::{Limits, Outcome, supervise};
use crate::run::{End, Run, RunState};
use crate::runlog::{KEEP_MAX, LogDir, LogFile, Source};
use crate::store::idempotency::Claim;
use crate::store::replicas::{Held, taken};
use crate::store::time::now_ms;
use crate::store::{Finish, ListError, ListQuery, RecordState, RunMode, RunRecord, Store};
use crate::telemetry::clip;
use crate::workspace::{self as workspace, GitReport, Hold, HoldKind, Workspaces};

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
    /// The gateway cannot take runs (503): shutting down, disk nearly full, store down.
    Unavailable(String),
    /// No such run, or not the caller's (404).
    NotFound(String),
    /// A bad query (400).
    Invalid(String),
    /// An `Idempotency-Key` reused with another body (422).
    KeyReused(String),
    /// The run's branch or state key is in use by a queued or running run (409 `busy`).
    Busy(String),
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
    /// Opens the store and the log directory, and accounts for the runs a crashed predecessor of
    /// this instance left: they become `interrupted` (`gateway_lost`) with their logs repaired.
    pub async fn open(
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        containment: Arc<Containment>,
        executor: Arc<dyn Executor>,
    ) -> anyhow::Result<Runs> {
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
        let logs = LogDir::open(config.data_dir.join("logs"))
            .and_then(|logs| logs.in_memory(config.run_log_in_memory).keep_spares())
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
            containment,
            executor,
            config,
        };
        runs.recover().await?;
        // After recovery, so that runs it interrupted get their callbacks too.
        runs.callbacks.resume().await?;
        Ok(runs)
    }

    /// Marks this instance's unfinished records `interrupted` and cuts torn log tails.
    async fn recover(&self) -> anyhow::Result<()> {
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

    pub fn instance(&self) -> &str {
        &self.config.instance
    }

    /// Starts an attached run: admitted now (or after a bounded wait), recorded, its session
    /// frame in its log, its supervisor running. The caller follows `run.log`.
    pub async fn submit(
        self: &Arc<Self>,
        spec: RunSpec,
        caller: &Caller,
        idempotency: Option<Idempotency>,
    ) -> Result<Submitted, Refusal> {
        let run_id = new_run_id();
        if let Some(again) = self.claim(caller, idempotency.as_ref(), &run_id).await? {
            return Ok(again);
        }
        let started = self.submit_attached(spec, caller, run_id.clone()).await;
        self.settle(caller, idempotency.as_ref(), &run_id, started.is_err())
            .await;
        Ok(Submitted::Started(started?, RecordState::Running))
    }

    async fn submit_attached(
        self: &Arc<Self>,
        mut spec: RunSpec,
        caller: &Caller,
        run_id: String,
    ) -> Result<Arc<Run>, Refusal> {
        self.check_session(&spec)?;
        let claim = self.hold(&mut spec, caller)?;
        self.check_disk()?;
        let permit = self.admission.admit().await.map_err(|r| self.refused(r))?;
        let (run, registration, launch) = self.create(&spec, caller, run_id, Submit::Attached).await?;
        self.start(
            run.clone(),
            spec,
            launch,
            (registration, claim),
            Reservation::Slot(permit),
            None,
        );
        Ok(run)
    }

    /// Claims the run's branch and state key (409 `busy` when another run holds one) and
    /// fills in its directories.
    fn hold(&self, spec: &mut RunSpec, caller: &Caller) -> Result<workspace::Claim, Refusal> {
        let owner = caller.name.as_deref();
        let claim = self
            .workspaces
            .claim(spec.workspace.as_ref(), spec.state_key.as_deref(), owner)
            .map_err(|busy| Refusal::Busy(busy.0))?;
        spec.place = self
            .workspaces
            .place(spec.workspace.as_ref(), spec.state_key.as_deref(), owner)
            .map_err(|e| Refusal::Unavailable(format!("cannot create the run's state home: {e}")))?;
        Ok(claim)
    }

    /// Records a detached run and answers at once: it starts when a slot is free (waiting in
    /// the bounded queue, without `QUEUE_TIMEOUT_SECONDS`: nobody is waiting on a connection),
    /// and its end is delivered to `callback_url` when one is given. Returns the run and the
    /// state it was recorded in (`running`, or `queued`).
    pub async fn submit_detached(
        self: &Arc<Self>,
        spec: RunSpec,
        caller: &Caller,
        callback_url: Option<String>,
        idempotency: Option<Idempotency>,
    ) -> Result<Submitted, Refusal> {
        let run_id = new_run_id();
        if let Some(again) = self.claim(caller, idempotency.as_ref(), &run_id).await? {
            return Ok(again);
        }
        let started = self.detach(spec, caller, callback_url, run_id.clone()).await;
        self.settle(caller, idempotency.as_ref(), &run_id, started.is_err())
            .await;
        let (run, state) = started?;
        Ok(Submitted::Started(run, state))
    }

    async fn detach(
        self: &Arc<Self>,
        mut spec: RunSpec,
        caller: &Caller,
        callback_url: Option<String>,
        run_id: String,
    ) -> Result<(Arc<Run>, RecordState), Refusal> {
        self.check_session(&spec)?;
        let claim = self.hold(&mut spec, caller)?;
        self.check_disk()?;
        let reservation = self.admission.reserve().map_err(|r| self.refused(r))?;
        let state = if reservation.has_slot() {
            RecordState::Running
        } else {
            RecordState::Queued
        };
        let (run, registration, launch) = self
            .create(&spec, caller, run_id, Submit::Detached { state, callback_url })
            .await?;
        self.start(
            run.clone(),
            spec,
            launch,
            (registration, claim),
            reservation,
            Some(state),
        );
        Ok((run, state))
    }

    /// Claims the request's `Idempotency-Key` for `run_id`: `None` to go on and start it, or
    /// the run the key already names.
    async fn claim(
        &self,
        caller: &Caller,
        idempotency: Option<&Idempotency>,
        run_id: &str,
    ) -> Result<Option<Submitted>, Refusal> {
        let Some(i) = idempotency else { return Ok(None) };
        let owner = caller.name.as_deref().unwrap_or("");
        let claim = self
            .store
            .claim_key(owner, &i.key, &i.body_hash, run_id, now_ms())
            .await
            .map_err(|e| Refusal::Unavailable(format!("the run store does not answer: {e:#}")))?;
        match claim {
            Claim::New => Ok(None),
            Claim::Taken { body_hash, run_id } if body_hash == i.body_hash => Ok(Some(Submitted::Again(run_id))),
            Claim::Taken { .. } => Err(Refusal::KeyReused(format!(
                "Idempotency-Key '{}' was used within 24 h for a different request",
                i.key.escape_debug()
            ))),
        }
    }

    /// Gives the key back when its run could not be started, so that a retry can start one.
    async fn settle(&self, caller: &Caller, idempotency: Option<&Idempotency>, run_id: &str, failed: bool) {
        if let (Some(i), true) = (idempotency, failed) {
            let owner = caller.name.as_deref().unwrap_or("");
            if let Err(e) = self.store.release_key(owner, &i.key, run_id).await {
                tracing::warn!(error = %format!("{e:#}"), "cannot release an idempotency key");
            }
        }
    }

    /// The run an `Idempotency-Key` named, once it exists: the request that claimed the key may
    /// still be waiting for its slot. Gives up after the queue's own bound.
    /// Its record only: the run may execute on another replica (its log is read there).
    pub async fn await_run(&self, caller: &Caller, run_id: &str) -> Result<RunRecord, Refusal> {
        let limit = self.config.queue_timeout.unwrap_or(Duration::from_secs(30)) + Duration::from_secs(5);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match self.record(caller, run_id).await {
                Ok(found) => return Ok(found),
                Err(Refusal::NotFound(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(Refusal::NotFound(_)) => {
                    return Err(Refusal::Conflict(
                        "the request holding this Idempotency-Key has not started its run; retry".into(),
                    ));
                }
                Err(other) => return Err(other),
            }
        }
    }

    fn check_session(&self, spec: &RunSpec) -> Result<(), Refusal> {
        if self.registry.get(&spec.session_id).is_some() {
            return Err(Refusal::Conflict(format!(
                "session '{}' is already running",
                spec.session_id
            )));
        }
        Ok(())
    }

    fn refused(&self, refused: Refused) -> Refusal {
        match refused {
            Refused::QueueFull => Refusal::Overloaded(format!(
                "{} runs are running and {} waiting",
                self.config.max_concurrent, self.config.max_queued
            )),
            Refused::QueueTimeout => Refusal::Overloaded("no run slot became free in QUEUE_TIMEOUT_SECONDS".into()),
            Refused::ShuttingDown => Refusal::Unavailable("the gateway is shutting down".into()),
        }
    }

    /// Creates the run: its log, its place in the running index (one run per session), its
    /// record (before the first frame: a crash from here on leaves a record to account for) and
    /// its session frame.
    async fn create(
        &self,
        spec: &RunSpec,
        caller: &Caller,
        run_id: String,
        how: Submit,
    ) -> Result<(Arc<Run>, Registration, Launch), Refusal> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            tracing::error!(error = %e, "{what}");
            Refusal::Unavailable(format!("{what}: {e}"))
        };
        let mut run = Run::new(spec.session_id.clone(), spec.cli.clone()).owned_by(caller.name.clone());
        run.id = run_id;
        run.client = caller.client.map(|c| c.to_string()).unwrap_or_default();
        let log = self
            .logs
            .create(&run.id)
            .map_err(|e| unavailable("cannot create the run's log in DATA_DIR", &e))?;
        run = run.with_log(log.clone());
        let run = Arc::new(run);
        let registration = self.registry.insert(run.clone()).ok_or_else(|| {
            let _ = self.logs.remove(&run.id);
            Refusal::Conflict(format!("session '{}' is already running", spec.session_id))
        })?;

        let now = now_ms();
        let mut record = RunRecord::queued(&run.id, &run.session_id, &run.cli, self.instance(), now);
        record.args = spec.args.clone();
        record.env_keys = spec.env.keys().cloned().collect();
        let launch = self.executor.plan(spec, &run.id);
        record.model = launch.model.clone();
        record.mode = if self.executor.name() == "docker" {
            RunMode::Docker
        } else {
            RunMode::Local
        };
        record.owner = run.owner.clone();
        let holds = workspace::holds(
            spec.workspace.as_ref(),
            spec.state_key.as_deref(),
            caller.name.as_deref(),
        );
        for hold in &holds {
            match hold.kind {
                HoldKind::Branch => record.branch_hold = Some(hold.value.clone()),
                HoldKind::StateKey => record.state_hold = Some(hold.value.clone()),
            }
        }
        match how {
            Submit::Attached => {
                record.state = RecordState::Running;
                record.started_at = Some(now);
            }
            Submit::Detached { state, callback_url } => {
                record.detached = true;
                record.callback_url = callback_url;
                record.state = state;
                record.started_at = (state == RecordState::Running).then_some(now);
            }
        }
        let timer = std::time::Instant::now();
        self.record_new(&record, &holds).await.map_err(|e| {
            let _ = self.logs.remove(&run.id);
            e.unwrap_or_else(|e| unavailable("cannot record the run", &format!("{e:#}")))
        })?;
        self.metrics.observe_store(timer.elapsed());

        let mut first = BytesMut::new();
        Frame::Session {
            id: run.session_id.clone(),
            run_id: run.id.clone(),
        }
        .encode(&mut first);
        log.append(first.freeze())
            .map_err(|e| unavailable("cannot write the run's log", &e))?;
        Ok((run, registration, launch))
    }

    /// Inserts a new run's record. On PostgreSQL a session, a branch and a state key each have
    /// one queued/running record across every replica (unique indexes): when another holds one,
    /// the refusal is the same as on one gateway (409, `busy` for a branch or state key) —
    /// unless its holder is a dead replica, or this one with a record whose end was never
    /// written; that record is ended and the insert tried again.
    async fn record_new(&self, record: &RunRecord, holds: &[Hold]) -> Result<(), Result<Refusal, anyhow::Error>> {
        let refusal = |held: Held| match held {
            Held::Session => Refusal::Conflict(format!("session '{}' is already running", record.session_id)),
            Held::Branch | Held::StateKey => {
                let kind = if held == Held::Branch {
                    HoldKind::Branch
                } else {
                    HoldKind::StateKey
                };
                let busy = holds.iter().find(|h| h.kind == kind).map(|h| h.busy.clone());
                Refusal::Busy(busy.unwrap_or_else(|| "another run holds what this one needs".into()))
            }
        };
        let value = |held: Held| match held {
            Held::Session => Some(record.session_id.as_str()),
            Held::Branch => record.branch_hold.as_deref(),
            Held::StateKey => record.state_hold.as_deref(),
        };
        // Each hold can be found stale once; three holds, so at most four inserts.
        let mut released = Vec::new();
        loop {
            let e = match self.store.insert(record).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let Some(held) = taken(&e) else {
                return Err(Err(e));
            };
            let Some(value) = value(held).filter(|_| !released.contains(&held)) else {
                return Err(Ok(refusal(held)));
            };
            released.push(held);
            let ended = self
                .store
                .release_stale(held, value, self.instance(), self.config.replica_dead, now_ms())
                .await
                .map_err(Err)?;
            if !ended {
                return Err(Ok(refusal(held)));
            }
        }
    }

    /// Runs the run in its own task: waits for its slot if it has none (a stop or the shutdown
    /// ends the wait), then prepares its branch (when it has one), supervises the CLI, commits
    /// and pushes, and finishes it. `queued` is the recorded state of a detached run (`None`
    /// for an attached one). The claim on the branch and state key is held until the branch's
    /// last git step is done.
    fn start(
        self: &Arc<Self>,
        run: Arc<Run>,
        spec: RunSpec,
        launch: Launch,
        (registration, claim): (Registration, workspace::Claim),
        reservation: Reservation,
        queued: Option<RecordState>,
    ) {
        let limits = Limits {
            timeout: self.config.timeout,
            idle_timeout: self.config.idle_timeout,
            output_limit: self.config.output_limit,
            kill_grace: self.config.kill_grace,
        };
        let service = self.clone();
        let waits = !reservation.has_slot();
        if waits {
            self.metrics.detached_queued.inc();
        }
        self.tasks.spawn(async move {
            let permit = tokio::select! {
                permit = reservation.slot(None) => permit.ok(),
                _ = run.stop_requested() => None,
            };
            if waits {
                service.metrics.detached_queued.dec();
            }
            let Some(permit) = permit else {
                // Ended before it started: stopped while queued, or the gateway shut down.
                let reason = run.stop_reason().unwrap_or(EndReason::Shutdown);
                let end = End { code: 143, reason };
                run.set_state(RunState::Finished(end));
                let outcome = Outcome {
                    end,
                    stdout_bytes: 0,
                    stderr_bytes: 0,
                };
                drop(claim);
                service.finish(&run, outcome, None, false, None, (registration, None)).await;
                return;
            };
            if queued == Some(RecordState::Queued) {
                let timer = std::time::Instant::now();
                if let Err(e) = service.store.mark_running(&run.id, now_ms()).await {
                    tracing::error!(run_id = run.id.as_str(), error = %format!("{e:#}"), "cannot record the start of a run");
                }
                service.metrics.observe_store(timer.elapsed());
            }
            service
                .metrics
                .runs_started
                .get_or_create(&CliLabels { cli: spec.cli.clone() })
                .inc();
            service.metrics.active_runs.inc();
            let model = launch.model.clone();
            let container = launch.container.is_some();
            let log = run.log.clone().expect("a submitted run has a log");
            let workspaces = &service.workspaces;
            let prepared = match &spec.workspace {
                None => Ok(()),
                Some(w) => tokio::select! {
                    prepared = workspaces.prepare(w, &log) => prepared.map_err(|why| (why, None)),
                    reason = run.stop_requested() => Err(("the run was stopped while its branch was prepared".into(), Some(reason))),
                },
            };
            let (outcome, git) = match prepared {
                Ok(()) => {
                    let outcome = supervise(
                        &run,
                        &service.containment,
                        service.executor.as_ref(),
                        launch,
                        spec.stdin,
                        &limits,
                        log.clone(),
                    )
                    .await;
                    let git = match &spec.workspace {
                        None => None,
                        Some(w) => {
                            let message = format!("{} run {}", spec.cli, run.id);
                            Some(workspaces.finish(w, &message, &log).await)
                        }
                    };
                    (outcome, git)
                }
                Err((why, stopped)) => {
                    workspace::say(&log, &format!("the run was not started: {why}"));
                    let w = spec.workspace.as_ref().expect("only a workspace run is prepared");
                    let end = match stopped {
                        Some(reason) => End { code: 143, reason },
                        None => End {
                            code: 1,
                            reason: EndReason::Workspace,
                        },
                    };
                    run.set_state(RunState::Finished(end));
                    let git = GitReport {
                        project: w.project.clone(),
                        branch: w.branch.clone(),
                        head: None,
                        committed: false,
                        pushed: false,
                        error: Some(why),
                    };
                    let outcome = Outcome {
                        end,
                        stdout_bytes: 0,
                        stderr_bytes: 0,
                    };
                    (outcome, Some(git))
                }
            };
            if let Some(git) = &git {
                let mut frame = BytesMut::new();
                Frame::Git(git.clone()).encode(&mut frame);
                if let Err(e) = log.append(frame.freeze()) {
                    tracing::error!(run_id = run.id.as_str(), error = %e, "cannot write the git frame");
                }
            }
            // The branch is free once its last git step is done, before the exit frame: a
            // client that starts the next run on it as soon as it reads `exit` is not refused.
            drop(claim);
            service.metrics.active_runs.dec();
            let git = git.map(|g| serde_json::to_value(g).expect("serialises"));
            service
                .finish(&run, outcome, model, container, git, (registration, Some(permit)))
                .await;
        });
    }

    /// The one finish hook: record the end, then write the exit frame (so a reader that sees it
    /// finds the record final), close the log, free the session and the slot, count, log a line.
    async fn finish(
        &self,
        run: &Run,
        outcome: Outcome,
        model: Option<String>,
        container: bool,
        git: Option<serde_json::Value>,
        (registration, permit): (Registration, Option<tokio::sync::OwnedSemaphorePermit>),
    ) {
        let end = outcome.end;
        let log = run.log.as_ref().expect("a submitted run has a log");
        let mut exit = BytesMut::new();
        Frame::Exit {
            code: end.code,
            reason: end.reason,
        }
        .encode(&mut exit);
        // A small log is kept with the record, and its file reused (see `crate::runlog`).
        let kept = match log.contents(KEEP_MAX.saturating_sub(exit.len() as u64)) {
            Ok(Some(frames)) => {
                let mut all = Vec::with_capacity(frames.len() + exit.len());
                all.extend_from_slice(&frames);
                all.extend_from_slice(&exit);
                Some(all)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(run_id = run.id.as_str(), error = %e, "cannot read a run's log back");
                None
            }
        };
        let keeps = kept.is_some();
        let finish = Finish {
            state: RecordState::Finished,
            exit_code: Some(end.code),
            reason: Some(end.reason.as_str().to_string()),
            finished_at: now_ms(),
            stdout_bytes: outcome.stdout_bytes,
            stderr_bytes: outcome.stderr_bytes,
            log_bytes: log.end().size + exit.len() as u64,
            git,
        };
        let timer = std::time::Instant::now();
        match self.store.finish_with_log(&run.id, &finish, kept).await {
            // The record holds the whole log now: readers from here on read it there.
            Ok(true) if keeps => log.recycle_when_unused(),
            Ok(_) => {}
            Err(e) => {
                tracing::error!(run_id = run.id.as_str(), error = %format!("{e:#}"), "cannot record the end of a run")
            }
        }
        self.metrics.observe_store(timer.elapsed());
        let log_bytes = match log.append(exit.freeze()) {
            Ok(size) => size,
            Err(e) => {
                tracing::error!(run_id = run.id.as_str(), error = %e, "cannot write the exit frame");
                log.end().size
            }
        };
        log.close();
        drop(registration);
        drop(permit);
        self.callbacks.run_ended(&run.id);

        let metrics = &self.metrics;
        let duration = run.started.elapsed();
        metrics.log_bytes.inc_by(log_bytes);
        metrics
            .runs_finished
            .get_or_create(&FinishLabels {
                cli: run.cli.clone(),
                reason: end.reason.as_str().into(),
            })
            .inc();
        metrics.exit_codes.get_or_create(&CodeLabels { code: end.code }).inc();
        metrics
            .run_duration
            .get_or_create(&CliLabels { cli: run.cli.clone() })
            .observe(duration.as_secs_f64());
        metrics
            .bytes
            .get_or_create(&StreamLabels { stream: "stdout" })
            .inc_by(outcome.stdout_bytes);
        metrics
            .bytes
            .get_or_create(&StreamLabels { stream: "stderr" })
            .inc_by(outcome.stderr_bytes);
        if container && end.reason != EndReason::Exited && end.reason != EndReason::SpawnFailed {
            metrics
                .container_cleanups
                .get_or_create(&CleanupLabels { when: "run" })
                .inc();
        }
        tracing::info!(
            run_id = run.id.as_str(),
            session_id = clip(&run.session_id),
            cli = run.cli.as_str(),
            owner = run.owner.as_deref().unwrap_or(""),
            model = model.as_deref().unwrap_or(""),
            code = end.code,
            reason = end.reason.as_str(),
            duration_ms = duration.as_millis().min(u64::MAX as u128) as u64,
            stdout_bytes = outcome.stdout_bytes,
            stderr_bytes = outcome.stderr_bytes,
            log_bytes,
            client = run.client.as_str(),
            "run finished"
        );
    }

    /// Refuses new runs while `DATA_DIR` has less free space than the floor.
    fn check_disk(&self) -> Result<(), Refusal> {
        let floor = self.config.data_dir_min_free_bytes;
        if floor == 0 {
            return Ok(());
        }
        match free_bytes(self.logs.root()) {
            Ok(free) if free < floor => Err(Refusal::Unavailable(format!(
                "DATA_DIR has {free} bytes free, less than DATA_DIR_MIN_FREE_BYTES ({floor})"
            ))),
            _ => Ok(()),
        }
    }

    /// Asks a running run to end; `NotFound` when it is not running or not the caller's.
    pub fn stop(&self, caller: &Caller, run: Option<Arc<Run>>, name: &str) -> Result<(), Refusal> {
        let not_running = || Refusal::NotFound(format!("{name} is not running"));
        let run = run
            .filter(|r| caller.may_see(r.owner.as_deref()))
            .ok_or_else(not_running)?;
        run.request_stop(EndReason::Stopped);
        if matches!(run.state(), RunState::Finished(_)) {
            return Err(not_running());
        }
        Ok(())
    }

    /// The record of a run the caller may see.
    pub async fn record(&self, caller: &Caller, run_id: &str) -> Result<RunRecord, Refusal> {
        let found = self.store.get(run_id).await;
        visible(caller, found, || format!("run '{run_id}' not found"))
    }

    /// The newest record of a session the caller may see.
    pub async fn session_record(&self, caller: &Caller, session_id: &str) -> Result<RunRecord, Refusal> {
        let found = self.store.latest_by_session(session_id).await;
        visible(caller, found, || format!("session '{session_id}' is not running"))
    }

    /// Records newest first, the caller's own unless it is an admin.
    pub async fn list(
        &self,
        caller: &Caller,
        mut query: ListQuery,
    ) -> Result<(Vec<RunRecord>, Option<String>), Refusal> {
        query.owner = if caller.admin { None } else { caller.name.clone() };
        self.store.list(&query).await.map_err(|e| match e {
            ListError::Invalid(why) => Refusal::Invalid(why),
            ListError::Store(e) => Refusal::Unavailable(format!("the run store does not answer: {e:#}")),
        })
    }

    /// A run's log for reading: the live log while it runs here, else the copy kept with its
    /// record, else its file.
    pub async fn source(&self, caller: &Caller, run_id: &str) -> Result<(RunRecord, Source), Refusal> {
        let record = self.record(caller, run_id).await?;
        let source = self.source_of(&record).await?;
        Ok((record, source))
    }

    /// The log of a run found already (its record), on this replica: the live log while it
    /// runs here, else the copy kept with its record, else its file. The record may be older
    /// than the run's end, so the kept copy is always looked for: a run leaves the registry only
    /// after its end (and kept copy) committed, and a kept log's file is reused.
    pub async fn source_of(&self, record: &RunRecord) -> Result<Source, Refusal> {
        let run_id = record.run_id.as_str();
        if let Some(log) = self.registry.by_run_id(run_id).and_then(|r| r.log.clone()) {
            return Ok(Source::Live(log));
        }
        match self.store.kept_log(run_id).await {
            Ok(Some(kept)) => return Ok(Source::Finished(Arc::new(LogFile::kept(kept.into())))),
            Ok(None) => {}
            Err(e) => return Err(Refusal::Unavailable(format!("the run store does not answer: {e:#}"))),
        }
        match self.logs.open_finished(run_id) {
            Ok(file) => Ok(Source::Finished(Arc::new(file))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Refusal::NotFound(format!("the log of run '{run_id}' is gone")))
            }
            Err(e) => Err(Refusal::Unavailable(format!("cannot read the log: {e}"))),
        }
    }

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
    async fn remove(&self, run_ids: Vec<String>) -> anyhow::Result<u64> {
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

/// A record the store found, when `caller` may see it; a record of another token's is answered
/// exactly like one that does not exist.
fn visible(
    caller: &Caller,
    found: anyhow::Result<Option<RunRecord>>,
    not_found: impl Fn() -> String,
) -> Result<RunRecord, Refusal> {
    let record = found
        .map_err(|e| Refusal::Unavailable(format!("the run store does not answer: {e:#}")))?
        .filter(|r| caller.may_see(r.owner.as_deref()));
    record.ok_or_else(|| Refusal::NotFound(not_found()))
}

/// A new run id: 32 hex digits.
fn new_run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Free bytes for unprivileged writers on the file system holding `path`.
fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}
