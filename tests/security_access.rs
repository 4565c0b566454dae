//! Security: runs belong to the token that started them (others get 404, admin tokens see
//! all), the bearer scheme is case-insensitive, `HEAD` works wherever `GET` does, and callers
//! cannot abuse the log (clipped fields, a budget for refusals, no forged fields, no colours
//! off a terminal).

mod common;

use std::time::{Duration, Instant};

use common::{Binary, EndReason, FrameFields, Gateway, Launch, RunStream, request};
use serde_json::json;

const ALICE: &str = "alice-token-0123456789";
const BOB: &str = "bob-token-0123456789abc";
const OPS: &str = "ops-token-0123456789abcd";
const PLAIN: &str = "plain-token-without-a-name-0123";

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn owned_gateway() -> Gateway {
    Gateway::start(&[
        ("AUTH_TOKENS", &format!("alice:{ALICE},bob:{BOB},{PLAIN}")),
        ("ADMIN_TOKENS", &format!("ops:{OPS}")),
    ])
    .await
}

#[tokio::test]
async fn a_run_is_seen_and_stopped_only_by_its_token_and_admins() {
    let gw = owned_gateway().await;
    let alice = bearer(ALICE);
    let body = json!({"cli": "sleep", "args": ["30"], "session_id": "alice-1"});
    let mut stream = RunStream::open(gw.addr, body.to_string().into_bytes(), &[("authorization", &alice)]).await;
    assert_eq!(stream.status, 200);
    stream.until("session").await;
    // Wait until the run is registered as running.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = request(gw.addr, "GET", "/sessions/alice-1", None, &[("authorization", &alice)]).await;
        if r.status == 200 && r.json()["state"] == "running" {
            assert_eq!(r.json()["owner"], "alice");
            break;
        }
        assert!(Instant::now() < deadline, "never running: {:?}", r.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Another token: exactly the answer for a session that does not exist.
    let unknown = request(
        gw.addr,
        "GET",
        "/sessions/alice-2",
        None,
        &[("authorization", &bearer(BOB))],
    )
    .await;
    let unknown = unknown.assert_error(404);
    for token in [BOB, PLAIN] {
        let h = bearer(token);
        let seen = request(gw.addr, "GET", "/sessions/alice-1", None, &[("authorization", &h)]).await;
        let seen = seen.assert_error(404);
        assert_eq!(seen["error"], unknown["error"]);
        assert_eq!(
            seen["detail"].as_str().unwrap().replace("alice-1", "alice-2"),
            unknown["detail"]
        );
        request(
            gw.addr,
            "POST",
            "/sessions/alice-1/stop",
            None,
            &[("authorization", &h)],
        )
        .await
        .assert_error(404);
    }
    // The session id is still taken for everyone (ids are global; see README).
    let again = json!({"cli": "sleep", "args": ["1"], "session_id": "alice-1"});
    request(
        gw.addr,
        "POST",
        "/run",
        Some(again.to_string().into_bytes()),
        &[("authorization", &bearer(BOB))],
    )
    .await
    .assert_error(409);
    // Still running after the refused stops.
    let r = request(gw.addr, "GET", "/sessions/alice-1", None, &[("authorization", &alice)]).await;
    assert_eq!(r.json()["state"], "running");

    // An admin token sees and stops it.
    let ops = bearer(OPS);
    let r = request(gw.addr, "GET", "/sessions/alice-1", None, &[("authorization", &ops)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["owner"], "alice");
    let r = request(
        gw.addr,
        "POST",
        "/sessions/alice-1/stop",
        None,
        &[("authorization", &ops)],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let frames = stream.collect().await;
    assert_eq!(frames.0.last().unwrap().reason(), Some(EndReason::Stopped));
}

#[tokio::test]
async fn the_owner_stops_its_own_run_and_a_nameless_token_is_named_by_its_hash() {
    let gw = owned_gateway().await;
    let plain = bearer(PLAIN);
    let body = json!({"cli": "sleep", "args": ["30"], "session_id": "plain-1"});
    let mut stream = RunStream::open(gw.addr, body.to_string().into_bytes(), &[("authorization", &plain)]).await;
    assert_eq!(stream.status, 200);
    stream.until("session").await;
    let r = request(gw.addr, "GET", "/sessions/plain-1", None, &[("authorization", &plain)]).await;
    assert_eq!(r.status, 200);
    let owner = r.json()["owner"].as_str().unwrap().to_string();
    assert!(owner.starts_with("token-") && !owner.contains("plain"), "{owner}");
    request(
        gw.addr,
        "POST",
        "/sessions/plain-1/stop",
        None,
        &[("authorization", &bearer(ALICE))],
    )
    .await
    .assert_error(404);
    let r = request(
        gw.addr,
        "POST",
        "/sessions/plain-1/stop",
        None,
        &[("authorization", &plain)],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        stream.collect().await.0.last().unwrap().reason(),
        Some(EndReason::Stopped)
    );
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let gw = owned_gateway().await;
    for scheme in ["Bearer", "bearer", "BEARER", "BeArEr"] {
        let h = format!("{scheme} {ALICE}");
        let r = request(gw.addr, "GET", "/models", None, &[("authorization", &h)]).await;
        assert_eq!(r.status, 200, "{scheme}");
    }
    let h = format!("Basic {ALICE}");
    request(gw.addr, "GET", "/models", None, &[("authorization", &h)])
        .await
        .assert_error(401);
}

#[tokio::test]
async fn head_works_wherever_get_does() {
    let gw = Gateway::start(&[]).await;
    for path in [
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/metrics",
        "/models",
        "/clis",
        "/sessions/none",
    ] {
        let get = gw.get(path).await;
        let head = request(gw.addr, "HEAD", path, None, &[]).await;
        assert_eq!(head.status, get.status, "HEAD {path}");
        assert!(head.body.is_empty(), "HEAD {path} has a body");
        assert_eq!(
            head.headers.get("content-type"),
            get.headers.get("content-type"),
            "HEAD {path}"
        );
    }
    let r = request(gw.addr, "HEAD", "/run", None, &[]).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "POST");
    let r = request(gw.addr, "DELETE", "/models", None, &[]).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "GET, HEAD");
}

/// The top-level `key=` names of a text log line: quoted values (with `\"` escapes) are skipped,
/// so a forged `code=0` inside a value does not count.
fn keys(line: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let (mut in_quotes, mut escaped) = (false, false);
    let mut word = String::new();
    for c in line.chars() {
        if in_quotes {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_quotes = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_quotes = true,
            ' ' => word.clear(),
            '=' => keys.push(std::mem::take(&mut word)),
            c => word.push(c),
        }
    }
    keys
}

#[tokio::test]
async fn callers_cannot_flood_forge_or_colour_the_log() {
    // The real binary, with a text log on a pipe (not a terminal).
    let mut gw = Binary::launch(Launch {
        vars: &[("CLI_LIST", "args,sleep")],
        text_log: true,
        nofile: None,
    })
    .await;

    // A 60,000-character path is clipped.
    let long = format!("/{}", "a".repeat(60_000));
    request(gw.addr, "GET", &long, None, &[]).await.assert_error(404);
    let line = gw.wait_for("request rejected").await;
    assert!(line.len() < 1024, "a {}-byte log line", line.len());
    assert!(line.contains("path_bytes=60001"), "{line}");

    // A session id shaped like fields stays one quoted value.
    let forged = r#"x code=0 reason="exited" client=10.9.9.9:1"#;
    let body = json!({"cli": "args", "args": ["hi"], "session_id": forged});
    let frames = RunStream::open(gw.addr, body.to_string().into_bytes(), &[])
        .await
        .collect()
        .await;
    assert_eq!(frames.exit(), (0, "exited".into()));
    let line = gw.wait_for("run finished").await;
    let k = keys(&line);
    for key in ["code", "reason", "client", "session_id"] {
        assert_eq!(
            k.iter().filter(|x| *x == key).count(),
            1,
            "{key} in {line}\nkeys: {k:?}"
        );
    }

    // A flood of refusals is logged within the budget, and the next line says what was left out.
    let start = Instant::now();
    let mut sent = 0;
    while sent < 400 && start.elapsed() < Duration::from_secs(10) {
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let addr = gw.addr;
                tokio::spawn(async move { request(addr, "GET", "/nothing-here", None, &[]).await.status })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), 404);
            sent += 1;
        }
    }
    let elapsed = start.elapsed().as_secs() + 1;
    let logged = gw.drain().await;
    let rejected = logged.iter().filter(|l| l.contains("request rejected")).count() as u64;
    assert!(
        rejected <= 20 * (elapsed + 1),
        "{rejected} refusals logged for {sent} in {elapsed}s"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    request(gw.addr, "GET", "/one-more", None, &[]).await.assert_error(404);
    let line = gw.wait_for("/one-more").await;
    let left_out: u64 = line
        .split("not_logged_before=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(left_out > 0 && left_out as usize + rejected as usize >= sent, "{line}");

    // No colour codes: the log is a pipe, not a terminal.
    let all = gw.drain().await;
    for line in logged.iter().chain(&all) {
        assert!(!line.contains('\u{1b}'), "an escape sequence in {line:?}");
    }
}
