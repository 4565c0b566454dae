//! cligate benchmark driver (`harness = false`; run it through `./benches/run.sh`).
//!
//! Every figure is a ratio against a baseline measured in the same invocation, on the same
//! machine, interleaved with the gateway's rounds so that background load hits both alike:
//!
//! - spawn rate: runs/s of `true` through `POST /run` vs a direct `tokio::process` spawn loop;
//! - latency: time to first output frame and to the end of a tiny run (`echo hi`);
//! - streaming throughput: 256 MiB of 1 KiB lines, decoded from the frames and verified, against
//!   a raw pipe and against the same gateway build with `RUN_LOG_IN_MEMORY=true`;
//! - memory: the gateway's RSS idle, and its growth under 50 stalled readers;
//! - fan-out: one 256 MiB run followed by 50 `/runs/{id}/stream` readers vs the run alone;
//! - re-attach: first-frame latency of `/stream?offset=N` and `/log?offset=N` on a finished log;
//! - docker mode: one `docker run --rm -i` through the gateway vs the same command directly;
//! - a peer: adnanh/webhook running `true` per request, both driven by `wrk`;
//! - floors, for the spawn, latency and streaming rows: what any HTTP gateway pays at least —
//!   a bare hyper spawner, and a bare relay of the pipe to a socket (with and without a file).
//!
//! Every gateway gets a fresh temp `DATA_DIR` (removed when it stops). All traffic goes to
//! 127.0.0.1; every loop is bounded in time and count. The same executable,
//! called as `cligate-bench-lines BYTES` (a symlink), is the output generator for the streaming
//! tests, and called as `cligate-bench-spawner` the bare HTTP spawner.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ------------------------------------------------------------------------------------------
// The output generator
// ------------------------------------------------------------------------------------------

/// Name under which this executable generates output (allow-listed in the gateway).
const GEN_NAME: &str = "cligate-bench-lines";
/// Line length of the generated output, newline included.
const LINE: u64 = 1024;
/// Bytes per `write(2)` of the generator.
const GEN_WRITE: usize = 64 * 1024;
/// The streaming test's volume.
const STREAM_BYTES: u64 = 256 << 20;

/// Printable ASCII filler, including `"` and `\` so that JSON escaping is exercised.
fn filler_table() -> Vec<u8> {
    (0..2 * LINE as usize).map(|k| 33 + (k % 90) as u8).collect()
}

/// Fills `buf` with the stream's bytes starting at `offset`: line `i` is its number in ten
/// digits, then filler shifted by `i`, then `\n`.
fn fill(buf: &mut [u8], mut offset: u64, table: &[u8]) {
    let width = LINE as usize;
    let mut pos = 0;
    while pos < buf.len() {
        let line = offset / LINE;
        let col = (offset % LINE) as usize;
        let n = (width - col).min(buf.len() - pos);
        let dst = &mut buf[pos..pos + n];
        if col == 0 && n == width {
            // The common case, a whole line in place.
            write_digits(&mut dst[..10], line);
            let shift = (line % 90) as usize;
            dst[10..width - 1].copy_from_slice(&table[shift..shift + width - 11]);
            dst[width - 1] = b'\n';
        } else {
            let mut full = vec![0u8; width];
            fill(&mut full, line * LINE, table);
            dst.copy_from_slice(&full[col..col + n]);
        }
        pos += n;
        offset += n as u64;
    }
}

fn write_digits(to: &mut [u8], mut value: u64) {
    for d in to.iter_mut().rev() {
        *d = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// `cligate-bench-lines BYTES`: writes the stream to stdout, 64 KiB per write.
fn generate(total: u64) -> ! {
    use std::os::fd::FromRawFd;
    // Raw fd 1: no line buffering.
    let mut out = unsafe { std::fs::File::from_raw_fd(1) };
    let table = filler_table();
    let mut buf = vec![0u8; GEN_WRITE];
    let mut off = 0u64;
    while off < total {
        let n = (total - off).min(GEN_WRITE as u64) as usize;
        fill(&mut buf[..n], off, &table);
        if out.write_all(&buf[..n]).is_err() {
            std::process::exit(1);
        }
        off += n as u64;
    }
    std::process::exit(0)
}

/// Name under which this executable is the bare HTTP spawner (the spawn rate's floor).
const SPAWNER_NAME: &str = "cligate-bench-spawner";

/// The floor of the spawn rows: the least an HTTP gateway does for a run. A hyper server on
/// `LISTEN_ADDR` (the same HTTP/1.1 stack and runtime as cligate, TCP_NODELAY like it) that for
/// `POST /run {"cli", "args"}` answers a streamed NDJSON body: a session frame at once, then,
/// once the program (spawned with `tokio::process`, stdio piped, read to EOF, waited for) has
/// ended, one stdout frame with its output and the exit frame. No run store, no log file, no
/// cgroup, no limits, no allow-list: nothing a gateway keeps or enforces.
fn bare_spawner() -> ! {
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame as BodyFrame;
    let addr = std::env::var("LISTEN_ADDR").expect("LISTEN_ADDR");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind LISTEN_ADDR");
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let _ = socket.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let cli = v["cli"].as_str().unwrap_or("true").to_string();
                    let args: Vec<String> = v["args"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
                        .unwrap_or_default();
                    let frames = async_stream::stream! {
                        let encoded = |frames: &[Frame]| {
                            let mut out = bytes::BytesMut::new();
                            frames.iter().for_each(|f| f.encode(&mut out));
                            Ok::<_, std::convert::Infallible>(BodyFrame::data(out.freeze()))
                        };
                        yield encoded(&[Frame::Session { id: "bare".into(), run_id: "bare".into() }]);
                        let out = tokio::process::Command::new(&cli)
                            .args(&args)
                            .stdin(Stdio::null())
                            .kill_on_drop(true)
                            .output()
                            .await;
                        let mut tail = Vec::new();
                        let code = match out {
                            Ok(out) => {
                                if !out.stdout.is_empty() {
                                    let data = String::from_utf8_lossy(&out.stdout).into_owned();
                                    tail.push(Frame::Stdout { data });
                                }
                                out.status.code().unwrap_or(1)
                            }
                            Err(_) => 127,
                        };
                        tail.push(Frame::Exit { code, reason: client::EndReason::Exited });
                        yield encoded(&tail);
                    };
                    hyper::Response::builder()
                        .header("content-type", "application/x-ndjson")
                        .body(StreamBody::new(frames))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                    .await;
            });
        }
    })
}

/// CRC-32 of the first `total` bytes of the stream, computed in-process.
fn expected_crc(total: u64) -> u32 {
    let table = filler_table();
    let mut buf = vec![0u8; GEN_WRITE];
    let mut h = crc32fast::Hasher::new();
    let mut off = 0;
    while off < total {
        let n = (total - off).min(GEN_WRITE as u64) as usize;
        fill(&mut buf[..n], off, &table);
        h.update(&buf[..n]);
        off += n as u64;
    }
    h.finalize()
}

// ------------------------------------------------------------------------------------------
// Small helpers: CPU, RSS, processes, statistics
// ------------------------------------------------------------------------------------------

fn rusage(who: libc::c_int) -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// This process's own CPU time (the client side).
fn self_cpu() -> Duration {
    rusage(libc::RUSAGE_SELF)
}

/// CPU time of this process's waited-for children.
fn children_cpu() -> Duration {
    rusage(libc::RUSAGE_CHILDREN)
}

/// utime + stime of a process (its own threads, not its children).
fn proc_cpu(pid: u32) -> Duration {
    proc_times(pid).0
}

/// (own CPU, CPU of its waited-for children) of a process, from /proc/<pid>/stat.
fn proc_times(pid: u32) -> (Duration, Duration) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // after ')': state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14)
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let secs = |t: u64| Duration::from_secs_f64(t as f64 / hz);
    (secs(ticks(11) + ticks(12)), secs(ticks(13) + ticks(14)))
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Pids whose parent is `pid`: its runs (the gateway's `--watchdog` helper left out).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u32>().ok());
            // The gateway's own helper (`cligate --watchdog …`) is not a run.
            let helper = std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"--watchdog"));
            if ppid == Some(pid) && !helper {
                out.push(p);
            }
        }
    }
    out
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

// ------------------------------------------------------------------------------------------
// Processes under test
// ------------------------------------------------------------------------------------------

/// A server process started by the harness; killed when dropped (and, through
/// PR_SET_PDEATHSIG, when the harness itself dies).
struct Server {
    name: &'static str,
    child: std::process::Child,
    addr: SocketAddr,
    /// A gateway's own fresh `DATA_DIR` (store and run logs), removed once it has stopped.
    data_dir: Option<PathBuf>,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn spawn(name: &'static str, mut cmd: std::process::Command, addr: SocketAddr, log: &Path) -> Server {
        let log = std::fs::File::create(log).expect("log file");
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let server = Server {
            name,
            child,
            addr,
            data_dir: None,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "{name} did not start listening on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn stop(mut self) {
        self.terminate();
    }

    /// The log file of a run of this gateway.
    fn log_path(&self, run_id: &str) -> PathBuf {
        let dir = self.data_dir.as_ref().expect("a gateway with a DATA_DIR");
        dir.join("logs").join(format!("{run_id}.ndjson"))
    }

    /// Size of a finished run's log, then deletes the file (so that repeated 256 MiB runs do not
    /// pile up on disk); the run's record stays in the store.
    fn drop_log(&self, run_id: &str) -> u64 {
        let path = self.log_path(run_id);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let _ = std::fs::remove_file(&path);
        size
    }

    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("bench: {} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
        if let Some(dir) = self.data_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

struct Env {
    cligate: PathBuf,
    /// Directory holding the generator symlink; first on the gateway's PATH.
    bin_dir: PathBuf,
    work: PathBuf,
    scale: f64,
}

impl Env {
    fn secs(&self, s: f64) -> Duration {
        Duration::from_secs_f64(s * self.scale)
    }

    fn path(&self) -> String {
        format!("{}:/usr/local/bin:/usr/bin:/bin", self.bin_dir.display())
    }

    /// Starts a gateway with its own fresh `DATA_DIR` (SQLite store and run logs, removed when
    /// the gateway is dropped) and no free-space check.
    fn start_gateway(&self, name: &'static str, vars: &[(&str, &str)]) -> Server {
        static STARTED: AtomicU64 = AtomicU64::new(0);
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let data_dir = self
            .work
            .join(format!("data-{name}-{}", STARTED.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&data_dir).expect("a gateway DATA_DIR");
        let mut cmd = std::process::Command::new(&self.cligate);
        cmd.env_clear()
            .env("PATH", self.path())
            .env("HOME", std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
            .env("LISTEN_ADDR", addr.to_string())
            .env("CLI_LIST", format!("true,echo,{GEN_NAME}"))
            .env("MAX_CONCURRENT_RUNS", "64")
            .env("MAX_QUEUED_RUNS", "64")
            .env("KILL_GRACE_SECONDS", "1")
            .env("SHUTDOWN_GRACE_SECONDS", "1")
            .env("DATA_DIR", &data_dir)
            .env("DATA_DIR_MIN_FREE_BYTES", "0");
        if let Ok(h) = std::env::var("DOCKER_HOST") {
            cmd.env("DOCKER_HOST", h);
        }
        for (k, v) in vars {
            cmd.env(k, v);
        }
        // BENCH_GATEWAY_ENV="K=V K=V": settings for every gateway, over the ones above (to
        // explore; the figures in results.md use none).
        for kv in std::env::var("BENCH_GATEWAY_ENV")
            .unwrap_or_default()
            .split_whitespace()
        {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
            }
        }
        let mut server = Server::spawn(name, cmd, addr, &self.work.join(format!("{name}.log")));
        server.data_dir = Some(data_dir);
        server
    }

    /// Starts the bare HTTP spawner (the floor of the spawn rows, see [`bare_spawner`]).
    fn start_bare_spawner(&self) -> Server {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = std::process::Command::new(self.bin_dir.join(SPAWNER_NAME));
        cmd.env_clear()
            .env("PATH", self.path())
            .env("LISTEN_ADDR", addr.to_string());
        Server::spawn("bare-spawner", cmd, addr, &self.work.join("bare-spawner.log"))
    }
}

// ------------------------------------------------------------------------------------------
// Runs through the gateway, with the tests' client (tests/common/client.rs): keep-alive
// connections, frames decoded without an allocation per output frame
// ------------------------------------------------------------------------------------------

#[path = "../tests/common/client.rs"]
mod client;

use client::{Conn, Decoded, Frame, Lines, Stream};
use http_body_util::BodyExt;

#[derive(Debug, Default)]
struct RunResult {
    status: u16,
    first_frame: Option<Duration>,
    first_output: Option<Duration>,
    total: Duration,
    exit_code: Option<i64>,
    reason: String,
    frames: u64,
    stdout_bytes: u64,
    max_frame_data: usize,
    /// The `x-cligate-run-id` header, when there is one.
    run_id: String,
    /// Raw mode: body bytes, and the last few of them.
    body_bytes: u64,
    tail: Vec<u8>,
    /// A `Content-Length` body (small answers such as `/log`), kept whole.
    body: Vec<u8>,
}

/// One keep-alive connection to the gateway, opened on first use and again after the server
/// closed it.
struct HttpConn {
    addr: SocketAddr,
    conn: Option<Conn>,
    /// Count the body's bytes without decoding frames (the cheapest possible reader).
    raw: bool,
    /// Told the run id as soon as the response headers are in.
    on_run_id: Option<tokio::sync::oneshot::Sender<String>>,
    lines: Lines,
    scratch: Vec<u8>,
}

impl HttpConn {
    fn new(addr: SocketAddr) -> HttpConn {
        HttpConn {
            addr,
            conn: None,
            raw: false,
            on_run_id: None,
            lines: Lines::default(),
            scratch: Vec::new(),
        }
    }

    /// `GET path`, reading the whole answer.
    async fn get(&mut self, path: &str) -> Result<RunResult, String> {
        self.request("GET", path, b"", &mut |_| {}).await
    }

    /// Sends `POST path` with `body` and reads the whole response, decoding frames. `on_stdout`
    /// sees every decoded stdout piece in order.
    async fn post(
        &mut self,
        path: &str,
        body: &[u8],
        on_stdout: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<RunResult, String> {
        self.request("POST", path, body, on_stdout).await
    }

    async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
        on_stdout: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<RunResult, String> {
        if self.conn.as_ref().is_none_or(Conn::is_closed) {
            self.conn = Some(Conn::open(self.addr).await?);
        }
        let t0 = Instant::now();
        let body = (method != "GET").then(|| body.to_vec());
        let result = self.exchange(method, path, body, t0, on_stdout).await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        t0: Instant,
        on_stdout: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<RunResult, String> {
        let conn = self.conn.as_mut().expect("connected");
        let response = conn.send(method, path, body, &[]).await?;
        let mut r = RunResult {
            status: response.status().as_u16(),
            ..RunResult::default()
        };
        let headers = response.headers();
        r.run_id = headers
            .get("x-cligate-run-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let streamed = headers.get("content-length").is_none();
        if let Some(tx) = self.on_run_id.take() {
            let _ = tx.send(r.run_id.clone());
        }
        let mut incoming = response.into_body();
        let _ = self.lines.take_rest();
        let (mut lines, mut scratch) = (std::mem::take(&mut self.lines), std::mem::take(&mut self.scratch));
        let outcome = async {
            while let Some(piece) = incoming.frame().await {
                let Ok(data) = piece.map_err(|e| e.to_string())?.into_data() else {
                    continue;
                };
                if !streamed {
                    r.body.extend_from_slice(&data);
                } else if self.raw {
                    r.body_bytes += data.len() as u64;
                    r.tail.extend_from_slice(&data[data.len().saturating_sub(512)..]);
                    if r.tail.len() > 1024 {
                        r.tail.drain(..r.tail.len() - 512);
                    }
                } else {
                    lines.feed(&data, |line| {
                        r.frames += 1;
                        if r.first_frame.is_none() {
                            r.first_frame = Some(t0.elapsed());
                        }
                        match client::decode_output(line, &mut scratch)? {
                            Decoded::Output(Stream::Stdout, d) => {
                                if r.first_output.is_none() {
                                    r.first_output = Some(t0.elapsed());
                                }
                                r.stdout_bytes += d.len() as u64;
                                r.max_frame_data = r.max_frame_data.max(d.len());
                                on_stdout(d);
                            }
                            Decoded::Output(Stream::Stderr, d) => r.max_frame_data = r.max_frame_data.max(d.len()),
                            Decoded::Frame(Frame::Stdout { data }) => {
                                if r.first_output.is_none() {
                                    r.first_output = Some(t0.elapsed());
                                }
                                r.stdout_bytes += data.len() as u64;
                                r.max_frame_data = r.max_frame_data.max(data.len());
                                on_stdout(data.as_bytes());
                            }
                            Decoded::Frame(Frame::Stderr { data }) => {
                                r.max_frame_data = r.max_frame_data.max(data.len())
                            }
                            Decoded::Frame(Frame::Exit { code, reason }) => {
                                r.exit_code = Some(i64::from(code));
                                r.reason = reason.as_str().to_string();
                            }
                            Decoded::Frame(Frame::Session { .. } | Frame::Git(_)) => {}
                        }
                        Ok::<(), String>(())
                    })?;
                }
            }
            if !lines.rest().is_empty() {
                return Err(format!(
                    "the stream ended inside a frame: {:?}",
                    String::from_utf8_lossy(lines.rest())
                ));
            }
            Ok(())
        }
        .await;
        (self.lines, self.scratch) = (lines, scratch);
        outcome?;
        r.total = t0.elapsed();
        Ok(r)
    }
}

fn run_body(cli: &str, args: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "cli": cli, "args": args })).unwrap()
}

/// One run through the gateway that must succeed with exit code 0.
async fn gateway_run(
    conn: &mut HttpConn,
    body: &[u8],
    on_stdout: &mut (dyn FnMut(&[u8]) + Send),
) -> Result<RunResult, String> {
    let r = tokio::time::timeout(Duration::from_secs(60), conn.post("/run", body, on_stdout))
        .await
        .map_err(|_| "a run took more than 60 s".to_string())??;
    if r.status != 200 || r.exit_code != Some(0) || r.reason != "exited" {
        return Err(format!(
            "run failed: HTTP {} exit {:?} reason {:?}",
            r.status, r.exit_code, r.reason
        ));
    }
    Ok(r)
}

// ------------------------------------------------------------------------------------------
// The direct baseline: tokio::process, piped stdio, read to EOF, wait
// ------------------------------------------------------------------------------------------

struct DirectResult {
    first_output: Option<Duration>,
    total: Duration,
    stdout_bytes: u64,
}

async fn direct_run(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    on_stdout: &mut (dyn FnMut(&[u8]) + Send),
) -> Result<DirectResult, String> {
    let t0 = Instant::now();
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("spawning {program}: {e}"))?;
    drop(child.stdin.take());
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let mut first = None;
    let mut bytes = 0u64;
    let read_out = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = out.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok::<(), String>(());
            }
            first.get_or_insert_with(|| t0.elapsed());
            bytes += n as u64;
            on_stdout(&buf[..n]);
        }
    };
    let read_err = async {
        let mut buf = vec![0u8; 4096];
        loop {
            let n = err.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok::<(), String>(());
            }
        }
    };
    tokio::try_join!(read_out, read_err)?;
    let status = child.wait().await.map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("{program} exited with {status}"));
    }
    Ok(DirectResult {
        first_output: first,
        total: t0.elapsed(),
        stdout_bytes: bytes,
    })
}

// ------------------------------------------------------------------------------------------
// The report
// ------------------------------------------------------------------------------------------

struct Row {
    metric: String,
    cligate: String,
    baseline: String,
    ratio: Option<f64>,
    target: String,
    met: Option<bool>,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    fn row(
        &mut self,
        metric: &str,
        cligate: String,
        baseline: String,
        ratio: Option<f64>,
        target: &str,
        met: Option<bool>,
    ) {
        println!(
            "  {metric}: {cligate} vs {baseline} (ratio {}) {}",
            ratio.map(|r| format!("{r:.2}")).unwrap_or("-".into()),
            match met {
                Some(true) => "target met",
                Some(false) => "TARGET MISSED",
                None => "",
            }
        );
        self.rows.push(Row {
            metric: metric.into(),
            cligate,
            baseline,
            ratio,
            target: target.into(),
            met,
        });
    }

    fn note(&mut self, text: String) {
        println!("  note: {text}");
        self.notes.push(text);
    }

    fn markdown(&self, header: &str) -> String {
        let mut s = String::new();
        s.push_str(header);
        s.push_str("\n| metric | cligate | baseline | ratio | target | met? |\n|---|---:|---:|---:|---|---|\n");
        for r in &self.rows {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                r.metric,
                r.cligate,
                r.baseline,
                r.ratio.map(|x| format!("{x:.2}×")).unwrap_or("—".into()),
                r.target,
                match r.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "—",
                }
            );
        }
        if !self.notes.is_empty() {
            s.push_str("\nNotes:\n\n");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }
}

// ------------------------------------------------------------------------------------------
// The benchmarks
// ------------------------------------------------------------------------------------------

/// Runs/s of `true` through the gateway with `conc` keep-alive connections for `dur`.
async fn rate_gateway(addr: SocketAddr, conc: usize, dur: Duration) -> Result<(f64, u64), String> {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let body: Arc<[u8]> = run_body("true", &[]).into();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (done, stop, body) = (done.clone(), stop.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = HttpConn::new(addr);
            while !stop.load(Ordering::Relaxed) {
                gateway_run(&mut conn, &body, &mut |_| {}).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        }));
    }
    tokio::time::sleep(dur).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let n = done.load(Ordering::Relaxed);
    Ok((n as f64 / t0.elapsed().as_secs_f64(), n))
}

/// Runs/s of `true` spawned directly by `conc` tasks for `dur`.
async fn rate_direct(conc: usize, dur: Duration) -> Result<f64, String> {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (done, stop) = (done.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                direct_run("true", &[], &[], &mut |_| {}).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        }));
    }
    tokio::time::sleep(dur).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64())
}

async fn bench_spawn_rate(env: &Env, gw: &Server, report: &mut Report) -> Result<(), String> {
    println!("== spawn rate (`true`, keep-alive connections)");
    let mut client_notes = Vec::new();
    let bare = env.start_bare_spawner();
    for conc in [1usize, 8, 32] {
        // Warm-up: connections, page cache, the gateway's allocator.
        rate_gateway(gw.addr, conc, env.secs(0.3)).await?;
        rate_direct(conc, env.secs(0.3)).await?;
        let (mut g, mut d) = (Vec::new(), Vec::new());
        let (mut client_cpu, mut gw_cpu, mut wall, mut runs) = (Duration::ZERO, Duration::ZERO, Duration::ZERO, 0);
        let (mut direct_cpu, mut direct_runs) = (Duration::ZERO, 0u64);
        // The bare spawner, at concurrency 8 only (the row with the target).
        let (mut b, mut bare_cpu, mut bare_runs) = (Vec::new(), Duration::ZERO, 0u64);
        if conc == 8 {
            rate_gateway(bare.addr, conc, env.secs(0.3)).await?;
        }
        for _ in 0..3 {
            let (c0, s0, t0) = (self_cpu(), proc_cpu(gw.pid()), Instant::now());
            let (rate, n) = rate_gateway(gw.addr, conc, env.secs(1.0)).await?;
            client_cpu += self_cpu() - c0;
            gw_cpu += proc_cpu(gw.pid()) - s0;
            wall += t0.elapsed();
            runs += n;
            g.push(rate);
            let c0 = self_cpu();
            let rate = rate_direct(conc, env.secs(1.0)).await?;
            direct_cpu += self_cpu() - c0;
            direct_runs += (rate * env.secs(1.0).as_secs_f64()) as u64;
            d.push(rate);
            if conc == 8 {
                let s0 = proc_cpu(bare.pid());
                let (rate, n) = rate_gateway(bare.addr, conc, env.secs(1.0)).await?;
                bare_cpu += proc_cpu(bare.pid()) - s0;
                bare_runs += n;
                b.push(rate);
            }
        }
        let (g, d) = (median(&mut g), median(&mut d));
        let (target, met) = if conc == 8 {
            ("≥ 0.85× direct", Some(g / d >= 0.85))
        } else {
            ("— (info)", None)
        };
        report.row(
            &format!("spawn rate, concurrency {conc} (runs/s)"),
            format!("{g:.0}"),
            format!("{d:.0}"),
            Some(g / d),
            target,
            met,
        );
        if conc == 8 {
            let b = median(&mut b);
            report.row(
                "spawn rate, concurrency 8, a bare HTTP spawner (runs/s)",
                format!("{b:.0}"),
                format!("{d:.0}"),
                Some(b / d),
                "— (info: the floor)",
                None,
            );
            client_notes.push(format!(
                "the bare HTTP spawner at c=8: {:.0} µs CPU/run, the gateway {:.2}× its rate",
                bare_cpu.as_secs_f64() * 1e6 / bare_runs.max(1) as f64,
                g / b
            ));
        }
        client_notes.push(format!(
            "c={conc}: client {:.0} µs CPU/run ({:.0}% of one core), gateway process {:.0} µs CPU/run ({:.0}% of one core), direct loop {:.0} µs CPU/run",
            client_cpu.as_secs_f64() * 1e6 / runs as f64,
            client_cpu.as_secs_f64() * 100.0 / wall.as_secs_f64(),
            gw_cpu.as_secs_f64() * 1e6 / runs as f64,
            gw_cpu.as_secs_f64() * 100.0 / wall.as_secs_f64(),
            direct_cpu.as_secs_f64() * 1e6 / direct_runs.max(1) as f64,
        ));
    }
    report.note(format!(
        "Spawn rate: median of 3 interleaved 1 s rounds per side; client = this driver's own HTTP/1.1 client (tokio, raw socket, keep-alive, one connection per worker); {}. The bare HTTP spawner (this driver as `cligate-bench-spawner`, at c=8 as a third side of each round) is the floor of any HTTP gateway: hyper and tokio like cligate, a session frame, `tokio::process` with piped stdio read to EOF, the exit frame — and nothing else (no run store, no log, no cgroup, no limits).",
        client_notes.join("; ")
    ));
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Several replicas on one PostgreSQL
// ------------------------------------------------------------------------------------------

/// The test suite's throw-away PostgreSQL cluster (one per process, started on first use).
#[path = "../tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;

/// Two replicas' spawn rate at concurrency 16 (8 connections each) against one replica's (16
/// connections), both on PostgreSQL; and the latency of `POST /runs/{id}/stop` sent to the
/// replica that does not execute the run, against the same stop sent to its owner.
async fn bench_replicas(env: &Env, report: &mut Report) -> Result<(), String> {
    println!("== replicas on one PostgreSQL (spawn rate at c=16; stop through a non-owner)");
    let db = match tokio::spawn(pg::fresh_database()).await {
        Ok(url) => url,
        Err(_) => {
            report
                .note("Replica rows skipped: PostgreSQL (initdb, postgres) is not installed or did not start.".into());
            return Ok(());
        }
    };
    let one_db = tokio::spawn(pg::fresh_database()).await.map_err(|e| e.to_string())?;
    let secret = "bench-replica-secret-0123456789";
    let vars = |url: &'static str, name: &'static str| -> Vec<(&'static str, &'static str)> {
        vec![
            ("DATABASE_URL", url),
            ("CLIGATE_INSTANCE", name),
            ("REPLICA_SECRET", secret),
            ("CLI_LIST", "true,sleep"),
        ]
    };
    let db: &'static str = Box::leak(db.into_boxed_str());
    let one_db: &'static str = Box::leak(one_db.into_boxed_str());
    let one = env.start_gateway("replica-one", &vars(one_db, "bench-one"));
    let a = env.start_gateway("replica-a", &vars(db, "bench-a"));
    let b = env.start_gateway("replica-b", &vars(db, "bench-b"));

    rate_gateway(one.addr, 16, env.secs(0.3)).await?;
    let (x, y) = tokio::join!(
        rate_gateway(a.addr, 8, env.secs(0.3)),
        rate_gateway(b.addr, 8, env.secs(0.3))
    );
    x?;
    y?;
    let (mut single, mut pair) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        single.push(rate_gateway(one.addr, 16, env.secs(1.0)).await?.0);
        let (x, y) = tokio::join!(
            rate_gateway(a.addr, 8, env.secs(1.0)),
            rate_gateway(b.addr, 8, env.secs(1.0))
        );
        pair.push(x?.0 + y?.0);
    }
    let (single, pair) = (median(&mut single), median(&mut pair));
    report.row(
        "spawn rate, two replicas vs one, concurrency 16 (runs/s, PostgreSQL)",
        format!("{pair:.0}"),
        format!("{single:.0} one replica"),
        Some(pair / single),
        "≥ 0.90×",
        Some(pair / single >= 0.9),
    );

    // Stops: a `sleep 30` run on A, stopped through B (forwarded) or through A itself.
    let (mut via_peer, mut at_owner) = (Vec::new(), Vec::new());
    let mut on_a = HttpConn::new(a.addr);
    let mut on_b = HttpConn::new(b.addr);
    let rounds = ((60.0 * env.scale) as usize).max(10);
    for i in 0..rounds * 2 {
        let r = on_a
            .post("/runs", br#"{"cli":"sleep","args":["30"]}"#, &mut |_| {})
            .await?;
        if r.status != 202 {
            return Err(format!("POST /runs answered {}", r.status));
        }
        let answer: serde_json::Value = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
        let id = answer["run_id"].as_str().ok_or("no run_id")?.to_string();
        let through_peer = i % 2 == 0;
        let conn = if through_peer { &mut on_b } else { &mut on_a };
        let r = conn.post(&format!("/runs/{id}/stop"), b"", &mut |_| {}).await?;
        if r.status != 200 {
            return Err(format!(
                "stop answered {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
        if through_peer {
            via_peer.push(r.total)
        } else {
            at_owner.push(r.total)
        }
    }
    via_peer.sort();
    at_owner.sort();
    let (p50, p99) = (percentile(&via_peer, 0.5), percentile(&via_peer, 0.99));
    let owner50 = percentile(&at_owner, 0.5);
    report.row(
        "stop latency p50 through a non-owner replica (ms)",
        format!("{:.2}", ms(p50)),
        format!("{:.2} at the owner", ms(owner50)),
        Some(ms(p50) / ms(owner50)),
        "≤ 50 ms",
        Some(ms(p50) <= 50.0),
    );
    report.note(format!(
        "Replicas: three gateways on one throw-away PostgreSQL cluster of this machine (fsync off, as in the tests); one alone on its own database, two sharing one. Spawn rate: median of 3 interleaved 1 s rounds, `true` on 16 keep-alive connections to the one, 8 to each of the two. Stop: {} runs of `sleep 30` started on A, stopped alternately through B (forwarded, signed with REPLICA_SECRET) and through A; through B p99 {:.2} ms.",
        rounds * 2,
        ms(p99)
    ));
    one.stop();
    a.stop();
    b.stop();
    Ok(())
}

/// Runs queued or executing in the gateway, from `/metrics` (`active_runs` + `detached_queued`).
async fn runs_in_flight(conn: &mut HttpConn) -> Result<f64, String> {
    let r = conn.get("/metrics").await?;
    let text = String::from_utf8_lossy(&r.body).to_string();
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok()))
            .unwrap_or(0.0)
    };
    Ok(value("cligate_active_runs ") + value("cligate_detached_queued "))
}

/// One detached round: `count` submits of `{"cli":"true"}` on `conc` keep-alive connections as
/// fast as they are answered; returns (submit latencies, wall time of the submits). Then waits
/// until every run it started has ended, so the next round (or row) starts on an idle gateway.
async fn detached_round(addr: SocketAddr, conc: usize, count: usize) -> Result<(Vec<Duration>, Duration), String> {
    let next = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = HttpConn::new(addr);
            let mut lat = Vec::new();
            while (next.fetch_add(1, Ordering::Relaxed) as usize) < count {
                let r = conn.post("/runs", br#"{"cli":"true"}"#, &mut |_| {}).await?;
                if r.status != 202 {
                    return Err(format!("POST /runs answered {}", r.status));
                }
                lat.push(r.total);
            }
            Ok::<Vec<Duration>, String>(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.map_err(|e| e.to_string())??);
    }
    let wall = t0.elapsed();
    let mut conn = HttpConn::new(addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    while runs_in_flight(&mut conn).await? > 0.0 {
        if Instant::now() > deadline {
            return Err("detached runs did not drain in 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok((lat, wall))
}

async fn bench_detached(env: &Env, gw: &Server, report: &mut Report) -> Result<(), String> {
    println!("== detached submit (`POST /runs`, concurrency 8)");
    const CONC: usize = 8;
    // Bounded rounds: fewer than MAX_CONCURRENT_RUNS + MAX_QUEUED_RUNS (64 + 64) at once, so no
    // submit is refused however far the runs fall behind.
    const PER_ROUND: usize = 120;
    let rounds = ((20.0 * env.scale).round() as usize).max(4);
    rate_gateway(gw.addr, CONC, env.secs(0.3)).await?;
    detached_round(gw.addr, CONC, PER_ROUND).await?;
    let (mut lat, mut attached, mut submit_wall, mut submits) = (Vec::new(), Vec::new(), Duration::ZERO, 0usize);
    let (mut drain_wall, mut gw_cpu) = (Duration::ZERO, Duration::ZERO);
    for round in 0..rounds {
        if round % 4 == 0 {
            attached.push(rate_gateway(gw.addr, CONC, env.secs(0.5)).await?.0);
        }
        let (t0, s0) = (Instant::now(), proc_cpu(gw.pid()));
        let (l, wall) = detached_round(gw.addr, CONC, PER_ROUND).await?;
        drain_wall += t0.elapsed();
        gw_cpu += proc_cpu(gw.pid()) - s0;
        submit_wall += wall;
        submits += l.len();
        lat.extend(l);
    }
    let rate = submits as f64 / submit_wall.as_secs_f64();
    let attached = median(&mut attached);
    lat.sort();
    let p50 = percentile(&lat, 0.5).as_secs_f64() * 1e3;
    let p99 = percentile(&lat, 0.99).as_secs_f64() * 1e3;
    report.row(
        "detached submit p50, `POST /runs` at concurrency 8 (ms)",
        format!("{p50:.3}"),
        "—".into(),
        None,
        "≤ 2 ms",
        Some(p50 <= 2.0),
    );
    report.row(
        "detached submit p99 (ms)",
        format!("{p99:.3}"),
        "—".into(),
        None,
        "— (info)",
        None,
    );
    report.row(
        "detached submits/s at concurrency 8 (vs attached `/run` runs/s)",
        format!("{rate:.0}"),
        format!("{attached:.0}"),
        Some(rate / attached),
        "≥ 0.8× attached",
        Some(rate / attached >= 0.8),
    );
    report.note(format!(
        "Detached submit: {rounds} rounds of {PER_ROUND} `POST /runs {{\"cli\":\"true\"}}` on 8 keep-alive connections, each submit timed from writing the request to the end of its 202 answer; the rate is submits / time until the last answer of a round. The runs execute while later submits arrive (a round never exceeds MAX_CONCURRENT_RUNS + MAX_QUEUED_RUNS, so none is refused); after each round the driver polls `/metrics` until no run is active or queued ({:.2} s per round on average including that drain; the gateway process used {:.0} µs CPU per detached run, submit and run). Baseline: the attached `/run` spawn rate at concurrency 8 (0.5 s rounds, median of {}), measured between detached rounds of the same invocation.",
        drain_wall.as_secs_f64() / rounds as f64,
        gw_cpu.as_secs_f64() * 1e6 / submits.max(1) as f64,
        rounds.div_ceil(4),
    ));
    Ok(())
}

async fn bench_latency(env: &Env, gw: &Server, report: &mut Report) -> Result<(), String> {
    println!("== latency (`echo hi`, sequential, interleaved)");
    let n = ((1000.0 * env.scale) as usize).max(50);
    let body = run_body("echo", &["hi"]);
    let mut conn = HttpConn::new(gw.addr);
    for _ in 0..20 {
        gateway_run(&mut conn, &body, &mut |_| {}).await?;
        direct_run("echo", &["hi"], &[], &mut |_| {}).await?;
    }
    let (mut g_first, mut g_total, mut g_session) = (Vec::new(), Vec::new(), Vec::new());
    let (mut d_first, mut d_total) = (Vec::new(), Vec::new());
    // The floor: the bare HTTP spawner, a third side of each round.
    let bare = env.start_bare_spawner();
    let mut bare_conn = HttpConn::new(bare.addr);
    for _ in 0..20 {
        gateway_run(&mut bare_conn, &body, &mut |_| {}).await?;
    }
    let mut b_total = Vec::new();
    for _ in 0..n {
        let mut out = Vec::new();
        let r = gateway_run(&mut conn, &body, &mut |d| out.extend_from_slice(d)).await?;
        if out != b"hi\n" {
            return Err(format!("echo through the gateway gave {out:?}"));
        }
        g_session.push(r.first_frame.unwrap());
        g_first.push(r.first_output.ok_or("no output frame")?);
        g_total.push(r.total);
        let d = direct_run("echo", &["hi"], &[], &mut |_| {}).await?;
        d_first.push(d.first_output.ok_or("no direct output")?);
        d_total.push(d.total);
        let mut out = Vec::new();
        let r = gateway_run(&mut bare_conn, &body, &mut |d| out.extend_from_slice(d)).await?;
        if out != b"hi\n" {
            return Err(format!("echo through the bare spawner gave {out:?}"));
        }
        b_total.push(r.total);
    }
    drop(bare);
    for v in [
        &mut g_first,
        &mut g_total,
        &mut g_session,
        &mut d_first,
        &mut d_total,
        &mut b_total,
    ] {
        v.sort();
    }
    for (label, g, d) in [
        ("time to first output frame", &g_first, &d_first),
        ("total time", &g_total, &d_total),
    ] {
        for p in [0.5, 0.99] {
            let (gv, dv) = (percentile(g, p), percentile(d, p));
            let ratio = gv.as_secs_f64() / dv.as_secs_f64();
            let (target, met) = if p == 0.5 {
                ("≤ 1.20× direct", Some(ratio <= 1.2))
            } else {
                ("— (info)", None)
            };
            report.row(
                &format!("latency p{:.0}, {label} (ms)", p * 100.0),
                format!("{:.3}", ms(gv)),
                format!("{:.3}", ms(dv)),
                Some(ratio),
                target,
                met,
            );
        }
    }
    let (bv, dv) = (percentile(&b_total, 0.5), percentile(&d_total, 0.5));
    report.row(
        "latency p50, total time, a bare HTTP spawner (ms)",
        format!("{:.3}", ms(bv)),
        format!("{:.3}", ms(dv)),
        Some(bv.as_secs_f64() / dv.as_secs_f64()),
        "— (info: the floor)",
        None,
    );
    report.note(format!(
        "Latency: {n} runs of `echo hi` each way, one at a time, gateway, direct and bare-spawner runs alternating; gateway and bare spawner each over one keep-alive connection, timed from writing the request; direct timed from spawn. The first frame (`session`) arrives at p50 {:.3} ms / p99 {:.3} ms; the rows use the first *output* frame, the one that compares with the child's first byte. The bare HTTP spawner (see the spawn rate) sends its output with the exit frame, so only its total time is a row; its p99 {:.3} ms.",
        ms(percentile(&g_session, 0.5)),
        ms(percentile(&g_session, 0.99)),
        ms(percentile(&b_total, 0.99)),
    ));

    // Runs the way a review bot starts them: now and then, the machine quiet in between.
    const GAP: Duration = Duration::from_millis(20);
    let spaced = ((200.0 * env.scale) as usize).max(30);
    let (mut g, mut d) = (Vec::new(), Vec::new());
    for _ in 0..spaced {
        tokio::time::sleep(GAP).await;
        g.push(gateway_run(&mut conn, &body, &mut |_| {}).await?.total);
        tokio::time::sleep(GAP).await;
        d.push(direct_run("echo", &["hi"], &[], &mut |_| {}).await?.total);
    }
    g.sort();
    d.sort();
    for p in [0.5, 0.9, 0.99] {
        let (gv, dv) = (percentile(&g, p), percentile(&d, p));
        report.row(
            &format!("latency p{:.0}, total time, runs 20 ms apart (ms)", p * 100.0),
            format!("{:.3}", ms(gv)),
            format!("{:.3}", ms(dv)),
            Some(gv.as_secs_f64() / dv.as_secs_f64()),
            "— (info)",
            None,
        );
    }
    report.note(format!(
        "Spaced latency: {spaced} runs of `echo hi` each way with 20 ms of nothing before each, alternating, timed as above. Back-to-back runs keep the kernel's cgroup-migration lock in its slow-reader mode; after a quiet spell, moving a child into its cgroup waited for an RCU grace period (6–15 ms here), which is why a child is now born in its cgroup (`clone3`, see src/exec/spawn.rs)."
    ));
    Ok(())
}

/// The least that any gateway pays per byte it streams: the generator's stdout read in 64 KiB
/// pieces, each piece written to a loopback TCP socket (whose other end a second thread reads
/// and drops) and, with `log`, also appended to a file there — no framing, no escaping, no HTTP,
/// no readers. Returns the relaying thread's own CPU time (what a gateway's process would pay;
/// the sink's reading is the client's side).
/// What the floor with a log file says of the gateway, from the least disturbed round of each
/// (noise on a shared machine only adds CPU): a bound when it is below the gateway, and said to
/// be none when the file writes cost the relay more than the whole gateway in this run.
fn floor_verdict(gw: &[f64], relay_log: &[f64], round_gib: f64) -> String {
    let least = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min) / round_gib;
    let (g, f) = (least(gw), least(relay_log));
    if g >= f {
        format!(
            "Least disturbed rounds: the floor with a file {f:.2}, the gateway {g:.2} ({:.2}×): whatever a gateway does beyond the floor costs more, so one that keeps a log file cannot go below the floor on this machine.",
            g / f
        )
    } else {
        format!(
            "Least disturbed rounds: the floor with a file {f:.2}, the gateway {g:.2}: in this run the relay's file writes cost it more than the whole gateway spent, so the floor bounds nothing here (the cost of page-cache writes varied between rounds on this shared machine); it is reported, not relied on."
        )
    }
}

fn bare_relay(gen_path: &str, arg: &str, log: Option<&Path>) -> Result<Duration, String> {
    use std::io::{Read, Write};
    use std::os::unix::fs::FileExt;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let sink = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut socket, _) = listener.accept()?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0u64;
        loop {
            match socket.read(&mut buf)? {
                0 => return Ok(got),
                n => got += n as u64,
            }
        }
    });
    let mut socket = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let file = match log {
        Some(path) => Some(std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?),
        None => None,
    };
    let mut child = std::process::Command::new(gen_path)
        .arg(arg)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("{gen_path}: {e}"))?;
    let mut pipe = child.stdout.take().expect("piped stdout");
    let mut buf = vec![0u8; 64 * 1024];
    let mut relayed = 0u64;
    let cpu0 = rusage(libc::RUSAGE_THREAD);
    loop {
        let n = pipe.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        socket.write_all(&buf[..n]).map_err(|e| e.to_string())?;
        if let Some(file) = &file {
            file.write_all_at(&buf[..n], relayed).map_err(|e| e.to_string())?;
        }
        relayed += n as u64;
    }
    let cpu = rusage(libc::RUSAGE_THREAD) - cpu0;
    drop(socket);
    let got = sink.join().expect("sink thread").map_err(|e| e.to_string())?;
    child.wait().map_err(|e| e.to_string())?;
    if let Some(path) = log {
        let _ = std::fs::remove_file(path);
    }
    let want: u64 = arg.parse().unwrap_or(0);
    if relayed != want || got != want {
        return Err(format!(
            "bare relay: read {relayed}, delivered {got}, want {want} bytes"
        ));
    }
    Ok(cpu)
}

async fn bench_throughput(env: &Env, gw: &Server, report: &mut Report) -> Result<(), String> {
    let total = ((STREAM_BYTES as f64 * env.scale.min(1.0)) as u64 / LINE).max(1024) * LINE;
    println!("== streaming throughput ({} MiB of {LINE}-byte lines)", total >> 20);
    let want = expected_crc(total);
    let arg = total.to_string();
    let body = run_body(GEN_NAME, &[&arg]);
    let gen_path = env.bin_dir.join(GEN_NAME);
    let gen_path = gen_path.to_str().unwrap();
    let mut conn = HttpConn::new(gw.addr);
    // The same build with `RUN_LOG_IN_MEMORY=true`: the same readers, no files.
    let mem_gw = env.start_gateway("cligate-memlog", &[("RUN_LOG_IN_MEMORY", "true")]);
    let mut mem_conn = HttpConn::new(mem_gw.addr);
    gateway_run(&mut mem_conn, &run_body("true", &[]), &mut |_| {}).await?;
    let (mut m, mut mem_cpu, mut log_bytes) = (Vec::new(), Duration::ZERO, 0u64);
    let (mut g, mut d) = (Vec::new(), Vec::new());
    // CPU spent per side: [gateway, generator, client] and [generator, reader].
    let (mut via, mut raw) = ([Duration::ZERO; 3], [Duration::ZERO; 2]);
    let mut gw_wall = Duration::ZERO;
    let mut frames = 0;
    let mut max_frame = 0;
    // The bare relay's CPU seconds per round, without and with a log file.
    let (mut relay, mut relay_log) = (Vec::new(), Vec::new());
    let mut gw_cpu = Vec::new();
    for _ in 0..3 {
        let mut h = crc32fast::Hasher::new();
        let (c0, (s0, k0)) = (self_cpu(), proc_times(gw.pid()));
        let r = gateway_run(&mut conn, &body, &mut |data| h.update(data)).await?;
        // The gateway has reaped the generator once the exit frame is out.
        let (c1, (s1, k1)) = (self_cpu(), proc_times(gw.pid()));
        via[0] += s1 - s0;
        gw_cpu.push((s1 - s0).as_secs_f64());
        via[1] += k1 - k0;
        via[2] += c1 - c0;
        gw_wall += r.total;
        let crc = h.finalize();
        if r.stdout_bytes != total || crc != want {
            return Err(format!(
                "gateway stream corrupt: {} bytes crc {crc:08x}, want {total} crc {want:08x}",
                r.stdout_bytes
            ));
        }
        frames = r.frames;
        max_frame = r.max_frame_data;
        g.push(total as f64 / r.total.as_secs_f64());
        log_bytes = gw.drop_log(&r.run_id);

        let mut h = crc32fast::Hasher::new();
        let s0 = proc_cpu(mem_gw.pid());
        let r = gateway_run(&mut mem_conn, &body, &mut |data| h.update(data)).await?;
        mem_cpu += proc_cpu(mem_gw.pid()) - s0;
        let crc = h.finalize();
        if r.stdout_bytes != total || crc != want {
            return Err(format!(
                "in-memory-log stream corrupt: {} bytes crc {crc:08x}",
                r.stdout_bytes
            ));
        }
        m.push(total as f64 / r.total.as_secs_f64());

        let mut h = crc32fast::Hasher::new();
        let (c0, k0) = (self_cpu(), children_cpu());
        let r = direct_run(gen_path, &[&arg], &[], &mut |data| h.update(data)).await?;
        raw[0] += children_cpu() - k0;
        raw[1] += self_cpu() - c0;
        let crc = h.finalize();
        if r.stdout_bytes != total || crc != want {
            return Err(format!("direct stream corrupt: {} bytes crc {crc:08x}", r.stdout_bytes));
        }
        d.push(total as f64 / r.total.as_secs_f64());

        // The floors: a bare relay without and with a log file.
        let (path, a) = (gen_path.to_string(), arg.clone());
        let log = env.work.join("bare-relay.log");
        let (plain, logged) = tokio::task::spawn_blocking(move || {
            Ok::<_, String>((bare_relay(&path, &a, None)?, bare_relay(&path, &a, Some(&log))?))
        })
        .await
        .map_err(|e| e.to_string())??;
        relay.push(plain.as_secs_f64());
        relay_log.push(logged.as_secs_f64());
    }
    let mem_rss = rss_kib(mem_gw.pid());
    mem_gw.stop();
    let (g, d, m) = (median(&mut g), median(&mut d), median(&mut m));
    let mib = |x: f64| x / (1 << 20) as f64;
    report.row(
        "streaming throughput (MiB/s of decoded stdout)",
        format!("{:.0}", mib(g)),
        format!("{:.0}", mib(d)),
        Some(g / d),
        "≥ 0.50× raw pipe",
        Some(g / d >= 0.5),
    );
    report.row(
        "streaming with the log file vs `RUN_LOG_IN_MEMORY` (MiB/s)",
        format!("{:.0}", mib(g)),
        format!("{:.0} (in memory)", mib(m)),
        Some(g / m),
        "≥ 0.90× in memory",
        Some(g / m >= 0.9),
    );
    let gib = 3.0 * total as f64 / (1u64 << 30) as f64;
    let per_gib = |d: Duration| d.as_secs_f64() / gib;
    // Per round, so that the medians compare like with like.
    let round_gib = total as f64 / (1u64 << 30) as f64;
    let (gw_gib, relay_gib, relay_log_gib) = (
        median(&mut gw_cpu) / round_gib,
        median(&mut relay) / round_gib,
        median(&mut relay_log) / round_gib,
    );
    report.row(
        "gateway CPU per GiB streamed (CPU s), vs a bare relay with a log file",
        format!("{gw_gib:.2}"),
        format!("{relay_log_gib:.2} (bare relay + log)"),
        Some(gw_gib / relay_log_gib),
        "≤ 0.7 CPU s (absolute)",
        Some(gw_gib <= 0.7),
    );
    report.row(
        "a bare relay, pipe → loopback socket, no log (CPU s per GiB)",
        format!("{relay_gib:.2}"),
        "—".into(),
        None,
        "— (info: the floor)",
        None,
    );
    let via_total: f64 = via.iter().map(|d| per_gib(*d)).sum();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    // If all of the work spread perfectly over every core, this is as fast as it could go.
    let ceiling = cores / via_total * 1024.0;
    report.note(format!(
        "Throughput: `{GEN_NAME} {total}` (this driver, symlinked) writes {} lines of {LINE} bytes (10-digit line number, printable ASCII filler that includes `\"` and `\\`, newline) in 64 KiB write(2)s. Median of 3 interleaved runs per side. Every gateway run is checked: {total} bytes and CRC-32 {want:08x} of the concatenated `data` (the driver's own decoder: chunked → lines → JSON unescape), {frames} frames, largest frame data {max_frame} bytes. The raw-pipe side reads the same program's stdout with tokio in 64 KiB reads and CRCs it too. CPU seconds per GiB through the gateway: gateway {:.2} ({:.0}% of one core while streaming), generator {:.2}, client {:.2}; through the raw pipe: generator {:.2}, reader {:.2}. With {cores} cores, that CPU alone caps the gateway path at {ceiling:.0} MiB/s ({:.2}× the raw pipe's median), however well the work overlaps.",
        total / LINE,
        per_gib(via[0]),
        via[0].as_secs_f64() * 100.0 / gw_wall.as_secs_f64(),
        per_gib(via[1]),
        per_gib(via[2]),
        per_gib(raw[0]),
        per_gib(raw[1]),
        ceiling * (1 << 20) as f64 / d,
    ));
    report.note(format!(
        "Floors: in each round, after the three sides above, the driver relays the same generator's stdout itself, with nothing but what any gateway must do: read the pipe in 64 KiB pieces and write each piece to a loopback TCP socket (another thread reads and drops it), once like that and once also appending each piece to a file with pwrite (as a log does); no framing, escaping, HTTP or readers. Its thread's CPU (getrusage RUSAGE_THREAD, medians of 3): {relay_gib:.2} CPU s per GiB without the file, {relay_log_gib:.2} with it (the rounds, sorted: {}; {}). The gateway's own CPU per GiB in its rounds: {}. {}",
        relay.iter().map(|c| format!("{:.2}", c / round_gib)).collect::<Vec<_>>().join(", "),
        relay_log.iter().map(|c| format!("{:.2}", c / round_gib)).collect::<Vec<_>>().join(", "),
        gw_cpu.iter().map(|c| format!("{:.2}", c / round_gib)).collect::<Vec<_>>().join(", "),
        floor_verdict(&gw_cpu, &relay_log, round_gib),
    ));
    report.note(format!(
        "Log vs no log: the gateway above (log file in its own temp DATA_DIR, the default) against a second gateway of the same build with `RUN_LOG_IN_MEMORY=true` (same writer and readers, the frames kept in memory instead of a file); the three sides interleaved round by round (file log, in-memory log, raw pipe), median of 3, the same checks. A run's log holds {log_bytes} bytes for {total} bytes of stdout ({:.3}×); the driver deletes each log file after its run so that the rounds do not pile up on disk. The in-memory gateway's process used {:.2} CPU s per GiB (file-log gateway {:.2}); it keeps the whole log of a live run in memory (VmRSS {:.0} MiB after its last run), so its side pays page faults for fresh memory that the file side does not.",
        log_bytes as f64 / total as f64,
        per_gib(mem_cpu),
        per_gib(via[0]),
        mem_rss as f64 / 1024.0,
    ));
    Ok(())
}

async fn bench_memory(env: &Env, report: &mut Report) -> Result<(), String> {
    println!("== memory (fresh gateway)");
    let gw = env.start_gateway("cligate-memory", &[]);
    // One request so that the runtime's lazy parts are set up, then idle.
    let mut conn = HttpConn::new(gw.addr);
    gateway_run(&mut conn, &run_body("true", &[]), &mut |_| {}).await?;
    drop(conn);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_kib(gw.pid());
    report.row(
        "gateway RSS idle (MiB)",
        format!("{:.1}", idle as f64 / 1024.0),
        "—".into(),
        None,
        "≤ 15 MiB",
        Some(idle <= 15 * 1024),
    );

    const STALLED: usize = 50;
    // With the log, a stalled reader no longer holds its child back: every run writes all of its
    // output to its log file. 16 MiB each keeps the disk use at ~0.8 GiB (removed afterwards).
    const EACH: u64 = 16 << 20;
    let arg = EACH.to_string();
    let body = run_body(GEN_NAME, &[&arg]);
    let mut req = format!(
        "POST /run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let mut streams = Vec::new();
    for _ in 0..STALLED {
        let mut s = TcpStream::connect(gw.addr).await.map_err(|e| e.to_string())?;
        s.write_all(&req).await.map_err(|e| e.to_string())?;
        streams.push(s);
    }
    // Read a little from each (the headers and some frames), then stop reading.
    for s in &mut streams {
        let mut got = 0;
        let mut buf = vec![0u8; 4096];
        while got < 16 * 1024 {
            let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
                .await
                .map_err(|_| "a stalled-reader stream sent nothing")?
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("a stalled-reader stream closed early".into());
            }
            if got == 0 && !buf.starts_with(b"HTTP/1.1 200") {
                return Err(format!(
                    "stalled-reader run refused: {:?}",
                    String::from_utf8_lossy(&buf[..n.min(200)])
                ));
            }
            got += n;
        }
    }
    // Wait at least 3 s and until every run has ended (its output all in its log) — at most
    // 30 s — with the readers still stalled; the row is the peak over that time.
    let mut peak = 0;
    let wait = env.secs(3.0).max(Duration::from_secs(1));
    let t0 = Instant::now();
    let mut all_ended = None;
    while t0.elapsed() < wait || (all_ended.is_none() && t0.elapsed() < Duration::from_secs(30)) {
        peak = peak.max(rss_kib(gw.pid()));
        if all_ended.is_none() && children_of(gw.pid()).is_empty() {
            all_ended = Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stalled = rss_kib(gw.pid());
    peak = peak.max(stalled);
    let live = children_of(gw.pid()).len();
    let states: Vec<String> = children_of(gw.pid())
        .iter()
        .map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let st = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next())
                .unwrap_or("?");
            format!("{p}:{st}")
        })
        .collect();
    let logs_dir = gw.data_dir.as_ref().unwrap().join("logs");
    let log_bytes: u64 = std::fs::read_dir(&logs_dir)
        .map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0);
    let growth = peak.saturating_sub(idle);
    report.row(
        "RSS growth, 50 stalled readers (MiB)",
        format!("{:.1}", growth as f64 / 1024.0),
        format!("{:.1} idle", idle as f64 / 1024.0),
        None,
        "≤ 16 MiB",
        Some(growth <= 16 * 1024),
    );
    drop(streams);
    let t1 = Instant::now();
    while !children_of(gw.pid()).is_empty() && t1.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = children_of(gw.pid()).len();
    let ended_in = t1.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(gw.pid());
    report.note(format!(
        "Memory: VmRSS from /proc/<pid>/status of a fresh gateway (own temp DATA_DIR) after one run and 0.5 s idle = {:.1} MiB. Then {STALLED} raw TCP clients each POST `{GEN_NAME} {EACH}` ({} MiB each; was 64 MiB before the log: now every run writes all of its output to disk, so 50 × 64 MiB would be 3.4 GiB of logs), read 16 KiB, and stop reading. The children are no longer held back by their stalled readers: {}; the logs then held {:.0} MiB of frames for {} × {} MiB of stdout. The row is the peak VmRSS over idle (sampled every 50 ms, from the readers stalling until all runs ended and at least {:.1} s): peak {:.1} MiB; at the end {:.1} MiB with the {STALLED} connections still open and stalled ({live} runs alive). Closing the sockets: {:.2} s until no child was left ({left} left); RSS afterwards {:.1} MiB. The DATA_DIR is deleted with the gateway.",
        idle as f64 / 1024.0,
        EACH >> 20,
        match all_ended {
            Some(t) => format!("all {STALLED} runs ended {:.1} s after the readers stalled", t.as_secs_f64()),
            None => format!(
                "{live} of {STALLED} runs were still alive after 30 s (pid:state {})",
                states.join(" ")
            ),
        },
        log_bytes as f64 / (1 << 20) as f64,
        STALLED,
        EACH >> 20,
        wait.as_secs_f64(),
        peak as f64 / 1024.0,
        stalled as f64 / 1024.0,
        ended_in.as_secs_f64(),
        after as f64 / 1024.0,
    ));
    gw.stop();
    Ok(())
}

/// Samples a process's VmRSS every 20 ms until `stop`; returns the peak (KiB).
fn rss_sampler(pid: u32, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = rss_kib(pid);
        while !stop.load(Ordering::Relaxed) {
            peak = peak.max(rss_kib(pid));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak.max(rss_kib(pid))
    })
}

/// Seconds of the day of an RFC 3339 time (`…THH:MM:SS.mmmZ`), for differences.
fn day_secs(t: &str) -> Option<f64> {
    let (_, time) = t.split_once('T')?;
    let time = time.trim_end_matches('Z');
    let mut f = time.splitn(3, ':');
    let h: f64 = f.next()?.parse().ok()?;
    let m: f64 = f.next()?.parse().ok()?;
    let s: f64 = f.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// started_at → finished_at of a run's record, in seconds (millisecond resolution).
async fn record_secs(addr: SocketAddr, run_id: &str) -> Result<f64, String> {
    let r = HttpConn::new(addr).get(&format!("/runs/{run_id}")).await?;
    let v: serde_json::Value = serde_json::from_slice(&r.body).map_err(|e| format!("record: {e}"))?;
    let at = |k: &str| v[k].as_str().and_then(day_secs);
    match (at("started_at"), at("finished_at")) {
        (Some(a), Some(b)) => Ok(if b >= a { b - a } else { b + 86400.0 - a }),
        _ => Err(format!("record without started_at/finished_at: {v}")),
    }
}

/// The last frame of a body tail must be the exit frame of a run that exited 0.
fn ends_with_exit(tail: &[u8]) -> bool {
    let t = tail.strip_suffix(b"\n").unwrap_or(tail);
    let last = t.rsplit(|b| *b == b'\n').next().unwrap_or(b"");
    serde_json::from_slice::<serde_json::Value>(last)
        .is_ok_and(|v| v["type"] == "exit" && v["code"] == 0 && v["reason"] == "exited")
}

async fn bench_fanout(env: &Env, report: &mut Report) -> Result<(), String> {
    const READERS: usize = 50;
    let total = ((STREAM_BYTES as f64 * env.scale.min(1.0)) as u64 / LINE).max(1024) * LINE;
    println!("== {READERS} /stream readers following one {} MiB run", total >> 20);
    let gw = env.start_gateway("cligate-fanout", &[]);
    let mut conn = HttpConn::new(gw.addr);
    gateway_run(&mut conn, &run_body("true", &[]), &mut |_| {}).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_kib(gw.pid());
    let want = expected_crc(total);
    let arg = total.to_string();
    let body: Arc<[u8]> = run_body(GEN_NAME, &[&arg]).into();
    // Eight rounds: with three, the median of this row moved 0.56–1.30× between invocations of
    // the same build on this two-core machine (the 50 readers' client shares its cores), and
    // with five 0.42–0.98×. The two sides alternate which goes first (solo, fan; fan, solo; …)
    // so that a machine that slows down or speeds up over a round weighs on both alike.
    let rounds = if env.scale >= 1.0 { 8 } else { 2 };
    let (mut solo, mut fan) = (Vec::new(), Vec::new());
    let (mut solo_rec, mut fan_rec) = (Vec::new(), Vec::new());
    let (mut solo_peak, mut fan_peak) = (0u64, 0u64);
    let (mut fan_gw_cpu, mut fan_client_cpu, mut served, mut lag) =
        (Duration::ZERO, Duration::ZERO, 0u64, Duration::ZERO);
    for round in 0..rounds {
        for fan_side in [round % 2 == 1, round % 2 == 0] {
            if !fan_side {
                // The run alone.
                let stop = Arc::new(AtomicBool::new(false));
                let sampler = rss_sampler(gw.pid(), stop.clone());
                let mut h = crc32fast::Hasher::new();
                let r = gateway_run(&mut conn, &body, &mut |d| h.update(d)).await?;
                stop.store(true, Ordering::Relaxed);
                solo_peak = solo_peak.max(sampler.await.map_err(|e| e.to_string())?);
                if r.stdout_bytes != total || h.finalize() != want {
                    return Err("fan-out solo run corrupt".into());
                }
                solo.push(total as f64 / r.total.as_secs_f64());
                solo_rec.push(total as f64 / record_secs(gw.addr, &r.run_id).await?);
                gw.drop_log(&r.run_id);
                continue;
            }

            // The same run with READERS readers of /stream?offset=0 attached as soon as it has an id.
            let stop = Arc::new(AtomicBool::new(false));
            let sampler = rss_sampler(gw.pid(), stop.clone());
            let (tx, rx) = tokio::sync::oneshot::channel();
            let (c0, s0) = (self_cpu(), proc_cpu(gw.pid()));
            let run = {
                let body = body.clone();
                let mut c = HttpConn::new(gw.addr);
                c.on_run_id = Some(tx);
                tokio::spawn(async move {
                    let mut h = crc32fast::Hasher::new();
                    let r = gateway_run(&mut c, &body, &mut |d| h.update(d)).await;
                    r.map(|r| (r, h.finalize()))
                })
            };
            let run_id = rx.await.map_err(|_| "the fan-out run gave no run id")?;
            let mut readers = Vec::new();
            for _ in 0..READERS {
                let path = format!("/runs/{run_id}/stream?offset=0");
                let addr = gw.addr;
                readers.push(tokio::spawn(async move {
                    let mut c = HttpConn::new(addr);
                    c.raw = true;
                    let r = tokio::time::timeout(Duration::from_secs(120), c.get(&path))
                        .await
                        .map_err(|_| "a /stream reader took more than 120 s".to_string())??;
                    Ok::<_, String>((r, Instant::now()))
                }));
            }
            let (r, crc) = run.await.map_err(|e| e.to_string())??;
            let run_done = Instant::now();
            if r.stdout_bytes != total || crc != want {
                return Err("fan-out run corrupt on its attached reader".into());
            }
            fan.push(total as f64 / r.total.as_secs_f64());
            fan_rec.push(total as f64 / record_secs(gw.addr, &run_id).await?);
            let size = std::fs::metadata(gw.log_path(&run_id)).map(|m| m.len()).unwrap_or(0);
            let mut last = run_done;
            for t in readers {
                let (rr, done) = t.await.map_err(|e| e.to_string())??;
                if rr.status != 200 || rr.body_bytes != size || !ends_with_exit(&rr.tail) {
                    return Err(format!(
                        "a /stream reader got HTTP {} and {} bytes of a {size}-byte log",
                        rr.status, rr.body_bytes
                    ));
                }
                served += rr.body_bytes;
                last = last.max(done);
            }
            stop.store(true, Ordering::Relaxed);
            fan_peak = fan_peak.max(sampler.await.map_err(|e| e.to_string())?);
            fan_client_cpu += self_cpu() - c0;
            fan_gw_cpu += proc_cpu(gw.pid()) - s0;
            lag += last - run_done;
            gw.drop_log(&run_id);
        }
    }
    let each: Vec<String> = fan_rec
        .iter()
        .zip(&solo_rec)
        .map(|(f, s)| format!("{:.2}", f / s))
        .collect();
    let (s, f) = (median(&mut solo), median(&mut fan));
    let (sr, fr) = (median(&mut solo_rec), median(&mut fan_rec));
    let mib = |x: f64| x / (1 << 20) as f64;
    report.row(
        &format!("one run's throughput with {READERS} /stream readers, record started→finished (MiB/s)"),
        format!("{:.0}", mib(fr)),
        format!("{:.0} (no readers)", mib(sr)),
        Some(fr / sr),
        "≥ 0.90× no readers",
        Some(fr / sr >= 0.9),
    );
    report.row(
        "the same, to the exit frame on its attached `/run` reader (MiB/s)",
        format!("{:.0}", mib(f)),
        format!("{:.0} (no readers)", mib(s)),
        Some(f / s),
        "— (info)",
        None,
    );
    let growth = fan_peak.saturating_sub(idle);
    report.row(
        &format!("RSS growth, {READERS} /stream readers of one run (MiB)"),
        format!("{:.1}", growth as f64 / 1024.0),
        format!("{:.1} idle", idle as f64 / 1024.0),
        None,
        "≤ 16 MiB",
        Some(growth <= 16 * 1024),
    );
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    report.note(format!(
        "Fan-out: a fresh gateway; {rounds} rounds, each a `{GEN_NAME} {total}` run alone then the same run with {READERS} `GET /runs/{{id}}/stream?offset=0` readers attached as soon as the `/run` answer's headers give the run id (median of each; the two sides take turns going first; the record-time ratio of each round, with readers / alone: {}). All readers are fast: each reads as fast as it can on its own connection and only counts bytes (no frame decoding); each must get the whole log ({:.0} MiB) ending with the exit frame. Throughput = stdout bytes / the record's started_at → finished_at (the child's run and the log's close, millisecond resolution; the row with the target), and / time from the `/run` request to its exit frame on the attached (decoding, CRC-checked) reader, which is one more follower of the same log served in turn with the 50 others (info row). RSS peak (20 ms samples): {:.1} MiB alone, {:.1} MiB with readers (idle {:.1} MiB). With readers the gateway served {:.1} GiB to them in all, using {:.2} CPU s per GiB served (its whole CPU over those rounds / bytes served) and the client side {:.2}; the last reader finished on average {:.2} s after the run's exit frame.",
        each.join(", "),
        mib(served as f64 / (rounds * READERS) as f64),
        solo_peak as f64 / 1024.0,
        fan_peak as f64 / 1024.0,
        idle as f64 / 1024.0,
        gib(served),
        fan_gw_cpu.as_secs_f64() / gib(served),
        fan_client_cpu.as_secs_f64() / gib(served),
        lag.as_secs_f64() / rounds as f64,
    ));
    gw.stop();
    Ok(())
}

/// Opens a connection, sends `GET path` and returns the time from the request to the first
/// whole frame of a streamed answer (or to the whole of a `Content-Length` one) and that frame;
/// the connection is then dropped.
async fn first_frame(addr: SocketAddr, path: &str) -> Result<(Duration, Vec<u8>), String> {
    let mut conn = Conn::open(addr).await?;
    let t0 = Instant::now();
    let answer = async {
        let response = conn.send("GET", path, None, &[]).await?;
        if response.status() != 200 {
            return Err(format!("answer {}", response.status()));
        }
        let streamed = response.headers().get("content-length").is_none();
        let mut body = response.into_body();
        let (mut lines, mut whole) = (Lines::default(), Vec::new());
        while let Some(piece) = body.frame().await {
            let Ok(data) = piece.map_err(|e| e.to_string())?.into_data() else {
                continue;
            };
            if !streamed {
                whole.extend_from_slice(&data);
                continue;
            }
            lines.push(&data);
            if let Some(line) = lines.next_line() {
                let mut frame = line.to_vec();
                frame.push(b'\n');
                return Ok((t0.elapsed(), frame));
            }
        }
        if streamed {
            return Err("the stream ended before its first frame".to_string());
        }
        Ok((t0.elapsed(), whole))
    };
    tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .map_err(|_| "no answer in 10 s".to_string())?
}

async fn bench_reattach(env: &Env, gw: &Server, report: &mut Report) -> Result<(), String> {
    let total = ((STREAM_BYTES as f64 * env.scale.min(1.0)) as u64 / LINE).max(1024) * LINE;
    println!(
        "== re-attach to a finished {} MiB log at random frame offsets",
        total >> 20
    );
    let arg = total.to_string();
    let mut conn = HttpConn::new(gw.addr);
    let r = gateway_run(&mut conn, &run_body(GEN_NAME, &[&arg]), &mut |_| {}).await?;
    let log = std::fs::read(gw.log_path(&r.run_id)).map_err(|e| format!("reading the log: {e}"))?;
    let mut starts = vec![0u64];
    starts.extend(memchr::memchr_iter(b'\n', &log).map(|i| i as u64 + 1));
    starts.pop(); // the end of the log
    let n = ((200.0 * env.scale) as usize).max(50);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        starts[(seed % starts.len() as u64) as usize]
    };
    let frame_at = |o: u64| {
        let o = o as usize;
        let e = memchr::memchr(b'\n', &log[o..]).map(|i| o + i + 1).unwrap_or(log.len());
        &log[o..e]
    };
    let (mut health, mut stream, mut tail) = (Vec::new(), Vec::new(), Vec::new());
    let mut keep = HttpConn::new(gw.addr);
    for i in 0..n + 10 {
        let (h, _) = first_frame(gw.addr, "/healthz").await?;
        let o = next();
        let (t, frame) = first_frame(gw.addr, &format!("/runs/{}/stream?offset={o}", r.run_id)).await?;
        if frame != frame_at(o) {
            return Err(format!(
                "/stream?offset={o} began with {:?}",
                String::from_utf8_lossy(&frame)
            ));
        }
        let o = next();
        let lr = keep
            .get(&format!("/runs/{}/log?offset={o}&max_bytes=65536", r.run_id))
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&lr.body).map_err(|e| format!("/log answer: {e}"))?;
        let content = v["content"].as_str().unwrap_or("").as_bytes();
        if lr.status != 200
            || v["offset"] != o
            || content.is_empty()
            || !log[o as usize..].starts_with(content)
            || !content.ends_with(b"\n")
        {
            return Err(format!("/log?offset={o} answered HTTP {} {:.200}", lr.status, v));
        }
        if i >= 10 {
            health.push(h);
            stream.push(t);
            tail.push(lr.total);
        }
    }
    for v in [&mut health, &mut stream, &mut tail] {
        v.sort();
    }
    let h50 = percentile(&health, 0.5);
    for (label, v) in [
        ("re-attach p50, `/stream?offset=N` to first frame (ms)", &stream),
        ("re-attach p50, `/log?offset=N&max_bytes=65536` (ms)", &tail),
    ] {
        let p = percentile(v, 0.5);
        report.row(
            label,
            format!("{:.3}", ms(p)),
            format!("{:.3} (`/healthz`)", ms(h50)),
            Some(p.as_secs_f64() / h50.as_secs_f64()),
            "≤ 5 ms (absolute)",
            Some(ms(p) <= 5.0),
        );
    }
    report.note(format!(
        "Re-attach: one `{GEN_NAME} {total}` run through the main gateway, finished; its log ({:.0} MiB, {} frames, just written so in the page cache) is read by the driver to pick frame offsets N (xorshift, fixed seed) and to check each answer. Then {n} rounds (after 10 warm-up rounds) of: `GET /healthz` on a new connection (the baseline), `GET /runs/{{id}}/stream?offset=N` on a new connection, timed from writing the request to the first whole frame (checked equal to the log's bytes at N; the connection is then dropped), and `GET /runs/{{id}}/log?offset=N&max_bytes=65536` on one keep-alive connection, timed to the end of the JSON answer (content checked against the log). p99: `/healthz` {:.3} ms, `/stream` {:.3} ms, `/log` {:.3} ms. Connection set-up is not timed.",
        log.len() as f64 / (1 << 20) as f64,
        starts.len(),
        ms(percentile(&health, 0.99)),
        ms(percentile(&stream, 0.99)),
        ms(percentile(&tail, 0.99)),
    ));
    drop(log);
    gw.drop_log(&r.run_id);
    Ok(())
}

/// `docker info` answers.
fn docker_available() -> bool {
    std::process::Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Builds `FROM scratch` + static busybox as /bin/true.
fn build_busybox_image(env: &Env, tag: &str) -> Result<(), String> {
    let busybox = client::static_busybox()?;
    let dir = env.work.join("docker-image");
    std::fs::create_dir_all(dir.join("bin")).map_err(|e| e.to_string())?;
    std::fs::copy(&busybox, dir.join("bin/true")).map_err(|e| e.to_string())?;
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY bin/true /bin/true\nENV PATH=/bin\n",
    )
    .map_err(|e| e.to_string())?;
    let out = std::process::Command::new("docker")
        .args(["build", "-q", "-t", tag])
        .arg(&dir)
        .output()
        .map_err(|e| format!("docker build: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "docker build failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

async fn bench_docker(env: &Env, report: &mut Report) -> Result<(), String> {
    println!("== docker mode");
    let skip = |report: &mut Report, why: String| {
        report.row(
            "docker mode, one `true` run (ms)",
            "skipped".into(),
            "skipped".into(),
            None,
            "≤ 1.10× direct",
            None,
        );
        report.note(format!("Docker row skipped: {why}."));
    };
    if !docker_available() {
        skip(
            report,
            "the Docker engine does not answer (`docker info` failed)".into(),
        );
        return Ok(());
    }
    let tag = "cligate-bench-busybox:latest";
    if let Err(e) = build_busybox_image(env, tag) {
        skip(report, e);
        return Ok(());
    }
    let instance = format!("cligate-bench-{}", std::process::id());
    let gw = env.start_gateway(
        "cligate-docker",
        &[
            ("CODEX_DOCKER_IMAGE", tag),
            ("DOCKER_NETWORK", "none"),
            ("CLIGATE_INSTANCE", &instance),
            ("CLI_LIST", "true"),
        ],
    );
    let body = run_body("true", &[]);
    let mut conn = HttpConn::new(gw.addr);
    // The same argv the gateway builds (src/run/plan.rs), with this harness's own names.
    let direct = |i: usize| {
        let name = format!("cligate-bench-direct-{}-{i}", std::process::id());
        vec![
            "run".to_string(),
            "--rm".into(),
            "-i".into(),
            "--init".into(),
            "--name".into(),
            name,
            "--label".into(),
            format!("cligate.instance={instance}-direct"),
            "--label".into(),
            "cligate.session=bench".into(),
            "--label".into(),
            format!("cligate.run=direct-{i}"),
            "--security-opt".into(),
            "no-new-privileges".into(),
            "--network=none".into(),
            "--pids-limit=1024".into(),
            "-e".into(),
            "CLI_PROVIDER_NAME".into(),
            tag.into(),
            "true".into(),
        ]
    };
    let rounds = ((5.0 * env.scale).round() as usize).clamp(2, 9);
    let (mut g, mut d) = (Vec::new(), Vec::new());
    for i in 0..=rounds {
        let r = gateway_run(&mut conn, &body, &mut |_| {}).await?;
        let args = direct(i);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let dr = tokio::time::timeout(
            Duration::from_secs(60),
            direct_run("docker", &args, &[("CLI_PROVIDER_NAME", "true")], &mut |_| {}),
        )
        .await
        .map_err(|_| "direct docker run took more than 60 s")??;
        if i > 0 {
            // Round 0 warms both up.
            g.push(ms(r.total));
            d.push(ms(dr.total));
        }
    }
    let (g, d) = (median(&mut g), median(&mut d));
    report.row(
        "docker mode, one `true` run (ms)",
        format!("{g:.0}"),
        format!("{d:.0}"),
        Some(g / d),
        "≤ 1.10× direct",
        Some(g / d <= 1.1),
    );
    report.note(format!(
        "Docker: image `{tag}` = FROM scratch + static /bin/busybox as /bin/true; gateway with CODEX_DOCKER_IMAGE set, DOCKER_NETWORK=none; the direct side runs the argv the gateway builds (`docker run --rm -i --init --name … --label … --security-opt no-new-privileges --network=none --pids-limit=1024 -e CLI_PROVIDER_NAME IMAGE true`). Median of {rounds} alternating runs after one warm-up each."
    ));
    gw.stop();
    Ok(())
}

/// `wrk` for `secs` at concurrency 8; returns (requests/s, wrk's CPU time, error summary).
fn wrk(url: &str, script: &Path, secs: f64) -> Result<(f64, Duration, Option<String>), String> {
    let c0 = children_cpu();
    let out = std::process::Command::new("wrk")
        .args([
            "-t1",
            "-c8",
            &format!("-d{}s", secs.ceil() as u64),
            "--timeout",
            "10s",
            "-s",
        ])
        .arg(script)
        .arg(url)
        .output()
        .map_err(|e| format!("running wrk: {e}"))?;
    let cpu = children_cpu() - c0;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        return Err(format!("wrk failed: {text} {}", String::from_utf8_lossy(&out.stderr)));
    }
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| format!("no Requests/sec in wrk output: {text}"))?;
    let errors = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ");
    Ok((rps, cpu, (!errors.is_empty()).then_some(errors)))
}

async fn bench_webhook(env: &Env, gw: &Server, report: &mut Report) -> Result<(), String> {
    println!("== peer: webhook vs cligate, wrk -c8");
    let skip = |report: &mut Report, why: &str| {
        report.row(
            "spawn rate vs webhook, concurrency 8 (req/s)",
            "skipped".into(),
            "skipped".into(),
            None,
            "≥ 1.00× webhook",
            None,
        );
        report.note(format!("Webhook row skipped: {why}."));
    };
    let (Some(webhook), Some(_)) = (which("webhook"), which("wrk")) else {
        skip(
            report,
            "`webhook` or `wrk` is not installed (Debian packages webhook, wrk)",
        );
        return Ok(());
    };
    let hooks = env.work.join("hooks.json");
    std::fs::write(
        &hooks,
        r#"[{"id": "true", "execute-command": "/usr/bin/true", "include-command-output-in-response": true}]"#,
    )
    .map_err(|e| e.to_string())?;
    let script = env.work.join("post.lua");
    std::fs::write(
        &script,
        "wrk.method = \"POST\"\nwrk.body = '{\"cli\":\"true\"}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
    )
    .map_err(|e| e.to_string())?;
    let port = free_port();
    let mut cmd = std::process::Command::new(&webhook);
    cmd.args(["-hooks"])
        .arg(&hooks)
        .args(["-ip", "127.0.0.1", "-port", &port.to_string()]);
    let wh = Server::spawn(
        "webhook",
        cmd,
        format!("127.0.0.1:{port}").parse().unwrap(),
        &env.work.join("webhook.log"),
    );
    let wh_url = format!("http://127.0.0.1:{port}/hooks/true");
    let gw_url = format!("http://{}/run", gw.addr);
    let secs = (3.0 * env.scale).max(1.0);
    wrk(&gw_url, &script, 1.0)?;
    wrk(&wh_url, &script, 1.0)?;
    let (mut g, mut w) = (Vec::new(), Vec::new());
    let (mut wrk_cpu, mut wall) = (Duration::ZERO, 0.0);
    let mut errors = Vec::new();
    let (mut gw_cpu, mut wh_cpu) = (Duration::ZERO, Duration::ZERO);
    let (mut gw_n, mut wh_n) = (0.0, 0.0);
    for _ in 0..3 {
        let s0 = proc_cpu(gw.pid());
        let (rps, cpu, err) = wrk(&gw_url, &script, secs)?;
        gw_cpu += proc_cpu(gw.pid()) - s0;
        gw_n += rps * secs.ceil();
        g.push(rps);
        wrk_cpu += cpu;
        wall += secs.ceil();
        errors.extend(err.map(|e| format!("cligate: {e}")));
        let s0 = proc_cpu(wh.pid());
        let (rps, cpu, err) = wrk(&wh_url, &script, secs)?;
        wh_cpu += proc_cpu(wh.pid()) - s0;
        wh_n += rps * secs.ceil();
        w.push(rps);
        wrk_cpu += cpu;
        wall += secs.ceil();
        errors.extend(err.map(|e| format!("webhook: {e}")));
    }
    let (g, w) = (median(&mut g), median(&mut w));
    report.row(
        "spawn rate vs webhook, concurrency 8 (req/s)",
        format!("{g:.0}"),
        format!("{w:.0} (webhook)"),
        Some(g / w),
        "≥ 1.00× webhook",
        Some(g / w >= 1.0 && errors.is_empty()),
    );
    report.note(format!(
        "Peer: adnanh/webhook {} with a hook running /usr/bin/true and `include-command-output-in-response: true` (so that it waits for the command, like cligate does); both driven by `wrk -t1 -c8 -d{}s` with the same POST body, 3 interleaved rounds, median. wrk used {:.0}% of one core (of 200%); per request the gateway process used {:.0} µs CPU, webhook {:.0} µs.{}",
        version(&webhook),
        secs.ceil(),
        wrk_cpu.as_secs_f64() * 100.0 / wall,
        gw_cpu.as_secs_f64() * 1e6 / gw_n,
        wh_cpu.as_secs_f64() * 1e6 / wh_n,
        if errors.is_empty() {
            " No errors or non-2xx answers.".to_string()
        } else {
            format!(" Errors: {}.", errors.join("; "))
        }
    ));
    wh.stop();
    Ok(())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn version(bin: &Path) -> String {
    std::process::Command::new(bin)
        .arg("-version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .trim_start_matches("webhook version ")
                .to_string()
        })
        .unwrap_or_default()
}

fn command_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

// ------------------------------------------------------------------------------------------

fn main() {
    let argv0 = std::env::args().next().unwrap_or_default();
    match Path::new(&argv0).file_name().and_then(|n| n.to_str()) {
        Some(GEN_NAME) => {
            let total = std::env::args()
                .nth(1)
                .and_then(|a| a.parse().ok())
                .unwrap_or(STREAM_BYTES);
            generate(total);
        }
        Some(SPAWNER_NAME) => bare_spawner(),
        _ => {}
    }
    // `cargo bench` passes `--bench`; the only option is `--only NAME[,NAME…]`.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').map(String::from).collect());
    let want = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == name));

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cligate = std::env::var_os("CLIGATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/release/cligate"));
    assert!(
        cligate.is_file(),
        "{} not found: run `cargo build --release` first",
        cligate.display()
    );
    let scale: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let out_file = std::env::var_os("BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("benches/results.md"));

    let work = std::env::temp_dir().join(format!("cligate-bench-{}", std::process::id()));
    let bin_dir = work.join("bin");
    std::fs::create_dir_all(&bin_dir).expect("work dir");
    let me = std::env::current_exe().expect("own path");
    std::os::unix::fs::symlink(&me, bin_dir.join(GEN_NAME)).expect("generator symlink");
    std::os::unix::fs::symlink(&me, bin_dir.join(SPAWNER_NAME)).expect("spawner symlink");
    let env = Env {
        cligate,
        bin_dir,
        work: work.clone(),
        scale,
    };

    // Whatever happens, the harness ends: a watchdog bounds the whole run.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(540));
        eprintln!("bench: watchdog: still running after 9 minutes; giving up");
        std::process::exit(3);
    });

    let load_before = loadavg();
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut report = Report::default();
    let result: Result<(), String> = rt.block_on(async {
        let gw = env.start_gateway("cligate", &[]);
        println!("gateway pid {} on {}", gw.pid(), gw.addr);
        if want("spawn") {
            bench_spawn_rate(&env, &gw, &mut report).await?;
        }
        if want("latency") {
            bench_latency(&env, &gw, &mut report).await?;
        }
        if want("detached") {
            bench_detached(&env, &gw, &mut report).await?;
        }
        if want("throughput") {
            bench_throughput(&env, &gw, &mut report).await?;
        }
        if want("memory") {
            bench_memory(&env, &mut report).await?;
        }
        if want("fanout") {
            bench_fanout(&env, &mut report).await?;
        }
        if want("reattach") {
            bench_reattach(&env, &gw, &mut report).await?;
        }
        if want("docker") {
            bench_docker(&env, &mut report).await?;
        }
        if want("replicas") {
            bench_replicas(&env, &mut report).await?;
        }
        if want("webhook") {
            bench_webhook(&env, &gw, &mut report).await?;
        }
        let log = std::fs::read_to_string(env.work.join("cligate.log")).unwrap_or_default();
        let problems = log
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("WARN"))
            .count();
        if problems > 0 {
            report.note(format!(
                "The gateway logged {problems} warnings/errors (see {}).",
                env.work.join("cligate.log").display()
            ));
        }
        gw.stop();
        Ok(())
    });
    let elapsed = started.elapsed();
    let commit = command_line(
        "git",
        &["-C", root.to_str().unwrap(), "describe", "--always", "--dirty"],
    );
    let header = format!(
        "# cligate benchmark results\n\n\
         `./benches/run.sh` on {} ({} cores, {}), commit {}, {:.0} s. \
         Load average before {}, after {} (other work on the machine shows up here; every \
         baseline ran interleaved with the gateway in the same invocation).\n",
        command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        command_line("uname", &["-sr"]),
        if commit.is_empty() { "?".into() } else { commit },
        elapsed.as_secs_f64(),
        load_before,
        loadavg(),
    );
    let md = report.markdown(&header);
    println!("\n{md}");
    if let Err(e) = &result {
        eprintln!("bench: FAILED: {e}");
    }
    if result.is_ok() && only.is_none() {
        std::fs::write(&out_file, &md).expect("writing the results file");
        println!("written to {}", out_file.display());
    }
    let _ = std::fs::remove_dir_all(&work);
    std::process::exit(if result.is_ok() { 0 } else { 1 });
}
