//! The accept loop: one task per connection under hyper's graceful watcher, at most
//! `MAX_CONNECTIONS` at once, and an orderly shutdown — stop accepting, let runs finish for a grace
//! period, end the rest, drain.
//!
//! # Slow and numerous clients
//! - A request's head must arrive within `REQUEST_READ_TIMEOUT_SECONDS` (hyper's
//!   `header_read_timeout`; the same timer closes a keep-alive connection that stays idle that
//!   long). hyper answers a head that is late by closing the connection, without a response:
//!   it has no hook to answer then, and a 408 on a connection that may never have sent a byte
//!   would need HTTP written by hand. Its body must arrive within the same time, or it is
//!   answered 408 (`api::run::read_body`).
//! - At the connection cap the loop stops calling `accept`: new connections wait, completed, in
//!   the kernel's listen backlog (see [`bind`]) until a connection ends and frees its slot.
//! - The cap is clamped so that connections plus runs cannot exhaust the file descriptors the
//!   process may open ([`ConnectionCap`]); the binary first raises its soft `RLIMIT_NOFILE` to
//!   the hard limit ([`raise_fd_limit`]).
//!
//! # Log followers
//! A connection whose first request is `GET /runs/{id}/stream` is served on the log followers'
//! runtime, at `STREAM_READER_NICE` (see [`crate::priority`]); every other one on the HTTP
//! workers. The first request is peeked at (left on the socket for hyper), within the same
//! `REQUEST_READ_TIMEOUT_SECONDS`; a connection that has sent nothing by the shutdown is closed.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::api::{self, App};
use crate::config::Config;
use crate::data_lock;
use crate::exec;
use crate::metrics::{CleanupLabels, Metrics};
use crate::replicas::Replicas;
use crate::run::containment::Containment;
use crate::runs::Runs;

/// The listen backlog asked for; Linux clamps it to `net.core.somaxconn` (4096 by default since
/// 5.4). The standard library's 128 lost connections of a burst of 2000; the backlog is also
/// where connections wait while the gateway is at `MAX_CONNECTIONS`, and costs the process no
/// file descriptor.
const LISTEN_BACKLOG: u32 = 4096;
/// File descriptors kept aside for everything but connections and running runs: stdio, the
/// listener, the runtime's epoll and wake-up descriptors, engine API connections (readiness,
/// the janitor), and runs being spawned (std's spawn briefly holds 8 pipe ends per child).
const FD_RESERVE: u64 = 64;
/// File descriptors a running run holds: its stdin, stdout and stderr pipes and tokio's pidfd.
const FDS_PER_RUN: u64 = 4;
/// hyper's per-connection buffer limit. On the write side it bounds the response bytes hyper
/// holds for a client that has stopped reading (hyper's default, ~400 KiB, made 50 stalled
/// clients cost ~35 MiB); on the read side it is the largest request head accepted.
const MAX_BUF: usize = 64 * 1024;
/// Longest wait for connections to finish writing after every run has ended.
const CONNECTION_DRAIN: Duration = Duration::from_secs(5);

/// Prepares the gateway that will listen at `bound`: it takes `DATA_DIR` for itself (see
/// [`crate::data_lock`]); the store opens; a replica makes sure no live gateway answers under
/// its name; the executor checks it can work (in docker mode: the engine answers) and removes
/// what a crashed predecessor of this instance left (its containers); the containment is chosen
/// and ends the processes such a predecessor left; its runs are recovered. Fails with a one-line
/// reason.
///
/// The directory and the name come first: every later step takes what this instance's
/// predecessor left, and a second gateway on a live one's `DATA_DIR` or under a live replica's
/// name took the live one's runs (and containers) before it found out and stopped.
pub async fn prepare(config: Arc<Config>, bound: SocketAddr) -> Result<Arc<App>> {
    let data_lock = data_lock::lock(&config.data_dir)?;
    let store = Runs::open_store(&config).await?;
    let metrics = Arc::new(Metrics::new());
    let replicas = Replicas::new(&config, &store, metrics.clone())?;
    if let Some(replicas) = &replicas {
        replicas.refuse_a_live_namesake(bound).await?;
    }
    let executor = exec::for_config(&config)?;
    let prepared = executor.prepare().await?;
    let (containment, swept) = contain(&config).await?;
    let app = Arc::new(
        App::new(
            config.clone(),
            data_lock,
            store,
            replicas,
            metrics,
            containment.clone(),
            executor.clone(),
        )
        .await?,
    );
    tracing::info!(
        containment = containment.mechanism(),
        path = %containment.location(),
        swept,
        "process containment"
    );
    if prepared.removed > 0 {
        app.metrics
            .container_cleanups
            .get_or_create(&CleanupLabels { when: "startup" })
            .inc_by(prepared.removed as u64);
    }
    if let Some(engine) = prepared.engine {
        tracing::info!(
            executor = executor.name(),
            engine,
            removed = prepared.removed,
            "executor"
        );
    }
    Ok(app)
}

/// Chooses the containment (cgroup or `/proc` marker), ends what dead gateways of this instance
/// left running, and says which mechanism is in use.
/// Returns the containment and how many leftover processes it swept; the caller logs both once
/// start-up has succeeded (a failed start-up is one line on stderr).
async fn contain(config: &Config) -> Result<(Arc<Containment>, usize)> {
    let containment = Arc::new(Containment::detect(&config.instance));
    let sweeper = containment.clone();
    let swept = tokio::task::spawn_blocking(move || sweeper.sweep_leftovers()).await?;
    Ok((containment, swept))
}

/// Lets the executor remove, every `janitor_interval`, what belongs to no registered run: a
/// container whose `docker run` client died between creating and starting it escapes the run's
/// own clean-up, and would otherwise wait for the next start-up.
async fn janitor(app: Arc<App>, stop: CancellationToken) {
    let executor = app.runs.executor.clone();
    let Some(interval) = executor.janitor_interval() else {
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
        // The executor lists first, then asks the registry: a container listed belongs to a run
        // that was registered before the listing, so a run still registered then is its owner.
        let registry = app.runs.registry.clone();
        match executor
            .clean_leftovers(&|run_id| registry.by_run_id(run_id).is_some())
            .await
        {
            Ok(0) => {}
            Ok(removed) => {
                app.metrics
                    .container_cleanups
                    .get_or_create(&CleanupLabels { when: "janitor" })
                    .inc_by(removed as u64);
            }
            Err(e) => tracing::debug!(error = %format!("{e:#}"), "janitor"),
        }
    }
}

/// How often retention looks for runs to remove.
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);

/// Applies retention at start-up and then every [`RETENTION_INTERVAL`].
async fn retention(app: Arc<App>, stop: CancellationToken) {
    loop {
        if let Err(e) = app.runs.retain().await {
            tracing::warn!(error = %format!("{e:#}"), "retention failed; trying again later");
        }
        tokio::select! {
            _ = tokio::time::sleep(RETENTION_INTERVAL) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Removes idle branch worktrees (`WORKSPACE_TREE_IDLE_SECONDS`), looking a few times per idle
/// period, at most every hour.
async fn worktree_sweeper(app: Arc<App>, stop: CancellationToken) {
    let Some(idle) = app.runs.config.workspace_tree_idle else {
        return;
    };
    let every = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let removed = app.runs.workspaces.sweep_idle_trees(idle).await;
        app.metrics.worktrees_removed.inc_by(removed as u64);
    }
}

/// Binds the gateway's listening socket: `SO_REUSEADDR` (a restart need not wait for the old
/// connections' TIME_WAIT) and a [`LISTEN_BACKLOG`] large enough for bursts. Must be called
/// inside the runtime.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, as most servers do: the soft limit is
/// often a historical 1024 while the hard limit allows far more. Returns (soft, hard) as they are
/// afterwards. Only the binary calls this; the run's CLIs inherit the raised soft limit.
pub fn raise_fd_limit() -> std::io::Result<(u64, u64)> {
    use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    // An unlimited hard limit cannot be the soft one: Linux allows at most fs.nr_open.
    let target = if hard == RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20)
    } else {
        hard
    };
    if soft < target {
        setrlimit(Resource::RLIMIT_NOFILE, target, hard)?;
    }
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    Ok((soft, hard))
}

/// How many connections are served at once.
///
/// Every connection costs one file descriptor and every running run [`FDS_PER_RUN`], plus a
/// fixed [`FD_RESERVE`]; a gateway whose connections take every descriptor can no longer spawn
/// a run ("Too many open files") nor accept its health check. So the effective cap is
/// `MAX_CONNECTIONS`, lowered when needed to the soft `RLIMIT_NOFILE` minus what
/// `MAX_CONCURRENT_RUNS` runs and the reserve need (at least 1). Runs waiting for a slot hold
/// only their connection, so they are covered by the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCap {
    /// `MAX_CONNECTIONS`.
    pub configured: usize,
    /// The soft `RLIMIT_NOFILE`, when it could be read.
    pub fd_limit: Option<u64>,
    /// Descriptors kept for runs and the reserve.
    pub reserved: u64,
    /// The cap in force.
    pub effective: usize,
}

impl ConnectionCap {
    pub fn new(config: &Config, fd_limit: Option<u64>) -> ConnectionCap {
        let reserved = FD_RESERVE + FDS_PER_RUN * config.max_concurrent as u64;
        let effective = match fd_limit {
            Some(limit) => {
                let room = usize::try_from(limit.saturating_sub(reserved)).unwrap_or(usize::MAX);
                config.max_connections.min(room).max(1)
            }
            None => config.max_connections,
        };
        ConnectionCap {
            configured: config.max_connections,
            fd_limit,
            reserved,
            effective,
        }
    }

    /// The cap for this process's current soft `RLIMIT_NOFILE`.
    pub fn for_process(config: &Config) -> ConnectionCap {
        let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .ok()
            .map(|(soft, _)| soft);
        ConnectionCap::new(config, limit)
    }
}

/// Serves `listener` until `shutdown` resolves, then shuts down gracefully.
pub async fn run(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) -> Result<()> {
    // A replica is registered before it serves its first request (it may create runs).
    if let Some(replicas) = &app.replicas {
        replicas.register(listener.local_addr()?).await?;
    }
    let stop_heartbeat = CancellationToken::new();
    let heartbeat = app
        .replicas
        .clone()
        .map(|r| tokio::spawn(r.keep_alive(app.runs.clone(), stop_heartbeat.clone())));
    let stop_janitor = CancellationToken::new();
    let janitor = tokio::spawn(janitor(app.clone(), stop_janitor.clone()));
    let retention = tokio::spawn(retention(app.clone(), stop_janitor.clone()));
    let sweeper = tokio::spawn(worktree_sweeper(app.clone(), stop_janitor.clone()));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(app.config.request_read_timeout)
        .max_buf_size(MAX_BUF);
    let cap = ConnectionCap::for_process(&app.config);
    if cap.effective < cap.configured {
        tracing::warn!(
            max_connections = cap.configured,
            effective = cap.effective,
            fd_limit = cap.fd_limit,
            reserved_fds = cap.reserved,
            "MAX_CONNECTIONS lowered to fit the file-descriptor limit (RLIMIT_NOFILE) beside MAX_CONCURRENT_RUNS runs"
        );
    } else {
        tracing::info!(
            max_connections = cap.effective,
            fd_limit = cap.fd_limit,
            reserved_fds = cap.reserved,
            "connection limit"
        );
    }
    // One permit per open connection, moved into its task: at the cap the loop waits here
    // instead of accepting, and connections queue in the listen backlog.
    let slots = Arc::new(Semaphore::new(cap.effective));
    let mut warned_full: Option<Instant> = None;
    let graceful = GracefulShutdown::new();
    // Cancelled at shutdown: a connection that has not sent its first request by then is closed.
    let closing = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // At most one warning a minute while the gateway stays at its cap.
                if warned_full.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    warned_full = Some(Instant::now());
                    tracing::warn!(
                        max_connections = cap.effective,
                        "connection limit reached; new connections wait in the listen backlog"
                    );
                }
                tokio::select! {
                    permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let (http, watcher, closing) = (http.clone(), graceful.watcher(), closing.clone());
        tokio::spawn(async move {
            let _slot = permit;
            let readers = match app.config.reader_nice {
                0 => None,
                nice => match lane(&stream, app.config.request_read_timeout, &closing).await {
                    // Nothing came in time or before the shutdown (hyper would close it then
                    // too), or the peer left.
                    None => return,
                    Some(Lane::Requests) => None,
                    Some(Lane::Follower) => Some(crate::priority::reader_runtime(nice)),
                },
            };
            let serve = async move |stream: TcpStream| {
                let service = service_fn(move |req| api::handle(app.clone(), client, req));
                let conn = watcher.watch(http.serve_connection(TokioIo::new(stream), service));
                if let Err(e) = conn.await {
                    tracing::debug!(client = %client, error = %e, "connection ended");
                }
            };
            match readers {
                None => serve(stream).await,
                Some(runtime) => {
                    // A socket belongs to the runtime it was registered with: it moves over as
                    // a plain descriptor (still non-blocking) and is registered there again.
                    let Ok(stream) = stream.into_std() else { return };
                    let served = runtime.spawn(async move {
                        match TcpStream::from_std(stream) {
                            Ok(stream) => serve(stream).await,
                            Err(e) => tracing::warn!(client = %client, error = %e, "cannot move a connection"),
                        }
                    });
                    let _ = served.await;
                }
            }
        });
    }
    drop(listener);
    closing.cancel();
    shut_down(&app, graceful, (stop_heartbeat, heartbeat)).await;
    stop_janitor.cancel();
    let _ = janitor.await;
    let _ = retention.await;
    let _ = sweeper.await;
    Ok(())
}

/// Drains: no new runs (503), running runs get `SHUTDOWN_GRACE_SECONDS` and are then ended; a
/// replica keeps heartbeating meanwhile (its runs are still its own) and deregisters after.
async fn shut_down(
    app: &App,
    graceful: GracefulShutdown,
    (stop_heartbeat, heartbeat): (CancellationToken, Option<tokio::task::JoinHandle<()>>),
) {
    let config = &app.config;
    app.shutting_down.store(true, Ordering::Relaxed);
    tracing::info!(
        running = app.runs.registry.len(),
        grace_s = config.shutdown_grace.as_secs_f64(),
        "shutting down"
    );
    let connections = graceful.shutdown();
    app.runs.drain(config.shutdown_grace).await;
    stop_heartbeat.cancel();
    if let Some(task) = heartbeat {
        let _ = task.await;
    }
    if let Some(replicas) = &app.replicas {
        replicas.deregister().await;
    }
    app.runs.close().await;
    if tokio::time::timeout(CONNECTION_DRAIN, connections).await.is_err() {
        tracing::warn!("connections still open after the drain period");
    }
    tracing::info!("shut down");
}

/// Which runtime serves a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// The HTTP workers': every connection but a log follower's.
    Requests,
    /// The log followers', at `STREAM_READER_NICE` (see [`crate::priority`]).
    Follower,
}

/// The lane of a connection, from the start of its first request (read without taking it off
/// the socket: hyper reads it next). `None` when the peer sent nothing within `wait` or before
/// `closing`, or closed.
async fn lane(stream: &TcpStream, wait: Duration, closing: &CancellationToken) -> Option<Lane> {
    let mut head = [0u8; 160];
    let n = tokio::select! {
        peeked = tokio::time::timeout(wait, stream.peek(&mut head)) => peeked.ok()?.ok()?,
        () = closing.cancelled() => return None,
    };
    match n {
        0 => None,
        n if follows_a_log(&head[..n]) => Some(Lane::Follower),
        _ => Some(Lane::Requests),
    }
}

/// Whether a request head starts with `GET /runs/{id}/stream` (with or without a query). A head
/// cut short before the end of its path is not one: it is served as any other request.
fn follows_a_log(head: &[u8]) -> bool {
    let Some(rest) = head.strip_prefix(b"GET /runs/") else {
        return false;
    };
    let Some(end) = rest.iter().position(|&b| b == b' ' || b == b'?') else {
        return false;
    };
    let mut segments = rest[..end].split(|&b| b == b'/');
    matches!(
        (segments.next(), segments.next(), segments.next()),
        (Some(id), Some(b"stream"), None) if !id.is_empty()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Config {
        Config::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap()
    }

    #[test]
    fn only_a_get_of_a_runs_stream_follows_a_log() {
        for head in [
            "GET /runs/abc/stream HTTP/1.1\r\n",
            "GET /runs/abc/stream?offset=12 HTTP/1.1\r\nhost: x\r\n",
            "GET /runs/a%20b/stream?",
        ] {
            assert!(follows_a_log(head.as_bytes()), "{head}");
        }
        for head in [
            "",
            "GET /runs/abc/stream",
            "GET /runs/abc/strea",
            "GET /runs//stream HTTP/1.1",
            "GET /runs/abc HTTP/1.1",
            "GET /runs/abc/log?offset=0 HTTP/1.1",
            "GET /runs/abc/stream/x HTTP/1.1",
            "GET /runs/abc/streams HTTP/1.1",
            "POST /runs/abc/stream HTTP/1.1",
            "GET /sessions/abc/stream HTTP/1.1",
            "get /runs/abc/stream HTTP/1.1",
        ] {
            assert!(!follows_a_log(head.as_bytes()), "{head}");
        }
    }

    #[test]
    fn the_connection_cap_leaves_descriptors_for_the_runs() {
        let c = config(&[("MAX_CONCURRENT_RUNS", "4")]);
        // A roomy limit: MAX_CONNECTIONS as configured.
        let cap = ConnectionCap::new(&c, Some(1 << 20));
        assert_eq!((cap.configured, cap.effective, cap.reserved), (1024, 1024, 80));
        // 256 descriptors: 64 for the process and 4 per run are kept aside.
        assert_eq!(ConnectionCap::new(&c, Some(256)).effective, 176);
        // A limit below the reserve still serves one connection at a time.
        assert_eq!(ConnectionCap::new(&c, Some(50)).effective, 1);
        // A lower MAX_CONNECTIONS stays, and an unknown limit leaves it alone.
        let c = config(&[("MAX_CONCURRENT_RUNS", "4"), ("MAX_CONNECTIONS", "10")]);
        assert_eq!(ConnectionCap::new(&c, Some(256)).effective, 10);
        assert_eq!(ConnectionCap::new(&c, None).effective, 10);
    }

    #[tokio::test]
    async fn bind_listens_with_a_deep_backlog() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = listener.local_addr().unwrap().port();
        // `ss` shows a listening socket's backlog as its Send-Q.
        let out = std::process::Command::new("ss")
            .args(["-Hltn", &format!("sport = :{port}")])
            .output()
            .expect("ss (iproute2) is installed");
        let text = String::from_utf8(out.stdout).unwrap();
        let backlog: u32 = text.split_whitespace().nth(2).unwrap().parse().unwrap();
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(backlog, LISTEN_BACKLOG.min(somaxconn), "{text}");
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (accepted, connected) = tokio::join!(listener.accept(), client);
        accepted.unwrap();
        connected.unwrap();
    }
}
