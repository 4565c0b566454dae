//! Operations: Prometheus metrics after real runs, health and readiness with and without access
//! control, and the `cligate` binary itself: `--help`, `--version`, one-line start-up failures
//! naming the variable, JSON logs without secrets, and a clean exit on SIGTERM.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Binary, Gateway, RunStream, request, run_binary};
use serde_json::{Value, json};

const TOKEN: &str = "ops-test-token-0123456789abcdef";

/// One sample of the metrics text: value of `name` with exactly `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let wanted: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, found) = match series.split_once('{') {
            Some((metric, rest)) => (metric, parse_labels(rest.strip_suffix('}')?)),
            None => (series, BTreeMap::new()),
        };
        (metric == name && found == wanted).then(|| value.parse().expect("a number"))
    })
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    text.split("\",")
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once("=\"").expect("label=\"value\"");
            (key.to_string(), value.trim_end_matches('"').to_string())
        })
        .collect()
}

async fn metrics(gw: &Gateway) -> String {
    let reply = request(
        gw.addr,
        "GET",
        "/metrics",
        None,
        &[("authorization", &format!("Bearer {TOKEN}"))],
    )
    .await;
    assert_eq!(reply.status, 200);
    let content_type = reply.headers["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    String::from_utf8(reply.body.to_vec()).unwrap()
}

#[tokio::test]
async fn metrics_count_runs_output_and_rejections() {
    let gw = Gateway::start(&[("AUTH_TOKENS", TOKEN)]).await;
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("authorization", bearer.as_str())];

    // One run that exits 0 with 16 bytes of stdout.
    let body = json!({"cli": "args", "args": ["hello", "world"]})
        .to_string()
        .into_bytes();
    let stream = RunStream::open(gw.addr, body, &auth).await;
    assert_eq!(stream.status, 200);
    let frames = stream.collect().await;
    assert_eq!(frames.exit(), (0, "exited".into()));
    assert_eq!(frames.stdout(), "[hello]\n[world]\n");
    // One refused as a bad request, one without a token.
    let refused = json!({"cli": "not-allowed"}).to_string().into_bytes();
    request(gw.addr, "POST", "/run", Some(refused), &auth)
        .await
        .assert_error(400);
    gw.post("/run", r#"{"cli": "args"}"#).await.assert_error(401);

    // The run's end is counted just after its exit frame is sent: wait for it.
    let started = Instant::now();
    let text = loop {
        let text = metrics(&gw).await;
        if sample(
            &text,
            "cligate_runs_finished_total",
            &[("cli", "args"), ("reason", "exited")],
        ) == Some(1.0)
        {
            break text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the run was never counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let value = |name: &str, labels: &[(&str, &str)]| {
        sample(&text, name, labels).unwrap_or_else(|| panic!("no sample {name} {labels:?} in\n{text}"))
    };
    assert_eq!(value("cligate_runs_started_total", &[("cli", "args")]), 1.0);
    assert_eq!(value("cligate_run_exit_codes_total", &[("code", "0")]), 1.0);
    assert_eq!(value("cligate_run_duration_seconds_count", &[("cli", "args")]), 1.0);
    assert_eq!(
        value(
            "cligate_run_duration_seconds_bucket",
            &[("cli", "args"), ("le", "+Inf")]
        ),
        1.0
    );
    assert!(value("cligate_run_duration_seconds_sum", &[("cli", "args")]) > 0.0);
    let buckets = text
        .lines()
        .filter(|l| l.starts_with("cligate_run_duration_seconds_bucket{"))
        .count();
    assert!(buckets > 5, "{text}");
    assert_eq!(value("cligate_output_bytes_total", &[("stream", "stdout")]), 16.0);
    assert_eq!(value("cligate_output_bytes_total", &[("stream", "stderr")]), 0.0);
    assert_eq!(value("cligate_active_runs", &[]), 0.0);
    assert_eq!(value("cligate_queued_requests", &[]), 0.0);
    assert_eq!(
        value("cligate_rejected_requests_total", &[("cause", "bad_request")]),
        1.0
    );
    assert_eq!(value("cligate_rejected_requests_total", &[("cause", "auth")]), 1.0);
    assert_eq!(
        value("cligate_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0
    );
    // Exposed from zero before the first clean-up (local mode never removes containers).
    assert_eq!(value("cligate_container_cleanups_total", &[("when", "run")]), 0.0);
    assert_eq!(value("cligate_container_cleanups_total", &[("when", "startup")]), 0.0);
    assert_eq!(value("cligate_container_cleanups_total", &[("when", "janitor")]), 0.0);
    for line in [
        "# HELP cligate_container_cleanups Containers removed through the engine.",
        "# TYPE cligate_container_cleanups counter",
        "# TYPE cligate_runs_started counter",
        "# TYPE cligate_active_runs gauge",
        "# TYPE cligate_run_duration_seconds histogram",
        "# TYPE cligate_build info",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    assert_eq!(text.lines().last(), Some("# EOF"));
}

#[tokio::test]
async fn active_and_queued_gauges_follow_the_runs() {
    let gw = Gateway::start(&[
        ("AUTH_TOKENS", TOKEN),
        ("MAX_CONCURRENT_RUNS", "1"),
        ("QUEUE_TIMEOUT_SECONDS", "30"),
    ])
    .await;
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("authorization", bearer.as_str())];
    let body = |id: &str| {
        json!({"cli": "sleep", "args": ["30"], "session_id": id})
            .to_string()
            .into_bytes()
    };
    let mut running = RunStream::open(gw.addr, body("ops-active"), &auth).await;
    running.next().await.expect("session frame");
    let addr = gw.addr;
    let header = bearer.clone();
    let waiting = tokio::spawn(async move {
        let mut stream = RunStream::open(addr, body("ops-queued"), &[("authorization", &header)]).await;
        let status = stream.status;
        stream.next().await;
        status
    });
    let started = Instant::now();
    loop {
        let text = metrics(&gw).await;
        if sample(&text, "cligate_queued_requests", &[]) == Some(1.0) {
            assert_eq!(sample(&text, "cligate_active_runs", &[]), Some(1.0), "{text}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Stopping the first lets the second start.
    request(gw.addr, "POST", "/sessions/ops-active/stop", None, &auth).await;
    assert_eq!(waiting.await.unwrap(), 200);
    request(gw.addr, "POST", "/sessions/ops-queued/stop", None, &auth).await;
    let text = metrics(&gw).await;
    assert_eq!(sample(&text, "cligate_queued_requests", &[]), Some(0.0), "{text}");
}

#[tokio::test]
async fn health_is_open_and_metrics_need_the_token() {
    let gw = Gateway::start(&[("AUTH_TOKENS", TOKEN)]).await;
    let health = gw.get("/healthz").await;
    assert_eq!((health.status.as_u16(), &health.body[..]), (200, &b"ok"[..]));
    assert_eq!(health.headers["content-type"], "text/plain; charset=utf-8");
    let ready = gw.get("/readyz").await;
    assert_eq!(ready.status, 200);
    let ready = ready.json();
    assert_eq!(
        (ready["status"].as_str(), ready["mode"].as_str()),
        (Some("ready"), Some("local"))
    );
    assert_eq!(ready["store"], "sqlite");
    assert!(ready["store_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{ready}");

    let denied = gw.get("/metrics").await;
    assert_eq!(denied.assert_error(401)["error"], "unauthorized");
    assert_eq!(denied.headers["www-authenticate"], "Bearer");
    let wrong = request(
        gw.addr,
        "GET",
        "/metrics",
        None,
        &[("authorization", "Bearer not-the-token-0123456789")],
    )
    .await;
    wrong.assert_error(401);
    assert!(metrics(&gw).await.contains("cligate_build_info"));

    // Client address restrictions leave health open too.
    let gw = Gateway::start(&[("ALLOWED_CLIENTS", "10.0.0.0/8")]).await;
    assert_eq!(gw.get("/healthz").await.status, 200);
    assert_eq!(gw.get("/readyz").await.status, 200);
    gw.get("/metrics").await.assert_error(403);
}

#[tokio::test]
async fn readiness_fails_once_shutdown_begins() {
    let mut gw = Gateway::start(&[("MAX_CONCURRENT_RUNS", "1"), ("SHUTDOWN_GRACE_SECONDS", "5")]).await;
    // The flag shutdown sets first: readiness fails from then on, with the error body.
    gw.app.shutting_down.store(true, Ordering::Relaxed);
    let reply = gw.get("/readyz").await;
    assert_eq!(reply.assert_error(503)["error"], "unavailable");
    assert_eq!(gw.get("/healthz").await.status, 200);
    gw.app.shutting_down.store(false, Ordering::Relaxed);
    assert_eq!(gw.get("/readyz").await.status, 200);

    // A real shutdown: a request waiting for a run slot is answered 503 `unavailable`.
    let mut running = gw.run(json!({"cli": "sleep", "args": ["30"]})).await;
    running.next().await.expect("session frame");
    let addr = gw.addr;
    let queued = tokio::spawn(async move {
        let mut stream = RunStream::open(addr, br#"{"cli": "args"}"#.to_vec(), &[]).await;
        (stream.status.as_u16(), stream.error_body().await)
    });
    let started = Instant::now();
    while gw.app.metrics.queued.get() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the second run never queued"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let server = gw.begin_shutdown();
    let (status, body) = queued.await.unwrap();
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (body["error"].as_str(), body["code"].as_u64()),
        (Some("unavailable"), Some(503))
    );
    drop(running);
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn help_lists_every_variable_with_its_default() {
    let out = run_binary(&["--help"], &[], Duration::from_secs(30)).await;
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for v in cligate::config::VARIABLES {
        let line = help
            .lines()
            .find(|l| l.split_whitespace().next() == Some(v.name))
            .unwrap_or_else(|| panic!("{} is not in --help:\n{help}", v.name));
        let shown = if v.default.is_empty() {
            "(unset)".to_string()
        } else {
            format!("(default {})", v.default)
        };
        assert!(
            line.ends_with(&shown),
            "{}: {line:?} does not end with {shown:?}",
            v.name
        );
        // Under its section's heading: the nearest heading above the line.
        let heading = help
            .lines()
            .take_while(|l| *l != line)
            .filter(|l| l.ends_with(':') && !l.starts_with(' '))
            .last();
        assert_eq!(heading, Some(format!("{}:", v.section.title()).as_str()), "{}", v.name);
    }
}

#[tokio::test]
async fn version_prints_the_crate_version() {
    let out = run_binary(&["--version"], &[], Duration::from_secs(30)).await;
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("cligate {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn bad_settings_stop_start_up_with_one_line_naming_the_variable() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let scratch = tempfile::tempdir().unwrap();
    // An engine that is never there.
    let docker_host = format!("unix://{}/docker.sock", scratch.path().display());
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "RUN_RESPONSE_TIMEOUT_SECONDS",
            vec![("RUN_RESPONSE_TIMEOUT_SECONDS", "abc")],
        ),
        ("CLI_LIST", vec![("CLI_LIST", ",")]),
        ("LISTEN_ADDR", vec![("LISTEN_ADDR", "nonsense")]),
        ("LISTEN_ADDR", vec![("LISTEN_ADDR", &taken_addr)]),
        (
            "CODEX_DOCKER_IMAGE",
            vec![
                ("LISTEN_ADDR", "127.0.0.1:0"),
                ("CODEX_DOCKER_IMAGE", "cligate-ops:none"),
                ("DOCKER_HOST", &docker_host),
            ],
        ),
    ];
    for (variable, vars) in cases {
        let out = run_binary(&[], &vars, Duration::from_secs(30)).await;
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(!out.status.success(), "{vars:?} started");
        assert_eq!(stderr.lines().count(), 1, "{vars:?}: {stderr:?}");
        assert!(stderr.ends_with('\n'), "{stderr:?}");
        assert!(
            stderr.starts_with(&format!("cligate: {variable}")),
            "{vars:?}: {stderr:?}"
        );
        assert!(
            out.stdout.is_empty(),
            "{vars:?}: {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    drop(taken);
}

#[tokio::test]
async fn json_logs_name_each_run_and_never_a_secret_and_sigterm_exits_cleanly() {
    let api_key = "sk-supersecret-value";
    let mut gw = Binary::start(&[
        ("RUST_LOG", "debug"),
        ("CLI_LIST", "args,show-env"),
        ("LITELLM_API_KEY", api_key),
        ("AUTH_TOKENS", TOKEN),
    ])
    .await;
    let addr = gw.addr;

    // One run with the token; its environment shows the secret to the CLI, never to the log.
    let bearer = format!("Bearer {TOKEN}");
    let body = json!({"cli": "show-env", "session_id": "ops-log-1", "env": {"LITELLM_API_KEY": api_key}});
    let stream = RunStream::open(addr, body.to_string().into_bytes(), &[("authorization", &bearer)]).await;
    assert_eq!(stream.status, 200);
    let run_id = stream.headers["x-cligate-run-id"].to_str().unwrap().to_string();
    let frames = stream.collect().await;
    assert_eq!(frames.exit(), (0, "exited".into()));
    // The gateway's own token is in its environment, but not in the CLI's.
    assert!(frames.stdout().contains("LITELLM_API_KEY="), "{}", frames.stdout());
    assert!(!frames.stdout().contains("AUTH_TOKENS"), "{}", frames.stdout());
    assert!(!frames.stdout().contains(TOKEN), "{}", frames.stdout());
    let stdout_bytes = frames.stdout().len() as u64;
    // One refused: a wrong token that carries the API key.
    let wrong = format!("Bearer {api_key}");
    request(
        addr,
        "POST",
        "/run",
        Some(br#"{"cli": "args"}"#.to_vec()),
        &[("authorization", &wrong)],
    )
    .await
    .assert_error(401);

    let finished: Value = serde_json::from_str(&gw.wait_for("\"run finished\"").await).unwrap();
    assert_eq!(finished["message"], "run finished");
    assert_eq!(finished["run_id"], run_id.as_str());
    assert_eq!(finished["session_id"], "ops-log-1");
    assert_eq!(finished["cli"], "show-env");
    assert_eq!(finished["code"], 0);
    assert_eq!(finished["reason"], "exited");
    assert!(finished["duration_ms"].is_u64(), "{finished}");
    assert_eq!(finished["stdout_bytes"], stdout_bytes);
    assert!(
        finished["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{finished}"
    );
    assert_eq!(finished["level"], "INFO");
    let rejected: Value = serde_json::from_str(&gw.wait_for("\"request rejected\"").await).unwrap();
    assert_eq!(rejected["status"], 401);
    assert_eq!(rejected["error"], "unauthorized");
    assert_eq!(rejected["path"], "/run");

    let status = gw.terminate(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0));

    let all = gw.lines_to_end().await;
    for line in &all {
        let parsed: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(parsed["message"].is_string() && parsed["level"].is_string(), "{line}");
    }
    assert!(all.iter().any(|l| l.contains("\"shut down\"")), "{all:#?}");
    let text = all.join("\n");
    assert!(!text.contains(api_key), "the API key is in the log:\n{text}");
    assert!(!text.contains(TOKEN), "the token is in the log:\n{text}");
    assert!(
        !text.contains("supersecret"),
        "part of the API key is in the log:\n{text}"
    );
}

/// The nice value of each thread of process `pid` named `name` (`/proc/<pid>/task/*/stat`,
/// field 19).
fn thread_nices(pid: u32, name: &str) -> Vec<i64> {
    let mut nices = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (open, close) = (stat.find('(').unwrap(), stat.rfind(')').unwrap());
        if &stat[open + 1..close] == name {
            nices.push(stat[close + 2..].split(' ').nth(16).unwrap().parse().unwrap());
        }
    }
    nices
}

/// Sends one request on `conn` and reads its whole body.
async fn exchange(conn: &mut common::client::Conn, method: &str, path: &str, body: Option<Value>) -> Vec<u8> {
    use http_body_util::BodyExt;
    let body = body.map(|b| b.to_string().into_bytes());
    let response = conn.send(method, path, body, &[]).await.unwrap();
    assert_eq!(response.status(), 200, "{method} {path}");
    response.into_body().collect().await.unwrap().to_bytes().to_vec()
}

/// The `stdout` data of a whole NDJSON stream, checked for its shape (session first, one exit
/// last).
fn ndjson_stdout(body: &[u8]) -> String {
    let frames = common::client::Frames(
        body.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| common::client::decode(l).unwrap())
            .collect(),
    );
    frames.exit();
    frames.stdout()
}

/// A failure of the gateway's own storage is answered with what failed, not why: the cause (here
/// the database's words, which name the database) goes to the gateway's log.
#[tokio::test]
async fn a_store_failure_is_answered_without_its_cause_which_is_logged() {
    let db = common::pg::fresh_database().await;
    let mut gw = Binary::start(&[("DATABASE_URL", &db)]).await;
    common::pg::drop_database(&db).await;
    let database = db.rsplit('/').next().unwrap();
    let reply = request(gw.addr, "GET", "/runs", None, &[]).await;
    assert_eq!(reply.status, 503);
    let body = reply.json();
    assert_eq!(body["error"], "unavailable");
    assert_eq!(
        body["detail"],
        "the run store does not answer (the gateway's log has the cause)"
    );
    assert!(!body.to_string().contains(database), "{body}");
    let line = gw.wait_for("request failed").await;
    assert!(line.contains(database) && line.contains("/runs"), "{line}");
}

/// A connection whose first request follows a run's log (`GET /runs/{id}/stream`) is served on
/// threads at `STREAM_READER_NICE` above the gateway's own niceness, so that fifty followers of a
/// busy run cannot take the CPU from it; every other connection on the HTTP workers. A run
/// started over a follower's connection still executes at the gateway's priority (a CLI
/// inherits the priority of the thread that starts it). `0` keeps followers on the workers.
#[tokio::test]
async fn log_followers_are_served_below_the_gateways_priority() {
    let nice = json!({"cli": "sh", "args": ["-c", "nice"]});
    let gw = Binary::start(&[("STREAM_READER_NICE", "7")]).await;
    let own = thread_nices(gw.pid(), "cligate")[0];
    let first = common::run_to_end(gw.addr, nice.clone()).await;
    assert_eq!(first.exit().0, 0);
    assert_eq!(first.stdout().trim(), own.to_string());
    let runs = request(gw.addr, "GET", "/runs", None, &[]).await.json();
    let id = runs["runs"][0]["run_id"].as_str().unwrap().to_string();
    assert_eq!(
        thread_nices(gw.pid(), "cligate-reader"),
        Vec::<i64>::new(),
        "no follower yet"
    );

    let mut conn = common::client::Conn::open(gw.addr).await.unwrap();
    let streamed = exchange(&mut conn, "GET", &format!("/runs/{id}/stream"), None).await;
    assert_eq!(ndjson_stdout(&streamed).trim(), own.to_string());
    let readers = thread_nices(gw.pid(), "cligate-reader");
    assert!(!readers.is_empty(), "the follower was served on the HTTP workers");
    assert!(
        readers.iter().all(|&n| n == (own + 7).min(19)),
        "{readers:?}, own {own}"
    );
    // The same connection starts a run: its CLI has the gateway's niceness, not the follower's.
    let started = exchange(&mut conn, "POST", "/run", Some(nice.clone())).await;
    assert_eq!(ndjson_stdout(&started).trim(), own.to_string());
    // A request head cut off before its path ends is served as any other connection is.
    let mut raw = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw, b"GET /runs/")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::io::AsyncWriteExt::write_all(
        &mut raw,
        format!("{id}/stream HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut answer)
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains(r#"{"type":"exit","code":0"#),
        "{answer}"
    );

    let gw = Binary::start(&[("STREAM_READER_NICE", "0")]).await;
    common::run_to_end(gw.addr, nice).await;
    let runs = request(gw.addr, "GET", "/runs", None, &[]).await.json();
    let id = runs["runs"][0]["run_id"].as_str().unwrap().to_string();
    let reply = request(gw.addr, "GET", &format!("/runs/{id}/stream"), None, &[]).await;
    assert_eq!(ndjson_stdout(&reply.body).trim(), own.to_string());
    assert_eq!(thread_nices(gw.pid(), "cligate-reader"), Vec::<i64>::new());
}
