//! Submitting a run: claim its idempotency key, branch and state key, check the disk, admit it,
//! create it (log, running index, record, session frame) and start it; every refusal is a
//! [`Refusal`].

use std::sync::Arc;

use bytes::BytesMut;

use crate::admission::{Refused, Reservation};
use crate::auth::Caller;
use crate::exec::Launch;
use crate::run::Run;
use crate::run::frame::Frame;
use crate::run::registry::Registration;
use crate::run::request::RunSpec;
use crate::runlog::RunIdLease;
use crate::store::idempotency::Claim;
use crate::store::replicas::{Held, taken};
use crate::store::time::now_ms;
use crate::store::{RecordState, RunMode, RunRecord};
use crate::workspace::{self as workspace, Hold, HoldKind};

use super::{Idempotency, Refusal, Runs, Submit, Submitted};

impl Runs {
    /// Starts an attached run: admitted now (or after a bounded wait), recorded, its session
    /// frame in its log, its supervisor running. The caller follows `run.log`.
    pub async fn submit(
        self: &Arc<Self>,
        spec: RunSpec,
        caller: &Caller,
        idempotency: Option<Idempotency>,
    ) -> Result<Submitted, Refusal> {
        // Held to the end: a run id whose run was never created goes back to the log pool.
        let lease = self.lease_run_id(idempotency.as_ref());
        let run_id = lease.id().to_string();
        if let Some(again) = self.claim(caller, idempotency.as_ref(), &run_id).await? {
            return Ok(again);
        }
        let started = self.submit_attached(spec, caller, run_id.clone()).await;
        self.settle(caller, idempotency.as_ref(), &run_id, started.is_err())
            .await;
        Ok(Submitted::Started(started?, RecordState::Running))
    }

    pub(super) async fn submit_attached(
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
    pub(super) fn hold(&self, spec: &mut RunSpec, caller: &Caller) -> Result<workspace::Claim, Refusal> {
        let owner = caller.name.as_deref();
        let claim = self
            .workspaces
            .claim(spec.workspace.as_ref(), spec.state_key.as_deref(), owner)
            .map_err(|busy| Refusal::Busy(busy.0))?;
        spec.place = self
            .workspaces
            .place(spec.workspace.as_ref(), spec.state_key.as_deref(), owner)
            .map_err(|e| Refusal::failed("cannot create the run's state home", e))?;
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
        let lease = self.lease_run_id(idempotency.as_ref());
        let run_id = lease.id().to_string();
        if let Some(again) = self.claim(caller, idempotency.as_ref(), &run_id).await? {
            return Ok(again);
        }
        let started = self.detach(spec, caller, callback_url, run_id.clone()).await;
        self.settle(caller, idempotency.as_ref(), &run_id, started.is_err())
            .await;
        let (run, state) = started?;
        Ok(Submitted::Started(run, state))
    }

    pub(super) async fn detach(
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

    /// The new run's id, from the log pool (see [`crate::runlog`]); with an idempotency key the
    /// id is stored before the run exists, so it is spent: never handed out again.
    fn lease_run_id(&self, idempotency: Option<&Idempotency>) -> RunIdLease {
        let mut lease = self.logs.lease_run_id();
        if idempotency.is_some() {
            lease.spend();
        }
        lease
    }

    /// Claims the request's `Idempotency-Key` for `run_id`: `None` to go on and start it, or
    /// the run the key already names.
    pub(super) async fn claim(
        &self,
        caller: &Caller,
        idempotency: Option<&Idempotency>,
        run_id: &str,
    ) -> Result<Option<Submitted>, Refusal> {
        let Some(i) = idempotency else { return Ok(None) };
        let owner = caller.name.as_deref().unwrap_or("");
        let claim = self
            .store
            .claim_key(owner, &i.key, &i.body_hash, (run_id, self.instance()), now_ms())
            .await
            .map_err(|e| Refusal::failed("the run store does not answer", e))?;
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
    pub(super) async fn settle(&self, caller: &Caller, idempotency: Option<&Idempotency>, run_id: &str, failed: bool) {
        if let (Some(i), true) = (idempotency, failed) {
            let owner = caller.name.as_deref().unwrap_or("");
            if let Err(e) = self.store.release_key(owner, &i.key, run_id).await {
                tracing::warn!(error = %format!("{e:#}"), "cannot release an idempotency key");
            }
        }
    }

    pub(super) fn check_session(&self, spec: &RunSpec) -> Result<(), Refusal> {
        if self.registry.get(&spec.session_id).is_some() {
            return Err(Refusal::Conflict(format!(
                "session '{}' is already running",
                spec.session_id
            )));
        }
        Ok(())
    }

    pub(super) fn refused(&self, refused: Refused) -> Refusal {
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
    pub(super) async fn create(
        &self,
        spec: &RunSpec,
        caller: &Caller,
        run_id: String,
        how: Submit,
    ) -> Result<(Arc<Run>, Registration, Launch), Refusal> {
        let unavailable = |what: &'static str, e: &dyn std::fmt::Display| {
            tracing::error!(error = %e, "{what}");
            Refusal::failed(what, e)
        };
        let mut run = Run::new(run_id, spec.session_id.clone(), spec.cli.clone()).owned_by(caller.name.clone());
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
    pub(super) async fn record_new(
        &self,
        record: &RunRecord,
        holds: &[Hold],
    ) -> Result<(), Result<Refusal, anyhow::Error>> {
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

    /// Refuses new runs while `DATA_DIR` has less free space than the floor.
    pub(super) fn check_disk(&self) -> Result<(), Refusal> {
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
}

/// Free bytes for unprivileged writers on the file system holding `path`.
pub(super) fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}
