//! Shared test helpers: start the real gateway on a free loopback port, talk to it over a real
//! socket with the one client ([`client`], shared with the benches), and check that processes
//! are really gone.
#![allow(dead_code)]

pub mod client;
pub mod pg;

#[allow(unused_imports)] // each test binary uses some of them
pub use client::{
    Conn, EndReason, Frame, FrameFields, Frames, Reply, RunStream, pids_in, request, static_busybox, try_request,
};

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use serde_json::Value;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

/// The fixture CLIs (small shell scripts) used by the tests.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bin")
}

/// `PATH` of a test gateway: the fixture CLIs first.
pub fn test_path() -> String {
    format!("{}:{}", fixtures().display(), std::env::var("PATH").unwrap_or_default())
}

/// Runs the `cligate` binary with `args`, in an environment of a scratch `DATA_DIR`, the test
/// `PATH` and `vars` (which override both), and waits at most `limit` for it to exit (start-up
/// failures, `--help`, `--version`).
pub async fn run_binary(args: &[&str], vars: &[(&str, &str)], limit: Duration) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cligate"));
    cmd.args(args)
        .env_clear()
        .env("DATA_DIR", scratch_data_dir())
        .env("PATH", test_path())
        .envs(vars.iter().copied())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("the binary did not exit within {limit:?}"))
        .unwrap()
}

/// The CLIs every test gateway allows.
pub const TEST_CLIS: &str = "echo-stdin,args,show-env,exit-code,ignore-term,spawn-tree,slow-partial,split-utf8,\
    bad-utf8,flood,long-line,escape-pipe,sh,sleep,not-installed-cli,no-interpreter,node-probe,escape-setsid,escape-node";

/// Which database a test gateway records its runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    /// SQLite in the gateway's own `DATA_DIR` (the default).
    Sqlite,
    /// A fresh database in the test process's throw-away PostgreSQL cluster.
    Postgres,
}

/// A gateway running in this test process, on its own port, with its own `DATA_DIR` (a temp
/// dir removed when the gateway is dropped, unless the test gave `DATA_DIR` itself).
pub struct Gateway {
    pub addr: SocketAddr,
    pub app: Arc<cligate::api::App>,
    pub data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _data: Option<tempfile::TempDir>,
}

impl Gateway {
    /// Starts a gateway with the test defaults overridden by `vars`.
    pub async fn start(vars: &[(&str, &str)]) -> Gateway {
        Gateway::try_start(vars).await.expect("gateway starts")
    }

    /// Starts a gateway whose store is `db`.
    pub async fn start_db(db: Db, vars: &[(&str, &str)]) -> Gateway {
        let url;
        let mut all: Vec<(&str, &str)> = vars.to_vec();
        if db == Db::Postgres {
            url = pg::fresh_database().await;
            all.push(("DATABASE_URL", &url));
        }
        Gateway::start(&all).await
    }

    pub async fn try_start(vars: &[(&str, &str)]) -> anyhow::Result<Gateway> {
        let path = test_path();
        let temp = match vars.iter().any(|(k, _)| *k == "DATA_DIR") {
            true => None,
            false => Some(tempfile::Builder::new().prefix("cligate-test-").tempdir()?),
        };
        let mut all: Vec<(String, String)> = vec![
            ("CLI_LIST".into(), TEST_CLIS.into()),
            ("MODEL_LIST".into(), "auto,gpt-test".into()),
            ("KILL_GRACE_SECONDS".into(), "1".into()),
            ("SHUTDOWN_GRACE_SECONDS".into(), "1".into()),
            ("PATH".into(), path),
            // The disk of a test machine may be fuller than a server's; the floor has its own test.
            ("DATA_DIR_MIN_FREE_BYTES".into(), "0".into()),
        ];
        if let Some(t) = &temp {
            all.push(("DATA_DIR".into(), t.path().display().to_string()));
        }
        for (k, v) in vars {
            all.retain(|(name, _)| name != k);
            all.push((k.to_string(), v.to_string()));
        }
        let config = Arc::new(cligate::config::Config::from_vars(all)?);
        let data_dir = config.data_dir.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = cligate::server::prepare(config, addr).await?;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(cligate::server::run(listener, app.clone(), async {
            let _ = rx.await;
        }));
        Ok(Gateway {
            addr,
            app,
            data_dir,
            shutdown: Some(tx),
            task: Some(task),
            _data: temp,
        })
    }

    /// Starts a graceful shutdown and returns the server task to await.
    pub fn begin_shutdown(&mut self) -> JoinHandle<anyhow::Result<()>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.take().expect("shut down once")
    }

    pub async fn get(&self, path: &str) -> Reply {
        request(self.addr, "GET", path, None, &[]).await
    }

    pub async fn post(&self, path: &str, body: &str) -> Reply {
        request(self.addr, "POST", path, Some(body.as_bytes().to_vec()), &[]).await
    }

    /// Starts a run and returns its open stream.
    pub async fn run(&self, body: Value) -> RunStream {
        RunStream::open(self.addr, body.to_string().into_bytes(), &[]).await
    }

    /// Starts a run and reads it to its end.
    pub async fn run_to_end(&self, body: Value) -> Frames {
        run_to_end(self.addr, body).await
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self._data.take() {
            remove_while_busy(t.keep());
        }
    }
}

/// Removes a gateway's `DATA_DIR` that it may still be writing to: the server was only told to
/// stop, and its store can create a file while the directory is being emptied, which leaves the
/// removal with "directory not empty" (and the whole directory behind in `/tmp`), so it tries
/// again for up to a second.
pub fn remove_while_busy(dir: PathBuf) {
    for _ in 0..50 {
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => std::thread::sleep(Duration::from_millis(20)),
            _ => return,
        }
    }
}

/// Starts a run on the gateway at `addr` and reads it to its end; panics when it is refused.
pub async fn run_to_end(addr: SocketAddr, body: Value) -> Frames {
    let mut stream = RunStream::open(addr, body.to_string().into_bytes(), &[]).await;
    if stream.status != StatusCode::OK {
        let status = stream.status;
        panic!("run refused with {status}: {}", stream.error_body().await);
    }
    stream.collect().await
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next()
                .unwrap_or("");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

/// Waits until none of `pids` is alive; panics after `limit`.
pub async fn assert_gone(pids: &[u32], limit: Duration) {
    let start = Instant::now();
    while pids.iter().any(|p| alive(*p)) {
        assert!(start.elapsed() < limit, "still running after {limit:?}: {pids:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The resident set size of this process, in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// How to start the real binary; [`Binary::start`] is `Launch { vars, ..Launch::default() }`.
#[derive(Default)]
pub struct Launch<'a> {
    /// Set over the defaults (`CLI_LIST` is [`TEST_CLIS`], `LOG_FORMAT` is `json`, a scratch
    /// `DATA_DIR`, the fixtures first on `PATH`, `LISTEN_ADDR` a free loopback port).
    pub vars: &'a [(&'a str, &'a str)],
    /// A text log (no `LOG_FORMAT`) instead of JSON lines.
    pub text_log: bool,
    /// Under `ulimit -n` this many: the soft and the hard limit both lowered, so that raising the
    /// soft limit to the hard one cannot undo it.
    pub nofile: Option<u32>,
}

/// The real `cligate` binary, started with only the variables of its [`Launch`] as its whole
/// environment, listening on a free loopback port. Every line of its log (its stderr, shared
/// with its watchdog, which can log after the binary is gone) is kept. Killed when dropped.
pub struct Binary {
    pub addr: SocketAddr,
    child: tokio::process::Child,
    log: Arc<Log>,
    /// The lines [`Binary::wait_for`] and [`Binary::drain`] have returned (by index).
    returned: HashSet<usize>,
}

/// A binary's log lines, filled by a task that reads its stderr to the end.
#[derive(Default)]
struct Log {
    lines: Mutex<Lines>,
    changed: Notify,
}

#[derive(Default)]
struct Lines {
    all: Vec<String>,
    /// Whether the log has ended (no process holds the pipe any more).
    ended: bool,
}

impl Log {
    /// Waits, at most 20 s, until `found` finds something in the lines; panics with the whole log
    /// when it does not, or when the log ends first.
    async fn wait<T>(&self, what: &str, mut found: impl FnMut(&Lines) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let changed = self.changed.notified();
            let ended = {
                let lines = self.lines.lock().unwrap();
                if let Some(t) = found(&lines) {
                    return t;
                }
                lines.ended
            };
            if ended {
                panic!("the log ended without {what}:\n{}", self.text());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!("no {what} in the log within 20 s:\n{}", self.text());
            }
        }
    }

    fn text(&self) -> String {
        self.lines.lock().unwrap().all.join("\n")
    }
}

impl Binary {
    /// Starts the binary with the defaults of [`Launch`] overridden by `vars`.
    pub async fn start(vars: &[(&str, &str)]) -> Binary {
        Binary::launch(Launch {
            vars,
            ..Launch::default()
        })
        .await
    }

    /// Starts the binary as `launch` says and waits (at most 20 s) for its "listening" line.
    pub async fn launch(launch: Launch<'_>) -> Binary {
        use tokio::io::AsyncBufReadExt;
        let bin = env!("CARGO_BIN_EXE_cligate");
        let mut cmd = match launch.nofile {
            Some(n) => {
                let mut cmd = tokio::process::Command::new("bash");
                cmd.arg("-c").arg(format!("ulimit -n {n} && exec \"$0\"")).arg(bin);
                cmd
            }
            None => tokio::process::Command::new(bin),
        };
        let path = test_path();
        cmd.env_clear()
            .env("DATA_DIR", scratch_data_dir())
            .env("PATH", path)
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("CLI_LIST", TEST_CLIS);
        if !launch.text_log {
            cmd.env("LOG_FORMAT", "json");
        }
        let mut child = cmd
            .envs(launch.vars.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the cligate binary starts");
        let log = Arc::new(Log::default());
        let filled = log.clone();
        let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                filled.lines.lock().unwrap().all.push(line);
                filled.changed.notify_waiters();
            }
            filled.lines.lock().unwrap().ended = true;
            filled.changed.notify_waiters();
        });

        let listening = |line: &String| match launch.text_log {
            true => line.contains("listening"),
            false => serde_json::from_str::<Value>(line).is_ok_and(|v| v["message"] == "listening"),
        };
        let (i, line) = log
            .wait("the \"listening\" line", |lines| {
                let i = lines.all.iter().position(listening)?;
                Some((i, lines.all[i].clone()))
            })
            .await;
        let addr = match launch.text_log {
            true => line
                .split("addr=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .map(|addr| addr.trim_matches('"').to_string()),
            false => serde_json::from_str::<Value>(&line).unwrap()["addr"]
                .as_str()
                .map(String::from),
        };
        let addr = addr
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line}"));
        Binary {
            addr,
            child,
            log,
            returned: HashSet::from([i]),
        }
    }

    /// Every line logged so far.
    pub fn log(&self) -> String {
        self.log.text()
    }

    /// Every line of the log once it has ended: the binary and its watchdog have exited (waits at
    /// most 20 s).
    pub async fn lines_to_end(&self) -> Vec<String> {
        self.log
            .wait("its end", |lines| lines.ended.then(|| lines.all.clone()))
            .await
    }

    /// The first line containing `needle` that this has not returned yet (nor [`Binary::drain`]),
    /// logged already or waited for (at most 20 s).
    pub async fn wait_for(&mut self, needle: &str) -> String {
        let returned = &mut self.returned;
        self.log
            .wait(&format!("{needle:?}"), |lines| {
                let i = (0..lines.all.len()).find(|i| !returned.contains(i) && lines.all[*i].contains(needle))?;
                returned.insert(i);
                Some(lines.all[i].clone())
            })
            .await
    }

    /// The first JSON line whose `message` is `message` (returned before or not), logged already
    /// or waited for (at most 20 s).
    pub async fn message(&self, message: &str) -> Value {
        self.log
            .wait(&format!("message {message:?}"), |lines| {
                lines
                    .all
                    .iter()
                    .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                    .find(|v| v["message"] == message)
            })
            .await
    }

    /// Waits until 300 ms pass without a new line, then returns the lines not returned yet (by
    /// this or [`Binary::wait_for`]); they count as returned.
    pub async fn drain(&mut self) -> Vec<String> {
        loop {
            let before = self.log.lines.lock().unwrap().all.len();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let lines = self.log.lines.lock().unwrap();
            if lines.all.len() == before {
                let fresh: Vec<usize> = (0..before).filter(|i| !self.returned.contains(i)).collect();
                self.returned.extend(&fresh);
                return fresh.into_iter().map(|i| lines.all[i].clone()).collect();
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the binary is running")
    }

    /// Kills the binary with SIGKILL (a crash: no shutdown, no clean-up) and reaps it.
    pub async fn kill_9(&mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("SIGKILL");
        let _ = self.child.wait().await;
    }

    /// Sends SIGTERM (a graceful shutdown) and waits, at most `limit`, for the binary to exit;
    /// returns its exit status.
    pub async fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        tokio::time::timeout(limit, self.child.wait())
            .await
            .expect("the binary exits in time after SIGTERM")
            .expect("waiting for the binary")
    }

    /// Starts a run and reads it to its end.
    pub async fn run_to_end(&self, body: Value) -> Frames {
        run_to_end(self.addr, body).await
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A fresh `DATA_DIR` for a real `cligate` binary started by a test, under cargo's scratch
/// directory for integration tests (inside `target/`), so that no test writes into the checkout.
pub fn scratch_data_dir() -> String {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("data-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("creating a scratch DATA_DIR");
    dir.display().to_string()
}

/// Runs git outside the gateway (seeding a remote, looking at it), with a fixed author, no
/// system or user configuration, and `default_branch` for `git init`; returns its trimmed
/// stdout and panics on failure.
pub fn git_in(dir: &std::path::Path, default_branch: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(["-c", "user.name=seed", "-c", "user.email=seed@test", "-c"])
        .arg(format!("init.defaultBranch={default_branch}"))
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A git remote (an `http://` URL) that accepts connections and never answers: git run against
/// it waits until its timeout or a stop. Serves until the task is dropped with the test.
pub async fn silent_remote() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/silent.git", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (url, task)
}
