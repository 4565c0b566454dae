//! Local mode, end to end: the real server on a free port, real child processes, a real HTTP
//! client over a real socket.

mod common;

use std::time::{Duration, Instant};

use common::{EndReason, Frame, FrameFields, Gateway, RunStream, alive, assert_gone, pids_in, request};
use serde_json::json;

const GONE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn catalog_and_health() {
    let gw = Gateway::start(&[
        ("CLI_LIST", "qwen, codex,codex,,claude"),
        ("MODEL_LIST", "auto, gpt-4o"),
    ])
    .await;
    let clis = gw.get("/clis").await;
    assert_eq!(clis.status, 200);
    assert_eq!(clis.json(), json!({"clis": ["claude", "codex", "qwen"], "count": 3}));
    assert_eq!(
        gw.get("/models").await.json(),
        json!({"models": ["auto", "gpt-4o"], "count": 2})
    );
    let health = gw.get("/healthz").await;
    assert_eq!((health.status.as_u16(), &health.body[..]), (200, &b"ok"[..]));
    assert_eq!(gw.get("/readyz").await.json()["status"], "ready");
}

#[tokio::test]
async fn stdin_is_written_while_output_is_read() {
    let gw = Gateway::start(&[]).await;
    // Larger than any pipe buffer: a gateway that writes stdin before reading stdout deadlocks.
    let prompt: String = (0..16384).map(|i| format!("line {i:058}\n")).collect();
    assert!(prompt.len() >= 1 << 20);
    let frames = gw.run_to_end(json!({"cli": "echo-stdin", "stdin": prompt})).await;
    assert_eq!(frames.exit(), (0, "exited".into()));
    assert_eq!(frames.stdout(), prompt);
    // One frame per line.
    assert_eq!(frames.0.iter().filter(|f| f.kind() == "stdout").count(), 16384);
}

#[tokio::test]
async fn without_stdin_the_cli_reads_end_of_file_at_once() {
    let gw = Gateway::start(&[("RUN_RESPONSE_TIMEOUT_SECONDS", "10")]).await;
    for body in [json!({"cli": "echo-stdin"}), json!({"cli": "echo-stdin", "stdin": ""})] {
        let frames = gw.run_to_end(body).await;
        assert_eq!(
            frames.exit(),
            (0, "exited".into()),
            "stdin was left open: {:?}",
            frames.0
        );
        assert_eq!(frames.stdout(), "");
    }
}

#[tokio::test]
async fn a_cli_that_never_reads_stdin_is_not_an_error() {
    let gw = Gateway::start(&[]).await;
    let frames = gw
        .run_to_end(json!({"cli": "args", "args": ["x"], "stdin": "y".repeat(1 << 20)}))
        .await;
    assert_eq!(frames.exit(), (0, "exited".into()));
    assert_eq!(frames.stdout(), "[x]\n");
    assert_eq!(frames.stderr(), "");
}

#[tokio::test]
async fn args_are_passed_verbatim_without_a_shell() {
    let gw = Gateway::start(&[]).await;
    let args = [
        "--model",
        "gpt-4",
        "two words",
        "$(touch /tmp/pwned)",
        "'quoted'",
        "",
        "a;b|c",
        "*",
    ];
    let frames = gw
        .run_to_end(json!({"cli": "args", "args": args, "session_id": "verbatim-1"}))
        .await;
    assert_eq!(frames.session(), "verbatim-1");
    let expected: String = args.iter().map(|a| format!("[{a}]\n")).collect();
    assert_eq!(frames.stdout(), expected);
}

#[tokio::test]
async fn request_env_is_merged_over_the_gateway_environment_without_its_secrets() {
    // HOME is refused by default now; the operator opens it (and the test variable) here.
    let gw = Gateway::start(&[
        ("AUTH_TOKENS", "a-secret-token-0123456789"),
        ("RUN_ENV_ALLOW", "CLIGATE_TEST_VAR,HOME"),
    ])
    .await;
    let body = json!({"cli": "show-env", "env": {"CLIGATE_TEST_VAR": "va lue=1", "HOME": "/tmp/x"}});
    let frames = common::RunStream::open(
        gw.addr,
        body.to_string().into_bytes(),
        &[("authorization", "Bearer a-secret-token-0123456789")],
    )
    .await
    .collect()
    .await;
    let env = frames.stdout();
    assert!(
        env.contains("\nCLIGATE_TEST_VAR=va lue=1\n") || env.starts_with("CLIGATE_TEST_VAR="),
        "{env}"
    );
    assert!(env.contains("HOME=/tmp/x\n"), "{env}");
    assert!(
        env.contains("PATH="),
        "the gateway's own environment is inherited: {env}"
    );
    assert!(!env.contains("AUTH_TOKENS"), "{env}");
}

#[tokio::test]
async fn exit_codes_and_signals() {
    let gw = Gateway::start(&[]).await;
    let frames = gw.run_to_end(json!({"cli": "exit-code", "args": ["7"]})).await;
    assert_eq!(frames.exit(), (7, "exited".into()));
    assert_eq!(frames.stdout(), "exiting with 7\n");
    let frames = gw.run_to_end(json!({"cli": "sh", "args": ["-c", "kill -9 $$"]})).await;
    assert_eq!(frames.exit(), (137, "exited".into()));
    let frames = gw
        .run_to_end(json!({"cli": "sh", "args": ["-c", "kill -TERM $$"]}))
        .await;
    assert_eq!(frames.exit(), (143, "exited".into()));
}

#[tokio::test]
async fn a_missing_cli_still_streams_and_ends_with_127() {
    let gw = Gateway::start(&[]).await;
    let frames = gw.run_to_end(json!({"cli": "not-installed-cli"})).await;
    assert_eq!(frames.exit(), (127, "spawn_failed".into()));
    assert!(
        frames.stderr().contains("not-installed-cli' was not found on PATH"),
        "{:?}",
        frames.0
    );
    // The gateway keeps serving.
    assert_eq!(gw.run_to_end(json!({"cli": "args"})).await.exit(), (0, "exited".into()));
}

/// Found on PATH, but its exec fails (the interpreter it names does not exist): the child
/// reports that before it exits, and the run ends as a failed start, not as an exit of the CLI.
#[tokio::test]
async fn a_cli_whose_exec_fails_ends_as_a_failed_start() {
    let gw = Gateway::start(&[]).await;
    for _ in 0..3 {
        let frames = gw.run_to_end(json!({"cli": "no-interpreter"})).await;
        assert_eq!(frames.exit(), (127, "spawn_failed".into()), "{:?}", frames.0);
        assert!(
            frames
                .stderr()
                .contains("cligate: cannot start 'no-interpreter': No such file or directory"),
            "{:?}",
            frames.0
        );
        assert_eq!(frames.stdout(), "");
    }
    assert_eq!(gw.run_to_end(json!({"cli": "args"})).await.exit(), (0, "exited".into()));
}

#[tokio::test]
async fn timeout_ends_the_whole_tree_even_when_sigterm_is_ignored() {
    let gw = Gateway::start(&[("RUN_RESPONSE_TIMEOUT_SECONDS", "1"), ("KILL_GRACE_SECONDS", "0.5")]).await;
    let mut stream = gw.run(json!({"cli": "ignore-term"})).await;
    let pids = stream.pids(2).await;
    let frames = stream.collect().await;
    let last_two: Vec<_> = frames.0.iter().rev().take(2).rev().cloned().collect();
    assert_eq!(
        last_two,
        [
            Frame::Stderr {
                data: "Request timed out while waiting for CLI response (1s).".into()
            },
            Frame::Exit {
                code: 124,
                reason: EndReason::Timeout
            },
        ]
    );
    assert_gone(&pids, GONE).await;
}

#[tokio::test]
async fn stop_ends_the_tree_and_reports_stopped() {
    let gw = Gateway::start(&[]).await;
    let mut stream = gw.run(json!({"cli": "spawn-tree", "session_id": "stop-me"})).await;
    let pids = stream.pids(3).await;
    assert!(pids.iter().all(|p| alive(*p)));

    let status = gw.get("/sessions/stop-me").await.json();
    assert_eq!(status["state"], "running");
    assert_eq!(status["cli"], "spawn-tree");

    let reply = gw.post("/sessions/stop-me/stop", "").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), json!({"session_id": "stop-me", "status": "stopped"}));
    let frames = stream.collect().await;
    let exit = frames.0.last().unwrap();
    assert_eq!(
        exit,
        &Frame::Exit {
            code: 143,
            reason: EndReason::Stopped
        },
        "SIGTERM ended it"
    );
    assert_gone(&pids, GONE).await;

    gw.post("/sessions/stop-me/stop", "").await.assert_error(404);
    // The session keeps answering after its run has ended, from the run's record.
    let ended = gw.get("/sessions/stop-me").await.json();
    assert_eq!(
        (ended["state"].as_str(), ended["reason"].as_str()),
        (Some("finished"), Some("stopped"))
    );
    assert_eq!(ended["exit_code"], 143);
    gw.post("/sessions/never-ran/stop", "").await.assert_error(404);
    gw.get("/sessions/never-ran").await.assert_error(404);
}

#[tokio::test]
async fn a_running_session_id_cannot_be_reused() {
    let gw = Gateway::start(&[]).await;
    let mut first = gw
        .run(json!({"cli": "sleep", "args": ["30"], "session_id": "dup"}))
        .await;
    assert!(matches!(first.next().await.unwrap(), Frame::Session { id, .. } if id == "dup"));
    let mut second = gw.run(json!({"cli": "args", "session_id": "dup"})).await;
    assert_eq!(second.status, 409);
    let body: serde_json::Value = serde_json::from_str(&second.error_body().await).unwrap();
    assert_eq!(body["error"], "conflict");
    gw.post("/sessions/dup/stop", "").await;
    first.collect().await;
    // Once finished, the id is free again.
    assert_eq!(
        gw.run_to_end(json!({"cli": "args", "session_id": "dup"}))
            .await
            .exit()
            .0,
        0
    );
}

#[tokio::test]
async fn a_client_disconnect_ends_the_run() {
    let gw = Gateway::start(&[]).await;
    let mut stream = gw.run(json!({"cli": "spawn-tree", "session_id": "gone"})).await;
    let pids = stream.pids(3).await;
    // The child is now silent: the gateway has to notice the closed socket, not a failed write.
    stream.disconnect();
    assert_gone(&pids, GONE).await;
    let start = Instant::now();
    while gw.app.runs.registry.get("gone").is_some() {
        assert!(start.elapsed() < GONE, "run still registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn shutdown_ends_running_runs_with_reason_shutdown() {
    let mut gw = Gateway::start(&[("SHUTDOWN_GRACE_SECONDS", "0.3")]).await;
    let mut stream = gw.run(json!({"cli": "ignore-term"})).await;
    let pids = stream.pids(2).await;
    let server = gw.begin_shutdown();
    let frames = stream.collect().await;
    assert_eq!(
        frames.0.last().unwrap(),
        &Frame::Exit {
            code: 137,
            reason: EndReason::Shutdown
        },
        "SIGTERM was ignored, so SIGKILL ended it"
    );
    assert!(frames.stderr().contains("shutting down"));
    assert_gone(&pids, GONE).await;
    server.await.unwrap().unwrap();
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(gw.addr).await.is_err());
}

#[tokio::test]
async fn runs_that_finish_within_the_grace_period_complete_normally_on_shutdown() {
    let mut gw = Gateway::start(&[("SHUTDOWN_GRACE_SECONDS", "5")]).await;
    let mut stream = gw
        .run(json!({"cli": "sh", "args": ["-c", "echo start; sleep 0.5; echo end"]}))
        .await;
    stream.stdout_until("start").await;
    let server = gw.begin_shutdown();
    let frames = stream.collect().await;
    assert_eq!(
        frames.0.last().unwrap(),
        &Frame::Exit {
            code: 0,
            reason: EndReason::Exited
        }
    );
    assert!(frames.stdout().contains("end"));
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn partial_lines_reach_the_client_long_before_the_process_ends() {
    let gw = Gateway::start(&[]).await;
    let mut stream = gw.run(json!({"cli": "slow-partial"})).await;
    assert_eq!(stream.next().await.unwrap().kind(), "session");
    let started = Instant::now();
    // The script sleeps 5 s after the prompt; holding the partial line would take that long.
    let frame = stream.next_within(Duration::from_secs(2)).await.unwrap();
    assert_eq!(
        frame,
        Frame::Stdout {
            data: "prompt> ".into()
        }
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(stream);
}

#[tokio::test]
async fn a_character_split_across_writes_comes_out_whole() {
    let gw = Gateway::start(&[]).await;
    let frames = gw.run_to_end(json!({"cli": "split-utf8"})).await;
    assert_eq!(frames.stdout(), "café\n");
    let pieces: Vec<&str> = frames
        .0
        .iter()
        .filter(|f| f.kind() == "stdout")
        .filter_map(|f| f.data())
        .collect();
    // The partial "caf" is flushed while the script sleeps; "é" is never cut in two.
    assert_eq!(pieces, ["caf", "é\n"]);
}

#[tokio::test]
async fn invalid_utf8_becomes_replacement_characters() {
    let gw = Gateway::start(&[]).await;
    let frames = gw.run_to_end(json!({"cli": "bad-utf8"})).await;
    assert_eq!(frames.stdout(), "a\u{fffd}b\ntail\u{fffd}");
}

#[tokio::test]
async fn an_enormous_line_is_sent_in_bounded_pieces() {
    let gw = Gateway::start(&[]).await;
    let n = 1_000_000;
    let frames = gw
        .run_to_end(json!({"cli": "long-line", "args": [n.to_string()]}))
        .await;
    let pieces: Vec<&str> = frames
        .0
        .iter()
        .filter(|f| f.kind() == "stdout")
        .filter_map(|f| f.data())
        .collect();
    assert!(
        pieces.len() >= n / cligate::run::output::MAX_FRAME_BYTES,
        "{} pieces",
        pieces.len()
    );
    assert!(pieces.iter().all(|p| p.len() <= cligate::run::output::MAX_FRAME_BYTES));
    assert_eq!(frames.stdout(), format!("{}\n", "x".repeat(n)));
}

#[tokio::test]
async fn a_slow_reader_costs_a_fixed_buffer_and_never_slows_the_child() {
    let gw = Gateway::start(&[]).await;
    let total: usize = 48 << 20;
    let mut stream = gw
        .run(json!({"cli": "flood", "args": [total.to_string()], "session_id": "slow"}))
        .await;
    stream.until("stdout").await;
    let before = common::rss_kib();
    // Stop reading. The child writes to the run's log at its own pace and ends, while this
    // client has read almost nothing; the gateway holds one read buffer for it, not the output.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let session = gw.get("/sessions/slow").await.json();
        if session["state"] == "finished" {
            assert_eq!(session["exit_code"], 0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the child was slowed by a reader that does not read"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let grown = common::rss_kib().saturating_sub(before);
    assert!(
        grown < 16 * 1024,
        "gateway grew by {grown} KiB while the client was not reading"
    );
    // Reading again delivers every byte.
    let mut bytes = 0usize;
    while let Some(frame) = stream.next().await {
        match frame {
            Frame::Stdout { data } => bytes += data.len(),
            Frame::Exit { code, .. } => assert_eq!(code, 0),
            _ => {}
        }
    }
    // The first stdout frame was consumed above (at most one read's worth).
    assert!(
        bytes <= total && total - bytes <= cligate::run::output::MAX_FRAME_BYTES,
        "{bytes} of {total}"
    );
}

#[tokio::test]
async fn output_cap_ends_the_run_with_a_clear_message() {
    let gw = Gateway::start(&[("RUN_OUTPUT_LIMIT_BYTES", "1000")]).await;
    let frames = gw.run_to_end(json!({"cli": "flood", "args": ["10000000"]})).await;
    let (_, reason) = frames.exit();
    assert_eq!(reason, "output_limit");
    assert_eq!(frames.stdout().len(), 1000);
    assert!(frames.stderr().contains("limit of 1000 bytes"), "{}", frames.stderr());

    // A child that writes past the cap and exits at once races the cap to the end: the cap
    // still names the reason (the output was cut), however the two land.
    for _ in 0..10 {
        let frames = gw
            .run_to_end(json!({"cli": "sh", "args": ["-c", "head -c 5000 /dev/zero | tr '\\0' x; exit 0"]}))
            .await;
        assert_eq!(frames.exit().1, "output_limit");
        assert_eq!(frames.stdout().len(), 1000);
    }
}

#[tokio::test]
async fn idle_timeout_ends_a_silent_run() {
    let gw = Gateway::start(&[
        ("RUN_IDLE_TIMEOUT_SECONDS", "0.5"),
        ("RUN_RESPONSE_TIMEOUT_SECONDS", "30"),
    ])
    .await;
    let started = Instant::now();
    let frames = gw
        .run_to_end(json!({"cli": "sh", "args": ["-c", "echo a; sleep 0.3; echo b; sleep 30"]}))
        .await;
    assert_eq!(frames.exit(), (124, "idle_timeout".into()));
    assert_eq!(frames.stdout(), "a\nb\n");
    assert!(frames.stderr().contains("no output for 0.5s"));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_pipe_held_by_an_escaped_process_does_not_hold_the_run() {
    let gw = Gateway::start(&[]).await;
    let started = Instant::now();
    let frames = gw.run_to_end(json!({"cli": "escape-pipe"})).await;
    assert_eq!(frames.exit(), (0, "exited".into()));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    // The escaped process is outside the run's group, not outside the run: it is ended too
    // (tests/escape.rs has the details).
    assert_gone(&pids_in(&frames.stdout()), GONE).await;
}

#[tokio::test]
async fn request_body_limit_gives_413() {
    let gw = Gateway::start(&[("MAX_REQUEST_BYTES", "1024")]).await;
    let body = json!({"cli": "args", "stdin": "x".repeat(4096)}).to_string();
    gw.post("/run", &body).await.assert_error(413);
    // Without a Content-Length the limit still holds (chunked upload).
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let chunk = format!("{:x}\r\n{}\r\n0\r\n\r\n", body.len(), body);
    stream
        .write_all(
            format!("POST /run HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{chunk}")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert_eq!(gw.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn overload_gives_503_with_retry_after() {
    let gw = Gateway::start(&[("MAX_CONCURRENT_RUNS", "1"), ("MAX_QUEUED_RUNS", "0")]).await;
    let mut busy = gw
        .run(json!({"cli": "sleep", "args": ["30"], "session_id": "busy"}))
        .await;
    busy.next().await.unwrap();
    let refused = gw.post("/run", &json!({"cli": "args"}).to_string()).await;
    refused.assert_error(503);
    assert_eq!(refused.headers["retry-after"], "1");
    gw.post("/sessions/busy/stop", "").await;
    busy.collect().await;
    assert_eq!(gw.run_to_end(json!({"cli": "args"})).await.exit().0, 0);
}

#[tokio::test]
async fn queued_requests_wait_for_a_slot_or_time_out() {
    let gw = Gateway::start(&[
        ("MAX_CONCURRENT_RUNS", "1"),
        ("MAX_QUEUED_RUNS", "1"),
        ("QUEUE_TIMEOUT_SECONDS", "0.5"),
    ])
    .await;
    let mut busy = gw
        .run(json!({"cli": "sleep", "args": ["30"], "session_id": "busy"}))
        .await;
    busy.next().await.unwrap();
    // One waits and times out...
    let started = Instant::now();
    let waited = gw.post("/run", &json!({"cli": "args"}).to_string()).await;
    waited.assert_error(503);
    assert!(started.elapsed() >= Duration::from_millis(400));
    // ...and one waits and gets the slot when it frees up.
    let addr = gw.addr;
    let queued = tokio::spawn(async move {
        RunStream::open(
            addr,
            json!({"cli": "args", "args": ["queued"]}).to_string().into_bytes(),
            &[],
        )
        .await
        .collect()
        .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw.post("/sessions/busy/stop", "").await;
    busy.collect().await;
    let frames = queued.await.unwrap();
    assert_eq!(frames.stdout(), "[queued]\n");
}

#[tokio::test]
async fn tokens_and_client_addresses_are_checked() {
    let token = "0123456789abcdef-token";
    let gw = Gateway::start(&[("AUTH_TOKENS", token)]).await;
    gw.get("/clis").await.assert_error(401);
    let wrong = request(
        gw.addr,
        "GET",
        "/clis",
        None,
        &[("authorization", "Bearer 0123456789abcdef-tokeX")],
    )
    .await;
    wrong.assert_error(401);
    assert_eq!(wrong.headers["www-authenticate"], "Bearer");
    gw.post("/run", &json!({"cli": "args"}).to_string())
        .await
        .assert_error(401);
    let ok = request(
        gw.addr,
        "GET",
        "/clis",
        None,
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(gw.get("/healthz").await.status, 200, "health stays open");

    let gw = Gateway::start(&[("ALLOWED_CLIENTS", "10.0.0.0/8")]).await;
    gw.get("/models").await.assert_error(403);
    gw.post("/run", &json!({"cli": "args"}).to_string())
        .await
        .assert_error(403);
    assert_eq!(gw.get("/healthz").await.status, 200);
    let gw = Gateway::start(&[("ALLOWED_CLIENTS", "10.0.0.0/8, 127.0.0.1")]).await;
    assert_eq!(gw.get("/models").await.status, 200);
}

#[tokio::test]
async fn refused_env_keys_and_path_like_clis() {
    let gw = Gateway::start(&[]).await;
    for env in [
        json!({"PATH": "/tmp"}),
        json!({"LD_PRELOAD": "/tmp/x.so"}),
        json!({"NODE_OPTIONS": "--require /x"}),
        json!({"BAD-KEY": "v"}),
        json!({"": "v"}),
    ] {
        let body = gw
            .post("/run", &json!({"cli": "args", "env": env}).to_string())
            .await
            .assert_error(400);
        assert!(body["detail"].as_str().unwrap().contains("env key"), "{body}");
    }
    for cli in ["/bin/sh", "./args", "../bin/sh", "args ", "sh -c id"] {
        let body = gw
            .post("/run", &json!({"cli": cli}).to_string())
            .await
            .assert_error(400);
        assert!(body["detail"].as_str().unwrap().contains("not allowed"), "{body}");
    }
}

#[tokio::test]
async fn malformed_requests_get_a_4xx_json_error_and_the_gateway_stays_healthy() {
    let gw = Gateway::start(&[("MAX_REQUEST_BYTES", "65536")]).await;
    let huge = "x".repeat(100_000);
    let cases: Vec<(&str, String, u16)> = vec![
        ("empty body", String::new(), 400),
        ("not JSON", "cli=codex".into(), 400),
        ("truncated JSON", r#"{"cli": "args""#.into(), 400),
        ("JSON array", r#"["args"]"#.into(), 422),
        ("JSON string", r#""args""#.into(), 422),
        ("null", "null".into(), 422),
        ("missing cli", r#"{"args": []}"#.into(), 422),
        ("cli not a string", r#"{"cli": 5}"#.into(), 422),
        ("args not an array", r#"{"cli": "args", "args": "x"}"#.into(), 422),
        ("args of numbers", r#"{"cli": "args", "args": [1, 2]}"#.into(), 422),
        (
            "stdin not a string",
            r#"{"cli": "args", "stdin": {"a": 1}}"#.into(),
            422,
        ),
        ("env not an object", r#"{"cli": "args", "env": ["A=B"]}"#.into(), 422),
        (
            "env value not a string",
            r#"{"cli": "args", "env": {"A": 1}}"#.into(),
            422,
        ),
        (
            "session id not a string",
            r#"{"cli": "args", "session_id": 7}"#.into(),
            422,
        ),
        ("unknown cli", r#"{"cli": "rm"}"#.into(), 400),
        ("huge cli", format!(r#"{{"cli": "{huge}"}}"#), 413),
        (
            "huge session id",
            format!(r#"{{"cli": "args", "session_id": "{}"}}"#, "s".repeat(5000)),
            400,
        ),
        (
            "session id with slash",
            r#"{"cli": "args", "session_id": "a/b"}"#.into(),
            400,
        ),
        ("NUL in args", r#"{"cli": "args", "args": ["a\u0000b"]}"#.into(), 400),
        (
            "invalid UTF-8 escape",
            r#"{"cli": "args", "stdin": "\ud800"}"#.into(),
            400,
        ),
        ("deep nesting", format!("{}{}", "[".repeat(2000), "]".repeat(2000)), 422),
        (
            "deep nesting in a field",
            format!(r#"{{"cli": "args", "env": {}{}}}"#, "[".repeat(2000), "]".repeat(2000)),
            422,
        ),
    ];
    for (name, body, status) in cases {
        let reply = request(gw.addr, "POST", "/run", Some(body.into_bytes()), &[]).await;
        assert_eq!(
            reply.status.as_u16(),
            status,
            "{name}: {:?}",
            String::from_utf8_lossy(&reply.body)
        );
        reply.assert_error(status);
    }
    gw.get("/nope").await.assert_error(404);
    gw.get("/run").await.assert_error(405);
    gw.post("/clis", "").await.assert_error(405);
    gw.get("/sessions/x/stop").await.assert_error(405);
    assert_eq!(gw.get("/healthz").await.status, 200);
    assert_eq!(
        gw.run_to_end(json!({"cli": "args", "args": ["still", "fine"]}))
            .await
            .exit()
            .0,
        0
    );
}
