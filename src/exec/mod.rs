//! Executors: where a run's CLI actually runs. The run service and the supervisor see one
//! interface — plan, prepare, ready, start → (stdin, stdout, stderr), wait, terminate with grace,
//! finish, clean leftovers — and each way of running a CLI is one implementation of it: a local
//! process ([`local`]) or a sibling container through the Docker engine ([`docker`]). Everything
//! one executor knows (argv shape, engine calls, labels, leftovers) lives in its own module; a
//! further executor (a cluster scheduler, say) is one more module and one more arm in
//! [`for_config`]. Executors know nothing of frames, logs or HTTP.

mod child;
pub mod docker;
pub mod local;
mod lookup;
mod process;
pub mod spawn;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::unix::pipe;

use crate::config::{Config, Mode};
use crate::run::containment::Scope;
use crate::run::request::RunSpec;

/// What to start, and how: the result of [`Executor::plan`], pure and unit-tested.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    /// A bare name (looked up on the gateway's `PATH` when spawning) or a path.
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Set on the launched process over the gateway's environment. In docker mode these are
    /// the container's variables: the argv names them (`-e KEY`) and the `docker` client reads
    /// their values from its own environment, so no value is ever on a command line.
    pub env: BTreeMap<String, String>,
    /// The container that runs the CLI (docker mode), to be ended through the engine.
    pub container: Option<String>,
    /// The model the run uses, when known (for logs and metrics).
    pub model: Option<String>,
    /// Variables of the gateway's environment the launched process must not inherit: the
    /// gateway's credentials, when the request points the CLI at another server, and the
    /// projects' git credentials (local mode).
    pub env_remove: Vec<String>,
    /// The working directory of the launched process (local mode: the branch's worktree, see
    /// [`crate::workspace`]); a docker launch mounts the worktree at `/workspace` instead.
    pub cwd: Option<PathBuf>,
}

/// Why a launch could not be started: the exit code the run reports (127 not found, 126 not
/// executable, 1 otherwise) and a line for its stderr.
#[derive(Debug)]
pub struct StartFailure {
    pub code: i32,
    pub message: String,
}

/// What [`Executor::prepare`] found at start-up, for the start-up log line and metrics.
#[derive(Debug, Default)]
pub struct Prepared {
    /// What the executor runs on (e.g. the engine's version), when there is something to say.
    pub engine: Option<String>,
    /// Leftovers of a dead predecessor of this instance that were removed.
    pub removed: usize,
}

/// The pipes of a started launch, each taken once by the supervisor.
pub struct Stdio {
    /// The write end of its stdin, blocking: registered only when there is something to write.
    pub stdin: std::os::fd::OwnedFd,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
}

/// One way of running a CLI.
#[async_trait]
pub trait Executor: Send + Sync + std::fmt::Debug {
    /// `local` or `docker`: recorded on runs and shown by `/readyz`.
    fn name(&self) -> &'static str;

    /// The exact program, argv and environment for `spec` (pure: nothing is started).
    fn plan(&self, spec: &RunSpec, run_id: &str) -> Launch;

    /// Start-up: checks that the executor can work at all and removes what a dead predecessor
    /// of this instance left behind. An error is a one-line reason the gateway will not start.
    async fn prepare(&self) -> anyhow::Result<Prepared>;

    /// Whether runs can start now; the details `/readyz` shows, or what is wrong.
    async fn ready(&self) -> Result<serde_json::Map<String, serde_json::Value>, String>;

    /// Starts `launch` inside the run's `scope` (its cgroup or marker).
    fn start(&self, launch: &Launch, scope: &Scope) -> Result<Box<dyn Execution>, StartFailure>;

    /// How often [`Executor::clean_leftovers`] should run while serving; `None` when the
    /// executor leaves nothing a run's own clean-up can miss.
    fn janitor_interval(&self) -> Option<Duration> {
        None
    }

    /// Removes what belongs to this instance but to no run `in_use` says is live; returns how
    /// many things were removed.
    async fn clean_leftovers(&self, _in_use: &(dyn for<'r> Fn(&'r str) -> bool + Sync)) -> anyhow::Result<usize> {
        Ok(0)
    }
}

/// One started launch, from start to reaped. Dropping it before [`Execution::finish`] kills
/// whatever is left of it: nothing of a run outlives a panicking supervisor.
#[async_trait]
pub trait Execution: Send {
    /// The process the gateway started (the CLI, or the `docker` client).
    fn pid(&self) -> u32;

    /// Its stdin, stdout and stderr; `None` once taken.
    fn stdio(&mut self) -> Option<Stdio>;

    /// Waits until it exits on its own.
    async fn wait(&mut self) -> ExitStatus;

    /// Once it has exited: whether it never got to run its program (it could not join its
    /// cgroup, or its exec failed), and why.
    fn start_failure(&mut self) -> Option<StartFailure>;

    /// Ends it early: SIGTERM (through the engine for a container), `grace` to exit, then
    /// SIGKILL; returns how it ended.
    async fn terminate(&mut self, grace: Duration) -> ExitStatus;

    /// After the end: kills whatever is left of its process group, and removes a container that
    /// `docker run --rm` would not (the run did not end on its own).
    async fn finish(&mut self, exited_on_its_own: bool);
}

/// The runtime that drives every run's stdout and stderr pipes (and the tasks that read them),
/// apart from the one serving HTTP. Its threads are scheduled by the kernel beside the HTTP
/// workers, so a child's output is read as it comes however many readers the HTTP side is busy
/// serving: in one runtime, a run's pump waited its turn behind every reader it had just woken
/// (with 50 fast readers of one run, the run slowed to a seventh of its speed alone).
pub fn output_runtime() -> &'static tokio::runtime::Handle {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads((cores / 2).max(1))
                .thread_name("cligate-output")
                .enable_all()
                .build()
                .expect("the output runtime starts")
        })
        .handle()
}

/// Runs `f` with [`output_runtime`] as the current runtime: I/O objects it creates register there.
pub fn on_output_runtime<T>(f: impl FnOnce() -> T) -> T {
    let _entered = output_runtime().enter();
    f()
}

/// The executor `config` asks for.
pub fn for_config(config: &Arc<Config>) -> anyhow::Result<Arc<dyn Executor>> {
    Ok(match &config.mode {
        Mode::Local => Arc::new(local::Local::new(config.clone())),
        Mode::Docker(_) => Arc::new(docker::Docker::new(config.clone())?),
    })
}
