//! `POST /run`, `GET /sessions/{id}` and `POST /sessions/{id}/stop`: read and validate the
//! request, hand it to the run service, and answer with a reader of the run's log — the one
//! reader whose going away ends the run (the contract of an attached run).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde_json::json;
use tokio_stream::{Stream, StreamExt};

use super::error::ApiError;
use super::{App, json};
use crate::auth::Caller;
use crate::body::Body;
use crate::metrics::Metrics;
use crate::run::frame::EndReason;
use crate::run::request::RunRequest;
use crate::run::{Run, RunState};
use crate::runlog::{Source, follow};

/// Reads the whole body, refusing more than `limit` bytes. The content type is not checked:
/// clients of the reference send JSON under whatever type their HTTP library picks.
async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::PayloadTooLarge(limit)),
        Err(e) => Err(ApiError::BadRequest(format!("reading the request body: {e}"))),
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
    _client: SocketAddr,
    caller: Caller,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let config = &app.config;
    let body = read_body(req, config.max_request_bytes).await?;
    let spec = parse(&body)?.validate(config).map_err(ApiError::BadRequest)?;
    drop(body);
    let run = app.runs.submit(spec, &caller).await?;
    let log = run.log.clone().expect("a submitted run has a log");
    let frames = attached(run.clone(), Source::Live(log), app.runs.metrics.clone());
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "application/x-ndjson")
        .header(CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .header("x-cligate-run-id", run.id.as_str())
        .body(Body::stream(frames))
        .expect("static headers are valid"))
}

/// The attached client's reader: the whole log from the session frame to the exit frame. When
/// the body is dropped before the run has ended (the client went away), the run is ended.
fn attached(run: Arc<Run>, source: Source, metrics: Arc<Metrics>) -> impl Stream<Item = Bytes> + Send + use<> {
    struct EndOnDrop(Arc<Run>);
    impl Drop for EndOnDrop {
        fn drop(&mut self) {
            self.0.request_stop(EndReason::Disconnected);
        }
    }
    let guard = EndOnDrop(run);
    reader(follow(source, 0), metrics).map(move |piece| {
        let _ = &guard;
        piece
    })
}

/// Counts a reader in `cligate_log_readers` for as long as it follows.
pub fn reader(
    pieces: impl Stream<Item = Bytes> + Send + 'static,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = Bytes> + Send + 'static {
    struct Counted(Arc<Metrics>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.log_readers.dec();
        }
    }
    metrics.log_readers.inc();
    let counted = Counted(metrics);
    pieces.map(move |piece| {
        let _ = &counted;
        piece
    })
}

fn run_not_found(session_id: &str) -> ApiError {
    ApiError::NotFound(format!("session '{session_id}' is not running"))
}

pub fn stop(app: &App, caller: &Caller, session_id: String) -> Result<Response<Body>, ApiError> {
    app.runs
        .stop(caller, app.runs.registry.get(&session_id), &format!("session '{session_id}'"))?;
    Ok(json(
        StatusCode::OK,
        &json!({ "session_id": session_id, "status": "stopped" }),
    ))
}

/// A running session from the running index; a finished one from its newest record. A run of
/// another token's is answered exactly like a session that does not exist.
pub async fn status(app: &App, caller: &Caller, session_id: String) -> Result<Response<Body>, ApiError> {
    if let Some(run) = app
        .runs
        .registry
        .get(&session_id)
        .filter(|run| caller.may_see(run.owner.as_deref()))
    {
        let (state, pid, exit) = match run.state() {
            RunState::Starting => ("starting", None, None),
            RunState::Running { pid } => ("running", Some(pid), None),
            RunState::Finished(end) => ("finished", None, Some(end)),
        };
        return Ok(json(
            StatusCode::OK,
            &json!({
                "session_id": run.session_id,
                "run_id": run.id,
                "cli": run.cli,
                "owner": run.owner,
                "state": state,
                "pid": pid,
                "elapsed_seconds": run.started.elapsed().as_secs_f64(),
                "exit_code": exit.map(|e| e.code),
                "reason": exit.map(|e| e.reason.as_str()),
            }),
        ));
    }
    let record = app
        .runs
        .session_record(caller, &session_id)
        .await
        .map_err(|_| run_not_found(&session_id))?;
    let elapsed = match (record.started_at, record.finished_at) {
        (Some(start), Some(end)) => Some((end - start).max(0) as f64 / 1000.0),
        _ => None,
    };
    Ok(json(
        StatusCode::OK,
        &json!({
            "session_id": record.session_id,
            "run_id": record.run_id,
            "cli": record.cli,
            "owner": record.owner,
            "state": record.state.as_str(),
            "pid": null,
            "elapsed_seconds": elapsed,
            "exit_code": record.exit_code,
            "reason": record.reason,
        }),
    ))
}
