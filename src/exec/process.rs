//! The process the gateway itself starts for a run — the CLI (local executor) or the `docker`
//! client (docker executor) — in its own process group inside the run's scope, and its end by
//! signals to that group. Both executors build on it.

use std::ffi::OsStr;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::lookup::lookups;
use super::spawn::{SpawnError, SpawnSpec, Spawned};
use super::{Execution, Launch, StartFailure, Stdio};
use crate::run::containment::Scope;
use crate::run::plan::GATEWAY_SECRETS;

/// A started process and its process group. Dropping it while armed kills the group: whatever
/// happens to the supervising task (a panic, the runtime going down), nothing is left running.
pub struct Process {
    child: Spawned,
    pgid: Pid,
    armed: bool,
    /// The program as the launch names it, for a failed start's message.
    program: String,
}

impl Process {
    /// Starts `launch` in a new process group inside `scope` (see [`super::spawn`]: no fork),
    /// looking a bare program name up on `search_path` (see [`super::lookup`]). Returns once the child exists: a
    /// child that then fails to join its cgroup or to exec exits at once, and
    /// [`Execution::start_failure`] says why.
    pub fn start(launch: &Launch, search_path: &OsStr, scope: &Scope) -> Result<Process, StartFailure> {
        let shown = launch.program.display();
        let program = launch
            .program
            .to_str()
            .and_then(|p| lookups().resolve(p, search_path))
            .ok_or_else(|| StartFailure {
                code: 127,
                message: format!("cligate: '{shown}' was not found on PATH\n"),
            })?;
        let mut remove: Vec<&str> = inherited_secrets().to_vec();
        remove.extend(launch.env_remove.iter().map(String::as_str));
        let marked;
        let env = match scope.marker() {
            Some((key, value)) => {
                marked = {
                    let mut env = launch.env.clone();
                    env.insert(key.to_string(), value.to_string());
                    env
                };
                &marked
            }
            None => &launch.env,
        };
        let spec = SpawnSpec {
            program: &program,
            args: &launch.args,
            env,
            env_remove: &remove,
            cgroup_procs: scope.cgroup_procs(),
            cgroup_v2: scope.cgroup_v2(),
            cgroup_dir: scope.cgroup_dir(),
            cwd: launch.cwd.as_deref(),
        };
        let child = super::spawn::spawn(&spec).map_err(|e| failure(&shown, e))?;
        let pgid = Pid::from_raw(child.id() as i32);
        Ok(Process {
            child,
            pgid,
            armed: true,
            program: shown.to_string(),
        })
    }

    /// Sends `signal` to the whole group; an empty group (the normal case at the end) is fine.
    /// A child that has not made its group yet (it is started without waiting for its exec)
    /// gets the signal itself: it keeps it pending until it unblocks signals just before its
    /// exec, with default handlers by then.
    pub fn signal(&self, signal: Signal) {
        if killpg(self.pgid, signal) == Err(nix::errno::Errno::ESRCH) {
            self.child.signal(signal as i32);
        }
    }

    /// Waits up to `grace` for the process to exit.
    pub async fn wait_for(&mut self, grace: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(grace, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// SIGKILL to the group, then the reaped status.
    pub async fn kill(&mut self) -> ExitStatus {
        self.signal(Signal::SIGKILL);
        Execution::wait(self).await
    }
}

#[async_trait]
impl Execution for Process {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stdio(&mut self) -> Option<Stdio> {
        Some(Stdio {
            stdin: self.child.stdin.take()?,
            stdout: self.child.stdout.take()?,
            stderr: self.child.stderr.take()?,
        })
    }

    async fn wait(&mut self) -> ExitStatus {
        self.child
            .wait()
            .await
            .unwrap_or_else(|_| ExitStatus::from_raw(Signal::SIGKILL as i32))
    }

    fn start_failure(&mut self) -> Option<StartFailure> {
        let program = &self.program;
        self.child.start_failure().map(|e| failure(program, e))
    }

    async fn terminate(&mut self, grace: Duration) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        match self.wait_for(grace).await {
            Some(status) => status,
            None => self.kill().await,
        }
    }

    async fn finish(&mut self, _exited_on_its_own: bool) {
        // Anything still in the group is a leftover of this run.
        self.signal(Signal::SIGKILL);
        self.armed = false;
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.armed {
            self.signal(Signal::SIGKILL);
        }
    }
}

/// The exit code and stderr line of a start that failed.
fn failure(shown: &impl std::fmt::Display, e: SpawnError) -> StartFailure {
    match e {
        SpawnError::Cgroup(e) => StartFailure {
            code: 1,
            message: format!("cligate: cannot move '{shown}' into the run's cgroup: {e}\n"),
        },
        SpawnError::Start(e) => {
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => 127,
                std::io::ErrorKind::PermissionDenied => 126,
                _ => 1,
            };
            StartFailure {
                code,
                message: format!("cligate: cannot start '{shown}': {e}\n"),
            }
        }
    }
}

/// The gateway's own secrets that are set in its environment, read once (the environment does
/// not change while the gateway serves). Only these are removed from a child's environment: any
/// change to it makes std copy the whole environment on every spawn.
fn inherited_secrets() -> &'static [&'static str] {
    static PRESENT: OnceLock<Vec<&'static str>> = OnceLock::new();
    PRESENT.get_or_init(|| {
        GATEWAY_SECRETS
            .iter()
            .copied()
            .filter(|key| std::env::var_os(key).is_some())
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::containment::Containment;

    /// A stop can come right after the start, before the child has made its own process group
    /// (nothing waits for its exec): the signal still reaches it, and it ends by that signal,
    /// not by the SIGKILL after the grace.
    #[tokio::test]
    async fn a_signal_right_after_the_start_reaches_the_child() {
        let containment = Containment::detect(&format!("unit-process-{}", std::process::id()));
        let launch = Launch {
            program: "sleep".into(),
            args: vec!["30".into()],
            env: Default::default(),
            container: None,
            model: None,
            env_remove: Vec::new(),
            cwd: None,
        };
        let path = std::env::var_os("PATH").unwrap();
        for i in 0..50 {
            let scope = containment.scope(&format!("signalled-{i}")).unwrap();
            let mut process = Process::start(&launch, &path, &scope).unwrap();
            process.signal(Signal::SIGTERM);
            let status = process
                .wait_for(Duration::from_secs(10))
                .await
                .expect("ended by SIGTERM");
            assert_eq!(status.signal(), Some(Signal::SIGTERM as i32), "start {i}: {status:?}");
            process.finish(true).await;
            scope.end().await;
        }
    }
}
