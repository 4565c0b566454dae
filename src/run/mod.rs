//! A run is a value: an id, the session it serves, a life cycle (starting → running → finished
//! with a code and a reason) and a handle to end it. The HTTP stream is only one consumer of it,
//! which leaves room for durable records, detached runs and re-attach.

pub mod containment;
pub mod env_rule;
pub mod frame;
pub mod output;
pub mod plan;
pub mod registry;
pub mod request;
pub mod supervisor;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::runlog::RunLog;
use frame::EndReason;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    pub code: i32,
    pub reason: EndReason,
}

/// Where a run is in its life cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    Starting,
    Running { pid: u32 },
    Finished(End),
}

/// One run of a CLI.
#[derive(Debug)]
pub struct Run {
    /// Unique per run; names the container and tags every log line of the run.
    pub id: String,
    /// The client's name for the run (unique among running runs).
    pub session_id: String,
    pub cli: String,
    /// The name of the token that started the run (`None` without tokens): only it and admin
    /// tokens see or stop the run.
    pub owner: Option<String>,
    pub started: Instant,
    state: watch::Sender<RunState>,
    /// Cancelled when someone asks the run to end early (stop, shutdown).
    stop: CancellationToken,
    /// Why the run was asked to end; the first request wins.
    stop_reason: OnceLock<EndReason>,
    /// Where its frames go; every reader follows it.
    pub log: Option<Arc<RunLog>>,
    /// Where the request came from (for the `run finished` log line).
    pub client: String,
}

impl Run {
    /// Run `id` (from [`crate::runlog::LogDir::lease_run_id`]) of `session_id`.
    pub fn new(id: String, session_id: String, cli: String) -> Run {
        Run {
            id,
            session_id,
            cli,
            owner: None,
            started: Instant::now(),
            state: watch::Sender::new(RunState::Starting),
            stop: CancellationToken::new(),
            stop_reason: OnceLock::new(),
            log: None,
            client: String::new(),
        }
    }

    /// The run, writing its frames to `log`.
    pub fn with_log(mut self, log: Arc<RunLog>) -> Run {
        self.log = Some(log);
        self
    }

    /// The run, recorded as started by `owner`.
    pub fn owned_by(mut self, owner: Option<String>) -> Run {
        self.owner = owner;
        self
    }

    /// Asks the run to end; returns false when it had already been asked or has finished.
    pub fn request_stop(&self, reason: EndReason) -> bool {
        if matches!(self.state(), RunState::Finished(_)) || self.stop_reason.set(reason).is_err() {
            return false;
        }
        self.stop.cancel();
        true
    }

    /// A caller's stop (session or run id): asks the run to end unless it has ended, and
    /// answers whether it was still going. A stop asked for twice is accepted twice. The check
    /// comes before the request: a run asked to end may end at once on another thread (a queued
    /// one does), and that stop was still accepted.
    pub fn stop(&self, reason: EndReason) -> bool {
        if matches!(self.state(), RunState::Finished(_)) {
            return false;
        }
        self.request_stop(reason);
        true
    }

    /// Why the run was asked to end, if it was.
    pub fn stop_reason(&self) -> Option<EndReason> {
        self.stop_reason.get().copied()
    }

    /// Resolves with the reason once the run has been asked to end.
    pub async fn stop_requested(&self) -> EndReason {
        self.stop.cancelled().await;
        *self.stop_reason.get().expect("reason is set before cancelling")
    }

    pub fn state(&self) -> RunState {
        self.state.borrow().clone()
    }

    pub fn set_state(&self, state: RunState) {
        self.state.send_replace(state);
    }

    /// Follows the life cycle (e.g. to wait for the end).
    pub fn subscribe(&self) -> watch::Receiver<RunState> {
        self.state.subscribe()
    }
}
