//! Detached runs: `POST /runs` answers 202 at once, goes through the same admission as
//! `POST /run` (queued runs are records in state `queued`), can be stopped by run id, and an
//! `Idempotency-Key` never starts anything twice — also across a restart.

mod common;

use std::time::{Duration, Instant};

use common::{Gateway, Reply, RunStream, request};
use serde_json::{Value, json};

async fn submit(gw: &Gateway, body: &Value, headers: &[(&str, &str)]) -> Reply {
    request(gw.addr, "POST", "/runs", Some(body.to_string().into_bytes()), headers).await
}

async fn record(gw: &Gateway, id: &str) -> Value {
    let r = gw.get(&format!("/runs/{id}")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// Waits until the run's record is in `state`.
async fn until_state(gw: &Gateway, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = record(gw, id).await;
        if r["state"] == state {
            return r;
        }
        assert!(Instant::now() < deadline, "never {state}: {r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_detached_run_is_answered_at_once_and_runs_to_its_end() {
    let gw = Gateway::start(&[]).await;
    let started = Instant::now();
    let r = submit(
        &gw,
        &json!({"cli": "sh", "args": ["-c", "sleep 0.5; echo done; exit 4"], "session_id": "d-1"}),
        &[],
    )
    .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "answered only after {:?}",
        started.elapsed()
    );
    let body = r.json();
    let id = body["run_id"].as_str().unwrap().to_string();
    assert_eq!(body["session_id"], "d-1");
    assert_eq!(body["state"], "running");
    assert_eq!(r.headers["location"], format!("/runs/{id}").as_str());
    let running = record(&gw, &id).await;
    assert_eq!(
        (running["detached"].as_bool(), running["state"].as_str()),
        (Some(true), Some("running"))
    );

    let done = until_state(&gw, &id, "finished").await;
    assert_eq!(
        (done["exit_code"].as_i64(), done["reason"].as_str()),
        (Some(4), Some("exited"))
    );
    // Its log is whole: session first, the output, the exit frame last; /stream replays it.
    let log = gw.get(&format!("/runs/{id}/log")).await.json();
    let content = log["content"].as_str().unwrap();
    assert!(content.starts_with(&format!(
        "{{\"type\":\"session\",\"id\":\"d-1\",\"run_id\":\"{id}\"}}\n"
    )));
    assert!(content.contains("{\"type\":\"stdout\",\"data\":\"done\\n\"}\n"));
    assert!(content.ends_with("{\"type\":\"exit\",\"code\":4,\"reason\":\"exited\"}\n"));
    let streamed = RunStream::request(gw.addr, "GET", &format!("/runs/{id}/stream"), None, &[])
        .await
        .raw_to_end()
        .await;
    assert_eq!(streamed, content.as_bytes());
}

#[tokio::test]
async fn a_detached_run_is_validated_like_an_attached_one_and_nothing_starts_on_bad_input() {
    let gw = Gateway::start(&[]).await;
    for (body, status) in [
        (json!({"cli": "rm"}), 400),
        (json!({"cli": "args", "env": {"LD_PRELOAD": "x"}}), 400),
        (json!({"cli": "args", "env": {"A-B": "x"}}), 400),
        (json!({"cli": 5}), 422),
        (json!({"args": []}), 422),
        (json!({"cli": "args", "callback_url": "file:///etc/passwd"}), 400),
        (json!({"cli": "args", "callback_url": "http://127.0.0.1:1/"}), 400),
    ] {
        submit(&gw, &body, &[]).await.assert_error(status);
    }
    let r = request(gw.addr, "POST", "/runs", Some(b"{not json".to_vec()), &[]).await;
    r.assert_error(400);
    // A callback only makes sense for a detached run.
    gw.post("/run", &json!({"cli": "args", "callback_url": "http://x/"}).to_string())
        .await
        .assert_error(400);
    assert!(gw.get("/runs").await.json()["runs"].as_array().unwrap().is_empty());
    assert_eq!(gw.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn detached_runs_share_the_admission_queue_and_a_queued_one_can_be_stopped() {
    let gw = Gateway::start(&[("MAX_CONCURRENT_RUNS", "1"), ("MAX_QUEUED_RUNS", "1")]).await;
    let first = submit(&gw, &json!({"cli": "sleep", "args": ["30"]}), &[]).await.json();
    assert_eq!(first["state"], "running");
    let second = submit(&gw, &json!({"cli": "args", "args": ["queued"]}), &[]).await;
    assert_eq!(second.status, 202);
    let second = second.json();
    assert_eq!(second["state"], "queued");
    let queued_id = second["run_id"].as_str().unwrap().to_string();
    let queued = record(&gw, &queued_id).await;
    assert_eq!(
        (queued["state"].as_str(), queued["started_at"].as_str()),
        (Some("queued"), None)
    );
    // Queue full: refused, for detached and attached runs alike.
    let third = submit(&gw, &json!({"cli": "args"}), &[]).await;
    assert_eq!(third.assert_error(503)["error"], "overloaded");
    assert_eq!(third.headers["retry-after"], "1");
    gw.post("/run", r#"{"cli": "args"}"#).await.assert_error(503);
    let metrics = request(gw.addr, "GET", "/metrics", None, &[]).await;
    assert!(String::from_utf8_lossy(&metrics.body).contains("cligate_detached_queued 1"));

    // Stop the queued one: it ends without ever starting.
    let stop = gw.post(&format!("/runs/{queued_id}/stop"), "").await;
    assert_eq!(stop.status, 200, "{}", String::from_utf8_lossy(&stop.body));
    let ended = until_state(&gw, &queued_id, "finished").await;
    assert_eq!(
        (ended["reason"].as_str(), ended["started_at"].as_str()),
        (Some("stopped"), None)
    );
    // A new one queues behind the first, and starts when it is stopped.
    let next = submit(&gw, &json!({"cli": "args", "args": ["next"]}), &[]).await.json();
    assert_eq!(next["state"], "queued");
    let first_id = first["run_id"].as_str().unwrap();
    assert_eq!(gw.post(&format!("/runs/{first_id}/stop"), "").await.status, 200);
    let stopped = until_state(&gw, first_id, "finished").await;
    assert_eq!(
        (stopped["exit_code"].as_i64(), stopped["reason"].as_str()),
        (Some(143), Some("stopped"))
    );
    let next = until_state(&gw, next["run_id"].as_str().unwrap(), "finished").await;
    assert_eq!(
        (next["exit_code"].as_i64(), next["reason"].as_str()),
        (Some(0), Some("exited"))
    );
    assert!(next["started_at"].is_string());
}

/// A CLI that appends its pid to `file`, then takes a moment.
fn counting(file: &str) -> Value {
    json!({"cli": "sh", "args": ["-c", format!("echo $$ >> {file}; sleep 0.3; echo counted")]})
}

#[tokio::test]
async fn the_same_request_with_one_key_twenty_times_at_once_starts_one_process() {
    let gw = Gateway::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    for route in ["/runs", "/run"] {
        let file = dir.path().join(format!("pids{}", route.len())).display().to_string();
        let body = counting(&file);
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (addr, body) = (gw.addr, body.clone());
                tokio::spawn(async move {
                    let key = format!("same-key{route}");
                    let headers = [("idempotency-key", key.as_str())];
                    if route == "/run" {
                        let s = RunStream::open(addr, body.to_string().into_bytes(), &headers).await;
                        assert_eq!(s.status, 200);
                        let id = s.headers["x-cligate-run-id"].to_str().unwrap().to_string();
                        let frames = s.collect().await;
                        assert_eq!(frames.exit(), (0, "exited".into()));
                        assert_eq!(frames.stdout(), "counted\n");
                        id
                    } else {
                        let r = request(addr, "POST", "/runs", Some(body.to_string().into_bytes()), &headers).await;
                        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
                        r.json()["run_id"].as_str().unwrap().to_string()
                    }
                })
            })
            .collect();
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap());
        }
        ids.dedup();
        assert_eq!(ids.len(), 1, "{route}: {ids:?}");
        until_state(&gw, &ids[0], "finished").await;
        let pids = std::fs::read_to_string(&file).unwrap();
        assert_eq!(pids.lines().count(), 1, "{route}: processes started: {pids:?}");
        // The same key with another body: 422, nothing started.
        let other = json!({"cli": "args", "args": ["other"]});
        let r = request(
            gw.addr,
            "POST",
            route,
            Some(other.to_string().into_bytes()),
            &[("idempotency-key", &format!("same-key{route}"))],
        )
        .await;
        r.assert_error(422);
    }
    // The same key and body on the other route is another request: 422 too.
    let r = request(
        gw.addr,
        "POST",
        "/run",
        Some(counting("x").to_string().into_bytes()),
        &[("idempotency-key", "same-key/runs")],
    )
    .await;
    r.assert_error(422);
    // A key that is not visible ASCII is refused.
    request(
        gw.addr,
        "POST",
        "/runs",
        Some(b"{\"cli\":\"args\"}".to_vec()),
        &[("idempotency-key", "a b")],
    )
    .await
    .assert_error(400);
    assert_eq!(gw.get("/runs").await.json()["runs"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn keys_hold_across_a_restart_and_queued_runs_end_interrupted() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().display().to_string();
    let vars = [
        ("DATA_DIR", data_dir.as_str()),
        ("MAX_CONCURRENT_RUNS", "1"),
        ("CLIGATE_INSTANCE", "detached-restart"),
    ];
    let gw = Gateway::start(&vars).await;
    let key = [("idempotency-key", "restart-key")];
    let body = json!({"cli": "args", "args": ["once"]});
    let done = submit(&gw, &body, &key).await.json();
    let done_id = done["run_id"].as_str().unwrap().to_string();
    until_state(&gw, &done_id, "finished").await;
    // One running, one queued behind it, then the gateway goes away without a shutdown.
    let running = submit(&gw, &json!({"cli": "sleep", "args": ["30"]}), &[]).await.json();
    let queued = submit(&gw, &json!({"cli": "args"}), &[]).await.json();
    assert_eq!(queued["state"], "queued");
    gw.app.runs.tasks.close();
    // Simulate the crash: the records stay as they were; a new gateway of the instance starts.
    let store = gw.app.runs.store.clone();
    std::mem::forget(gw);
    drop(store);
    let gw = Gateway::start(&vars).await;
    for id in [&running["run_id"], &queued["run_id"]] {
        let r = record(&gw, id.as_str().unwrap()).await;
        assert_eq!(
            (r["state"].as_str(), r["reason"].as_str()),
            (Some("interrupted"), Some("gateway_lost")),
            "{r}"
        );
    }
    // The key still names its run: nothing new starts.
    let again = submit(&gw, &body, &key).await;
    assert_eq!(again.status, 202);
    assert_eq!(again.json()["run_id"], done_id.as_str());
    assert_eq!(again.json()["state"], "finished");
    assert_eq!(gw.get("/runs").await.json()["runs"].as_array().unwrap().len(), 3);
}

/// The niceness a run's CLI was started with, from the `nice` it runs (`sh -c nice`).
async fn niceness(gw: &Gateway, detached: bool) -> i64 {
    let body = json!({"cli": "sh", "args": ["-c", "nice"]});
    let out = if detached {
        let r = submit(gw, &body, &[]).await;
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        let id = r.json()["run_id"].as_str().unwrap().to_string();
        assert_eq!(until_state(gw, &id, "finished").await["exit_code"], 0);
        RunStream::request(gw.addr, "GET", &format!("/runs/{id}/stream"), None, &[])
            .await
            .collect()
            .await
            .stdout()
    } else {
        let frames = gw.run_to_end(body).await;
        assert_eq!(frames.exit().0, 0);
        frames.stdout()
    };
    out.trim().parse().unwrap_or_else(|_| panic!("not a niceness: {out:?}"))
}

/// Detached runs execute at `DETACHED_RUN_NICE` (15 by default) above the gateway's own
/// niceness, so that the CPU goes to request handling first; attached runs, whose client waits
/// for every frame, keep the gateway's. 0 keeps detached runs at the gateway's priority.
#[tokio::test]
async fn detached_runs_execute_below_the_gateways_priority() {
    let gw = Gateway::start(&[]).await;
    let own = niceness(&gw, false).await;
    assert_eq!(niceness(&gw, true).await, (own + 15).min(19));
    // Attached runs are unaffected by the detached ones before them.
    assert_eq!(niceness(&gw, false).await, own);

    let gw = Gateway::start(&[("DETACHED_RUN_NICE", "3")]).await;
    assert_eq!(niceness(&gw, true).await, (own + 3).min(19));
    let gw = Gateway::start(&[("DETACHED_RUN_NICE", "0")]).await;
    assert_eq!(niceness(&gw, true).await, own);
}
