//! The accept loop: one task per connection under hyper's graceful watcher, and an orderly
//! shutdown — stop accepting, let runs finish for a grace period, end the rest, drain.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Result;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, App};
use crate::config::Config;
use crate::docker;
use crate::metrics::CleanupLabels;
use crate::run::containment::Containment;
use crate::run::frame::EndReason;
use crate::run::plan::container_name;

/// Longest wait for a request's headers (slow-loris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// hyper's per-connection buffer limit. On the write side it bounds the response bytes hyper
/// holds for a client that has stopped reading (hyper's default, ~400 KiB, made 50 stalled
/// clients cost ~35 MiB); on the read side it is the largest request head accepted.
const MAX_BUF: usize = 64 * 1024;
/// Longest wait for connections to finish writing after every run has ended.
const CONNECTION_DRAIN: Duration = Duration::from_secs(5);

/// Prepares the gateway: in docker mode checks the engine; chooses how runs are contained and
/// ends the processes a crashed predecessor of this instance left; in docker mode removes the
/// containers it left. Fails with a one-line reason.
pub async fn prepare(config: Arc<Config>) -> Result<Arc<App>> {
    let engine = match config.docker() {
        Some(d) => Some(docker::engine_version(&d.bin).await.map_err(|e| {
            anyhow::anyhow!("CODEX_DOCKER_IMAGE: docker mode needs a Docker engine, but it does not answer: {e:#}")
        })?),
        None => None,
    };
    let app = Arc::new(App::new(config.clone(), contain(&config).await?));
    if let (Some(d), Some(version)) = (config.docker(), engine) {
        let removed = docker::clean_instance(&d.bin, &d.instance).await?;
        if removed > 0 {
            app.metrics
                .container_cleanups
                .get_or_create(&CleanupLabels { when: "startup" })
                .inc_by(removed as u64);
        }
        tracing::info!(engine = version, image = d.image, removed, "docker mode");
    }
    Ok(app)
}

/// Chooses the containment (cgroup or `/proc` marker), ends what dead gateways of this instance
/// left running, and says which mechanism is in use.
async fn contain(config: &Config) -> Result<Arc<Containment>> {
    let containment = Arc::new(Containment::detect(&config.instance));
    let sweeper = containment.clone();
    let swept = tokio::task::spawn_blocking(move || sweeper.sweep_leftovers()).await?;
    tracing::info!(
        containment = containment.mechanism(),
        path = %containment.location(),
        swept,
        "process containment"
    );
    Ok(containment)
}

/// Removes, every `janitor_interval`, containers of this instance that belong to no registered
/// run: one whose `docker run` client died between creating and starting it escapes the run's own
/// clean-up, and would otherwise wait for the next start-up.
async fn janitor(app: Arc<App>, stop: CancellationToken) {
    let Some(d) = app.config.docker() else { return };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(d.janitor_interval) => {}
            _ = stop.cancelled() => return,
        }
        // List first, then look at the registry: a container listed belongs to a run that was
        // registered before the listing, so a run still registered now is still its owner.
        let Ok(names) = docker::list_instance(&d.bin, &d.instance).await else {
            continue;
        };
        let owned: HashSet<String> = app.registry.run_ids().iter().map(|id| container_name(id)).collect();
        for name in names.into_iter().filter(|n| !owned.contains(n)) {
            if docker::remove(&d.bin, &name).await {
                tracing::info!(container = name, "removed a container that belongs to no run");
                app.metrics
                    .container_cleanups
                    .get_or_create(&CleanupLabels { when: "janitor" })
                    .inc();
            }
        }
    }
}

/// Serves `listener` until `shutdown` resolves, then shuts down gracefully.
pub async fn run(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) -> Result<()> {
    let stop_janitor = CancellationToken::new();
    let janitor = tokio::spawn(janitor(app.clone(), stop_janitor.clone()));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BUF);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
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
        let service = service_fn(move |req| api::handle(app.clone(), client, req));
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(client = %client, error = %e, "connection ended");
            }
        });
    }
    drop(listener);
    shut_down(&app, graceful).await;
    stop_janitor.cancel();
    let _ = janitor.await;
    Ok(())
}

async fn shut_down(app: &App, graceful: GracefulShutdown) {
    let config = &app.config;
    app.shutting_down.store(true, Ordering::Relaxed);
    app.admission.close();
    app.runs.close();
    tracing::info!(
        running = app.registry.len(),
        grace_s = config.shutdown_grace.as_secs_f64(),
        "shutting down"
    );
    let connections = graceful.shutdown();
    if tokio::time::timeout(config.shutdown_grace, app.runs.wait())
        .await
        .is_err()
    {
        app.registry.stop_all(EndReason::Shutdown);
        // Each run needs its kill grace, plus time for the engine to remove containers.
        let bound = config.kill_grace + Duration::from_secs(30);
        if tokio::time::timeout(bound, app.runs.wait()).await.is_err() {
            tracing::error!("runs did not end in time; exiting anyway");
        }
    }
    if tokio::time::timeout(CONNECTION_DRAIN, connections).await.is_err() {
        tracing::warn!("connections still open after the drain period");
    }
    tracing::info!("shut down");
}
