//! Callback delivery against a real HTTP receiver on loopback (a hyper server in this process)
//! and a real store: every test function below runs once on SQLite (a temp DATA_DIR) and once on
//! PostgreSQL (a fresh database in the test cluster of `common::pg`). Detached records are
//! inserted directly (`POST /runs` is not on this branch); the gateway-level tests check the
//! wiring into the run service (recovery → delivery, attached runs → none).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cligate::callbacks::{self, Callbacks, Delivery, DeliveryState, Settings};
use cligate::config::Config;
use cligate::metrics::Metrics;
use cligate::store::time::now_ms;
use cligate::store::{RecordState, RunRecord, Store};
use common::Db;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

const SECRET: &str = "callback-secret-0123456789";

// ---------------------------------------------------------------------------------------------
// The receiver

/// How the receiver treats the deliveries it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behavior {
    /// The first `n` answered 500, the rest 200.
    Fail500(usize),
    /// The first `n` connections closed once the request has started to arrive, without an answer.
    Drop(usize),
    /// `/redirect` answers 302 to `/landed`.
    Redirect,
    /// Never answers.
    Hang,
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Hit {
    path: String,
    headers: HeaderMap,
    body: Bytes,
    /// The signature header verified against the body with [`SECRET`].
    verified: bool,
    /// What it answered (0: nothing).
    answered: u16,
    /// When it arrived.
    at: Instant,
}

#[derive(Default)]
struct Seen {
    hits: Vec<Hit>,
    /// Connections closed without an answer.
    dropped: usize,
}

struct Receiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start(behavior: Behavior) -> Receiver {
        Receiver::start_on("127.0.0.1:0".parse().unwrap(), behavior).await
    }

    async fn start_on(addr: SocketAddr, behavior: Behavior) -> Receiver {
        let listener = TcpListener::bind(addr).await.expect("bind the receiver");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let connections = Arc::new(AtomicUsize::new(0));
        let shared = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let n = connections.fetch_add(1, Ordering::SeqCst);
                if let Behavior::Drop(first) = behavior
                    && n < first
                {
                    let mut buf = [0u8; 64];
                    let _ = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await;
                    shared.lock().unwrap().dropped += 1;
                    drop(socket);
                    continue;
                }
                let seen = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        async move { Ok::<_, hyper::Error>(answer(req, behavior, &seen).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        Receiver { addr, seen, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self) -> Vec<Hit> {
        self.seen.lock().unwrap().hits.clone()
    }

    fn dropped(&self) -> usize {
        self.seen.lock().unwrap().dropped
    }
}

async fn answer(req: Request<Incoming>, behavior: Behavior, seen: &Mutex<Seen>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let headers = req.headers().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let verified = headers
        .get("x-cligate-signature")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|sig| verify(SECRET.as_bytes(), &body, sig));
    let earlier = seen.lock().unwrap().hits.iter().filter(|h| h.path == path).count();
    let (status, location) = match behavior {
        Behavior::Fail500(first) if earlier < first => (500, None),
        Behavior::Redirect if path == "/redirect" => (302, Some("/landed")),
        Behavior::Hang => (0, None),
        _ => (200, None),
    };
    seen.lock().unwrap().hits.push(Hit {
        path,
        headers,
        body,
        verified,
        answered: status,
        at: Instant::now(),
    });
    if status == 0 {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let mut response = Response::builder().status(StatusCode::from_u16(status.max(200)).unwrap());
    if let Some(to) = location {
        response = response.header("location", to);
    }
    response.body(Full::new(Bytes::from_static(b"{}"))).unwrap()
}

/// What a receiver does: HMAC-SHA256 of the exact body, compared in constant time.
fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex) = header.strip_prefix("sha256=") else {
        return false;
    };
    if hex.len() != 64 {
        return false;
    }
    let Some(sig) = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

// ---------------------------------------------------------------------------------------------
// The store and the sender

/// A store and what it was opened on (kept alive for the test).
struct Ctx {
    store: Store,
    url: Option<String>,
    dir: tempfile::TempDir,
    db: Db,
}

impl Ctx {
    async fn open(db: Db) -> Ctx {
        let dir = tempfile::tempdir().unwrap();
        let url = match db {
            Db::Sqlite => None,
            Db::Postgres => Some(common::pg::fresh_database().await),
        };
        let store = Store::open(url.as_deref(), &dir.path().join("data"))
            .await
            .expect("open the store");
        Ctx { store, url, dir, db }
    }

    async fn reopen(&self) -> Store {
        Store::open(self.url.as_deref(), &self.data_dir())
            .await
            .expect("reopen")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Settings from the real configuration (`vars` over the defaults), with a short backoff.
    fn settings(&self, allowed: &str, vars: &[(&str, &str)]) -> Settings {
        let mut all = vec![
            ("CALLBACK_ALLOWED_URLS".to_string(), allowed.to_string()),
            ("CALLBACK_SECRET".to_string(), SECRET.to_string()),
            ("CALLBACK_RETRY_SECONDS".to_string(), "5".to_string()),
            ("CALLBACK_TIMEOUT_SECONDS".to_string(), "2".to_string()),
        ];
        for (k, v) in vars {
            all.retain(|(name, _)| name != k);
            all.push((k.to_string(), v.to_string()));
        }
        let config = Config::from_vars(all).expect("configuration");
        let mut settings = Settings::from_config(&config);
        settings.backoff_base = Duration::from_millis(50);
        settings.backoff_cap = Duration::from_millis(400);
        settings
    }

    fn sender(&self, settings: Settings) -> (Callbacks, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let callbacks = Callbacks::new(settings, self.store.clone(), metrics.clone()).unwrap();
        (callbacks, metrics)
    }

    /// Records a finished detached run of instance `cligate` with `callback_url`.
    async fn detached_run(&self, callback_url: &str) -> String {
        let id = format!("run-{}", uuid::Uuid::new_v4());
        let now = now_ms();
        let mut record = RunRecord::queued(&id, &format!("s-{id}"), "echo-stdin", "cligate", now - 1000);
        record.state = RecordState::Finished;
        record.started_at = Some(now - 900);
        record.finished_at = Some(now);
        record.exit_code = Some(0);
        record.reason = Some("exited".into());
        record.stdout_bytes = 12;
        record.detached = true;
        record.callback_url = Some(callback_url.to_string());
        self.store.insert(&record).await.unwrap();
        id
    }

    async fn delivery(&self, run_id: &str) -> Option<Delivery> {
        let record = self.store.get(run_id).await.unwrap().expect("the run is recorded");
        record
            .callback
            .map(|v| serde_json::from_value(v).expect("a delivery status"))
    }

    /// Waits until the delivery of `run_id` is no longer pending.
    async fn settled(&self, run_id: &str, within: Duration) -> Delivery {
        let start = Instant::now();
        loop {
            if let Some(d) = self.delivery(run_id).await
                && d.state != DeliveryState::Pending
            {
                return d;
            }
            assert!(
                start.elapsed() < within,
                "delivery of {run_id} still pending after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs each listed `async fn(Db)` on both databases.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Db::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Db::Postgres).await
                }
            )*
        }
    };
}

on_both!(
    delivered_once_after_failed_attempts,
    dropped_connections_are_retried,
    redirects_are_not_followed,
    a_hanging_receiver_is_given_up,
    pending_deliveries_resume_after_a_restart,
    a_no_longer_allowed_url_fails_without_a_request,
    recovery_delivers_the_callbacks_of_interrupted_runs,
);

// ---------------------------------------------------------------------------------------------
// The tests

async fn delivered_once_after_failed_attempts(db: Db) {
    let ctx = Ctx::open(db).await;
    let receiver = Receiver::start(Behavior::Fail500(2)).await;
    let (callbacks, metrics) = ctx.sender(ctx.settings(&receiver.url("/hooks/"), &[]));
    let id = ctx.detached_run(&receiver.url("/hooks/done")).await;

    callbacks.deliver(&id);
    callbacks.deliver(&id); // a second call while it is under way changes nothing
    let delivery = ctx.settled(&id, Duration::from_secs(20)).await;

    assert_eq!(delivery.state, DeliveryState::Delivered, "{delivery:?}");
    assert_eq!(delivery.attempt_count, 3);
    let statuses: Vec<Option<u16>> = delivery.attempts.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [Some(500), Some(500), Some(200)]);
    assert!(delivery.attempts.iter().all(|a| a.at.ends_with('Z')));
    assert_eq!(delivery.next_attempt_at, None);
    assert_eq!(delivery.url, receiver.url("/hooks/done"));

    let hits = receiver.hits();
    assert_eq!(hits.len(), 3, "{hits:?}");
    assert_eq!(
        hits.iter().filter(|h| h.answered == 200).count(),
        1,
        "accepted exactly once"
    );
    for hit in &hits {
        assert_eq!(hit.path, "/hooks/done");
        assert!(hit.verified, "the signature verifies");
        assert_eq!(hit.headers["content-type"], "application/json");
        assert_eq!(
            hit.headers["x-cligate-delivery"].to_str().unwrap(),
            delivery.delivery_id
        );
        let ts: i64 = hit.headers["x-cligate-timestamp"].to_str().unwrap().parse().unwrap();
        assert!((ts - now_ms() / 1000).abs() < 60, "{ts}");
        assert_eq!(hit.body, hits[0].body, "the same bytes on every attempt");
    }
    // The body is the record as GET /runs/{id} shows it, without the delivery status.
    let body: Value = serde_json::from_slice(&hits[0].body).unwrap();
    let mut record = ctx.store.get(&id).await.unwrap().unwrap();
    record.callback = None;
    assert_eq!(body, serde_json::to_value(&record).unwrap());
    assert_eq!(
        (body["state"].as_str(), body["detached"].as_bool()),
        (Some("finished"), Some(true))
    );
    // A tampered body (or another key) does not verify.
    let sig = hits[0].headers["x-cligate-signature"].to_str().unwrap();
    let mut tampered = hits[0].body.to_vec();
    let at = tampered.iter().position(|&b| b == b'0').unwrap();
    tampered[at] = b'1';
    assert!(!verify(SECRET.as_bytes(), &tampered, sig));
    assert!(!verify(b"another-secret-0123456789", &hits[0].body, sig));
    assert_eq!(sig, callbacks::sign(SECRET.as_bytes(), &hits[0].body));

    // Counted; nothing is delivered again, also when asked.
    wait_for("the delivery task ends", Duration::from_secs(5), || {
        callbacks.in_flight() == 0
    })
    .await;
    assert_eq!(metrics.callbacks_delivered.get(), 1);
    assert_eq!(metrics.callbacks_retried.get(), 2);
    assert_eq!(metrics.callbacks_failed.get(), 0);
    assert_eq!(metrics.callbacks_pending.get(), 0);
    let text = metrics.encode();
    assert!(text.contains("cligate_callbacks_delivered_total 1"), "{text}");
    callbacks.deliver(&id);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.hits().len(), 3);
    assert_eq!(callbacks.resume().await.unwrap(), 0, "nothing pending");
    assert_eq!(ctx.db, db);
}

async fn dropped_connections_are_retried(db: Db) {
    let ctx = Ctx::open(db).await;
    let receiver = Receiver::start(Behavior::Drop(2)).await;
    let (callbacks, _) = ctx.sender(ctx.settings(&receiver.url("/"), &[]));
    let id = ctx.detached_run(&receiver.url("/cb")).await;
    callbacks.deliver(&id);
    let delivery = ctx.settled(&id, Duration::from_secs(20)).await;
    assert_eq!(delivery.state, DeliveryState::Delivered, "{delivery:?}");
    assert_eq!(delivery.attempt_count, 3);
    for attempt in &delivery.attempts[..2] {
        assert_eq!(attempt.status, None);
        assert!(attempt.error.as_deref().is_some_and(|e| !e.is_empty()), "{attempt:?}");
    }
    assert_eq!(receiver.dropped(), 2);
    let hits = receiver.hits();
    assert_eq!(hits.len(), 1);
    assert!(hits[0].verified);
}

async fn redirects_are_not_followed(db: Db) {
    let ctx = Ctx::open(db).await;
    let receiver = Receiver::start(Behavior::Redirect).await;
    let settings = ctx.settings(&receiver.url("/"), &[("CALLBACK_RETRY_SECONDS", "0.6")]);
    let (callbacks, metrics) = ctx.sender(settings);
    let id = ctx.detached_run(&receiver.url("/redirect")).await;
    callbacks.deliver(&id);
    let delivery = ctx.settled(&id, Duration::from_secs(20)).await;

    assert_eq!(delivery.state, DeliveryState::Failed, "{delivery:?}");
    assert!(delivery.attempt_count >= 1);
    for attempt in &delivery.attempts {
        assert_eq!(attempt.status, Some(302), "{attempt:?}");
        assert!(attempt.error.as_deref().unwrap().contains("redirect"), "{attempt:?}");
    }
    let hits = receiver.hits();
    assert!(
        hits.iter().all(|h| h.path == "/redirect"),
        "the redirect was followed: {hits:?}"
    );
    assert_eq!(hits.len() as u32, delivery.attempt_count);
    wait_for("the delivery task ends", Duration::from_secs(5), || {
        callbacks.in_flight() == 0
    })
    .await;
    assert_eq!(metrics.callbacks_failed.get(), 1);
    assert_eq!(metrics.callbacks_delivered.get(), 0);
}

async fn a_hanging_receiver_is_given_up(db: Db) {
    let ctx = Ctx::open(db).await;
    let receiver = Receiver::start(Behavior::Hang).await;
    let settings = ctx.settings(
        &receiver.url("/"),
        &[("CALLBACK_TIMEOUT_SECONDS", "0.4"), ("CALLBACK_RETRY_SECONDS", "1")],
    );
    let (callbacks, _) = ctx.sender(settings);
    let id = ctx.detached_run(&receiver.url("/slow")).await;
    let start = Instant::now();
    callbacks.deliver(&id);
    let delivery = ctx.settled(&id, Duration::from_secs(20)).await;
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    assert_eq!(delivery.state, DeliveryState::Failed, "{delivery:?}");
    assert!(delivery.attempt_count >= 2, "{delivery:?}");
    for attempt in &delivery.attempts {
        assert_eq!(attempt.status, None);
        assert!(
            attempt.error.as_deref().unwrap().contains("no answer within"),
            "{attempt:?}"
        );
    }
    assert_eq!(receiver.hits().len() as u32, delivery.attempt_count);
}

async fn pending_deliveries_resume_after_a_restart(db: Db) {
    let ctx = Ctx::open(db).await;
    // A port nobody listens on (yet): the first attempt is refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let url = format!("http://{port}/cb");
    let mut settings = ctx.settings(&format!("http://{port}/"), &[("CALLBACK_RETRY_SECONDS", "60")]);
    settings.backoff_base = Duration::from_secs(30); // nothing more before the "restart"
    let (callbacks, metrics) = ctx.sender(settings.clone());
    let id = ctx.detached_run(&url).await;
    callbacks.deliver(&id);
    let start = Instant::now();
    let first = loop {
        match ctx.delivery(&id).await {
            Some(d) if d.attempt_count == 1 && d.next_attempt_at.is_some() => break d,
            _ => assert!(start.elapsed() < Duration::from_secs(10), "no first attempt"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(first.state, DeliveryState::Pending);
    assert!(
        first.attempts[0].error.as_deref().unwrap().contains("connect"),
        "{first:?}"
    );
    assert_eq!(metrics.callbacks_pending.get(), 1);
    // Shutdown leaves it pending, and does not wait for the 30 s backoff.
    let stopping = Instant::now();
    callbacks.shut_down().await;
    assert!(stopping.elapsed() < Duration::from_secs(4));
    assert_eq!(ctx.delivery(&id).await.unwrap().state, DeliveryState::Pending);
    drop(callbacks);
    ctx.store.close().await;

    // The receiver is up now; a new process opens the same store and resumes.
    let receiver = Receiver::start_on(port, Behavior::Fail500(0)).await;
    let store = ctx.reopen().await;
    let metrics = Arc::new(Metrics::new());
    settings.backoff_base = Duration::from_millis(50);
    let callbacks = Callbacks::new(settings, store.clone(), metrics.clone()).unwrap();
    assert_eq!(callbacks.resume().await.unwrap(), 1);
    let ctx = Ctx { store, ..ctx };
    let delivery = ctx.settled(&id, Duration::from_secs(20)).await;
    assert_eq!(delivery.state, DeliveryState::Delivered, "{delivery:?}");
    assert_eq!(
        delivery.delivery_id, first.delivery_id,
        "the same delivery id after the restart"
    );
    assert_eq!(delivery.attempt_count, 2);
    let hits = receiver.hits();
    assert_eq!(hits.len(), 1);
    assert!(hits[0].verified);
    assert_eq!(
        hits[0].headers["x-cligate-delivery"].to_str().unwrap(),
        first.delivery_id
    );
    wait_for("the delivery task ends", Duration::from_secs(5), || {
        callbacks.in_flight() == 0
    })
    .await;
    assert_eq!(metrics.callbacks_delivered.get(), 1);
}

async fn a_no_longer_allowed_url_fails_without_a_request(db: Db) {
    let ctx = Ctx::open(db).await;
    let receiver = Receiver::start(Behavior::Fail500(0)).await;
    // The run was submitted when /old/ was allowed; now only /new/ is.
    let (callbacks, _) = ctx.sender(ctx.settings(&receiver.url("/new/"), &[]));
    let id = ctx.detached_run(&receiver.url("/old/cb")).await;
    callbacks.deliver(&id);
    let delivery = ctx.settled(&id, Duration::from_secs(10)).await;
    assert_eq!(delivery.state, DeliveryState::Failed);
    assert_eq!(delivery.attempt_count, 1);
    let error = delivery.attempts[0].error.as_deref().unwrap();
    assert!(
        error.starts_with("not sent") && error.contains("CALLBACK_ALLOWED_URLS"),
        "{error}"
    );
    assert!(receiver.hits().is_empty());
}

/// Wiring: a detached run left `running` by a dead gateway becomes `interrupted` at the next
/// start, and its callback is delivered (then shown by `GET /runs/{id}`).
async fn recovery_delivers_the_callbacks_of_interrupted_runs(db: Db) {
    let ctx = Ctx::open(db).await;
    let receiver = Receiver::start(Behavior::Fail500(0)).await;
    let id = format!("run-{}", uuid::Uuid::new_v4());
    let mut record = RunRecord::queued(&id, "lost-session", "sleep", "cligate", now_ms());
    record.state = RecordState::Running;
    record.started_at = Some(now_ms());
    record.detached = true;
    record.callback_url = Some(receiver.url("/cb"));
    ctx.store.insert(&record).await.unwrap();
    // An attached run of the same instance, also lost: no callback.
    let plain = RunRecord::queued("plain-run", "plain-session", "sleep", "cligate", now_ms());
    ctx.store.insert(&plain).await.unwrap();
    ctx.store.close().await;

    let data_dir = ctx.data_dir().display().to_string();
    let allowed = receiver.url("/");
    let mut vars = vec![
        ("DATA_DIR", data_dir.as_str()),
        ("CALLBACK_ALLOWED_URLS", allowed.as_str()),
        ("CALLBACK_SECRET", SECRET),
    ];
    if let Some(url) = &ctx.url {
        vars.push(("DATABASE_URL", url));
    }
    let gw = common::Gateway::start(&vars).await;
    let store = gw.app.runs.store.clone();
    let ctx = Ctx { store, ..ctx };
    let delivery = ctx.settled(&id, Duration::from_secs(20)).await;
    assert_eq!(delivery.state, DeliveryState::Delivered, "{delivery:?}");
    let hits = receiver.hits();
    assert_eq!(hits.len(), 1);
    assert!(hits[0].verified);
    let body: Value = serde_json::from_slice(&hits[0].body).unwrap();
    assert_eq!(body["state"], "interrupted");
    assert_eq!(body["reason"], "gateway_lost");
    assert_eq!(body["callback"], Value::Null);

    let shown = gw.get(&format!("/runs/{id}")).await.json();
    assert_eq!(shown["callback"]["state"], "delivered", "{shown}");
    assert_eq!(shown["callback"]["attempts"][0]["status"], 200, "{shown}");
    assert_eq!(ctx.store.get("plain-run").await.unwrap().unwrap().callback, None);
    let metrics = gw.get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("cligate_callbacks_delivered_total 1"), "{text}");
    assert!(text.contains("cligate_callbacks_pending 0"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Not per database

/// With one place, a hanging receiver gets one attempt at a time: the others wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_in_flight_are_bounded() {
    let ctx = Ctx::open(Db::Sqlite).await;
    let receiver = Receiver::start(Behavior::Hang).await;
    let mut settings = ctx.settings(
        &receiver.url("/"),
        &[("CALLBACK_TIMEOUT_SECONDS", "0.3"), ("CALLBACK_RETRY_SECONDS", "0.1")],
    );
    settings.max_in_flight = 1;
    let (callbacks, metrics) = ctx.sender(settings);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(ctx.detached_run(&receiver.url("/slow")).await);
    }
    for id in &ids {
        callbacks.deliver(id);
    }
    assert_eq!(metrics.callbacks_pending.get(), 3);
    for id in &ids {
        assert_eq!(
            ctx.settled(id, Duration::from_secs(20)).await.state,
            DeliveryState::Failed
        );
    }
    let mut at: Vec<Instant> = receiver.hits().iter().map(|h| h.at).collect();
    assert_eq!(
        at.len(),
        3,
        "one attempt each (the retry window is shorter than an attempt)"
    );
    at.sort();
    for pair in at.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(250),
            "overlapping attempts: {at:?}"
        );
    }
}

#[tokio::test]
async fn check_url_refuses_other_schemes_and_prefixes() {
    let config = Config::from_vars([
        (
            "CALLBACK_ALLOWED_URLS".to_string(),
            "https://hooks.example/cligate/".to_string(),
        ),
        ("CALLBACK_SECRET".to_string(), SECRET.to_string()),
    ])
    .unwrap();
    callbacks::check_url(&config, "https://hooks.example/cligate/run-done").unwrap();
    for (bad, why) in [
        ("file:///etc/passwd", "http"),
        ("ftp://hooks.example/cligate/", "http"),
        ("gopher://hooks.example/cligate/", "http"),
        ("https://hooks.example@evil.example/cligate/", "user info"),
        ("https://hooks.example.evil.com/cligate/", "CALLBACK_ALLOWED_URLS"),
        ("https://hooks.example/other", "CALLBACK_ALLOWED_URLS"),
        ("https://hooks.example/cligate/../admin", "CALLBACK_ALLOWED_URLS"),
        ("http://hooks.example/cligate/", "CALLBACK_ALLOWED_URLS"),
        ("https://hooks.example:444/cligate/", "CALLBACK_ALLOWED_URLS"),
    ] {
        let err = callbacks::check_url(&config, bad).unwrap_err();
        assert!(err.contains(why), "{bad}: {err}");
    }
    let none = Config::from_vars(Vec::<(String, String)>::new()).unwrap();
    let err = callbacks::check_url(&none, "https://hooks.example/cligate/").unwrap_err();
    assert!(err.contains("CALLBACK_ALLOWED_URLS"), "{err}");
}

/// Attached runs (all there is on this branch) cost no callback, also with callbacks enabled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attached_runs_send_no_callback() {
    let receiver = Receiver::start(Behavior::Fail500(0)).await;
    let allowed = receiver.url("/");
    let gw = common::Gateway::start(&[("CALLBACK_ALLOWED_URLS", &allowed), ("CALLBACK_SECRET", SECRET)]).await;
    let frames = gw.run_to_end(json!({"cli": "args", "args": ["a"]})).await;
    assert!(!frames.0.is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.hits().is_empty());
    assert_eq!(gw.app.runs.callbacks.in_flight(), 0);
}

// ---------------------------------------------------------------------------------------------
// End to end: `POST /runs` with a `callback_url`

/// A gateway whose callbacks may go to `receiver`, retried for `retry` seconds.
async fn callback_gateway(receiver: &Receiver, retry: &str) -> common::Gateway {
    let allowed = receiver.url("/");
    common::Gateway::start(&[
        ("CALLBACK_ALLOWED_URLS", &allowed),
        ("CALLBACK_SECRET", SECRET),
        ("CALLBACK_RETRY_SECONDS", retry),
    ])
    .await
}

async fn submit_detached(gw: &common::Gateway, body: Value) -> String {
    let r = common::request(gw.addr, "POST", "/runs", Some(body.to_string().into_bytes()), &[]).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    r.json()["run_id"].as_str().unwrap().to_string()
}

/// The run's record once its callback delivery has settled (delivered or failed).
async fn settled_record(gw: &common::Gateway, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = gw.get(&format!("/runs/{id}")).await.json();
        if matches!(r["callback"]["state"].as_str(), Some("delivered" | "failed")) {
            return r;
        }
        assert!(Instant::now() < deadline, "callback never settled: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_run_calls_back_once_signed_after_failed_attempts() {
    let receiver = Receiver::start(Behavior::Fail500(2)).await;
    let gw = callback_gateway(&receiver, "60").await;
    let id = submit_detached(
        &gw,
        json!({"cli": "sh", "args": ["-c", "echo hi; exit 5"], "callback_url": receiver.url("/cb")}),
    )
    .await;
    let record = settled_record(&gw, &id).await;
    assert_eq!(record["callback"]["state"], "delivered", "{record}");
    let statuses: Vec<i64> = record["callback"]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, [500, 500, 200]);
    let hits = receiver.hits();
    assert_eq!(
        hits.iter().filter(|h| h.answered == 200).count(),
        1,
        "accepted exactly once"
    );
    assert!(hits.iter().all(|h| h.verified), "every attempt is signed");
    let ids: Vec<_> = hits.iter().map(|h| h.headers["x-cligate-delivery"].clone()).collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "one delivery id across retries");
    assert!(
        hits[0].headers["x-cligate-timestamp"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .is_ok()
    );
    let body: Value = serde_json::from_slice(&hits[2].body).unwrap();
    assert_eq!(
        (body["run_id"].as_str(), body["state"].as_str()),
        (Some(id.as_str()), Some("finished"))
    );
    assert_eq!(
        (body["exit_code"].as_i64(), body["detached"].as_bool()),
        (Some(5), Some(true))
    );
    // A tampered body does not verify.
    let mut tampered = hits[2].body.to_vec();
    tampered[10] ^= 1;
    let sig = hits[2].headers["x-cligate-signature"].to_str().unwrap();
    assert!(!verify(SECRET.as_bytes(), &tampered, sig));
    assert!(verify(SECRET.as_bytes(), &hits[2].body, sig));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_detached_run_calls_back_and_a_redirect_is_not_followed() {
    let receiver = Receiver::start(Behavior::Redirect).await;
    let gw = callback_gateway(&receiver, "1").await;
    let id = submit_detached(
        &gw,
        json!({"cli": "sleep", "args": ["30"], "callback_url": receiver.url("/redirect")}),
    )
    .await;
    let stop = gw.post(&format!("/runs/{id}/stop"), "").await;
    assert_eq!(stop.status, 200);
    let record = settled_record(&gw, &id).await;
    // The run is unaffected by its callback: stopped, recorded; the redirect was not followed.
    assert_eq!(
        (record["state"].as_str(), record["reason"].as_str()),
        (Some("finished"), Some("stopped"))
    );
    assert_eq!(record["callback"]["state"], "failed", "{record}");
    assert!(
        receiver.hits().iter().all(|h| h.path == "/redirect"),
        "followed a redirect"
    );
    assert!(!receiver.hits().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_outside_the_allowed_prefixes_is_refused_and_nothing_runs() {
    let receiver = Receiver::start(Behavior::Fail500(0)).await;
    let gw = callback_gateway(&receiver, "5").await;
    for url in [
        "http://127.0.0.2:9/cb".to_string(),
        "file:///etc/passwd".to_string(),
        format!("http://user@{}/cb", receiver.addr),
    ] {
        let body = json!({"cli": "args", "callback_url": url});
        common::request(gw.addr, "POST", "/runs", Some(body.to_string().into_bytes()), &[])
            .await
            .assert_error(400);
    }
    assert!(gw.get("/runs").await.json()["runs"].as_array().unwrap().is_empty());
}
