//! Shared test helpers: start the real gateway on a free loopback port, talk to it over a real
//! socket, read NDJSON frames, and check that processes are really gone.
#![allow(dead_code)]

pub mod pg;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The fixture CLIs (small shell scripts) used by the tests.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bin")
}

/// The CLIs every test gateway allows.
pub const TEST_CLIS: &str = "echo-stdin,args,show-env,exit-code,ignore-term,spawn-tree,slow-partial,split-utf8,\
    bad-utf8,flood,long-line,escape-pipe,sh,sleep,not-installed-cli,node-probe,escape-setsid,escape-node";

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
        let path = format!("{}:{}", fixtures().display(), std::env::var("PATH").unwrap_or_default());
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
        let app = cligate::server::prepare(config).await?;
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

/// A complete response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// Asserts the gateway's error shape and status.
    pub fn assert_error(&self, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "body: {:?}",
            String::from_utf8_lossy(&self.body)
        );
        let body = self.json();
        assert_eq!(body["code"], status, "{body}");
        assert!(
            body["error"].is_string() && body["message"].is_string() && body["detail"].is_string(),
            "{body}"
        );
        body
    }
}

async fn connect(addr: SocketAddr) -> (hyper::client::conn::http1::SendRequest<Full<Bytes>>, JoinHandle<()>) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, task)
}

fn build(method: &str, path: &str, body: Option<Vec<u8>>, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "cligate.test");
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Full::new(Bytes::from(body.unwrap_or_default()))).unwrap()
}

/// One request on a fresh connection, read to the end.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    headers: &[(&str, &str)],
) -> Reply {
    let (mut sender, task) = connect(addr).await;
    let response = sender
        .send_request(build(method, path, body, headers))
        .await
        .expect("response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    task.abort();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// An open `POST /run` response, read frame by frame. Dropping it closes the connection.
pub struct RunStream {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Incoming,
    buf: Vec<u8>,
    conn: JoinHandle<()>,
}

impl RunStream {
    pub async fn open(addr: SocketAddr, body: Vec<u8>, headers: &[(&str, &str)]) -> RunStream {
        RunStream::request(addr, "POST", "/run", Some(body), headers).await
    }

    /// Any streamed answer, e.g. `GET /runs/{id}/stream?offset=N`.
    pub async fn request(
        addr: SocketAddr,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> RunStream {
        let (mut sender, conn) = connect(addr).await;
        let response = sender
            .send_request(build(method, path, body, headers))
            .await
            .expect("response");
        let (parts, body) = response.into_parts();
        RunStream {
            status: parts.status,
            headers: parts.headers,
            body,
            buf: Vec::new(),
            conn,
        }
    }

    /// The next piece of the body exactly as received (`None` at its end).
    pub async fn next_bytes(&mut self) -> Option<Bytes> {
        self.try_next_bytes()
            .await
            .unwrap_or_else(|e| panic!("stream broke: {e}"))
    }

    /// The next piece of the body, `Ok(None)` at its end, `Err` when the connection broke.
    pub async fn try_next_bytes(&mut self) -> Result<Option<Bytes>, String> {
        if !self.buf.is_empty() {
            return Ok(Some(Bytes::from(std::mem::take(&mut self.buf))));
        }
        loop {
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        return Ok(Some(data));
                    }
                }
                Some(Err(e)) => return Err(e.to_string()),
                None => return Ok(None),
            }
        }
    }

    /// The rest of the body, exactly as received.
    pub async fn raw_to_end(mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(piece) = self.next_bytes().await {
            out.extend_from_slice(&piece);
        }
        out
    }

    /// The rest of the body as text (for refused runs).
    pub async fn error_body(&mut self) -> String {
        let mut out = std::mem::take(&mut self.buf);
        while let Some(Ok(frame)) = self.body.frame().await {
            if let Ok(data) = frame.into_data() {
                out.extend_from_slice(&data);
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The next frame, or `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(
                    serde_json::from_slice(&line)
                        .unwrap_or_else(|e| panic!("frame is not JSON ({e}): {:?}", String::from_utf8_lossy(&line))),
                );
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => panic!("stream broke: {e}"),
                None => {
                    assert!(self.buf.is_empty(), "stream ended inside a frame: {:?}", self.buf);
                    return None;
                }
            }
        }
    }

    /// The next frame within `limit`.
    pub async fn next_within(&mut self, limit: Duration) -> Option<Value> {
        tokio::time::timeout(limit, self.next()).await.expect("a frame in time")
    }

    /// Reads frames until one of type `kind` arrives, returning it.
    pub async fn until(&mut self, kind: &str) -> Value {
        loop {
            let frame = self
                .next()
                .await
                .unwrap_or_else(|| panic!("stream ended before a {kind} frame"));
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    /// Reads stdout frames until their text contains `needle`; returns all stdout text read.
    pub async fn stdout_until(&mut self, needle: &str) -> String {
        let mut text = String::new();
        while !text.contains(needle) {
            let frame = self
                .next()
                .await
                .unwrap_or_else(|| panic!("ended before {needle:?}; got {text:?}"));
            if frame["type"] == "stdout" {
                text.push_str(frame["data"].as_str().unwrap());
            }
        }
        text
    }

    /// Reads stdout until `n` pids (`pid <n>` lines, as the fixtures print them) have arrived.
    pub async fn pids(&mut self, n: usize) -> Vec<u32> {
        let mut text = String::new();
        while pids_in(&text).len() < n {
            text.push_str(&self.stdout_until("\n").await);
        }
        pids_in(&text)
    }

    /// Every remaining frame.
    pub async fn collect(mut self) -> Frames {
        let mut frames = Vec::new();
        while let Some(f) = self.next().await {
            frames.push(f);
        }
        Frames(frames)
    }

    /// Closes the connection without reading further (the client goes away).
    pub fn disconnect(self) {
        self.conn.abort();
    }
}

impl Drop for RunStream {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// The frames of a finished run.
#[derive(Debug)]
pub struct Frames(pub Vec<Value>);

impl Frames {
    pub fn text(&self, kind: &str) -> String {
        self.0
            .iter()
            .filter(|f| f["type"] == kind)
            .map(|f| f["data"].as_str().unwrap())
            .collect()
    }

    pub fn stdout(&self) -> String {
        self.text("stdout")
    }

    pub fn stderr(&self) -> String {
        self.text("stderr")
    }

    /// Checks the stream's shape (session first, exactly one exit last) and returns the exit.
    pub fn exit(&self) -> (i64, String) {
        let frames = &self.0;
        assert!(frames.len() >= 2, "{frames:?}");
        assert_eq!(frames[0]["type"], "session", "{frames:?}");
        let last = frames.last().unwrap();
        assert_eq!(last["type"], "exit", "{frames:?}");
        assert_eq!(frames.iter().filter(|f| f["type"] == "exit").count(), 1, "{frames:?}");
        (
            last["code"].as_i64().unwrap(),
            last["reason"].as_str().unwrap().to_string(),
        )
    }

    pub fn session(&self) -> String {
        self.0[0]["id"].as_str().unwrap().to_string()
    }
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

/// Pids announced by the `spawn-tree` fixture (`pid <n>` lines).
pub fn pids_in(text: &str) -> Vec<u32> {
    text.lines()
        .filter_map(|l| l.strip_prefix("pid "))
        .map(|p| p.trim().parse().unwrap())
        .collect()
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

/// The real `cligate` binary, started with exactly `vars` (and the fixtures first on `PATH`) as
/// its whole environment, listening on a free loopback port. Killed when dropped.
pub struct Binary {
    pub addr: SocketAddr,
    child: tokio::process::Child,
}

impl Binary {
    pub async fn start(vars: &[(&str, &str)]) -> Binary {
        use tokio::io::AsyncBufReadExt;
        let path = format!("{}:{}", fixtures().display(), std::env::var("PATH").unwrap_or_default());
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cligate"))
            .env_clear()
            .env("DATA_DIR", scratch_data_dir())
            .env("PATH", path)
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .env("CLI_LIST", TEST_CLIS)
            .envs(vars.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the cligate binary starts");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = tokio::time::timeout(Duration::from_secs(20), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(log) = serde_json::from_str::<Value>(&line)
                    && let Some(addr) = log["addr"].as_str().filter(|_| line.contains("\"listening\""))
                {
                    return addr.parse().expect("a socket address");
                }
            }
            panic!("cligate exited before listening");
        })
        .await
        .expect("cligate listens within 20 s");
        // Keep draining the log so the binary never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Binary { addr, child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the binary is running")
    }

    /// Kills the binary with SIGKILL (a crash: no shutdown, no clean-up) and reaps it.
    pub async fn kill_9(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait().await;
    }

    /// Sends SIGTERM (a graceful shutdown) and waits, at most `limit`, for the binary to exit;
    /// returns its exit status.
    pub async fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
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
