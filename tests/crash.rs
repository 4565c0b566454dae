//! Crash safety: a gateway killed with SIGKILL while runs stream loses nothing it had written.
//! The next start marks that instance's runs `interrupted` (`gateway_lost`), none of their
//! processes is left, their logs read up to the last whole frame (a torn last line is cut), and
//! every record is still there — in SQLite and in PostgreSQL.

mod common;

use std::time::{Duration, Instant};

use common::{Binary, Db, Frame, RunStream, alive, assert_gone, pids_in, request, run_binary};
use serde_json::{Value, json};

/// A CLI that says its pid, then prints a numbered line every 10 ms for a long time.
fn slow_printer(n: u32) -> Value {
    json!({"cli": "sh", "session_id": format!("crash-{n}"), "args": ["-c",
        "echo \"pid $$\"; i=0; while [ $i -lt 100000 ]; do echo \"line $i\"; i=$((i+1)); sleep 0.01; done"]})
}

async fn get(addr: std::net::SocketAddr, path: &str) -> Value {
    let r = request(addr, "GET", path, None, &[]).await;
    assert_eq!(r.status, 200, "{path}: {}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// What a gateway and its successor after the crash share: a `DATA_DIR`, an instance name and
/// (PostgreSQL) a database, each fresh.
struct Place {
    data: tempfile::TempDir,
    data_dir: String,
    instance: String,
    url: Option<String>,
}

impl Place {
    async fn new(db: Db) -> Place {
        let data = tempfile::tempdir().unwrap();
        Place {
            data_dir: data.path().display().to_string(),
            data,
            instance: format!("crash-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            url: match db {
                Db::Postgres => Some(common::pg::fresh_database().await),
                Db::Sqlite => None,
            },
        }
    }

    fn vars(&self) -> Vec<(&str, &str)> {
        let mut vars = vec![
            ("DATA_DIR", self.data_dir.as_str()),
            ("CLIGATE_INSTANCE", self.instance.as_str()),
            ("DATA_DIR_MIN_FREE_BYTES", "0"),
        ];
        if let Some(url) = &self.url {
            vars.push(("DATABASE_URL", url));
        }
        vars
    }
}

async fn a_killed_gateway_loses_nothing_it_wrote(db: Db) {
    let place = Place::new(db).await;
    let vars = place.vars();
    let mut gw = Binary::start(&vars).await;

    // Three runs streaming, and one that finished before the crash.
    let done = gw.run_to_end(json!({"cli": "args", "args": ["before"]})).await;
    assert_eq!(done.exit().0, 0);
    let mut streams = Vec::new();
    let mut pids = Vec::new();
    for n in 0..3 {
        let mut s = RunStream::open(gw.addr, slow_printer(n).to_string().into_bytes(), &[]).await;
        assert_eq!(s.status, 200);
        let id = s.headers["x-cligate-run-id"].to_str().unwrap().to_string();
        pids.extend(pids_in(&s.stdout_until("line 5\n").await));
        streams.push((id, s));
    }
    assert_eq!(pids.len(), 3);
    assert!(pids.iter().all(|p| alive(*p)));

    gw.kill_9().await;
    // Its watchdog ends the runs at once; nothing waits for the next start.
    assert_gone(&pids, Duration::from_secs(5)).await;
    // The attached clients see their streams end without an exit frame.
    for (_, s) in streams.iter_mut() {
        let rest = tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(Some(_piece)) = s.try_next_bytes().await {}
        })
        .await;
        assert!(rest.is_ok(), "an attached stream stayed open after the gateway died");
    }
    // A crash in the middle of a write leaves a torn last line.
    let logs = place.data.path().join("logs");
    let torn_id = streams[0].0.clone();
    let torn = logs.join(format!("{torn_id}.ndjson"));
    let whole = std::fs::read(&torn).unwrap();
    assert!(whole.ends_with(b"\n"));
    let mut with_tear = whole.clone();
    with_tear.extend_from_slice(b"{\"type\":\"stdout\",\"data\":\"line 9");
    std::fs::write(&torn, &with_tear).unwrap();

    let gw = Binary::start(&vars).await;
    for (id, _) in &streams {
        let record = get(gw.addr, &format!("/runs/{id}")).await;
        assert_eq!(record["state"], "interrupted", "{record}");
        assert_eq!(record["reason"], "gateway_lost");
        assert_eq!(record["exit_code"], Value::Null);
        assert!(record["finished_at"].is_string());
        let file = std::fs::read(logs.join(format!("{id}.ndjson"))).unwrap();
        assert_eq!(record["log_bytes"], file.len() as u64);
        // The whole log through /log: whole frames, every one of them JSON, to eof.
        let mut offset = 0u64;
        let mut text = String::new();
        loop {
            let page = get(gw.addr, &format!("/runs/{id}/log?offset={offset}&max_bytes=4096")).await;
            text.push_str(page["content"].as_str().unwrap());
            offset = page["next_offset"].as_u64().unwrap();
            if page["eof"] == true {
                break;
            }
        }
        assert_eq!(text.as_bytes(), &file[..]);
        for line in text.lines() {
            let frame: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert_ne!(frame["type"], "exit");
        }
        assert!(text.contains("\"data\":\"line 5\\n\""));
        // A stream of an interrupted run gives the log and ends.
        let streamed = tokio::time::timeout(
            Duration::from_secs(10),
            RunStream::request(gw.addr, "GET", &format!("/runs/{id}/stream"), None, &[])
                .await
                .raw_to_end(),
        )
        .await
        .expect("the stream of an interrupted run ends");
        assert_eq!(streamed, file);
    }
    // The torn tail was cut, nothing before it.
    assert_eq!(std::fs::read(&torn).unwrap(), whole);
    // No record is lost, the finished one is untouched.
    let all = get(gw.addr, "/runs").await;
    let states: Vec<&str> = all["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["interrupted", "interrupted", "interrupted", "finished"]);
    let session = get(gw.addr, "/sessions/crash-1").await;
    assert_eq!(session["state"], "interrupted");
    // The restarted gateway runs new work as usual.
    assert_eq!(
        gw.run_to_end(json!({"cli": "args", "args": ["after"]})).await.exit().0,
        0
    );
    let started = Instant::now();
    drop(gw);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_killed_gateway_loses_nothing_it_wrote_sqlite() {
    a_killed_gateway_loses_nothing_it_wrote(Db::Sqlite).await;
}

#[tokio::test]
async fn a_killed_gateway_loses_nothing_it_wrote_postgres() {
    a_killed_gateway_loses_nothing_it_wrote(Db::Postgres).await;
}

/// A gateway killed while an attached run with an `Idempotency-Key` waited for its slot: the key
/// was claimed, the run not yet recorded. After the restart a retry with the key starts the
/// run (before, every retry waited 35 s and was told 409 for the rest of the day).
async fn a_key_claimed_by_a_killed_gateway_starts_its_run_on_retry(db: Db) {
    let place = Place::new(db).await;
    let mut vars = place.vars();
    vars.push(("MAX_CONCURRENT_RUNS", "1"));
    let mut gw = Binary::start(&vars).await;
    let blocker = RunStream::open(
        gw.addr,
        json!({"cli": "sleep", "args": ["30"]}).to_string().into_bytes(),
        &[],
    )
    .await;
    assert_eq!(blocker.status, 200);
    let body = json!({"cli": "args", "args": ["retried"]}).to_string().into_bytes();
    let key = [("idempotency-key", "claimed-then-killed")];
    let addr = gw.addr;
    let waiting = {
        let body = body.clone();
        // Ends with an error when the gateway dies (it answers only once the run has a slot).
        tokio::spawn(async move { common::try_request(addr, "POST", "/run", Some(body), &key).await })
    };
    // Waiting for the slot: its key is claimed (claims come before admission).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = request(gw.addr, "GET", "/metrics", None, &[]).await;
        if String::from_utf8_lossy(&metrics.body).contains("cligate_queued_requests 1") {
            break;
        }
        assert!(Instant::now() < deadline, "the keyed request never waited for a slot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.kill_9().await;
    assert!(waiting.await.unwrap().is_err(), "the waiting request was answered");

    let mut gw = Binary::start(&vars).await;
    let retry = || async {
        let stream = RunStream::open(gw.addr, body.clone(), &key).await;
        assert_eq!(stream.status, 200);
        let id = stream.headers["x-cligate-run-id"].to_str().unwrap().to_string();
        (id, stream.collect().await)
    };
    let (id, frames) = tokio::time::timeout(Duration::from_secs(20), retry())
        .await
        .expect("a retry with the key of a run that never started starts it");
    assert_eq!((frames.exit().0, frames.stdout()), (0, "[retried]\n".to_string()));
    assert_eq!(get(gw.addr, &format!("/runs/{id}")).await["state"], "finished");
    // From now on the key names that run.
    let (again, frames) = retry().await;
    assert_eq!((again, frames.stdout()), (id, "[retried]\n".to_string()));
    let states: Vec<String> = get(gw.addr, "/runs").await["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states, ["finished", "interrupted"]);
    assert!(
        gw.drain()
            .await
            .iter()
            .any(|l| l.contains("idempotency keys forgotten"))
    );
}

#[tokio::test]
async fn a_key_claimed_by_a_killed_gateway_starts_its_run_on_retry_sqlite() {
    a_key_claimed_by_a_killed_gateway_starts_its_run_on_retry(Db::Sqlite).await;
}

#[tokio::test]
async fn a_key_claimed_by_a_killed_gateway_starts_its_run_on_retry_postgres() {
    a_key_claimed_by_a_killed_gateway_starts_its_run_on_retry(Db::Postgres).await;
}

/// Two gateways on one `DATA_DIR` would each take the other's runs for a crashed
/// predecessor's: the second stops at start-up naming the first, which loses nothing.
#[tokio::test]
async fn a_second_gateway_on_a_live_gateways_data_dir_does_not_start() {
    let place = Place::new(Db::Sqlite).await;
    let vars = place.vars();
    let gw = Binary::start(&vars).await;
    let body = json!({"cli": "sh", "args": ["-c", "echo \"pid $$\"; exec sleep 30"]});
    let mut s = RunStream::open(gw.addr, body.to_string().into_bytes(), &[]).await;
    let id = s.headers["x-cligate-run-id"].to_str().unwrap().to_string();
    let pids = pids_in(&s.stdout_until("\n").await);
    assert_eq!(pids.len(), 1);

    let mut second = vars.clone();
    second.push(("LISTEN_ADDR", "127.0.0.1:0"));
    let out = run_binary(&[], &second, Duration::from_secs(20)).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with(&format!(
            "cligate: DATA_DIR: '{}' is in use by another running gateway (pid {})",
            place.data_dir,
            gw.pid()
        )),
        "{stderr}"
    );

    // The first's run goes on, and ends as its client says.
    assert!(alive(pids[0]));
    assert_eq!(get(gw.addr, &format!("/runs/{id}")).await["state"], "running");
    let stop = request(gw.addr, "POST", &format!("/runs/{id}/stop"), None, &[]).await;
    assert_eq!(stop.status, 200);
    let rest = s.collect().await;
    assert!(matches!(rest.0.as_slice(), [Frame::Exit { code: 143, .. }]), "{rest:?}");
    let record = get(gw.addr, &format!("/runs/{id}")).await;
    assert_eq!(
        (&record["state"], &record["reason"]),
        (&json!("finished"), &json!("stopped"))
    );
}

#[tokio::test]
async fn an_unwritable_data_dir_or_an_unreachable_database_stops_start_up_naming_the_variable() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let not_a_dir = file.path().join("sub").display().to_string();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = format!("postgres://nobody@127.0.0.1:{closed}/none");
    for (variable, var) in [
        ("DATA_DIR", ("DATA_DIR", not_a_dir.as_str())),
        ("DATABASE_URL", ("DATABASE_URL", unreachable.as_str())),
        ("DATABASE_URL", ("DATABASE_URL", "mysql://x@y/z")),
    ] {
        let vars = [
            ("LISTEN_ADDR", "127.0.0.1:0"),
            ("DATABASE_CONNECT_TIMEOUT_SECONDS", "2"),
            var,
        ];
        let out = run_binary(&[], &vars, Duration::from_secs(60)).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{vars:?} started");
        assert_eq!(stderr.lines().count(), 1, "{vars:?}: {stderr}");
        assert!(
            stderr.starts_with(&format!("cligate: {variable}")),
            "{vars:?}: {stderr}"
        );
    }
}
