//! The HTTP surface: one function routes a request, checks access, and turns every outcome
//! into a response (errors through [`error::ApiError`]).

pub mod catalog;
pub mod error;
pub mod forward;
pub mod health;
pub mod projects;
pub mod run;
pub mod runs;
pub mod ui;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};

use crate::auth;
use crate::body::Body;
use crate::config::Config;
use crate::data_lock::DataDirLock;
use crate::exec::Executor;
use crate::metrics::Metrics;
use crate::replicas::Replicas;
use crate::run::containment::Containment;
use crate::runs::Runs;
use crate::store::Store;
use crate::telemetry::{LogBudget, clip};
use error::ApiError;

/// The OpenAPI description of this surface, kept in the repository and served as is.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Who may reach a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Everyone: health and the OpenAPI document.
    Open,
    /// Addresses of `ALLOWED_CLIENTS`, without a token: the web UI's files, which hold no data.
    Address,
    /// Addresses of `ALLOWED_CLIENTS` with a bearer token (when tokens are configured).
    Token,
}

/// Every route: method, path pattern, who may reach it.
pub const ROUTES: &[(&str, &str, Guard)] = &[
    ("GET", "/healthz", Guard::Open),
    ("GET", "/readyz", Guard::Open),
    ("GET", "/openapi.json", Guard::Open),
    ("GET", "/metrics", Guard::Token),
    ("GET", "/models", Guard::Token),
    ("GET", "/clis", Guard::Token),
    ("POST", "/run", Guard::Token),
    ("GET", "/sessions/{session_id}", Guard::Token),
    ("POST", "/sessions/{session_id}/stop", Guard::Token),
    ("GET", "/runs", Guard::Token),
    ("POST", "/runs", Guard::Token),
    ("GET", "/runs/{run_id}", Guard::Token),
    ("GET", "/runs/{run_id}/log", Guard::Token),
    ("GET", "/runs/{run_id}/events", Guard::Token),
    ("GET", "/runs/{run_id}/stream", Guard::Token),
    ("POST", "/runs/{run_id}/stop", Guard::Token),
    ("GET", "/ui", Guard::Address),
    ("GET", "/ui/{asset}", Guard::Address),
    ("GET", "/projects", Guard::Token),
    ("GET", "/projects/{project_id}/tree", Guard::Token),
    ("GET", "/projects/{project_id}/file", Guard::Token),
];

/// Refusals written to the log per second at most.
const REJECTIONS_LOGGED_PER_SECOND: u32 = 20;

/// State shared by every request.
#[derive(Debug)]
pub struct App {
    pub config: Arc<Config>,
    /// The run service: every run is created, found and stopped through it.
    pub runs: Arc<Runs>,
    pub metrics: Arc<Metrics>,
    /// Set once shutdown has begun (readiness fails from then on).
    pub shutting_down: AtomicBool,
    /// How many refusals per second are written to the log (an unauthenticated flood of bad
    /// requests would otherwise write as fast as it can send).
    pub rejection_log: LogBudget,
    /// How the processes of a run are kept track of (cgroup or `/proc` marker).
    pub containment: Arc<Containment>,
    /// This replica among those sharing the PostgreSQL store; `None` with SQLite.
    pub replicas: Option<Arc<Replicas>>,
    /// `DATA_DIR` is this gateway's while it lives.
    _data_lock: DataDirLock,
}

impl App {
    /// Opens the run service over `store` (logs, recovery of a crashed predecessor's runs);
    /// `replicas` and `metrics` are those made with it, `data_lock` holds `DATA_DIR` (see
    /// [`crate::server::prepare`]).
    pub async fn new(
        config: Arc<Config>,
        data_lock: DataDirLock,
        store: Store,
        replicas: Option<Arc<Replicas>>,
        metrics: Arc<Metrics>,
        containment: Arc<Containment>,
        executor: Arc<dyn Executor>,
    ) -> anyhow::Result<App> {
        let runs = Arc::new(Runs::open(config.clone(), store, metrics.clone(), containment.clone(), executor).await?);
        metrics.replica(&config.instance);
        Ok(App {
            replicas,
            config,
            runs,
            metrics,
            shutting_down: AtomicBool::new(false),
            rejection_log: LogBudget::new(REJECTIONS_LOGGED_PER_SECOND),
            containment,
            _data_lock: data_lock,
        })
    }
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Body::full(value.to_string()))
        .expect("static headers are valid")
}

fn text(content_type: &'static str, body: impl Into<bytes::Bytes>) -> Response<Body> {
    Response::builder()
        .header(CONTENT_TYPE, content_type)
        .body(Body::full(body))
        .expect("static headers are valid")
}

/// Entry point for every request.
pub async fn handle(app: Arc<App>, client: SocketAddr, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    // Kept for the rejection log only; cloning a Uri shares its bytes.
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let response = match route(&app, client, req).await {
        Ok(response) => response,
        Err(e) => {
            let cause = match &e {
                ApiError::Unauthorized | ApiError::Forbidden => "auth",
                ApiError::Overloaded { .. } | ApiError::Unavailable(_) | ApiError::Failed { .. } => "overload",
                ApiError::NotFound(_) | ApiError::MethodNotAllowed(_) => "not_found",
                ApiError::Conflict(_) | ApiError::Busy(_) => "conflict",
                _ => "bad_request",
            };
            app.metrics.reject(cause);
            // Caller-made text is clipped and logged as quoted strings; refusals beyond the
            // budget are counted (and in the metric) but not written.
            if let Some(left_out) = app.rejection_log.take() {
                match e.cause() {
                    // The gateway's own failure: the operator needs its cause, which the
                    // caller was not given.
                    Some(cause) => tracing::warn!(
                        client = %client,
                        method = clip(method.as_str()),
                        path = clip(uri.path()),
                        status = e.status().as_u16(),
                        error = e.kind(),
                        cause,
                        not_logged_before = left_out,
                        "request failed"
                    ),
                    None => tracing::info!(
                        client = %client,
                        method = clip(method.as_str()),
                        path = clip(uri.path()),
                        path_bytes = uri.path().len(),
                        status = e.status().as_u16(),
                        error = e.kind(),
                        not_logged_before = left_out,
                        "request rejected"
                    ),
                }
            }
            e.into_response()
        }
    };
    Ok(response)
}

async fn route(app: &Arc<App>, client: SocketAddr, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (pattern, guard) = match segments.as_slice() {
        ["sessions", id] if !id.is_empty() => ("/sessions/{session_id}", Guard::Token),
        ["sessions", id, "stop"] if !id.is_empty() => ("/sessions/{session_id}/stop", Guard::Token),
        ["runs", id] if !id.is_empty() => ("/runs/{run_id}", Guard::Token),
        ["runs", id, "log"] if !id.is_empty() => ("/runs/{run_id}/log", Guard::Token),
        ["runs", id, "events"] if !id.is_empty() => ("/runs/{run_id}/events", Guard::Token),
        ["runs", id, "stream"] if !id.is_empty() => ("/runs/{run_id}/stream", Guard::Token),
        ["runs", id, "stop"] if !id.is_empty() => ("/runs/{run_id}/stop", Guard::Token),
        ["ui", name] if !name.is_empty() => ("/ui/{asset}", Guard::Address),
        ["projects", id, "tree"] if !id.is_empty() => ("/projects/{project_id}/tree", Guard::Token),
        ["projects", id, "file"] if !id.is_empty() => ("/projects/{project_id}/file", Guard::Token),
        _ => match ROUTES.iter().find(|(_, p, _)| *p == path) {
            Some((_, p, guard)) => (*p, *guard),
            None => return Err(ApiError::NotFound(format!("no route for {path}"))),
        },
    };
    let allowed: Vec<&str> = ROUTES
        .iter()
        .filter(|(_, p, _)| *p == pattern)
        .map(|(m, _, _)| *m)
        .collect();
    // HEAD is GET without the body (hyper leaves the body out).
    let method = if req.method() == Method::HEAD {
        Method::GET
    } else {
        req.method().clone()
    };
    if !allowed.contains(&method.as_str()) {
        return Err(ApiError::MethodNotAllowed(
            match (allowed.contains(&"GET"), allowed.contains(&"POST")) {
                (true, true) => "GET, HEAD, POST",
                (false, true) => "POST",
                _ => "GET, HEAD",
            },
        ));
    }
    let denied = |d| match d {
        auth::Denied::Forbidden => ApiError::Forbidden,
        auth::Denied::Unauthorized => ApiError::Unauthorized,
    };
    let secret = app.replicas.as_ref().and_then(|r| r.secret.as_ref());
    let mut caller = match guard {
        // A request another replica forwarded carries its caller, signed with REPLICA_SECRET.
        Guard::Token => match forward::forwarded_caller(secret, &method, req.uri(), req.headers())? {
            Some(caller) => caller,
            None => auth::check(&app.config.access, client.ip(), req.headers()).map_err(denied)?,
        },
        Guard::Address => {
            auth::check_address(&app.config.access, client.ip()).map_err(denied)?;
            auth::Caller::default()
        }
        Guard::Open => auth::Caller::default(),
    };
    caller.client = Some(client);
    let config = &app.config;
    Ok(match (method, pattern) {
        (Method::GET, "/healthz") => text("text/plain; charset=utf-8", "ok"),
        (Method::GET, "/readyz") => {
            let value = health::ready(app, app.shutting_down.load(Ordering::Relaxed))
                .await
                .map_err(ApiError::Unavailable)?;
            json(StatusCode::OK, &value)
        }
        (Method::GET, "/openapi.json") => text("application/json", OPENAPI),
        (Method::GET, "/metrics") => text(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            app.metrics.encode(),
        ),
        (Method::GET, "/models") => json(StatusCode::OK, &catalog::models(config)),
        (Method::GET, "/clis") => json(StatusCode::OK, &catalog::clis(config)),
        (Method::POST, "/run") => run::start(app, client, caller, req).await?,
        (Method::GET, "/sessions/{session_id}") => run::status(app, &caller, percent_decode(segments[1])?).await?,
        (Method::POST, "/sessions/{session_id}/stop") => {
            run::stop(app, &caller, percent_decode(segments[1])?, req.uri()).await?
        }
        (Method::GET, "/runs") => runs::list(app, &caller, req.uri().query()).await?,
        (Method::POST, "/runs") => runs::submit(app, caller, req).await?,
        (Method::GET, "/runs/{run_id}") => runs::get(app, &caller, &percent_decode(segments[1])?).await?,
        (Method::GET, "/runs/{run_id}/log") => {
            runs::log(app, &caller, &percent_decode(segments[1])?, req.uri()).await?
        }
        (Method::GET, "/runs/{run_id}/events") => {
            runs::events(app, &caller, &percent_decode(segments[1])?, req.uri()).await?
        }
        (Method::GET, "/runs/{run_id}/stream") => {
            runs::stream(app, &caller, &percent_decode(segments[1])?, req.uri()).await?
        }
        (Method::POST, "/runs/{run_id}/stop") => {
            runs::stop(app, &caller, &percent_decode(segments[1])?, req.uri()).await?
        }
        (Method::GET, "/ui") => ui::index(),
        // Asset names are plain; an encoded name is simply not one of them (404).
        (Method::GET, "/ui/{asset}") => ui::asset(segments[1])?,
        (Method::GET, "/projects") => projects::list(app),
        (Method::GET, "/projects/{project_id}/tree") => {
            projects::tree(app, &percent_decode(segments[1])?, req.uri().query()).await?
        }
        (Method::GET, "/projects/{project_id}/file") => {
            projects::file(app, &percent_decode(segments[1])?, req.uri().query()).await?
        }
        _ => unreachable!("every route in ROUTES is handled"),
    })
}

/// Decodes `%XX` escapes of a path segment.
fn percent_decode(segment: &str) -> Result<String, ApiError> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::BadRequest("the id in the path is not UTF-8".into()))
}
