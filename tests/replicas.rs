//! Several replicas on one PostgreSQL: real `cligate` processes on their own loopback ports and
//! `DATA_DIR`s, sharing one database of the test's throw-away cluster. Any replica lists, tails,
//! streams and stops a run another executes; a session runs once across them; a replica killed
//! with SIGKILL has its runs marked `interrupted` by the others and, restarted, leaves none of
//! their processes; a load spread over three replicas loses and repeats nothing.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Binary, EndReason, Frame, FrameFields, RunStream, alive, assert_gone, pids_in, request};
use serde_json::{Value, json};

const SECRET: &str = "replica-secret-for-tests-0123";
const DEAD_SECONDS: u64 = 3;
const ALICE: &str = "Bearer alice-token-0123456789";
const BOB: &str = "Bearer bob-token-0123456789abc";

/// A replica named `name` on the database `db`.
async fn replica(db: &str, name: &str, extra: &[(&str, &str)]) -> Binary {
    let dead = DEAD_SECONDS.to_string();
    let mut vars = vec![
        ("DATABASE_URL", db),
        ("CLIGATE_INSTANCE", name),
        ("REPLICA_SECRET", SECRET),
        ("REPLICA_DEAD_SECONDS", dead.as_str()),
        (
            "AUTH_TOKENS",
            "alice:alice-token-0123456789,bob:bob-token-0123456789abc",
        ),
        ("DATA_DIR_MIN_FREE_BYTES", "0"),
        ("KILL_GRACE_SECONDS", "1"),
        ("SHUTDOWN_GRACE_SECONDS", "1"),
    ];
    vars.extend_from_slice(extra);
    Binary::start(&vars).await
}

async fn call(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>, auth: &str) -> common::Reply {
    request(
        addr,
        method,
        path,
        body.map(|b| b.to_string().into_bytes()),
        &[("authorization", auth)],
    )
    .await
}

async fn ok(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>, auth: &str) -> Value {
    let r = call(addr, method, path, body, auth).await;
    assert!(
        r.status.is_success(),
        "{method} {path}: {} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    r.json()
}

/// Starts a detached run on `addr` and returns its id.
async fn detached(addr: SocketAddr, body: Value, auth: &str) -> String {
    let answer = ok(addr, "POST", "/runs", Some(&body), auth).await;
    answer["run_id"].as_str().unwrap().to_string()
}

/// Polls `GET /runs/{id}` on `addr` until `done` holds for the record, for at most `limit`.
async fn wait_record(addr: SocketAddr, run_id: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let record = ok(addr, "GET", &format!("/runs/{run_id}"), None, ALICE).await;
        if done(&record) {
            return record;
        }
        assert!(start.elapsed() < limit, "after {limit:?}: {record}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Tails `/log` on `addr` (following `next_offset`, as a tailing client does) until the content
/// read so far holds `needle`; returns it.
async fn wait_log(addr: SocketAddr, run_id: &str, needle: &str) -> String {
    let start = Instant::now();
    let mut content = String::new();
    let mut offset = 0;
    loop {
        let log = ok(addr, "GET", &format!("/runs/{run_id}/log?offset={offset}"), None, ALICE).await;
        content.push_str(log["content"].as_str().unwrap());
        offset = log["next_offset"].as_u64().unwrap();
        if content.contains(needle) {
            return content;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{needle:?} never came: {content}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pids a run's log says (`pid N` in its output frames).
fn pids_of(log: &str) -> Vec<u32> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .flat_map(|f| pids_in(f["data"].as_str().unwrap_or("")))
        .collect()
}

/// Waits until one request waits for a run slot at `addr` (its key, if any, is claimed then).
async fn until_one_waits_for_a_slot(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&call(addr, "GET", "/metrics", None, ALICE).await.body)
        .contains("cligate_queued_requests 1")
    {
        assert!(Instant::now() < deadline, "no request waited for a slot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_peers(addr: SocketAddr, peers: u64) {
    let start = Instant::now();
    loop {
        let ready = request(addr, "GET", "/readyz", None, &[]).await.json();
        if ready["peers"] == peers {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_run_on_a_is_listed_tailed_streamed_and_stopped_through_b() {
    let db = common::pg::fresh_database().await;
    let a = replica(&db, "rep-a", &[]).await;
    let b = replica(&db, "rep-b", &[]).await;
    let ready = request(b.addr, "GET", "/readyz", None, &[]).await.json();
    assert_eq!(
        (ready["replica"].as_str(), ready["peers"].as_u64()),
        (Some("rep-b"), Some(1)),
        "{ready}"
    );
    wait_peers(a.addr, 1).await;
    let metrics = String::from_utf8_lossy(&call(b.addr, "GET", "/metrics", None, ALICE).await.body).into_owned();
    assert!(metrics.contains("cligate_replica{replica=\"rep-b\"} 1"), "{metrics}");
    assert!(metrics.contains("cligate_replica_peers 1"), "{metrics}");

    let run = json!({"cli": "sh", "session_id": "via-b", "args": ["-c", "echo first; sleep 60"]});
    let id = detached(a.addr, run, ALICE).await;

    // Listed and read through B, from the shared records; another token sees nothing.
    let listed = ok(b.addr, "GET", "/runs?session_id=via-b", None, ALICE).await;
    assert_eq!(listed["runs"][0]["run_id"], id.as_str(), "{listed}");
    assert_eq!(listed["runs"][0]["instance"], "rep-a");
    let bobs = ok(b.addr, "GET", "/runs?session_id=via-b", None, BOB).await;
    assert_eq!(bobs["runs"], json!([]));
    assert_eq!(
        ok(b.addr, "GET", &format!("/runs/{id}"), None, ALICE).await["state"],
        "running"
    );

    // Tailed through B (forwarded to A, where the log is), with the caller's identity.
    wait_log(b.addr, &id, "first").await;
    for path in ["log", "events", "stream"] {
        call(b.addr, "GET", &format!("/runs/{id}/{path}"), None, BOB)
            .await
            .assert_error(404);
    }

    // Streamed live through B, then stopped through B: the stream gets the exit frame.
    let mut live = RunStream::request(
        b.addr,
        "GET",
        &format!("/runs/{id}/stream?offset=0"),
        None,
        &[("authorization", ALICE)],
    )
    .await;
    assert_eq!(live.status, 200);
    assert_eq!(live.headers["x-cligate-run-id"], id.as_str());
    assert_eq!(live.next().await.unwrap().kind(), "session");
    live.stdout_until("first").await;
    call(b.addr, "POST", &format!("/runs/{id}/stop"), None, BOB)
        .await
        .assert_error(404);
    let asked = Instant::now();
    let stopped = ok(b.addr, "POST", &format!("/runs/{id}/stop"), None, ALICE).await;
    assert!(asked.elapsed() < Duration::from_secs(1), "{:?}", asked.elapsed());
    assert_eq!(stopped, json!({"run_id": id, "status": "stopped"}));
    let exit = live.until("exit").await;
    assert_eq!(exit.reason(), Some(EndReason::Stopped));
    assert!(live.next().await.is_none());
    let record = wait_record(b.addr, &id, Duration::from_secs(5), |r| r["state"] == "finished").await;
    assert_eq!(record["reason"], "stopped");

    // Re-attached through B from a frame offset: exactly A's log from there.
    let whole = wait_log(a.addr, &id, "\"exit\"").await;
    let content = whole.as_str();
    let offset = content.find('\n').unwrap() + 1;
    let again = RunStream::request(
        b.addr,
        "GET",
        &format!("/runs/{id}/stream?offset={offset}"),
        None,
        &[("authorization", ALICE)],
    )
    .await;
    assert_eq!(again.status, 200);
    assert_eq!(String::from_utf8(again.raw_to_end().await).unwrap(), &content[offset..]);
    let tail = ok(b.addr, "GET", &format!("/runs/{id}/log?offset={offset}"), None, ALICE).await;
    assert_eq!(
        (tail["content"].as_str().unwrap(), &tail["eof"]),
        (&content[offset..], &json!(true))
    );

    // The Gerrit plugin's session stop, sent to B for a session running on A.
    let id2 = detached(
        a.addr,
        json!({"cli": "sh", "session_id": "gerrit-1", "args": ["-c", "echo up; sleep 60"]}),
        ALICE,
    )
    .await;
    wait_log(b.addr, &id2, "up").await;
    let stopped = ok(b.addr, "POST", "/sessions/gerrit-1/stop", None, ALICE).await;
    assert_eq!(stopped, json!({"session_id": "gerrit-1", "status": "stopped"}));
    wait_record(b.addr, &id2, Duration::from_secs(5), |r| r["state"] == "finished").await;
    call(b.addr, "POST", "/sessions/gerrit-1/stop", None, ALICE)
        .await
        .assert_error(404);
    call(b.addr, "POST", "/sessions/never-ran/stop", None, ALICE)
        .await
        .assert_error(404);

    // A client cannot pass for a replica: a made-up identity without the secret's MAC is 401.
    let forged = request(
        a.addr,
        "GET",
        &format!("/runs/{id}/log"),
        None,
        &[
            ("x-cligate-replica-caller", "v1;ts=0;admin=1"),
            ("x-cligate-replica-signature", "00"),
        ],
    )
    .await;
    forged.assert_error(401);
    // And both replicas still serve.
    assert_eq!(request(a.addr, "GET", "/healthz", None, &[]).await.status, 200);
}

#[tokio::test]
async fn a_session_runs_once_across_replicas_and_idempotency_keys_hold() {
    let db = common::pg::fresh_database().await;
    let a = replica(&db, "dup-a", &[]).await;
    let b = replica(&db, "dup-b", &[]).await;
    for round in 0..6 {
        let session = format!("race-{round}");
        let body = json!({"cli": "sleep", "session_id": session, "args": ["30"]});
        // Detached on even rounds, attached on odd ones: both routes refuse alike.
        let path = if round % 2 == 0 { "/runs" } else { "/run" };
        let open = |addr| {
            let body = body.to_string().into_bytes();
            async move { RunStream::request(addr, "POST", path, Some(body), &[("authorization", ALICE)]).await }
        };
        let (mut on_a, mut on_b) = tokio::join!(open(a.addr), open(b.addr));
        let mut statuses = [on_a.status.as_u16(), on_b.status.as_u16()];
        statuses.sort();
        let won = if round % 2 == 0 { 202 } else { 200 };
        assert_eq!(statuses, [won, 409], "round {round}");
        let (loser, winner) = if on_a.status == 409 {
            (&mut on_a, b.addr)
        } else {
            (&mut on_b, a.addr)
        };
        let refusal: Value = serde_json::from_str(&loser.error_body().await).unwrap();
        assert_eq!(
            refusal,
            json!({"error": "conflict", "message": "session already running", "code": 409,
                   "detail": format!("session '{session}' is already running")})
        );
        // Stopped through the replica that lost the race, then the session is free again.
        let other = if winner == a.addr { b.addr } else { a.addr };
        ok(other, "POST", &format!("/sessions/{session}/stop"), None, ALICE).await;
        drop((on_a, on_b));
        let start = Instant::now();
        loop {
            let r = call(other, "POST", &format!("/sessions/{session}/stop"), None, ALICE).await;
            if r.status == 404 {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // One Idempotency-Key sent to both at once: one run, both told its id.
    let body = json!({"cli": "exit-code", "session_id": "idem-1", "args": ["3"]}).to_string();
    let send = |addr, body: String| async move {
        request(
            addr,
            "POST",
            "/runs",
            Some(body.into_bytes()),
            &[("authorization", ALICE), ("idempotency-key", "key-1")],
        )
        .await
    };
    let (ra, rb) = tokio::join!(send(a.addr, body.clone()), send(b.addr, body.clone()));
    assert_eq!((ra.status.as_u16(), rb.status.as_u16()), (202, 202));
    assert_eq!(ra.json()["run_id"], rb.json()["run_id"]);
    let other = json!({"cli": "exit-code", "session_id": "idem-1", "args": ["4"]}).to_string();
    send(b.addr, other).await.assert_error(422);
    let runs = ok(a.addr, "GET", "/runs?session_id=idem-1", None, ALICE).await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1, "{runs}");
    // The attached route with the same key on the other replica streams that run from its owner.
    let body = json!({"cli": "exit-code", "session_id": "idem-2", "args": ["5"]}).to_string();
    let first = RunStream::request(
        a.addr,
        "POST",
        "/run",
        Some(body.clone().into_bytes()),
        &[("authorization", ALICE), ("idempotency-key", "key-2")],
    )
    .await
    .collect()
    .await;
    assert_eq!(first.exit(), (5, "exited".to_string()));
    let repeat = RunStream::request(
        b.addr,
        "POST",
        "/run",
        Some(body.into_bytes()),
        &[("authorization", ALICE), ("idempotency-key", "key-2")],
    )
    .await;
    assert_eq!(repeat.status, 200);
    let frames = repeat.collect().await;
    assert_eq!(frames.0, first.0);
}

#[tokio::test]
async fn a_branch_and_a_state_key_are_held_by_one_run_across_replicas() {
    let db = common::pg::fresh_database().await;
    // A remote that never answers: a run on a branch stays in its fetch, holding the branch.
    let (url, _remote) = common::silent_remote().await;
    let dir = tempfile::tempdir().unwrap();
    let projects = dir.path().join("projects.toml");
    std::fs::write(&projects, format!("[projects.demo]\nurl = \"{url}\"\nbase = \"dev\"\n")).unwrap();
    let projects = projects.display().to_string();
    let extra = [("PROJECTS_FILE", projects.as_str()), ("GIT_TIMEOUT_SECONDS", "60")];
    let a = replica(&db, "hold-a", &extra).await;
    let b = replica(&db, "hold-b", &extra).await;
    let refused = |reply: common::Reply, what: &str| {
        let body = reply.assert_error(409);
        assert_eq!(body["error"], "busy", "{body}");
        assert!(body["detail"].as_str().unwrap().contains(what), "{body}");
    };

    let on_branch = json!({"cli": "echo-stdin", "workspace": {"project": "demo", "branch": "shared"}});
    let held = detached(a.addr, on_branch.clone(), ALICE).await;
    let branch_busy = "branch 'shared' of project 'demo' is busy";
    for path in ["/runs", "/run"] {
        refused(call(b.addr, "POST", path, Some(&on_branch), ALICE).await, branch_busy);
    }
    let other_branch = json!({"cli": "echo-stdin", "workspace": {"project": "demo", "branch": "other"}});
    let other = detached(b.addr, other_branch, ALICE).await;

    // A state key is held per owner: alice's is busy everywhere, bob's same name is not.
    let conversation = json!({"cli": "sleep", "args": ["30"], "state_key": "conv"});
    let talking = detached(b.addr, conversation.clone(), ALICE).await;
    refused(
        call(a.addr, "POST", "/runs", Some(&conversation), ALICE).await,
        "state_key 'conv' is busy",
    );
    let bobs = detached(a.addr, conversation.clone(), BOB).await;

    // Ended, each is free again on the other replica.
    ok(a.addr, "POST", &format!("/runs/{bobs}/stop"), None, BOB).await;
    for run in [&held, &other, &talking] {
        ok(b.addr, "POST", &format!("/runs/{run}/stop"), None, ALICE).await;
        wait_record(b.addr, run, Duration::from_secs(15), |r| r["state"] == "finished").await;
    }
    let again = detached(b.addr, on_branch, ALICE).await;
    let again_talking = detached(a.addr, conversation, ALICE).await;
    for run in [again, again_talking] {
        ok(a.addr, "POST", &format!("/runs/{run}/stop"), None, ALICE).await;
    }
}

/// The pid of the containment watchdog that `gateway` started (its child running `--watchdog`).
fn watchdog_of(gateway: u32) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1));
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(&gateway.to_string()) && String::from_utf8_lossy(&cmdline).contains("--watchdog") {
            return Some(pid);
        }
    }
    None
}

#[tokio::test]
async fn a_killed_replica_has_its_runs_interrupted_and_restarted_leaves_no_process() {
    let db = common::pg::fresh_database().await;
    let data_a = common::scratch_data_dir();
    let a_vars = [("DATA_DIR", data_a.as_str()), ("MAX_CONCURRENT_RUNS", "1")];
    let mut a = replica(&db, "kill-a", &a_vars).await;
    let mut b = replica(&db, "kill-b", &[]).await;
    let id = detached(
        a.addr,
        json!({"cli": "sh", "session_id": "doomed", "args": ["-c", "echo \"pid $$\"; exec sleep 60"]}),
        ALICE,
    )
    .await;
    let log = wait_log(b.addr, &id, "pid ").await;
    let pids = pids_of(&log);
    assert_eq!(pids.len(), 1, "{log}");
    // A reader following the run through B (relayed from A).
    let mut relayed = RunStream::request(
        b.addr,
        "GET",
        &format!("/runs/{id}/stream"),
        None,
        &[("authorization", ALICE)],
    )
    .await;
    assert_eq!(relayed.status, 200);
    assert!(relayed.try_next_bytes().await.unwrap().is_some(), "B relays A's log");
    // A request with an Idempotency-Key waits on A for the slot the run holds: its key is
    // claimed, its run not recorded.
    let keyed = json!({"cli": "exit-code", "args": ["0"]}).to_string().into_bytes();
    let key = [("authorization", ALICE), ("idempotency-key", "claimed-on-a")];
    let waiting = {
        let (addr, keyed) = (a.addr, keyed.clone());
        tokio::spawn(async move { common::try_request(addr, "POST", "/run", Some(keyed), &key).await })
    };
    until_one_waits_for_a_slot(a.addr).await;

    // The watchdog would end the run the moment A dies; without it, the process outlives A, as
    // it would if A's host were cut off, and only A's return can end it.
    let watchdog = watchdog_of(a.pid()).expect("the gateway's watchdog");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(watchdog as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    a.kill_9().await;
    let killed = Instant::now();
    assert!(waiting.await.unwrap().is_err(), "the waiting request was answered");
    // The relayed stream breaks off (no last chunk): its reader can tell it from one that ended.
    let broke = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match relayed.try_next_bytes().await {
                Ok(Some(_)) => continue,
                Ok(None) => return false,
                Err(_) => return true,
            }
        }
    })
    .await
    .expect("the relayed stream went on after its replica died");
    assert!(
        broke,
        "the relayed stream of a killed replica ended as if it were complete"
    );
    let limit = Duration::from_secs(DEAD_SECONDS + 2);
    let record = wait_record(b.addr, &id, limit, |r| r["state"] == "interrupted").await;
    assert!(killed.elapsed() <= limit, "{:?}", killed.elapsed());
    assert_eq!(record["reason"], "replica_lost", "{record}");
    assert!(alive(pids[0]), "the run's process outlived its gateway");
    // Its log is in A's DATA_DIR: unavailable while A is gone, and said so.
    let gone = call(b.addr, "GET", &format!("/runs/{id}/log"), None, ALICE).await;
    let detail = gone.assert_error(503)["detail"].as_str().unwrap().to_string();
    assert!(
        detail.contains("kill-a") && detail.contains("cannot be reached"),
        "{detail}"
    );
    // The session is free again (its holder was a lost replica).
    let again = detached(
        b.addr,
        json!({"cli": "exit-code", "session_id": "doomed", "args": ["0"]}),
        ALICE,
    )
    .await;
    wait_record(b.addr, &again, Duration::from_secs(5), |r| r["state"] == "finished").await;
    // B forgot the key A claimed and never used: a retry through B starts the run.
    b.wait_for("idempotency keys forgotten").await;
    let retried = tokio::time::timeout(Duration::from_secs(20), async {
        RunStream::request(b.addr, "POST", "/run", Some(keyed), &key)
            .await
            .collect()
            .await
    })
    .await
    .expect("a retry with a key its lost replica never used starts the run");
    assert_eq!(retried.exit(), (0, "exited".to_string()));

    // A comes back under its name: it ends what it left and keeps the record as B wrote it.
    let a = replica(&db, "kill-a", &a_vars).await;
    assert_gone(&pids, Duration::from_secs(10)).await;
    let record = ok(a.addr, "GET", &format!("/runs/{id}"), None, ALICE).await;
    assert_eq!(
        (&record["state"], &record["reason"]),
        (&json!("interrupted"), &json!("replica_lost"))
    );
    // Its log is readable through B again.
    wait_log(b.addr, &id, "pid ").await;
    let frames = RunStream::request(
        a.addr,
        "POST",
        "/run",
        Some(json!({"cli": "exit-code", "args": ["0"]}).to_string().into_bytes()),
        &[("authorization", ALICE)],
    )
    .await
    .collect()
    .await;
    assert_eq!(frames.exit(), (0, "exited".to_string()));
}

#[tokio::test]
async fn five_hundred_runs_over_three_replicas_none_lost_none_twice() {
    let db = common::pg::fresh_database().await;
    let replicas = [
        replica(&db, "load-a", &[]).await,
        replica(&db, "load-b", &[]).await,
        replica(&db, "load-c", &[]).await,
    ];
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    let marks = tempfile::tempdir().unwrap();
    let file = marks.path().join("ran");
    let file = file.display().to_string();
    const RUNS: usize = 500;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (next, addrs, file) = (next.clone(), addrs.clone(), file.clone());
        workers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= RUNS {
                    return seen;
                }
                let body = json!({"cli": "sh", "session_id": format!("load-{i}"),
                    "args": ["-c", format!("echo {i} >> {file}; exit {}", i % 7)]});
                let stream = RunStream::request(
                    addrs[i % 3],
                    "POST",
                    "/run",
                    Some(body.to_string().into_bytes()),
                    &[("authorization", ALICE)],
                )
                .await;
                assert_eq!(stream.status, 200, "run {i}");
                let frames = stream.collect().await;
                assert_eq!(frames.exit(), ((i % 7) as i64, "exited".to_string()), "run {i}");
                let Frame::Session { run_id, .. } = &frames.0[0] else {
                    panic!("run {i} began with {:?}", frames.0[0]);
                };
                seen.push((i, run_id.clone()));
            }
        }));
    }
    let mut ids = std::collections::HashMap::new();
    for w in workers {
        for (i, id) in w.await.unwrap() {
            ids.insert(id, i);
        }
    }
    assert_eq!(ids.len(), RUNS, "one run id per request");

    // Every record, read through one replica: finished with its exit code, on its replica.
    let mut records = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/runs?limit=1000&cursor={c}"),
            None => "/runs?limit=1000".to_string(),
        };
        let page = ok(addrs[1], "GET", &path, None, ALICE).await;
        records.extend(page["runs"].as_array().unwrap().clone());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(records.len(), RUNS);
    let names = ["load-a", "load-b", "load-c"];
    for r in &records {
        let i = ids[r["run_id"].as_str().unwrap()];
        assert_eq!(r["state"], "finished", "{r}");
        assert_eq!(r["exit_code"], (i % 7) as i64, "{r}");
        assert_eq!(r["instance"], names[i % 3], "{r}");
        assert_eq!(r["session_id"], format!("load-{i}"), "{r}");
    }
    // Each run executed exactly once.
    let text = std::fs::read_to_string(&file).unwrap();
    let mut ran: Vec<usize> = text.lines().map(|l| l.trim().parse().unwrap()).collect();
    ran.sort();
    assert_eq!(ran, (0..RUNS).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_draining_replica_finishes_or_ends_its_runs_then_deregisters() {
    let db = common::pg::fresh_database().await;
    let mut a = replica(&db, "drain-a", &[("SHUTDOWN_GRACE_SECONDS", "3")]).await;
    let b = replica(&db, "drain-b", &[]).await;
    wait_peers(a.addr, 1).await;
    let short = detached(
        a.addr,
        json!({"cli": "sh", "session_id": "short", "args": ["-c", "sleep 1; echo done"]}),
        ALICE,
    )
    .await;
    let long = detached(
        a.addr,
        json!({"cli": "sleep", "session_id": "long", "args": ["60"]}),
        ALICE,
    )
    .await;
    wait_record(b.addr, &long, Duration::from_secs(5), |r| r["state"] == "running").await;

    let status = a.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");
    // The short run finished within the grace, the long one was ended at its end: both are
    // final, by A itself (not declared lost), and A is no longer counted at once.
    let done = ok(b.addr, "GET", &format!("/runs/{short}"), None, ALICE).await;
    assert_eq!(
        (&done["state"], &done["exit_code"], &done["reason"]),
        (&json!("finished"), &json!(0), &json!("exited"))
    );
    let ended = ok(b.addr, "GET", &format!("/runs/{long}"), None, ALICE).await;
    assert_eq!(
        (&ended["state"], &ended["reason"]),
        (&json!("finished"), &json!("shutdown")),
        "{ended}"
    );
    wait_peers(b.addr, 0).await;
    // Their logs were small, so they were kept with the records in the shared store when the
    // runs ended: B serves them with A gone. (A larger log stays in A's DATA_DIR: unavailable
    // while A is gone, and said so; see the killed-replica test.)
    let kept = ok(b.addr, "GET", &format!("/runs/{short}/log"), None, ALICE).await;
    assert!(
        kept["content"]
            .as_str()
            .unwrap()
            .contains("{\"type\":\"stdout\",\"data\":\"done\\n\"}"),
        "{kept}"
    );
    assert_eq!(kept["eof"], true);
    assert_eq!(kept["size"], done["log_bytes"]);
}

#[tokio::test]
async fn a_replica_ends_its_runs_that_others_declared_lost_while_it_was_cut_off() {
    let db = common::pg::fresh_database().await;
    let a = replica(&db, "cut-a", &[]).await;
    let id = detached(
        a.addr,
        json!({"cli": "sh", "session_id": "cut", "args": ["-c", "echo \"pid $$\"; exec sleep 60"]}),
        ALICE,
    )
    .await;
    let pids = pids_in(
        &wait_log(a.addr, &id, "pid ")
            .await
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|f| f["data"].as_str().unwrap_or("").to_string())
            .collect::<String>(),
    );
    assert_eq!(pids.len(), 1);
    // What another replica writes when A's heartbeat has been missing too long (A was cut off
    // from the database, not dead): the run is interrupted in the shared record.
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let changed = sqlx::query(
        "UPDATE runs SET state = 'interrupted', reason = 'replica_lost', finished_at = 1 WHERE run_id = $1",
    )
    .bind(&id)
    .execute(&pool)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(changed, 1);
    // A's next heartbeat sees it and ends the run; the record stays as the others wrote it.
    assert_gone(&pids, Duration::from_secs(DEAD_SECONDS + 5)).await;
    let record = wait_record(a.addr, &id, Duration::from_secs(5), |_| true).await;
    assert_eq!(
        (&record["state"], &record["reason"]),
        (&json!("interrupted"), &json!("replica_lost"))
    );
    // The session is free on A again.
    let again = detached(
        a.addr,
        json!({"cli": "exit-code", "session_id": "cut", "args": ["0"]}),
        ALICE,
    )
    .await;
    wait_record(a.addr, &again, Duration::from_secs(5), |r| r["state"] == "finished").await;
}

#[tokio::test]
async fn a_second_gateway_under_a_live_replicas_name_does_not_start() {
    let db = common::pg::fresh_database().await;
    let a = replica(&db, "twin", &[("MAX_CONCURRENT_RUNS", "1")]).await;
    // The first has a run going, and a keyed request waiting for its slot.
    let id = detached(
        a.addr,
        json!({"cli": "sh", "args": ["-c", "echo \"pid $$\"; exec sleep 60"]}),
        ALICE,
    )
    .await;
    let pids = pids_of(&wait_log(a.addr, &id, "pid ").await);
    assert_eq!(pids.len(), 1);
    let addr = a.addr;
    let waiting = tokio::spawn(async move {
        let key = [("authorization", ALICE), ("idempotency-key", "held-by-the-first")];
        let body = json!({"cli": "exit-code", "args": ["0"]}).to_string().into_bytes();
        RunStream::request(addr, "POST", "/run", Some(body), &key)
            .await
            .collect()
            .await
    });
    until_one_waits_for_a_slot(a.addr).await;
    let vars = [
        ("LISTEN_ADDR", "127.0.0.1:0"),
        ("DATABASE_URL", db.as_str()),
        ("CLIGATE_INSTANCE", "twin"),
        ("DATA_DIR_MIN_FREE_BYTES", "0"),
    ];
    let out = common::run_binary(&[], &vars, Duration::from_secs(30)).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Its log lines (text) come first; the refusal is the one line of the start-up failure.
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("cligate: CLIGATE_INSTANCE: another gateway named 'twin' is running at http://127.0.0.1:"),
        "{stderr}"
    );
    // The first keeps serving under its name, and nothing of its was taken for a predecessor's:
    // its run goes on, and the waiting request runs once the slot is free.
    let ready = request(a.addr, "GET", "/readyz", None, &[]).await.json();
    assert_eq!(ready["replica"], "twin");
    let record = ok(a.addr, "GET", &format!("/runs/{id}"), None, ALICE).await;
    assert_eq!(record["state"], "running", "{record}");
    tokio::time::sleep(Duration::from_secs(DEAD_SECONDS / 3 + 1)).await;
    assert!(alive(pids[0]), "the first's run was ended");
    ok(a.addr, "POST", &format!("/runs/{id}/stop"), None, ALICE).await;
    let frames = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting request runs once the slot is free")
        .unwrap();
    assert_eq!(frames.exit(), (0, "exited".to_string()));
}
