//! Requests about a run that another replica executes: its log (`/log`, `/events`, `/stream`)
//! lives in that replica's `DATA_DIR` and its process on that host, so those requests and stops
//! are forwarded to it over HTTP, and its answer is streamed back as it comes (a live `/stream`
//! stays live; its re-attach offsets are the owner's log offsets, the same from any replica).
//!
//! A forwarded request carries the caller's identity (token name, admin or not) in
//! `x-cligate-replica-caller` and an HMAC-SHA256 with `REPLICA_SECRET` over the method, the
//! request target and that identity in `x-cligate-replica-signature`. The owner checks the MAC
//! in constant time and a timestamp within [`MAX_SKEW_S`], then applies the usual visibility
//! rules to that identity; it never forwards such a request again. A client without the secret
//! cannot make an identity up: a request with either header but no valid MAC is 401.

use std::time::Duration;

use hmac::{Hmac, Mac};
use hyper::{HeaderMap, Method, Response, Uri};
use sha2::Sha256;

use super::App;
use super::error::ApiError;
use crate::auth::Caller;
use crate::body::Body;
use crate::config::Secret;
use crate::replicas::Owner;
use crate::store::RunRecord;

pub const CALLER_HEADER: &str = "x-cligate-replica-caller";
pub const SIGNATURE_HEADER: &str = "x-cligate-replica-signature";
/// How far a forwarded request's timestamp may be from the receiver's clock, in seconds.
pub const MAX_SKEW_S: i64 = 300;
/// Longest wait for a forwarded answer that is not a stream.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Headers of the owner's answer passed on to the client.
const PASSED_ON: &[&str] = &[
    "content-type",
    "cache-control",
    "x-accel-buffering",
    "x-cligate-run-id",
    "retry-after",
    "location",
];

/// Where a request about a run is answered.
#[derive(Debug)]
pub enum Route {
    /// Here (this replica executes the run, the gateway has one replica, or the request was
    /// forwarded to this one already).
    Here,
    /// At the replica reached at this base URL.
    There(String),
    /// Its replica is gone; the text says which and since when.
    Gone(String),
}

/// Where a request about `record` is answered. A live owner that cannot be asked (no
/// `REPLICA_SECRET`) is 503.
pub async fn route(app: &App, caller: &Caller, record: &RunRecord) -> Result<Route, ApiError> {
    let Some(replicas) = &app.replicas else {
        return Ok(Route::Here);
    };
    if caller.via_replica || record.instance == replicas.id {
        return Ok(Route::Here);
    }
    let owner = replicas
        .locate(&record.instance)
        .await
        .map_err(|e| ApiError::from(crate::runs::Refusal::failed("the run store does not answer", e)))?;
    match owner {
        Owner::Here => Ok(Route::Here),
        Owner::Gone(why) => Ok(Route::Gone(why)),
        Owner::Peer { id, url } if replicas.secret.is_some() => {
            tracing::debug!(run_id = record.run_id.as_str(), replica = id, "forwarding");
            Ok(Route::There(url))
        }
        Owner::Peer { id, .. } => Err(ApiError::Unavailable(format!(
            "run '{}' executes on replica '{id}', and REPLICA_SECRET is not set, so this replica cannot ask it",
            record.run_id
        ))),
    }
}

/// The refusal for a log that is on a replica that is gone.
pub fn log_gone(record: &RunRecord, why: &str) -> ApiError {
    ApiError::Unavailable(format!(
        "the log of run '{}' is in the DATA_DIR of replica '{}', which cannot be reached: {why}; \
         the record is at GET /runs/{}",
        record.run_id, record.instance, record.run_id
    ))
}

/// The request target as both sides sign it: path and query as the `url` crate writes them.
fn canonical_target(target: &str) -> String {
    match url::Url::parse(&format!("http://replica{target}")) {
        Ok(u) => match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_string(),
        },
        Err(_) => target.to_string(),
    }
}

fn mac(secret: &Secret, method: &Method, target: &str, caller: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose()).expect("HMAC takes any key length");
    for part in [method.as_str(), &canonical_target(target), caller] {
        mac.update(part.as_bytes());
        mac.update(b"\n");
    }
    mac
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `v1;ts=<unix seconds>;admin=0|1[;name=<token name>]`. Token names hold only letters, digits,
/// `.`, `_` and `-`, so they need no escaping.
fn identity(caller: &Caller, now_s: i64) -> String {
    let mut text = format!("v1;ts={now_s};admin={}", u8::from(caller.admin));
    if let Some(name) = &caller.name {
        text.push_str(";name=");
        text.push_str(name);
    }
    text
}

fn parse_identity(text: &str, now_s: i64) -> Option<Caller> {
    let mut parts = text.split(';');
    if parts.next()? != "v1" {
        return None;
    }
    let ts: i64 = parts.next()?.strip_prefix("ts=")?.parse().ok()?;
    let admin = match parts.next()?.strip_prefix("admin=")? {
        "0" => false,
        "1" => true,
        _ => return None,
    };
    let name = match parts.next() {
        None => None,
        Some(p) => Some(p.strip_prefix("name=")?.to_string()),
    };
    if parts.next().is_some() || (now_s - ts).abs() > MAX_SKEW_S {
        return None;
    }
    Some(Caller {
        name,
        admin,
        client: None,
        via_replica: true,
    })
}

/// The caller of a request forwarded by another replica; `None` when it is not one (neither
/// header present). 401 when either header is there but the MAC or the timestamp is not right,
/// or this replica has no `REPLICA_SECRET`.
pub fn forwarded_caller(
    secret: Option<&Secret>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Option<Caller>, ApiError> {
    let (identity, signature) = (headers.get(CALLER_HEADER), headers.get(SIGNATURE_HEADER));
    if identity.is_none() && signature.is_none() {
        return Ok(None);
    }
    let checked = (|| {
        let secret = secret?;
        let identity = identity?.to_str().ok()?;
        let signature = hex_decode(signature?.to_str().ok()?)?;
        let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        mac(secret, method, target, identity).verify_slice(&signature).ok()?;
        parse_identity(identity, unix_now())
    })();
    checked.map(Some).ok_or(ApiError::Unauthorized)
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Sends the request (`method`, the original request target of `uri`, no body) to the replica
/// at `base` on the caller's behalf and answers with its answer: status, the headers in
/// [`PASSED_ON`], and the body streamed through as it arrives. 503 when it does not answer.
pub async fn relay(
    app: &App,
    caller: &Caller,
    base: &str,
    method: Method,
    uri: &Uri,
) -> Result<Response<Body>, ApiError> {
    let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    relay_to(app, caller, base, method, target, uri.path().ends_with("/stream")).await
}

/// [`relay`] with an explicit target; `streaming` lifts the answer's time limit.
pub async fn relay_to(
    app: &App,
    caller: &Caller,
    base: &str,
    method: Method,
    target: &str,
    streaming: bool,
) -> Result<Response<Body>, ApiError> {
    let replicas = app.replicas.as_ref().expect("only replicas forward");
    let secret = replicas.secret.as_ref().expect("checked by route()");
    let identity = identity(caller, unix_now());
    let signature: String = mac(secret, &method, target, &identity)
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut request = replicas
        .client
        .request(method, format!("{base}{target}"))
        .header(CALLER_HEADER, identity)
        .header(SIGNATURE_HEADER, signature);
    if !streaming {
        request = request.timeout(ANSWER_TIMEOUT);
    }
    let mut answer = request.send().await.map_err(|e| {
        ApiError::Unavailable(format!(
            "the replica that executes this run ({base}) does not answer: {}",
            one_line(&e)
        ))
    })?;
    let mut response = Response::builder().status(answer.status());
    for name in PASSED_ON {
        if let Some(value) = answer.headers().get(*name) {
            response = response.header(*name, value.clone());
        }
    }
    let body = if streaming {
        let replica = base.to_string();
        Body::fallible(async_stream::stream! {
            // An owner that goes away mid-stream breaks this answer off too (no last chunk), so
            // the client sees a broken stream, not an ended one, and re-attaches with the last
            // offset it saw.
            loop {
                match answer.chunk().await {
                    Ok(Some(piece)) => yield Ok(piece),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(replica = replica.as_str(), error = %one_line(&e), "a relayed stream broke off");
                        yield Err(std::io::Error::other(format!("the replica that executes this run broke off: {}", one_line(&e))));
                        break;
                    }
                }
            }
        })
    } else {
        let bytes = answer.bytes().await.map_err(|e| {
            ApiError::Unavailable(format!(
                "the replica that executes this run ({base}) broke off its answer: {}",
                one_line(&e)
            ))
        })?;
        Body::full(bytes)
    };
    Ok(response.body(body).expect("headers copied from a valid response"))
}

fn one_line(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(name: Option<&str>, admin: bool) -> Caller {
        Caller {
            name: name.map(String::from),
            admin,
            client: None,
            via_replica: false,
        }
    }

    fn signed(secret: &Secret, method: &Method, target: &str, who: &Caller, now: i64) -> HeaderMap {
        let id = identity(who, now);
        let sig: String = mac(secret, method, target, &id)
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut h = HeaderMap::new();
        h.insert(CALLER_HEADER, id.parse().unwrap());
        h.insert(SIGNATURE_HEADER, sig.parse().unwrap());
        h
    }

    #[test]
    fn a_signed_identity_is_taken_and_anything_else_is_refused() {
        let secret = Secret::new("a-replica-secret-0123");
        let uri: Uri = "/runs/abc/log?offset=0".parse().unwrap();
        let alice = caller(Some("alice"), false);
        let h = signed(&secret, &Method::GET, "/runs/abc/log?offset=0", &alice, unix_now());
        let got = forwarded_caller(Some(&secret), &Method::GET, &uri, &h)
            .unwrap()
            .unwrap();
        assert_eq!(
            (got.name.as_deref(), got.admin, got.via_replica),
            (Some("alice"), false, true)
        );
        // No headers: not forwarded.
        assert_eq!(
            forwarded_caller(Some(&secret), &Method::GET, &uri, &HeaderMap::new()).unwrap(),
            None
        );
        // Another method, another target, another key, no key, a forged identity, an old stamp.
        assert!(forwarded_caller(Some(&secret), &Method::POST, &uri, &h).is_err());
        let other: Uri = "/runs/abd/log?offset=0".parse().unwrap();
        assert!(forwarded_caller(Some(&secret), &Method::GET, &other, &h).is_err());
        assert!(forwarded_caller(Some(&Secret::new("another-secret-012345")), &Method::GET, &uri, &h).is_err());
        assert!(forwarded_caller(None, &Method::GET, &uri, &h).is_err());
        let mut forged = h.clone();
        forged.insert(
            CALLER_HEADER,
            identity(&caller(Some("admin"), true), unix_now()).parse().unwrap(),
        );
        assert!(forwarded_caller(Some(&secret), &Method::GET, &uri, &forged).is_err());
        let old = signed(
            &secret,
            &Method::GET,
            "/runs/abc/log?offset=0",
            &alice,
            unix_now() - MAX_SKEW_S - 5,
        );
        assert!(forwarded_caller(Some(&secret), &Method::GET, &uri, &old).is_err());
        let mut half = HeaderMap::new();
        half.insert(CALLER_HEADER, identity(&alice, unix_now()).parse().unwrap());
        assert!(forwarded_caller(Some(&secret), &Method::GET, &uri, &half).is_err());
    }

    #[test]
    fn identities_round_trip() {
        for who in [
            caller(None, true),
            caller(Some("bob"), false),
            caller(Some("ops.1"), true),
        ] {
            let back = parse_identity(&identity(&who, 100), 100).unwrap();
            assert_eq!((back.name, back.admin), (who.name, who.admin));
        }
        assert!(parse_identity("v2;ts=100;admin=1", 100).is_none());
        assert!(parse_identity("v1;ts=100;admin=2", 100).is_none());
        assert!(parse_identity("v1;ts=100;admin=1;name=a;x=1", 100).is_none());
    }
}
