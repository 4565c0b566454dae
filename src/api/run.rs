//! `POST /run`, `GET /sessions/{id}` and `POST /sessions/{id}/stop`: read and validate the
//! request, hand it to the run service, and answer with a reader of the run's log — the one
//! reader whose going away ends the run (the contract of an attached run).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, EXPECT};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tokio_stream::{Stream, StreamExt};

use super::error::ApiError;
use super::forward::{self, Route};
use super::{App, json};
use crate::auth::Caller;
use crate::body::Body;
use crate::metrics::Metrics;
use crate::run::frame::EndReason;
use crate::run::request::RunRequest;
use crate::run::{Run, RunState};
use crate::runlog::{Reader, Source, follow};
use crate::runs::{Idempotency, Submitted};

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
pub async fn read_body(req: Request<Incoming>, limit: usize, timeout: Duration) -> Result<Bytes, ApiError> {
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

pub fn parse(body: &[u8]) -> Result<RunRequest, ApiError> {
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
    let key = idempotency_key(req.headers())?;
    let body = read_body(req, config.max_request_bytes, config.request_read_timeout).await?;
    let request = parse(&body)?;
    if request.callback_url.is_some() {
        return Err(ApiError::BadRequest(
            "callback_url is for detached runs: POST /runs".into(),
        ));
    }
    let idempotency = key.map(|key| Idempotency {
        key,
        body_hash: body_hash("POST /run", &body),
    });
    let spec = request.validate(config).map_err(ApiError::BadRequest)?;
    drop(body);
    let (run_id, frames) = match app.runs.submit(spec, &caller, idempotency).await? {
        Submitted::Started(run, _) => {
            let log = run.log.clone().expect("a submitted run has a log");
            let frames = attached(run.clone(), Source::Live(log), app.runs.metrics.clone());
            (run.id.clone(), Body::stream(frames))
        }
        // The same request again: another reader of the same run, from its start. Its leaving
        // does not end the run; the first client's does.
        Submitted::Again(run_id) => {
            let record = app.runs.await_run(&caller, &run_id).await?;
            match forward::route(app, &caller, &record).await? {
                Route::There(url) => {
                    let target = format!("/runs/{run_id}/stream?offset=0");
                    return forward::relay_to(app, &caller, &url, Method::GET, &target, true).await;
                }
                Route::Gone(why) => return Err(forward::log_gone(&record, &why)),
                Route::Here => {}
            }
            let source = app.runs.source_of(&record).await?;
            (
                run_id,
                Body::stream(reader(follow(source, 0, Reader::Client), app.runs.metrics.clone())),
            )
        }
    };
    Ok(ndjson(&run_id, frames))
}

/// A 200 NDJSON stream of one run's frames, unbuffered by proxies on the way.
pub fn ndjson(run_id: &str, frames: Body) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "application/x-ndjson")
        .header(CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .header("x-cligate-run-id", run_id)
        .body(frames)
        .expect("static headers are valid")
}

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters, or absent.
pub fn idempotency_key(headers: &hyper::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(key.to_string()))
        }
        _ => Err(ApiError::BadRequest(
            "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
        )),
    }
}

/// What makes two requests "the same" for an `Idempotency-Key`: the route and the body as JSON
/// (key order and spacing do not matter), hashed.
pub fn body_hash(route: &str, body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let canonical = serde_json::from_slice::<serde_json::Value>(body)
        .map(|v| v.to_string().into_bytes())
        .unwrap_or_else(|_| body.to_vec());
    let mut hasher = Sha256::new();
    hasher.update(route.as_bytes());
    hasher.update([0]);
    hasher.update(&canonical);
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
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
    reader(follow(source, 0, Reader::Client), metrics).map(move |piece| {
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

/// Stops a session running here; one running on another replica is stopped there (the answer
/// is that replica's). The Gerrit plugin's route: its 404 means "not running" on every replica.
pub async fn stop(
    app: &App,
    caller: &Caller,
    session_id: String,
    uri: &hyper::Uri,
) -> Result<Response<Body>, ApiError> {
    let local = app.runs.registry.get(&session_id);
    if local.is_none()
        && app.replicas.is_some()
        && let Some(record) = unless_unknown(app.runs.session_record(caller, &session_id).await)?
        && !record.state.is_final()
        && let Route::There(url) = forward::route(app, caller, &record).await?
    {
        return forward::relay(app, caller, &url, Method::POST, uri).await;
    }
    app.runs.stop(caller, local, &format!("session '{session_id}'"))?;
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
    // A store that does not answer is 503: "not running" would be a guess.
    let record = unless_unknown(app.runs.session_record(caller, &session_id).await)?
        .ok_or_else(|| run_not_found(&session_id))?;
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

/// A record that was found, `None` for one that does not exist (or is not the caller's), and
/// the refusal (503) when the store could not say.
pub fn unless_unknown(
    found: Result<crate::store::RunRecord, crate::runs::Refusal>,
) -> Result<Option<crate::store::RunRecord>, ApiError> {
    match found {
        Ok(record) => Ok(Some(record)),
        Err(crate::runs::Refusal::NotFound(_)) => Ok(None),
        Err(other) => Err(other.into()),
    }
}
