//! Callback delivery: when a detached run (one whose client did not wait for it) ends, its final
//! record is POSTed to the `callback_url` the client gave, so the client learns of the end without
//! polling. It exists as a room of its own because a callback outlives everything else about the
//! run: the run's slot is free and its process gone, while the receiver may be down for an hour
//! or the gateway may restart in between. So delivery is durable (its status is on the run's
//! record and pending deliveries resume at the next start), bounded (a receiver that hangs holds
//! one task and one connection for `CALLBACK_TIMEOUT_SECONDS` at a time, never a run slot; at most
//! [`MAX_IN_FLIGHT`] attempts run at once; response bodies are never read) and verifiable (each
//! body is signed with `CALLBACK_SECRET`).
//!
//! # What a receiver gets
//! `POST <callback_url>` with the record as `GET /runs/{id}` shows it (with `callback: null`: the
//! delivery status is about this very request) and the headers
//! - `Content-Type: application/json`
//! - `X-Cligate-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes, key CALLBACK_SECRET>`
//! - `X-Cligate-Delivery: <id>`: the same for every attempt of one delivery, also across restarts
//! - `X-Cligate-Timestamp: <unix seconds of the attempt>`
//!
//! A 2xx answer delivers it. Anything else (another status, a redirect — never followed —, a
//! refused connection, a time-out) is a failed attempt, retried with exponential backoff and
//! jitter until `CALLBACK_RETRY_SECONDS` after the run ended; then the delivery is `failed`.
//!
//! # Where the status lives
//! The run's `callback` column: `{"url", "delivery_id", "state": "pending"|"delivered"|"failed",
//! "attempt_count", "attempts": [{"at", "status"} | {"at", "error"}] (the last
//! [`ATTEMPTS_KEPT`]), "next_attempt_at"}`. It is written before the first attempt (so the
//! delivery id survives a crash) and after each attempt.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url::Url;

use crate::config::{Config, Secret};
use crate::metrics::Metrics;
use crate::store::time::{now_ms, rfc3339_ms};
use crate::store::{RunRecord, Store};

/// Attempts running at once at most; further deliveries wait for a place.
pub const MAX_IN_FLIGHT: usize = 64;
/// Attempts kept on the record (the newest); `attempt_count` counts them all.
pub const ATTEMPTS_KEPT: usize = 20;
/// The longest callback URL accepted.
pub const MAX_URL_BYTES: usize = 2048;
/// At shutdown, how long an attempt in flight may still take before it is dropped (its delivery
/// stays pending and resumes at the next start).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How deliveries behave. [`Settings::from_config`] gives the production values; tests shorten
/// the backoff.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `CALLBACK_ALLOWED_URLS`; empty = every callback is refused.
    pub allowed: Vec<Url>,
    /// `CALLBACK_SECRET`.
    pub secret: Option<Secret>,
    /// `CALLBACK_RETRY_SECONDS`: retries stop this long after the run ended.
    pub retry_for: Duration,
    /// `CALLBACK_TIMEOUT_SECONDS`: limit of one attempt.
    pub timeout: Duration,
    /// Wait after the first failed attempt; doubled after each further one (±20 % jitter).
    pub backoff_base: Duration,
    /// The longest wait between two attempts.
    pub backoff_cap: Duration,
    /// Attempts in flight at most.
    pub max_in_flight: usize,
    /// `CLIGATE_INSTANCE`: at start-up only this instance's pending deliveries are resumed.
    pub instance: String,
}

impl Settings {
    pub fn from_config(config: &Config) -> Settings {
        Settings {
            allowed: config.callback_allowed_urls.clone(),
            secret: config.callback_secret.clone(),
            retry_for: config.callback_retry,
            timeout: config.callback_timeout,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(300),
            max_in_flight: MAX_IN_FLIGHT,
            instance: config.instance.clone(),
        }
    }
}

/// Parses one `CALLBACK_ALLOWED_URLS` entry: an absolute http(s) URL with a host and without user
/// info, query or fragment. The error names the entry, not the variable.
pub fn parse_prefix(entry: &str) -> Result<Url, String> {
    let url = Url::parse(entry).map_err(|e| format!("'{entry}' is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("'{entry}' is not an http:// or https:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("'{entry}' has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("'{entry}' holds user info (user@ or user:password@)"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "'{entry}' holds a query or a fragment; a prefix is scheme, host, port and path"
        ));
    }
    Ok(url)
}

/// The submit-time check of a `callback_url` (the text is the 400 message): an http(s) URL,
/// without user info, that starts with one of the `CALLBACK_ALLOWED_URLS` prefixes.
pub fn check_url(config: &Config, url: &str) -> Result<(), String> {
    allowed_url(&config.callback_allowed_urls, url).map(|_| ())
}

/// [`check_url`] against `allowed`, returning the URL as parsed and normalised: that form is
/// what is compared, and what is called.
///
/// "Starts with" is decided on the parsed URL, never on the text: the scheme, the host (as
/// normalised: lower case, IDNA, IPv4 forms) and the port (default ports filled in) must be equal,
/// and the path (with `.`/`..` segments resolved) must be the prefix's path or lie below it at a
/// `/` boundary. So `http://allowed.example@evil/`, `http://allowed.example.evil.com/` and
/// `http://allowed.example/hooks/../admin` do not pass a prefix `http://allowed.example/hooks/`.
pub fn allowed_url(allowed: &[Url], text: &str) -> Result<Url, String> {
    if allowed.is_empty() {
        return Err("callbacks are not enabled on this gateway (CALLBACK_ALLOWED_URLS is empty)".into());
    }
    if text.len() > MAX_URL_BYTES {
        return Err(format!("callback_url is longer than {MAX_URL_BYTES} bytes"));
    }
    let url = Url::parse(text).map_err(|e| format!("callback_url is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "callback_url must be an http:// or https:// URL, not {}://",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("callback_url must not hold user info (user@ or user:password@)".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("callback_url has no host".into());
    }
    if !allowed.iter().any(|prefix| within(prefix, &url)) {
        return Err("callback_url does not start with any of the gateway's CALLBACK_ALLOWED_URLS".into());
    }
    Ok(url)
}

/// Whether `url` lies under `prefix` (see [`allowed_url`]).
fn within(prefix: &Url, url: &Url) -> bool {
    if prefix.scheme() != url.scheme()
        || prefix.host() != url.host()
        || prefix.port_or_known_default() != url.port_or_known_default()
    {
        return false;
    }
    let (base, path) = (prefix.path(), url.path());
    path == base
        || (base.ends_with('/') && path.starts_with(base))
        || path.strip_prefix(base).is_some_and(|rest| rest.starts_with('/'))
}

/// `sha256=<hex>`: the `X-Cligate-Signature` of `body`.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Where a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    Pending,
    Delivered,
    Failed,
}

/// One attempt as recorded: `status` when the receiver answered, `error` when it did not (or
/// answered with a redirect, which is not followed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// RFC 3339.
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The `callback` object of a run record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub url: String,
    pub delivery_id: String,
    pub state: DeliveryState,
    /// Every attempt made, also those no longer in `attempts`.
    #[serde(default)]
    pub attempt_count: u32,
    /// The newest [`ATTEMPTS_KEPT`] attempts, oldest first.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    /// RFC 3339; `null` once the delivery is done (or while an attempt is under way).
    pub next_attempt_at: Option<String>,
}

impl Delivery {
    fn new(url: &str) -> Delivery {
        Delivery {
            url: url.to_string(),
            delivery_id: uuid::Uuid::new_v4().to_string(),
            state: DeliveryState::Pending,
            attempt_count: 0,
            attempts: Vec::new(),
            next_attempt_at: None,
        }
    }

    fn push(&mut self, attempt: Attempt) {
        self.attempt_count = self.attempt_count.saturating_add(1);
        self.attempts.push(attempt);
        let excess = self.attempts.len().saturating_sub(ATTEMPTS_KEPT);
        self.attempts.drain(..excess);
    }

    /// The delivery status of `record`, if it has a readable one.
    pub fn of(record: &RunRecord) -> Option<Delivery> {
        record
            .callback
            .as_ref()
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }
}

/// The callback sender. Cheap to clone; every clone is the same sender.
#[derive(Clone)]
pub struct Callbacks {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    store: Store,
    metrics: Arc<Metrics>,
    client: reqwest::Client,
    /// Places for attempts in flight.
    places: Semaphore,
    /// Runs whose delivery a task of this process owns, so a run is never delivered twice at once.
    owned: Mutex<HashSet<String>>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl std::fmt::Debug for Callbacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callbacks")
            .field("settings", &self.inner.settings)
            .field("places", &self.inner.places.available_permits())
            .finish_non_exhaustive()
    }
}

impl Callbacks {
    /// A sender recording into `store`. Nothing is sent until [`Callbacks::deliver`] or
    /// [`Callbacks::resume`].
    pub fn new(settings: Settings, store: Store, metrics: Arc<Metrics>) -> anyhow::Result<Callbacks> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            // Callbacks go straight to their receiver: proxy variables meant for the CLIs are not
            // used for signed deliveries.
            .no_proxy()
            .pool_max_idle_per_host(0)
            .user_agent(concat!("cligate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| anyhow::anyhow!("cannot set up the callback client: {e}"))?;
        Ok(Callbacks {
            inner: Arc::new(Inner {
                places: Semaphore::new(settings.max_in_flight.max(1)),
                settings,
                store,
                metrics,
                client,
                owned: Mutex::new(HashSet::new()),
                tasks: TaskTracker::new(),
                stop: CancellationToken::new(),
            }),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The run service's hook, called once a run's end is recorded: delivers its callback if it
    /// is a detached run with a `callback_url`. Costs nothing when callbacks are not enabled;
    /// otherwise one read of the record, in the delivery's own task.
    pub fn run_ended(&self, run_id: &str) {
        if !self.inner.settings.allowed.is_empty() {
            self.deliver(run_id);
        }
    }

    /// Starts (or resumes) the delivery of `run_id`'s callback in a task of its own and returns
    /// at once. Nothing happens when the run is not a final detached run with a `callback_url`,
    /// when its delivery is already done, or when this process is delivering it already.
    pub fn deliver(&self, run_id: &str) {
        let inner = &self.inner;
        if inner.stop.is_cancelled() || !inner.owned.lock().expect("not poisoned").insert(run_id.to_string()) {
            return;
        }
        let inner = self.inner.clone();
        let run_id = run_id.to_string();
        inner.metrics.callbacks_pending.inc();
        self.inner.tasks.spawn(async move {
            let _owned = Owned {
                inner: &inner,
                run_id: &run_id,
            };
            inner.deliver(&run_id).await;
        });
    }

    /// Start-up: resumes every delivery of this instance that is not done — pending ones, and
    /// final detached runs with a `callback_url` whose delivery never started (a run interrupted
    /// at recovery, or a crash right after a run's end). Returns how many.
    pub async fn resume(&self) -> anyhow::Result<usize> {
        let ids = self
            .inner
            .store
            .pending_callbacks(&self.inner.settings.instance)
            .await?;
        for id in &ids {
            self.deliver(id);
        }
        if !ids.is_empty() {
            tracing::info!(deliveries = ids.len(), "resuming run callbacks");
        }
        Ok(ids.len())
    }

    /// Deliveries this process is working on now.
    pub fn in_flight(&self) -> usize {
        self.inner.owned.lock().expect("not poisoned").len()
    }

    /// Shutdown: no new deliveries or attempts; an attempt in flight gets [`SHUTDOWN_GRACE`],
    /// then is dropped. Unfinished deliveries stay `pending` on their records for the next start.
    pub async fn shut_down(&self) {
        self.inner.stop.cancel();
        self.inner.tasks.close();
        let bound = SHUTDOWN_GRACE + Duration::from_secs(1);
        if tokio::time::timeout(bound, self.inner.tasks.wait()).await.is_err() {
            tracing::warn!("callback deliveries did not stop in time; they resume at the next start");
        }
    }
}

/// Releases a run's ownership when its delivery task ends, however it ends.
struct Owned<'a> {
    inner: &'a Inner,
    run_id: &'a str,
}

impl Drop for Owned<'_> {
    fn drop(&mut self) {
        self.inner.owned.lock().expect("not poisoned").remove(self.run_id);
        self.inner.metrics.callbacks_pending.dec();
    }
}

/// What one attempt came to.
enum Outcome {
    Accepted(u16),
    Failed(Attempt),
    /// Shutdown dropped it.
    Cancelled,
}

impl Inner {
    async fn deliver(&self, run_id: &str) {
        let record = match self.store.get(run_id).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(run_id, error = %format!("{e:#}"), "cannot read a run for its callback; it resumes at the next start");
                return;
            }
        };
        let Some(url_text) = record.callback_url.clone() else {
            return;
        };
        if !record.detached || !record.state.is_final() {
            return;
        }
        let mut delivery = match Delivery::of(&record) {
            Some(d) if d.state != DeliveryState::Pending => return,
            Some(d) => d,
            None => Delivery::new(&url_text),
        };
        let ended = record.finished_at.unwrap_or_else(now_ms);
        let deadline = ended.saturating_add(self.settings.retry_for.as_millis().min(i64::MAX as u128) as i64);

        // Re-checked at delivery: the allowed prefixes may have changed since the run was submitted.
        let url = match allowed_url(&self.settings.allowed, &url_text) {
            Ok(url) => url,
            Err(why) => {
                delivery.push(Attempt {
                    at: rfc3339_ms(now_ms()),
                    status: None,
                    error: Some(format!("not sent: {why}")),
                });
                return self.give_up(run_id, &mut delivery).await;
            }
        };
        let Some(secret) = self.settings.secret.clone() else {
            delivery.push(Attempt {
                at: rfc3339_ms(now_ms()),
                status: None,
                error: Some("not sent: CALLBACK_SECRET is not set".into()),
            });
            return self.give_up(run_id, &mut delivery).await;
        };
        // Recorded before the first attempt: a crash from here on resumes with the same id.
        delivery.next_attempt_at = None;
        self.save(run_id, &delivery).await;

        let mut record = Some(record);
        loop {
            let place = tokio::select! {
                place = self.places.acquire() => place.expect("the semaphore is never closed"),
                _ = self.stop.cancelled() => return,
            };
            // The body is made again for each attempt rather than kept while a delivery waits (a
            // record can be large, deliveries can be many); a final record does not change, so
            // neither do the bytes.
            let outcome = match self.body(run_id, record.take()).await {
                Ok(None) => return, // removed by retention meanwhile
                Ok(Some(body)) => {
                    if delivery.attempt_count > 0 {
                        self.metrics.callbacks_retried.inc();
                    }
                    let signature = sign(secret.expose(), &body);
                    self.attempt(&url, &body, &signature, &delivery.delivery_id).await
                }
                Err(why) => Outcome::Failed(Attempt {
                    at: rfc3339_ms(now_ms()),
                    status: None,
                    error: Some(format!("not sent: {why}")),
                }),
            };
            drop(place);
            match outcome {
                Outcome::Cancelled => return,
                Outcome::Accepted(status) => {
                    delivery.push(Attempt {
                        at: rfc3339_ms(now_ms()),
                        status: Some(status),
                        error: None,
                    });
                    delivery.state = DeliveryState::Delivered;
                    delivery.next_attempt_at = None;
                    self.save(run_id, &delivery).await;
                    self.metrics.callbacks_delivered.inc();
                    tracing::info!(
                        run_id,
                        delivery_id = delivery.delivery_id.as_str(),
                        attempts = delivery.attempt_count,
                        status,
                        "callback delivered"
                    );
                    return;
                }
                Outcome::Failed(attempt) => {
                    tracing::debug!(run_id, status = ?attempt.status, error = ?attempt.error, "callback attempt failed");
                    delivery.push(attempt);
                    let wait = self.backoff(delivery.attempt_count);
                    let next = now_ms().saturating_add(wait.as_millis().min(i64::MAX as u128) as i64);
                    if next > deadline {
                        return self.give_up(run_id, &mut delivery).await;
                    }
                    delivery.next_attempt_at = Some(rfc3339_ms(next));
                    self.save(run_id, &delivery).await;
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.stop.cancelled() => return,
                    }
                    delivery.next_attempt_at = None;
                }
            }
        }
    }

    /// The body of `run_id`'s callback, from `record` or else read again; `None` when the run is
    /// gone.
    async fn body(&self, run_id: &str, record: Option<RunRecord>) -> Result<Option<Bytes>, String> {
        let record = match record {
            Some(r) => r,
            None => match self.store.get(run_id).await {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(None),
                Err(e) => return Err(format!("the run store does not answer: {e:#}")),
            },
        };
        body_of(record)
            .map(Some)
            .map_err(|e| format!("cannot encode the run: {e}"))
    }

    /// One POST, bounded by the attempt time-out; the response body is never read.
    async fn attempt(&self, url: &Url, body: &Bytes, signature: &str, delivery_id: &str) -> Outcome {
        let at = now_ms();
        let request = self
            .client
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Cligate-Signature", signature)
            .header("X-Cligate-Delivery", delivery_id)
            .header("X-Cligate-Timestamp", (at / 1000).to_string())
            .body(body.clone())
            .send();
        let bounded = tokio::time::timeout(self.settings.timeout, request);
        let stopped = async {
            self.stop.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        let failed = |status: Option<u16>, error: Option<String>| {
            Outcome::Failed(Attempt {
                at: rfc3339_ms(at),
                status,
                error,
            })
        };
        tokio::select! {
            result = bounded => match result {
                Err(_) => failed(None, Some(format!("no answer within {:?}", self.settings.timeout))),
                Ok(Err(e)) => failed(None, Some(describe(&e, self.settings.timeout))),
                Ok(Ok(response)) => {
                    let status = response.status();
                    drop(response);
                    if status.is_success() {
                        Outcome::Accepted(status.as_u16())
                    } else if status.is_redirection() {
                        failed(Some(status.as_u16()), Some("redirects are not followed".into()))
                    } else {
                        failed(Some(status.as_u16()), None)
                    }
                }
            },
            _ = stopped => Outcome::Cancelled,
        }
    }

    /// The wait after the `n`th failed attempt.
    fn backoff(&self, n: u32) -> Duration {
        let unit = (uuid::Uuid::new_v4().as_u128() % 1_000_000) as f64 / 1_000_000.0;
        backoff(self.settings.backoff_base, self.settings.backoff_cap, n, unit)
    }

    async fn give_up(&self, run_id: &str, delivery: &mut Delivery) {
        delivery.state = DeliveryState::Failed;
        delivery.next_attempt_at = None;
        self.save(run_id, delivery).await;
        self.metrics.callbacks_failed.inc();
        let last = delivery.attempts.last();
        tracing::warn!(
            run_id,
            delivery_id = delivery.delivery_id.as_str(),
            attempts = delivery.attempt_count,
            last_status = last.and_then(|a| a.status),
            last_error = last.and_then(|a| a.error.as_deref()).unwrap_or(""),
            "callback failed: giving up"
        );
    }

    async fn save(&self, run_id: &str, delivery: &Delivery) {
        let value = serde_json::to_value(delivery).expect("a delivery is JSON");
        if let Err(e) = self.store.set_callback(run_id, &value).await {
            tracing::error!(run_id, error = %format!("{e:#}"), "cannot record a callback's status");
        }
    }
}

/// The wait after the `n`th failed attempt: base × 2^(n-1), at most `cap`, then ±20 % by
/// `unit` (0..1, random).
fn backoff(base: Duration, cap: Duration, n: u32, unit: f64) -> Duration {
    let exp = n.saturating_sub(1).min(30);
    base.saturating_mul(1u32 << exp).min(cap).mul_f64(0.8 + 0.4 * unit)
}

/// The callback body: the record as `GET /runs/{id}` shows it, with `callback` null.
fn body_of(mut record: RunRecord) -> serde_json::Result<Bytes> {
    record.callback = None;
    serde_json::to_vec(&record).map(Bytes::from)
}

/// A transport error in a few words: the innermost cause (e.g. `Connection refused (os error
/// 111)`), prefixed with what failed.
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {timeout:?}");
    }
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let what = if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let text = format!("{what}: {cause}");
    text.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixes(list: &[&str]) -> Vec<Url> {
        list.iter().map(|p| parse_prefix(p).unwrap()).collect()
    }

    #[test]
    fn prefixes_must_be_plain_http_urls() {
        for bad in [
            "ftp://hooks.example/",
            "file:///tmp/x",
            "hooks.example/x",
            "http://user:pw@hooks.example/",
            "http://hooks.example/?a=1",
            "http://hooks.example/#x",
            "http://",
        ] {
            assert!(parse_prefix(bad).is_err(), "{bad}");
        }
        parse_prefix("https://hooks.example/cligate/").unwrap();
        parse_prefix("http://127.0.0.1:9000").unwrap();
    }

    #[test]
    fn urls_are_compared_parsed_not_as_text() {
        let allowed = prefixes(&["http://allowed.example/hooks/", "https://api.example:8443/cb"]);
        for ok in [
            "http://allowed.example/hooks/",
            "http://allowed.example/hooks/run?x=1",
            "HTTP://ALLOWED.EXAMPLE:80/hooks/a/b",
            "http://allowed.example/hooks/./a",
            "https://api.example:8443/cb",
            "https://api.example:8443/cb/x",
        ] {
            assert!(allowed_url(&allowed, ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("http://allowed.example@evil.example/hooks/", "user info"),
            ("http://allowed.example:x@evil.example/hooks/", "user info"),
            ("http://allowed.example.evil.com/hooks/", "CALLBACK_ALLOWED_URLS"),
            ("http://allowed.example:8080/hooks/", "CALLBACK_ALLOWED_URLS"),
            ("https://allowed.example/hooks/", "CALLBACK_ALLOWED_URLS"),
            ("http://allowed.example/hooks", "CALLBACK_ALLOWED_URLS"),
            ("http://allowed.example/hooks/../admin", "CALLBACK_ALLOWED_URLS"),
            ("http://allowed.example/hooks/%2e%2e/admin", "CALLBACK_ALLOWED_URLS"),
            ("http://allowed.example/hooksevil", "CALLBACK_ALLOWED_URLS"),
            ("https://api.example:8443/cbevil", "CALLBACK_ALLOWED_URLS"),
            ("https://api.example/cb", "CALLBACK_ALLOWED_URLS"),
            ("file:///etc/passwd", "http"),
            ("ftp://allowed.example/hooks/", "http"),
            ("javascript:alert(1)", "http"),
            ("not a url", "not a URL"),
        ] {
            let err = allowed_url(&allowed, bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let err = allowed_url(&[], "http://allowed.example/hooks/").unwrap_err();
        assert!(err.contains("CALLBACK_ALLOWED_URLS"), "{err}");
    }

    #[test]
    fn a_bare_host_prefix_allows_its_whole_host() {
        let allowed = prefixes(&["http://127.0.0.1:9000"]);
        assert!(allowed_url(&allowed, "http://127.0.0.1:9000/any/path").is_ok());
        assert!(allowed_url(&allowed, "http://127.0.0.1:9001/").is_err());
        // 0x7f.1 is 127.0.0.1 once parsed: same host, so allowed; the text differs.
        assert!(allowed_url(&allowed, "http://0x7f.1:9000/").is_ok());
    }

    #[test]
    fn signatures_are_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let (base, cap) = (Duration::from_secs(1), Duration::from_secs(300));
        let mid: Vec<u64> = (1..=11).map(|n| backoff(base, cap, n, 0.5).as_secs()).collect();
        assert_eq!(mid, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(base, cap, 1, 0.0), Duration::from_millis(800));
        assert_eq!(backoff(base, cap, 1, 1.0), Duration::from_millis(1200));
        assert_eq!(backoff(base, cap, u32::MAX, 1.0), Duration::from_secs(360));
    }

    #[test]
    fn attempts_are_bounded_and_counted() {
        let mut d = Delivery::new("http://x/");
        for i in 0..45 {
            d.push(Attempt {
                at: i.to_string(),
                status: Some(500),
                error: None,
            });
        }
        assert_eq!(d.attempt_count, 45);
        assert_eq!(d.attempts.len(), ATTEMPTS_KEPT);
        assert_eq!(d.attempts[0].at, "25");
    }
}
