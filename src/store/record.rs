//! The durable record of one run and its API shape. Kept apart from the SQL so that the service
//! using the store (and its HTTP handlers) depend only on these types.

use serde::{Serialize, Serializer};

use super::time::rfc3339_ms;

/// How the run is launched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    Local,
    Docker,
}

impl RunMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RunMode::Local => "local",
            RunMode::Docker => "docker",
        }
    }

    pub fn parse(text: &str) -> Option<RunMode> {
        match text {
            "local" => Some(RunMode::Local),
            "docker" => Some(RunMode::Docker),
            _ => None,
        }
    }
}

/// Where a run is in its durable life cycle. `Finished` and `Interrupted` are final: the store
/// never changes such a record again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordState {
    /// Recorded, waiting for a run slot.
    Queued,
    Running,
    /// Ended on this gateway (any [`crate::run::frame::EndReason`]).
    Finished,
    /// Its gateway instance went away (or restarted) before it ended.
    Interrupted,
}

impl RecordState {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordState::Queued => "queued",
            RecordState::Running => "running",
            RecordState::Finished => "finished",
            RecordState::Interrupted => "interrupted",
        }
    }

    pub fn parse(text: &str) -> Option<RecordState> {
        match text {
            "queued" => Some(RecordState::Queued),
            "running" => Some(RecordState::Running),
            "finished" => Some(RecordState::Finished),
            "interrupted" => Some(RecordState::Interrupted),
            _ => None,
        }
    }

    /// Finished or interrupted: the record will not change again.
    pub fn is_final(self) -> bool {
        matches!(self, RecordState::Finished | RecordState::Interrupted)
    }
}

/// One run as stored. Serialises to the API shape: times as RFC 3339 UTC text with milliseconds,
/// `args`/`env_keys` as arrays, `callback` as an object or null.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    pub run_id: String,
    pub session_id: String,
    pub cli: String,
    pub args: Vec<String>,
    /// Names of the variables the request set; never their values.
    pub env_keys: Vec<String>,
    pub model: Option<String>,
    pub mode: RunMode,
    /// Name of the token that started the run.
    pub owner: Option<String>,
    /// The gateway instance that executes the run.
    pub instance: String,
    pub state: RecordState,
    pub exit_code: Option<i32>,
    /// Why it ended: an [`crate::run::frame::EndReason`] name, or e.g. `gateway_lost`.
    pub reason: Option<String>,
    /// Unix milliseconds.
    #[serde(serialize_with = "time")]
    pub created_at: i64,
    #[serde(serialize_with = "optional_time")]
    pub started_at: Option<i64>,
    #[serde(serialize_with = "optional_time")]
    pub finished_at: Option<i64>,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// Size of the run's log file.
    pub log_bytes: u64,
    pub detached: bool,
    pub callback_url: Option<String>,
    /// Delivery status of the callback (a JSON object), filled in by the callback sender.
    pub callback: Option<serde_json::Value>,
    /// A run on a branch: the `git` frame's object (`project`, `branch`, `head`, `committed`,
    /// `pushed`, `error`), set when it ends.
    pub git: Option<serde_json::Value>,
    /// What the run holds while queued or running (see `workspace::Hold`): written with the
    /// record so that, with several replicas, the database keeps each to one run. Not shown.
    #[serde(skip)]
    pub branch_hold: Option<String>,
    #[serde(skip)]
    pub state_hold: Option<String>,
}

impl RunRecord {
    /// A queued record created now with nothing counted yet; callers fill in the rest.
    pub fn queued(run_id: &str, session_id: &str, cli: &str, instance: &str, created_at: i64) -> RunRecord {
        RunRecord {
            run_id: run_id.to_string(),
            session_id: session_id.to_string(),
            cli: cli.to_string(),
            args: Vec::new(),
            env_keys: Vec::new(),
            model: None,
            mode: RunMode::Local,
            owner: None,
            instance: instance.to_string(),
            state: RecordState::Queued,
            exit_code: None,
            reason: None,
            created_at,
            started_at: None,
            finished_at: None,
            stdout_bytes: 0,
            stderr_bytes: 0,
            log_bytes: 0,
            detached: false,
            callback_url: None,
            callback: None,
            git: None,
            branch_hold: None,
            state_hold: None,
        }
    }
}

/// How a run ended, for [`super::Store::finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    /// [`RecordState::Finished`] or [`RecordState::Interrupted`].
    pub state: RecordState,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    /// Unix milliseconds.
    pub finished_at: i64,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub log_bytes: u64,
    /// A run on a branch: how the branch ended up (the `git` frame's object).
    pub git: Option<serde_json::Value>,
}

/// What [`super::Store::list`] returns, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub state: Option<RecordState>,
    pub cli: Option<String>,
    pub session_id: Option<String>,
    /// `Some(name)`: only that token's runs; `None`: every owner's (admin view).
    pub owner: Option<String>,
    /// 1..=1000; `None` = 50.
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn time<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339_ms(*ms))
}

fn optional_time<S: Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => s.serialize_str(&rfc3339_ms(*ms)),
        None => s.serialize_none(),
    }
}
