//! A run's life after it is created: its task waits for a slot, prepares its branch, supervises
//! the CLI, commits, and ends in the one finish hook (record, kept log, metrics, the `run
//! finished` line, callbacks).

use std::sync::Arc;

use bytes::BytesMut;

use crate::admission::Reservation;
use crate::exec::Launch;
use crate::metrics::{CleanupLabels, CliLabels, CodeLabels, FinishLabels, StreamLabels};
use crate::run::frame::{EndReason, Frame};
use crate::run::registry::Registration;
use crate::run::request::RunSpec;
use crate::run::supervisor::{Limits, Outcome, supervise};
use crate::run::{End, Run, RunState};
use crate::runlog::KEEP_MAX;
use crate::store::time::now_ms;
use crate::store::{Finish, RecordState};
use crate::telemetry::clip;
use crate::workspace::{self as workspace, GitReport};

use super::Runs;

impl Runs {
    /// Runs the run in its own task: waits for its slot if it has none (a stop or the shutdown
    /// ends the wait), then prepares its branch (when it has one), supervises the CLI, commits
    /// and pushes, and finishes it. `queued` is the recorded state of a detached run (`None`
    /// for an attached one). The claim on the branch and state key is held until the branch's
    /// last git step is done.
    pub(super) fn start(
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
        let life = async move {
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
                service
                    .finish(&run, outcome, None, false, None, (registration, None))
                    .await;
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
            let git = git.map(|g| serde_json::to_value(g).expect("serialises"));
            service
                .finish(&run, outcome, model, container, git, (registration, Some(permit)))
                .await;
        };
        // A detached run yields the CPU to request handling (see `crate::priority`).
        match queued {
            Some(_) => self
                .tasks
                .spawn_on(life, &crate::priority::detached_runtime(self.config.detached_nice)),
            None => self.tasks.spawn_on(life, &self.requests_runtime),
        };
    }

    /// The one finish hook: record the end, then write the exit frame (so a reader that sees it
    /// finds the record final), close the log, free the session and the slot, count, log a line.
    pub(super) async fn finish(
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
        // A run counts as active for as long as it holds its slot (a run stopped while queued
        // never had one).
        if let Some(permit) = permit {
            drop(permit);
            self.metrics.active_runs.dec();
        }
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
}
