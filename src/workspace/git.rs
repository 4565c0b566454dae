//! Runs the git CLI for the gateway: every step bounded by `GIT_TIMEOUT_SECONDS` (then its
//! process group is killed), its output capped, and isolated from whatever the machine's or the
//! repository's configuration would add — no system or global config (a `credential.helper =
//! store` there would write the token to disk), no hooks, no fsmonitor, no terminal prompt.
//!
//! The git CLI rather than gitoxide: it is what users run (same protocol support, same
//! behaviour with their remotes), and it does all this needs — worktrees, push over every
//! transport, `GIT_ASKPASS` — where gitoxide still lacks complete push and worktree support.
//!
//! Credentials reach git only through `GIT_ASKPASS`: a small script, written once with mode
//! 0700 into a private directory, that prints a user name or the token from variables of the
//! git process's own environment. The token is never on a command line (`/proc/*/cmdline` is
//! world-readable), never in a URL or config on disk, and never in a log line: git's messages
//! are passed through [`redact`] before they go anywhere.

use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::projects::Credential;

/// The askpass script: a user name for the "Username" prompt, the token for any other.
const ASKPASS: &str = "#!/bin/sh\n\
case \"$1\" in\n\
  Username*) printf '%s\\n' \"$CLIGATE_GIT_USERNAME\" ;;\n\
  *) printf '%s\\n' \"$CLIGATE_GIT_PASSWORD\" ;;\n\
esac\n";

/// Options put before every command: nothing of the repository's or the machine's
/// configuration may run code or store a credential.
const ISOLATION: &[&str] = &[
    "-c",
    "credential.helper=",
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "safe.directory=*",
    "-c",
    "commit.gpgSign=false",
    "-c",
    "protocol.ext.allow=never",
];

/// Output kept from one step (more is read and dropped).
pub const OUTPUT_CAP: usize = 256 * 1024;

/// The git runner.
#[derive(Debug, Clone)]
pub struct Git {
    pub timeout: Duration,
    askpass: PathBuf,
    /// `GIT_AUTHOR_*`/`GIT_COMMITTER_*` of the gateway's commits.
    author: (String, String),
    /// Variables the git processes do not inherit (other projects' tokens, `GIT_DIR` …).
    remove: Vec<String>,
}

/// What a step printed and how it ended.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    /// Whether stdout was longer than the cap.
    pub truncated: bool,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// stdout as trimmed text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).trim().to_string()
    }
}

/// Why a step could not give an answer.
#[derive(Debug)]
pub enum Failure {
    /// Not finished within the timeout (killed).
    Timeout(Duration),
    /// Could not be started (no git?).
    Spawn(io::Error),
    /// Ended with a non-zero code; git's message, redacted.
    Failed(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout(t) => write!(
                f,
                "git did not finish within {}s (GIT_TIMEOUT_SECONDS)",
                t.as_secs_f64()
            ),
            Failure::Spawn(e) => write!(f, "cannot start git: {e}"),
            Failure::Failed(message) => f.write_str(message),
        }
    }
}

impl Git {
    /// Writes the askpass script into `private` (created 0700).
    pub fn new(private: &Path, timeout: Duration, author: (String, String), remove: Vec<String>) -> io::Result<Git> {
        std::fs::create_dir_all(private)?;
        std::fs::set_permissions(private, std::fs::Permissions::from_mode(0o700))?;
        let askpass = private.join("askpass.sh");
        let temp = private.join(format!("askpass.{}.tmp", std::process::id()));
        {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o700)
                .open(&temp)?;
            file.write_all(ASKPASS.as_bytes())?;
            file.sync_all()?;
        }
        std::fs::rename(&temp, &askpass)?;
        let mut remove = remove;
        remove.extend(
            [
                "GIT_DIR",
                "GIT_WORK_TREE",
                "GIT_INDEX_FILE",
                "GIT_OBJECT_DIRECTORY",
                "GIT_CONFIG_PARAMETERS",
                "GIT_CONFIG_COUNT",
            ]
            .map(String::from),
        );
        Ok(Git {
            timeout,
            askpass,
            author,
            remove,
        })
    }

    /// Runs `git <isolation> <args>` in `dir` and waits for it; `credential` is offered to the
    /// remote when it asks.
    pub async fn run(&self, dir: &Path, args: &[&str], credential: Option<&Credential>) -> Result<Output, Failure> {
        self.run_capped(dir, args, credential, OUTPUT_CAP).await
    }

    /// [`Git::run`], keeping `cap` bytes of stdout.
    pub async fn run_capped(
        &self,
        dir: &Path,
        args: &[&str],
        credential: Option<&Credential>,
        cap: usize,
    ) -> Result<Output, Failure> {
        let mut cmd = tokio::process::Command::new("git");
        cmd.args(ISOLATION)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        for key in &self.remove {
            cmd.env_remove(key);
        }
        cmd.env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", &self.askpass)
            .env_remove("SSH_ASKPASS")
            .env("LC_ALL", "C")
            .env("GIT_AUTHOR_NAME", &self.author.0)
            .env("GIT_AUTHOR_EMAIL", &self.author.1)
            .env("GIT_COMMITTER_NAME", &self.author.0)
            .env("GIT_COMMITTER_EMAIL", &self.author.1);
        match credential {
            Some(c) => cmd.env("CLIGATE_GIT_USERNAME", &c.username).env(
                "CLIGATE_GIT_PASSWORD",
                String::from_utf8_lossy(c.token.expose()).as_ref(),
            ),
            None => cmd
                .env_remove("CLIGATE_GIT_USERNAME")
                .env_remove("CLIGATE_GIT_PASSWORD"),
        };
        let mut child = cmd.spawn().map_err(Failure::Spawn)?;
        // Whatever ends this step early (the timeout, a stopped run dropping it), git and its
        // helpers (`git-remote-http`, `ssh`) go with it.
        let mut group = Group(child.id().map(|p| Pid::from_raw(p as i32)));
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let work = async {
            let (out, err) = tokio::join!(read_capped(stdout, cap), read_capped(stderr, 16 * 1024));
            let status = child.wait().await;
            (out, err, status)
        };
        let ((stdout, truncated), (stderr, _), status) = match tokio::time::timeout(self.timeout, work).await {
            Ok(done) => done,
            Err(_) => return Err(Failure::Timeout(self.timeout)),
        };
        // Reaped: its number may be reused, so the group is no longer ours to signal.
        group.0 = None;
        let status = status.map_err(Failure::Spawn)?;
        let stderr = redact(&String::from_utf8_lossy(&stderr), credential);
        Ok(Output {
            code: status.code(),
            stdout,
            truncated,
            stderr,
        })
    }

    /// [`Git::run`], with a non-zero exit as a [`Failure::Failed`] naming the step.
    pub async fn check(&self, dir: &Path, args: &[&str], credential: Option<&Credential>) -> Result<Output, Failure> {
        let out = self.run(dir, args, credential).await?;
        if out.ok() {
            return Ok(out);
        }
        let message = last_lines(&out.stderr, 6);
        Err(Failure::Failed(format!(
            "git {} failed ({}){}{}",
            args.first().copied().unwrap_or(""),
            out.code.map_or("killed".to_string(), |c| format!("exit {c}")),
            if message.is_empty() { "" } else { ": " },
            message
        )))
    }
}

/// A running step's process group, killed when dropped.
struct Group(Option<Pid>);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

/// Reads all of `r`, keeping the first `cap` bytes.
async fn read_capped(mut r: impl AsyncRead + Unpin, cap: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut truncated = false;
    loop {
        let n = match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let room = cap.saturating_sub(kept.len());
        if n > room {
            truncated = true;
        }
        kept.extend_from_slice(&chunk[..n.min(room)]);
    }
    (kept, truncated)
}

/// `text` with the credential's token replaced by `***` (git does not print it, but a remote's
/// message might echo it).
pub fn redact(text: &str, credential: Option<&Credential>) -> String {
    match credential {
        Some(c) if !c.token.expose().is_empty() => {
            text.replace(String::from_utf8_lossy(c.token.expose()).as_ref(), "***")
        }
        _ => text.to_string(),
    }
}

/// The last `n` non-empty lines of `text`, joined with "; ".
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("; ")
}
