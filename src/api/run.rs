//! `POST /run`, `GET /sessions/{id}` and `POST /sessions/{id}/stop`: read and validate the
//! request, admit it, plan the launch, start the supervisor, and answer with its frame stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, EXPECT};
use hyper::{Request, Response, StatusCode};
use serde_json::json;
use tokio::sync::mpsc;

use super::error::ApiError;
use super::{App, json};
use crate::admission::Refused;
use crate::auth::Caller;
use crate::body::Body;
use crate::metrics::{CleanupLabels, CliLabels, CodeLabels, FinishLabels, StreamLabels};
use crate::run::frame::{EndReason, Frame};
use crate::run::plan::plan;
use crate::run::request::RunRequest;
use crate::run::supervisor::{Limits, supervise};
use crate::run::{Run, RunState};
use crate::telemetry::clip;

/// Encoded frames buffered between a run and its client. Small on purpose: with at most
/// 64 KiB of output per frame batch this bounds what a stalled client can make the gateway hold
/// (hyper's own buffer, `server::MAX_BUF`, comes on top). Two are enough to keep the pipe
/// reader and the socket writer busy at once.
const FRAME_BUFFER: usize = 2;

/// At most this much of a body that is too large is read and thrown away before the 413, so
/// that a client that sends its whole body before reading (Python's urllib, most simple clients)
/// reads the 413 instead of a broken pipe: hyper closing with unread data makes the kernel reset
/// the connection. 64 MiB covers the usual mistakes (a file attached whole, a few times the
/// limit) and costs no memory, only the time to read it; a body declared larger is not read at
/// all, since its client would see the reset anyway.
const DRAIN_BYTES: u64 = 64 << 20;
/// At most this long is spent draining: 64 MiB take about 5 s at 100 Mbit/s and far less on a
/// LAN or loopback, and a connection slot (`MAX_CONNECTIONS`) is held no longer than this.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Reads the whole body within `timeout` (408 after), refusing more than `limit` bytes (413).
/// The content type is not checked: clients of the reference send JSON under whatever type their
/// HTTP library picks.
async fn read_body(req: Request<Incoming>, limit: usize, timeout: Duration) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // A client that waits for `100 Continue` has sent nothing yet: refuse at once. hyper sends the
    // 100 only when the body is first read, so it is never sent.
    let expects_continue = req
        .headers()
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut body = req.into_body();
    if declared.is_some_and(|n| n > limit as u64) {
        if !expects_continue && declared.is_some_and(|n| n <= DRAIN_BYTES) {
            drain(&mut body, 0).await;
        }
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut collected = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(ApiError::RequestTimeout(timeout)),
            Ok(None) => return Ok(collected.freeze()),
            Ok(Some(Err(e))) => return Err(ApiError::BadRequest(format!("reading the request body: {e}"))),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        if collected.len() + data.len() > limit {
            // A chunked body (no Content-Length) that turned out too large.
            let read = (collected.len() + data.len()) as u64;
            drop(collected);
            drain(&mut body, read).await;
            return Err(ApiError::PayloadTooLarge(limit));
        }
        collected.extend_from_slice(&data);
    }
}

/// Reads and discards the rest of `body`, until its end, [`DRAIN_BYTES`] in all (counting the
/// `read` already taken) or [`DRAIN_TIME`]. What is left unread makes hyper close the connection.
async fn drain(body: &mut Incoming, mut read: u64) {
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    while read <= DRAIN_BYTES {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => read += frame.data_ref().map_or(0, |d| d.len() as u64),
            _ => return,
        }
    }
}

fn parse(body: &[u8]) -> Result<RunRequest, ApiError> {
    let shape = |e: serde_json::Error| match e.classify() {
        serde_json::error::Category::Data => ApiError::Unprocessable(e.to_string()),
        _ => ApiError::BadRequest(format!("body is not valid JSON: {e}")),
    };
    // serde would also accept a struct written as an array; the contract's body is an object.
    if !body.trim_ascii_start().starts_with(b"{") {
        serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(shape)?;
        return Err(ApiError::Unprocessable("body must be a JSON object".into()));
    }
    serde_json::from_slice(body).map_err(shape)
}

pub async fn start(
    app: &Arc<App>,
    client: SocketAddr,
    caller: Caller,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let config = &app.config;
    let body = read_body(req, config.max_request_bytes, config.request_read_timeout).await?;
    let spec = parse(&body)?.validate(config).map_err(ApiError::BadRequest)?;
    drop(body);
    let conflict = || ApiError::Conflict(format!("session '{}' is already running", spec.session_id));
    if app.registry.get(&spec.session_id).is_some() {
        return Err(conflict());
    }
    let permit = app.admission.admit().await.map_err(|refused| match refused {
        Refused::QueueFull => ApiError::Overloaded {
            detail: format!(
                "{} runs are running and {} waiting",
                config.max_concurrent, config.max_queued
            ),
            retry_after: 1,
        },
        Refused::QueueTimeout => ApiError::Overloaded {
            detail: "no run slot became free in QUEUE_TIMEOUT_SECONDS".into(),
            retry_after: 1,
        },
        Refused::ShuttingDown => ApiError::Unavailable("the gateway is shutting down".into()),
    })?;
    let run = Arc::new(Run::new(spec.session_id.clone(), spec.cli.clone()).owned_by(caller.name));
    let registration = app.registry.insert(run.clone()).ok_or_else(conflict)?;
    let launch = plan(&spec, config, &run.id);

    let (sink, frames) = mpsc::channel(FRAME_BUFFER);
    let mut first = BytesMut::new();
    Frame::Session {
        id: run.session_id.clone(),
    }
    .encode(&mut first);
    sink.try_send(first.freeze()).expect("a new channel has room");

    let limits = Limits {
        timeout: config.timeout,
        idle_timeout: config.idle_timeout,
        output_limit: config.output_limit,
        kill_grace: config.kill_grace,
    };
    let metrics = app.metrics.clone();
    let search_path = config.search_path.clone();
    let containment = app.containment.clone();
    let run_id = run.id.clone();
    metrics
        .runs_started
        .get_or_create(&CliLabels { cli: spec.cli.clone() })
        .inc();
    metrics.active_runs.inc();
    app.runs.spawn(async move {
        let model = launch.model.clone();
        let container = launch.container.is_some();
        let outcome = supervise(&run, &containment, launch, spec.stdin, &search_path, &limits, sink).await;
        drop(registration);
        drop(permit);
        let end = outcome.end;
        let duration = run.started.elapsed();
        metrics.active_runs.dec();
        metrics
            .runs_finished
            .get_or_create(&FinishLabels {
                cli: run.cli.clone(),
                reason: end.reason.as_str().into(),
            })
            .inc();
        metrics.exit_codes.get_or_create(&CodeLabels { code: end.code }).inc();
        metrics
            .run_duration
            .get_or_create(&CliLabels { cli: run.cli.clone() })
            .observe(duration.as_secs_f64());
        metrics
            .bytes
            .get_or_create(&StreamLabels { stream: "stdout" })
            .inc_by(outcome.stdout_bytes);
        metrics
            .bytes
            .get_or_create(&StreamLabels { stream: "stderr" })
            .inc_by(outcome.stderr_bytes);
        if container && end.reason != EndReason::Exited && end.reason != EndReason::SpawnFailed {
            metrics
                .container_cleanups
                .get_or_create(&CleanupLabels { when: "run" })
                .inc();
        }
        tracing::info!(
            run_id = run.id.as_str(),
            session_id = clip(&run.session_id),
            cli = run.cli.as_str(),
            owner = run.owner.as_deref().unwrap_or(""),
            model = model.as_deref().unwrap_or(""),
            code = end.code,
            reason = end.reason.as_str(),
            duration_ms = duration_as_ms(duration),
            stdout_bytes = outcome.stdout_bytes,
            stderr_bytes = outcome.stderr_bytes,
            client = %client,
            "run finished"
        );
    });

    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "application/x-ndjson")
        .header(CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .header("x-cligate-run-id", run_id)
        .body(Body::stream(frames))
        .expect("static headers are valid"))
}

fn duration_as_ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// The running run of `session_id`, when `caller` may see it. A run of another token's is
/// answered exactly like a session that does not exist.
fn visible(app: &App, caller: &Caller, session_id: &str) -> Result<Arc<Run>, ApiError> {
    app.registry
        .get(session_id)
        .filter(|run| caller.may_see(run.owner.as_deref()))
        .ok_or_else(|| ApiError::NotFound(format!("session '{session_id}' is not running")))
}

pub fn stop(app: &App, caller: &Caller, session_id: String) -> Result<Response<Body>, ApiError> {
    let run = visible(app, caller, &session_id)?;
    if !run.request_stop(EndReason::Stopped) && matches!(run.state(), RunState::Finished(_)) {
        return Err(ApiError::NotFound(format!("session '{session_id}' is not running")));
    }
    Ok(json(
        StatusCode::OK,
        &json!({ "session_id": session_id, "status": "stopped" }),
    ))
}

pub fn status(app: &App, caller: &Caller, session_id: String) -> Result<Response<Body>, ApiError> {
    let run = visible(app, caller, &session_id)?;
    let (state, pid) = match run.state() {
        RunState::Starting => ("starting", None),
        RunState::Running { pid } => ("running", Some(pid)),
        RunState::Finished(_) => ("finished", None),
    };
    Ok(json(
        StatusCode::OK,
        &json!({
            "session_id": run.session_id,
            "run_id": run.id,
            "cli": run.cli,
            "owner": run.owner,
            "state": state,
            "pid": pid,
            "elapsed_seconds": run.started.elapsed().as_secs_f64(),
        }),
    ))
}
