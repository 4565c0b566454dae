//! `GET /runs`, `GET /runs/{id}`, `GET /runs/{id}/log`, `/events`, `/stream` and
//! `POST /runs/{id}/stop`: records and logs of runs that outlive their request. Each handler
//! parses its query, asks the run service, and answers; a reader of `/stream` never ends the run.
//! Records come from the shared store; the log routes and the stop of a run another replica
//! executes are forwarded to it ([`super::forward`]).

use std::sync::Arc;

use bytes::Bytes;
use hyper::{Method, Response, StatusCode, Uri};
use serde_json::{Value, json};

use super::error::ApiError;
use super::forward::{self, Route};
use super::run::reader;
use super::{App, json};
use crate::auth::Caller;
use crate::body::Body;
use crate::run::frame::Frame;
use crate::runlog::{Reader, Source, follow};
use crate::runs::{Idempotency, Refusal, Submitted};
use crate::store::{ListQuery, RecordState};

/// Default and largest `max_bytes` of `/log` and `/events`.
const DEFAULT_MAX_BYTES: u64 = 64 * 1024;
const LIMIT_MAX_BYTES: u64 = 4 * 1024 * 1024;

/// The query parameters, decoded; a repeated parameter keeps its last value.
pub(super) fn query(raw: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The parameter's value when it is given (`?name=` gives an empty value, which the typed
/// parameters refuse and the text filters take as given).
pub(super) fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

pub(super) fn number(
    params: &[(String, String)],
    name: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ApiError> {
    let Some(text) = param(params, name) else {
        return Ok(default);
    };
    match text.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "{name} must be a whole number from {min} to {max}, not '{}'",
            text.escape_debug()
        ))),
    }
}

pub async fn list(app: &App, caller: &Caller, raw_query: Option<&str>) -> Result<Response<Body>, ApiError> {
    let params = query(raw_query);
    let state = match param(&params, "state") {
        None => None,
        Some(s) => Some(RecordState::parse(s).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "state must be queued, running, finished or interrupted, not '{}'",
                s.escape_debug()
            ))
        })?),
    };
    let q = ListQuery {
        state,
        cli: param(&params, "cli").map(String::from),
        session_id: param(&params, "session_id").map(String::from),
        owner: None,
        limit: Some(number(&params, "limit", 50, 1, 1000)? as u32),
        cursor: param(&params, "cursor").map(String::from),
    };
    let (runs, next) = app.runs.list(caller, q).await?;
    Ok(json(StatusCode::OK, &json!({ "runs": runs, "next_cursor": next })))
}

/// `POST /runs`: validated exactly like `POST /run`, answered `202` at once with the run's id
/// and `Location`; the run goes through the same admission and its end reaches `callback_url`.
pub async fn submit(
    app: &Arc<App>,
    caller: Caller,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<Response<Body>, ApiError> {
    let config = &app.config;
    let key = super::run::idempotency_key(req.headers())?;
    let body = super::run::read_body(req, config.max_request_bytes, config.request_read_timeout).await?;
    let mut request = super::run::parse(&body)?;
    let callback_url = request.callback_url.take();
    if let Some(url) = &callback_url {
        crate::callbacks::check_url(config, url).map_err(ApiError::BadRequest)?;
    }
    let idempotency = key.map(|key| Idempotency {
        key,
        body_hash: super::run::body_hash("POST /runs", &body),
    });
    let spec = request.validate(config).map_err(ApiError::BadRequest)?;
    drop(body);
    let (run_id, session_id, state) = match app
        .runs
        .submit_detached(spec, &caller, callback_url, idempotency)
        .await?
    {
        Submitted::Started(run, state) => (run.id.clone(), run.session_id.clone(), state.as_str().to_string()),
        Submitted::Again(run_id) => {
            let record = app.runs.await_run(&caller, &run_id).await?;
            (record.run_id, record.session_id, record.state.as_str().to_string())
        }
    };
    let mut response = json(
        StatusCode::ACCEPTED,
        &json!({ "run_id": run_id, "session_id": session_id, "state": state }),
    );
    response.headers_mut().insert(
        hyper::header::LOCATION,
        hyper::header::HeaderValue::from_str(&format!("/runs/{run_id}")).expect("a run id is a header value"),
    );
    Ok(response)
}

pub async fn get(app: &App, caller: &Caller, run_id: &str) -> Result<Response<Body>, ApiError> {
    let record = app.runs.record(caller, run_id).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::to_value(record).expect("a record serialises"),
    ))
}

/// Stops a run running here; a run running on another replica is stopped there (the answer is
/// that replica's, once it has asked the run to end).
pub async fn stop(app: &App, caller: &Caller, run_id: &str, uri: &Uri) -> Result<Response<Body>, ApiError> {
    let local = app.runs.registry.by_run_id(run_id);
    if local.is_none()
        && app.replicas.is_some()
        && let Some(record) = super::run::unless_unknown(app.runs.record(caller, run_id).await)?
        && !record.state.is_final()
        && let Route::There(url) = forward::route(app, caller, &record).await?
    {
        return forward::relay(app, caller, &url, Method::POST, uri).await;
    }
    app.runs.stop(caller, local, &format!("run '{run_id}'"))?;
    Ok(json(StatusCode::OK, &json!({ "run_id": run_id, "status": "stopped" })))
}

/// Checks that `offset` is inside the log and starts a frame (0, or just after a newline).
fn frame_offset(source: &Source, offset: u64) -> Result<u64, ApiError> {
    let size = source.end().size;
    if offset > size {
        return Err(ApiError::BadRequest(format!(
            "offset {offset} is past the end of the log ({size} bytes)"
        )));
    }
    if offset > 0 {
        let before = source
            .read(offset - 1, 1)
            .map_err(|e| ApiError::from(Refusal::failed("cannot read the log", e)))?;
        if before.first() != Some(&b'\n') {
            return Err(ApiError::BadRequest(format!(
                "offset {offset} is not the start of a frame; use 0 or a next_offset"
            )));
        }
    }
    Ok(offset)
}

/// What `/log` and `/events` read: whole frames from `offset`, at most about `max_bytes`.
struct Window {
    offset: u64,
    content: Bytes,
    size: u64,
    closed: bool,
}

fn window(source: &Source, params: &[(String, String)]) -> Result<Window, ApiError> {
    let offset = number(params, "offset", 0, 0, u64::MAX)?;
    let max = number(params, "max_bytes", DEFAULT_MAX_BYTES, 1, LIMIT_MAX_BYTES)?;
    // The end is read before the content: everything up to it is whole frames.
    let end = source.end();
    let offset = frame_offset(source, offset)?;
    let content = source
        .read_frames(offset, max as usize)
        .map_err(|e| ApiError::from(Refusal::failed("cannot read the log", e)))?;
    Ok(Window {
        offset,
        content,
        size: end.size,
        closed: end.closed,
    })
}

fn tail_answer(run_id: &str, w: &Window, next_offset: u64, content: &[u8]) -> serde_json::Map<String, Value> {
    let size = w.size.max(next_offset);
    let mut out = serde_json::Map::new();
    out.insert("run_id".into(), json!(run_id));
    out.insert("offset".into(), json!(w.offset));
    out.insert("next_offset".into(), json!(next_offset));
    out.insert("size".into(), json!(size));
    out.insert("eof".into(), json!(w.closed && next_offset >= size));
    out.insert("content".into(), json!(String::from_utf8_lossy(content)));
    out
}

/// The log of a run the caller may see, on this replica; `Err(response)` when the answer
/// comes from the replica that executes it.
async fn local_source(
    app: &App,
    caller: &Caller,
    run_id: &str,
    uri: &Uri,
) -> Result<Result<Source, Response<Body>>, ApiError> {
    let record = app.runs.record(caller, run_id).await?;
    match forward::route(app, caller, &record).await? {
        Route::Here => Ok(Ok(app.runs.source_of(&record).await?)),
        Route::There(url) => Ok(Err(forward::relay(app, caller, &url, Method::GET, uri).await?)),
        // Its own log may still be here (a replica restarted under another name, a shared
        // DATA_DIR); otherwise say where it is.
        Route::Gone(why) => match app.runs.source_of(&record).await {
            Ok(source) => Ok(Ok(source)),
            Err(_) => Err(forward::log_gone(&record, &why)),
        },
    }
}

pub async fn log(app: &App, caller: &Caller, run_id: &str, uri: &Uri) -> Result<Response<Body>, ApiError> {
    let source = match local_source(app, caller, run_id, uri).await? {
        Ok(source) => source,
        Err(forwarded) => return Ok(forwarded),
    };
    let w = window(&source, &query(uri.query()))?;
    let next = w.offset + w.content.len() as u64;
    Ok(json(
        StatusCode::OK,
        &Value::Object(tail_answer(run_id, &w, next, &w.content)),
    ))
}

pub async fn events(app: &App, caller: &Caller, run_id: &str, uri: &Uri) -> Result<Response<Body>, ApiError> {
    let source = match local_source(app, caller, run_id, uri).await? {
        Ok(source) => source,
        Err(forwarded) => return Ok(forwarded),
    };
    let w = window(&source, &query(uri.query()))?;
    let (events, used) = parse_events(w.offset, &w.content, w.closed);
    let next = w.offset + used as u64;
    let mut answer = tail_answer(run_id, &w, next, &w.content[..used]);
    answer.insert("events".into(), Value::Array(events));
    Ok(json(StatusCode::OK, &Value::Object(answer)))
}

/// The JSON objects printed on stdout lines of `content` (frames starting at byte `start` of
/// the log), each with the offset of the frame where its line begins. A stdout line cut into
/// several frames (a partial line, a long line) is joined first. Returns the events and how many
/// bytes of `content` they account for: when the content ends inside a stdout line and more may
/// come, the bytes from that line's first frame on are left for the next read — unless that
/// line began the window, so that a reader always moves on.
fn parse_events(start: u64, content: &[u8], closed: bool) -> (Vec<Value>, usize) {
    let mut events = Vec::new();
    let mut line = String::new();
    let mut line_start: Option<usize> = None;
    let mut pos = 0;
    for frame in content.split_inclusive(|b| *b == b'\n') {
        let at = pos;
        pos += frame.len();
        let Ok(Frame::Stdout { data }) = serde_json::from_slice::<Frame>(frame) else {
            continue;
        };
        if line_start.is_none() {
            line_start = Some(at);
        }
        line.push_str(&data);
        if line.ends_with('\n') {
            if let Ok(Value::Object(event)) = serde_json::from_str::<Value>(line.trim()) {
                events.push(json!({ "offset": start + line_start.unwrap_or(at) as u64, "event": event }));
            }
            line.clear();
            line_start = None;
        }
    }
    let used = match line_start {
        Some(at) if !closed && at > 0 => at,
        _ => content.len(),
    };
    (events, used)
}

pub async fn stream(app: &Arc<App>, caller: &Caller, run_id: &str, uri: &Uri) -> Result<Response<Body>, ApiError> {
    let source = match local_source(app, caller, run_id, uri).await? {
        Ok(source) => source,
        Err(forwarded) => return Ok(forwarded),
    };
    let params = query(uri.query());
    let offset = number(&params, "offset", 0, 0, u64::MAX)?;
    let size = source.end().size;
    if offset > size {
        return Err(ApiError::BadRequest(format!(
            "offset {offset} is past the end of the log ({size} bytes)"
        )));
    }
    let frames = Body::stream(reader(
        follow(source, offset, Reader::Follower),
        app.runs.metrics.clone(),
    ));
    Ok(super::run::ndjson(run_id, frames))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(lines: &[&str]) -> Vec<u8> {
        let mut out = bytes::BytesMut::new();
        for l in lines {
            if let Some(text) = l.strip_prefix("err:") {
                crate::run::frame::encode_output(crate::run::frame::Stream::Stderr, text, &mut out);
            } else {
                crate::run::frame::encode_output(crate::run::frame::Stream::Stdout, l, &mut out);
            }
        }
        out.to_vec()
    }

    #[test]
    fn events_are_json_objects_on_stdout_lines_joined_across_frames() {
        let c = frames(&[
            "{\"a\":",
            "err:noise\n",
            "1}\n",
            "plain text\n",
            "[1,2]\n",
            "{\"b\":2}\n",
        ]);
        let (events, used) = parse_events(100, &c, false);
        assert_eq!(used, c.len());
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0]["offset"], 100);
        assert_eq!(events[0]["event"], json!({"a": 1}));
        assert_eq!(events[1]["event"], json!({"b": 2}));
    }

    #[test]
    fn a_line_cut_by_the_window_is_left_for_the_next_read() {
        let c = frames(&["{\"a\":1}\n", "{\"b\":"]);
        let first = frames(&["{\"a\":1}\n"]).len();
        let (events, used) = parse_events(0, &c, false);
        assert_eq!((events.len(), used), (1, first));
        // Finished: nothing more will come, so everything is used.
        assert_eq!(parse_events(0, &c, true).1, c.len());
        // A window that starts inside such a line still moves on.
        let only = frames(&["{\"b\":"]);
        assert_eq!(parse_events(0, &only, false).1, only.len());
    }
}
