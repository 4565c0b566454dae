//! Runs that outlive their request, against both stores (SQLite and PostgreSQL): records, the
//! offset tail (`/log`, `/events`), re-attach (`/stream`) with dropped connections, sessions
//! answered from records, stop by run id, listing with filters and paging, bad input, the
//! free-space floor and retention.

mod common;

use std::time::{Duration, Instant};

use common::{Db, EndReason, FrameFields, Gateway, RunStream, request};
use serde_json::{Value, json};

/// A CLI printing `n` numbered lines on stdout and every tenth on stderr, `pause` seconds apart.
fn lines_script(n: u32, pause: &str) -> Value {
    json!({"cli": "sh", "args": ["-c", format!(
        "i=0; while [ $i -lt {n} ]; do echo \"line $i of the run\"; \
         [ $((i % 10)) -eq 0 ] && echo \"err $i\" >&2; i=$((i+1)); sleep {pause}; done; \
         echo '{{\"type\":\"done\",\"n\":{n}}}'; exit 3")]})
}

async fn raw_run(gw: &Gateway, body: Value) -> (String, Vec<u8>) {
    let stream = RunStream::open(gw.addr, body.to_string().into_bytes(), &[]).await;
    assert_eq!(stream.status, 200);
    let run_id = stream.headers["x-cligate-run-id"].to_str().unwrap().to_string();
    (run_id, stream.raw_to_end().await)
}

async fn get_json(gw: &Gateway, path: &str) -> Value {
    let r = gw.get(path).await;
    assert_eq!(r.status, 200, "{path}: {}", String::from_utf8_lossy(&r.body));
    r.json()
}

async fn log_pieces_concatenate_to_what_the_attached_client_read(db: Db) {
    let gw = Gateway::start_db(db, &[]).await;
    let (run_id, attached) = raw_run(&gw, lines_script(300, "0")).await;
    let text = String::from_utf8(attached.clone()).unwrap();
    assert!(text.starts_with("{\"type\":\"session\",\"id\":"), "{text}");
    assert!(text.contains(&format!("\"run_id\":\"{run_id}\"")), "{text}");
    assert!(
        text.ends_with("{\"type\":\"exit\",\"code\":3,\"reason\":\"exited\"}\n"),
        "{text}"
    );

    // Read the log in small pieces: whole frames each time, no gap, no overlap.
    let mut offset = 0u64;
    let mut pieces = Vec::new();
    loop {
        let page = get_json(&gw, &format!("/runs/{run_id}/log?offset={offset}&max_bytes=700")).await;
        assert_eq!(page["run_id"], run_id.as_str());
        assert_eq!(page["offset"], offset);
        assert_eq!(page["size"], attached.len() as u64);
        let content = page["content"].as_str().unwrap();
        assert!(content.is_empty() || content.ends_with('\n'), "{content:?}");
        assert!(content.len() <= 700 || !content[..content.len() - 1].contains('\n'));
        assert_eq!(page["next_offset"], offset + content.len() as u64);
        pieces.push(content.to_string());
        offset = page["next_offset"].as_u64().unwrap();
        if page["eof"] == true {
            assert_eq!(offset, attached.len() as u64);
            break;
        }
        assert!(!content.is_empty(), "no progress at {offset}");
    }
    assert_eq!(pieces.concat().as_bytes(), &attached[..]);
    // At the end: empty content, eof.
    let end = get_json(&gw, &format!("/runs/{run_id}/log?offset={offset}")).await;
    assert_eq!((end["content"].as_str(), end["eof"].as_bool()), (Some(""), Some(true)));

    // The record.
    let record = get_json(&gw, &format!("/runs/{run_id}")).await;
    assert_eq!(record["state"], "finished");
    assert_eq!(record["exit_code"], 3);
    assert_eq!(record["reason"], "exited");
    assert_eq!(record["cli"], "sh");
    assert_eq!(record["log_bytes"], attached.len() as u64);
    assert_eq!(record["mode"], "local");
    let stdout_bytes: usize = (0..300).map(|i| format!("line {i} of the run\n").len()).sum::<usize>()
        + "{\"type\":\"done\",\"n\":300}\n".len();
    assert_eq!(record["stdout_bytes"], stdout_bytes as u64);
    for field in ["created_at", "started_at", "finished_at"] {
        let t = record[field].as_str().unwrap();
        assert!(t.len() == 24 && t.ends_with('Z') && t.contains('T'), "{field}: {t}");
    }

    // The events: the JSON object printed on stdout, with its offset.
    let events = get_json(&gw, &format!("/runs/{run_id}/events?max_bytes=4194304")).await;
    let list = events["events"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["event"], json!({"type": "done", "n": 300}));
    let at = list[0]["offset"].as_u64().unwrap() as usize;
    assert!(text[at..].starts_with("{\"type\":\"stdout\",\"data\":\"{\\\"type\\\":\\\"done\\\""));

    // The session answers from its record now that it has ended.
    let session_id = text.split("\"id\":\"").nth(1).unwrap().split('"').next().unwrap();
    let session = get_json(&gw, &format!("/sessions/{session_id}")).await;
    assert_eq!(session["state"], "finished");
    assert_eq!(session["run_id"], run_id.as_str());
    assert_eq!(session["exit_code"], 3);
}

#[tokio::test]
async fn log_pieces_concatenate_to_what_the_attached_client_read_sqlite() {
    log_pieces_concatenate_to_what_the_attached_client_read(Db::Sqlite).await;
}

#[tokio::test]
async fn log_pieces_concatenate_to_what_the_attached_client_read_postgres() {
    log_pieces_concatenate_to_what_the_attached_client_read(Db::Postgres).await;
}

/// One reader that drops its connection after a random number of pieces and comes back with
/// the offset it reached, until the exit frame.
async fn reattaching_reader(addr: std::net::SocketAddr, run_id: String, seed: u64) -> Vec<u8> {
    let mut got = Vec::new();
    let mut rng = seed;
    let mut reconnects = 0;
    loop {
        let path = format!("/runs/{run_id}/stream?offset={}", got.len());
        let mut s = RunStream::request(addr, "GET", &path, None, &[]).await;
        assert_eq!(s.status, 200, "{path}");
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let keep = 1 + (rng >> 33) % 4;
        let mut ended = true;
        for _ in 0..keep {
            match s.next_bytes().await {
                Some(piece) => got.extend_from_slice(&piece),
                None => break,
            }
            ended = false;
        }
        if got.ends_with(b"\"reason\":\"exited\"}\n") {
            return got;
        }
        assert!(!ended || reconnects < 10_000, "stream ended without the exit frame");
        reconnects += 1;
        s.disconnect();
    }
}

async fn readers_reattach_from_their_offset_without_gap_or_repeat(db: Db) {
    let gw = Gateway::start_db(db, &[]).await;
    let mut attached = RunStream::open(gw.addr, lines_script(150, "0.01").to_string().into_bytes(), &[]).await;
    let run_id = attached.headers["x-cligate-run-id"].to_str().unwrap().to_string();
    let readers: Vec<_> = (0..20)
        .map(|i| tokio::spawn(reattaching_reader(gw.addr, run_id.clone(), i * 7919 + 1)))
        .collect();
    let mut full = Vec::new();
    while let Some(piece) = attached.next_bytes().await {
        full.extend_from_slice(&piece);
    }
    for r in readers {
        let got = tokio::time::timeout(Duration::from_secs(60), r).await.unwrap().unwrap();
        assert_eq!(got.len(), full.len());
        assert!(got == full, "a reader's concatenation differs from the log");
    }
    let log = RunStream::request(gw.addr, "GET", &format!("/runs/{run_id}/stream?offset=0"), None, &[])
        .await
        .raw_to_end()
        .await;
    assert_eq!(log, full);
}

#[tokio::test]
async fn readers_reattach_from_their_offset_without_gap_or_repeat_sqlite() {
    readers_reattach_from_their_offset_without_gap_or_repeat(Db::Sqlite).await;
}

#[tokio::test]
async fn readers_reattach_from_their_offset_without_gap_or_repeat_postgres() {
    readers_reattach_from_their_offset_without_gap_or_repeat(Db::Postgres).await;
}

async fn a_stream_reader_leaving_never_ends_the_run_and_stop_by_run_id_does(db: Db) {
    let gw = Gateway::start_db(db, &[]).await;
    let mut attached = RunStream::open(gw.addr, lines_script(1000, "0.01").to_string().into_bytes(), &[]).await;
    let run_id = attached.headers["x-cligate-run-id"].to_str().unwrap().to_string();
    attached.stdout_until("line 3 ").await;
    let mut follower = RunStream::request(gw.addr, "GET", &format!("/runs/{run_id}/stream"), None, &[]).await;
    follower.stdout_until("line 5 ").await;
    follower.disconnect();
    attached.stdout_until("line 20 ").await;
    let record = get_json(&gw, &format!("/runs/{run_id}")).await;
    assert_eq!(record["state"], "running");

    let stop = request(gw.addr, "POST", &format!("/runs/{run_id}/stop"), None, &[]).await;
    assert_eq!(stop.status, 200);
    assert_eq!(stop.json(), json!({"run_id": run_id, "status": "stopped"}));
    let exit = attached.until("exit").await;
    assert_eq!(exit.reason(), Some(EndReason::Stopped));
    assert!(attached.next().await.is_none());
    let record = get_json(&gw, &format!("/runs/{run_id}")).await;
    assert_eq!(record["state"], "finished");
    assert_eq!(record["reason"], "stopped");
    // Finished: stopping again is 404, as for a session.
    request(gw.addr, "POST", &format!("/runs/{run_id}/stop"), None, &[])
        .await
        .assert_error(404);
}

#[tokio::test]
async fn a_stream_reader_leaving_never_ends_the_run_and_stop_by_run_id_does_sqlite() {
    a_stream_reader_leaving_never_ends_the_run_and_stop_by_run_id_does(Db::Sqlite).await;
}

#[tokio::test]
async fn a_stream_reader_leaving_never_ends_the_run_and_stop_by_run_id_does_postgres() {
    a_stream_reader_leaving_never_ends_the_run_and_stop_by_run_id_does(Db::Postgres).await;
}

async fn listing_filters_pages_and_shows_each_token_its_own(db: Db) {
    let alice = "alice:alice-token-0123456789";
    let gw = Gateway::start_db(
        db,
        &[
            ("AUTH_TOKENS", &format!("{alice},bob:bob-token-0123456789abc")),
            ("ADMIN_TOKENS", "ops:ops-token-0123456789abcd"),
        ],
    )
    .await;
    let as_alice = [("authorization", "Bearer alice-token-0123456789")];
    let as_bob = [("authorization", "Bearer bob-token-0123456789abc")];
    let as_ops = [("authorization", "Bearer ops-token-0123456789abcd")];
    let mut ids = Vec::new();
    for i in 0..7 {
        let (who, cli): (&[(&str, &str)], &str) = if i % 2 == 0 {
            (&as_alice, "args")
        } else {
            (&as_bob, "exit-code")
        };
        let body = json!({"cli": cli, "args": ["0"], "session_id": format!("list-{i}")});
        let s = RunStream::open(gw.addr, body.to_string().into_bytes(), who).await;
        assert_eq!(s.status, 200);
        ids.push(s.headers["x-cligate-run-id"].to_str().unwrap().to_string());
        s.collect().await;
    }
    // Newest first, in pages, each token its own; an admin sees all.
    let list = |q: String, h: &'static [(&'static str, &'static str)]| {
        let addr = gw.addr;
        async move {
            let r = request(addr, "GET", &format!("/runs{q}"), None, h).await;
            assert_eq!(r.status, 200, "{q}: {}", String::from_utf8_lossy(&r.body));
            r.json()
        }
    };
    let as_ops: &'static [(&str, &str)] = Box::leak(Box::new(as_ops));
    let as_alice: &'static [(&str, &str)] = Box::leak(Box::new(as_alice));
    let as_bob: &'static [(&str, &str)] = Box::leak(Box::new(as_bob));
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("?limit=3&cursor={c}"),
            None => "?limit=3".into(),
        };
        let page = list(q, as_ops).await;
        let runs = page["runs"].as_array().unwrap();
        assert!(runs.len() <= 3);
        seen.extend(runs.iter().map(|r| r["run_id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);
    let mine = list("".into(), as_alice).await;
    let mine: Vec<&str> = mine["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["owner"].as_str().unwrap())
        .collect();
    assert_eq!(mine, ["alice"; 4]);
    let bobs = list("?cli=exit-code".into(), as_bob).await;
    assert_eq!(bobs["runs"].as_array().unwrap().len(), 3);
    let none = list("?cli=args".into(), as_bob).await;
    assert!(none["runs"].as_array().unwrap().is_empty());
    let one = list("?session_id=list-4&state=finished".into(), as_ops).await;
    assert_eq!(one["runs"][0]["run_id"], ids[4].as_str());
    // Another token's run: 404 for the record, the log and the stream.
    for path in ["", "/log", "/events", "/stream"] {
        request(gw.addr, "GET", &format!("/runs/{}{path}", ids[0]), None, as_bob)
            .await
            .assert_error(404);
    }
    request(gw.addr, "GET", &format!("/runs/{}", ids[0]), None, as_alice).await;
    // Bad queries.
    for q in [
        "?state=done",
        "?limit=0",
        "?limit=1001",
        "?limit=x",
        "?cursor=nonsense",
        "?limit=",
        "?state=",
    ] {
        request(gw.addr, "GET", &format!("/runs{q}"), None, as_ops)
            .await
            .assert_error(400);
    }
}

#[tokio::test]
async fn listing_filters_pages_and_shows_each_token_its_own_sqlite() {
    listing_filters_pages_and_shows_each_token_its_own(Db::Sqlite).await;
}

#[tokio::test]
async fn listing_filters_pages_and_shows_each_token_its_own_postgres() {
    listing_filters_pages_and_shows_each_token_its_own(Db::Postgres).await;
}

#[tokio::test]
async fn bad_offsets_sizes_and_ids_get_clear_errors() {
    let gw = Gateway::start(&[]).await;
    let (run_id, attached) = raw_run(&gw, json!({"cli": "args", "args": ["a", "b"]})).await;
    let size = attached.len();
    for q in [
        format!("offset={}", size + 1),
        "offset=1".into(),
        "offset=-1".into(),
        "offset=x".into(),
        "max_bytes=0".into(),
        "max_bytes=4194305".into(),
        "max_bytes=abc".into(),
        "offset=".into(),
        "max_bytes=".into(),
    ] {
        for what in ["log", "events"] {
            gw.get(&format!("/runs/{run_id}/{what}?{q}")).await.assert_error(400);
        }
    }
    gw.get(&format!("/runs/{run_id}/stream?offset={}", size + 1))
        .await
        .assert_error(400);
    for path in ["/runs/nope", "/runs/nope/log", "/runs/nope/events", "/runs/nope/stream"] {
        gw.get(path).await.assert_error(404);
    }
    gw.post("/runs/nope/stop", "").await.assert_error(404);
    // An offset in the middle of a frame is fine for the raw stream (a client resuming after a
    // dropped connection), and returns exactly the rest.
    let rest = RunStream::request(gw.addr, "GET", &format!("/runs/{run_id}/stream?offset=5"), None, &[])
        .await
        .raw_to_end()
        .await;
    assert_eq!(rest, attached[5..]);
}

/// Inodes of every file in the log directory.
fn log_inodes(data_dir: &std::path::Path) -> std::collections::BTreeSet<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(data_dir.join("logs"))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().ino())
        .collect()
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn small_logs_are_kept_with_their_record_and_their_files_reused(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let url = match db {
        Db::Postgres => Some(common::pg::fresh_database().await),
        Db::Sqlite => None,
    };
    let mut vars = vec![("DATA_DIR", data.as_str())];
    if let Some(url) = url.as_deref() {
        vars.push(("DATABASE_URL", url));
    }
    let gw = Gateway::start(&vars).await;
    let file = |id: &str| dir.path().join("logs").join(format!("{id}.ndjson"));
    let whole_log = |id: String| {
        let addr = gw.addr;
        async move {
            RunStream::request(addr, "GET", &format!("/runs/{id}/stream?offset=0"), None, &[])
                .await
                .raw_to_end()
                .await
        }
    };
    // The ready files are made (the pool is full) before anything is counted.
    let (id, attached) = raw_run(&gw, json!({"cli": "args", "args": ["first"]})).await;
    until("the first log's file is reused", || !file(&id).exists()).await;
    until("the pool is full", || log_inodes(dir.path()).len() >= 64).await;
    assert_eq!(whole_log(id.clone()).await, attached);

    // Twenty short runs one after another: each log is one of the ready files, and goes back
    // once the run has ended. No file is created or deleted.
    let before = log_inodes(dir.path());
    let mut small = Vec::new();
    for i in 0..20 {
        let (id, attached) = raw_run(
            &gw,
            json!({"cli": "args", "args": [format!("run {i}"), "x".repeat(i * 100)]}),
        )
        .await;
        small.push((id, attached));
    }
    until("every kept log's file is reused", || {
        small.iter().all(|(id, _)| !file(id).exists())
    })
    .await;
    assert_eq!(log_inodes(dir.path()), before, "the same files, no new one");
    for (id, attached) in &small {
        assert_eq!(&whole_log(id.clone()).await, attached);
        let page = get_json(&gw, &format!("/runs/{id}/log?offset=0&max_bytes=65536")).await;
        assert_eq!(page["content"].as_str().unwrap().as_bytes(), &attached[..]);
        assert_eq!(page["eof"], true);
        let record = get_json(&gw, &format!("/runs/{id}")).await;
        assert_eq!(record["log_bytes"], attached.len() as u64);
    }

    // A log over 16 KiB stays a file.
    let (big, big_log) = raw_run(&gw, lines_script(700, "0")).await;
    assert!(big_log.len() > 16 * 1024, "{}", big_log.len());
    assert_eq!(std::fs::read(file(&big)).unwrap(), big_log);
    assert_eq!(whole_log(big.clone()).await, big_log);

    // A new gateway on the same DATA_DIR (and store) reads the kept logs and takes up the ready
    // files the first one left: under new names (a ready file is named as the log of the run
    // that will take it, and no id is handed out twice), leaving the log that has a record.
    let names = || -> Vec<String> {
        std::fs::read_dir(dir.path().join("logs"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    let left: Vec<String> = names().into_iter().filter(|n| *n != format!("{big}.ndjson")).collect();
    assert!(left.len() >= 32, "{left:?}");
    drop(gw);
    let gw = Gateway::start(&vars).await;
    let now = names();
    assert!(left.iter().all(|n| !now.contains(n)), "a ready file kept its name");
    assert_eq!(std::fs::read(file(&big)).unwrap(), big_log);
    let (id, attached) = &small[3];
    let again = RunStream::request(gw.addr, "GET", &format!("/runs/{id}/stream?offset=0"), None, &[])
        .await
        .raw_to_end()
        .await;
    assert_eq!(&again, attached);
    let (next, _) = raw_run(&gw, json!({"cli": "args", "args": ["after the restart"]})).await;
    until("the log's file is reused", || !file(&next).exists()).await;
    let now = log_inodes(dir.path());
    assert!(
        now.is_superset(&before),
        "the ready files of the last gateway are taken up"
    );

    // Retention removes a kept log with its record.
    let removed = gw.app.runs.retain_with(Some(Duration::ZERO), None).await.unwrap();
    assert!(removed >= 22, "{removed}");
    gw.get(&format!("/runs/{id}/log")).await.assert_error(404);
    gw.get(&format!("/runs/{id}/stream")).await.assert_error(404);
    for (id, _) in &small {
        assert_eq!(
            gw.app.runs.store.kept_log(id).await.unwrap(),
            None,
            "the kept copy is deleted too"
        );
    }
    assert!(!file(&big).exists());
}

#[tokio::test]
async fn small_logs_are_kept_with_their_record_and_their_files_reused_sqlite() {
    small_logs_are_kept_with_their_record_and_their_files_reused(Db::Sqlite).await;
}

#[tokio::test]
async fn small_logs_are_kept_with_their_record_and_their_files_reused_postgres() {
    small_logs_are_kept_with_their_record_and_their_files_reused(Db::Postgres).await;
}

#[tokio::test]
async fn new_runs_are_refused_below_the_free_space_floor() {
    let gw = Gateway::start(&[("DATA_DIR_MIN_FREE_BYTES", &u64::MAX.to_string())]).await;
    let r = gw.post("/run", r#"{"cli": "args"}"#).await;
    let body = r.assert_error(503);
    assert!(
        body["detail"].as_str().unwrap().contains("DATA_DIR_MIN_FREE_BYTES"),
        "{body}"
    );
    assert_eq!(gw.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn retention_removes_the_oldest_finished_runs_and_their_logs_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let gw = Gateway::start(&[("DATA_DIR", &data)]).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let (id, _) = raw_run(&gw, json!({"cli": "args", "args": [format!("run {i}")]})).await;
        ids.push(id);
    }
    // One run still going while retention runs.
    let mut long = RunStream::open(
        gw.addr,
        json!({"cli": "sleep", "args": ["30"]}).to_string().into_bytes(),
        &[],
    )
    .await;
    let long_id = long.headers["x-cligate-run-id"].to_str().unwrap().to_string();
    long.until("session").await;
    let mut sizes = Vec::new();
    for id in &ids {
        sizes.push(
            get_json(&gw, &format!("/runs/{id}")).await["log_bytes"]
                .as_u64()
                .unwrap(),
        );
    }
    // Keep at most the bytes of the three newest finished runs.
    let keep: u64 = sizes[3..].iter().sum();
    let app = gw.app.clone();
    let config = cligate::config::Config::from_vars([
        ("DATA_DIR".to_string(), data.clone()),
        ("RUN_RETENTION_BYTES".to_string(), keep.to_string()),
        ("CLI_LIST".to_string(), "args".to_string()),
    ])
    .unwrap();
    assert_eq!(config.run_retention_bytes, Some(keep));
    // Retention as the background task runs it, with the byte bound of that configuration.
    let removed = app.runs.retain_with(None, Some(keep)).await.unwrap();
    assert_eq!(removed, 3);
    for (i, id) in ids.iter().enumerate() {
        let r = gw.get(&format!("/runs/{id}")).await;
        // These small logs are kept with their records (their files are reused).
        let log = gw.get(&format!("/runs/{id}/log")).await;
        if i < 3 {
            r.assert_error(404);
            log.assert_error(404);
        } else {
            assert_eq!(r.status, 200, "{i}");
            assert_eq!(log.json()["size"], sizes[i], "{i}");
        }
    }
    // An age bound of zero removes every finished run, never the running one.
    let removed = app.runs.retain_with(Some(Duration::ZERO), None).await.unwrap();
    assert_eq!(removed, 3);
    assert_eq!(get_json(&gw, &format!("/runs/{long_id}")).await["state"], "running");
    assert!(dir.path().join("logs").join(format!("{long_id}.ndjson")).exists());
    let started = Instant::now();
    request(gw.addr, "POST", &format!("/runs/{long_id}/stop"), None, &[]).await;
    long.until("exit").await;
    assert!(started.elapsed() < Duration::from_secs(10));
}
