//! Docker mode against the real engine: every run is a sibling container of a small image this
//! test binary builds once (static busybox + the fixture CLIs). The engine's own view (`docker ps`,
//! `docker inspect`) is the judge of whether a container is gone.
//!
//! These tests fail, never skip, when the engine or the static busybox is missing.

mod common;

use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::client::has_interpreter;
use common::{Frame, FrameFields, Gateway, RunStream, assert_gone, static_busybox};
use serde_json::{Value, json};
use tokio::process::Command;

/// The image every docker-mode gateway here runs.
const IMAGE: &str = "cligate-test-fixtures:latest";
/// How long a container may take to disappear after its run ended.
const GONE_WITHIN: Duration = Duration::from_secs(15);

static IMAGE_BUILT: OnceLock<Result<(), String>> = OnceLock::new();

/// The fixture image, built on first use (once per test binary run). Panics with the reason
/// when it cannot be built.
fn image() -> &'static str {
    if let Err(e) = IMAGE_BUILT.get_or_init(build_image) {
        panic!("{e}");
    }
    IMAGE
}

fn build_image() -> Result<(), String> {
    let version = std::process::Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run the docker client ({e}); docker-mode tests need Docker"))?;
    if !version.status.success() {
        return Err(format!(
            "the Docker engine does not answer ({}); start it (as root: \
             `nohup dockerd --iptables=false --bridge=none >/tmp/dockerd.log 2>&1 &`)",
            String::from_utf8_lossy(&version.stderr).trim()
        ));
    }
    let busybox = static_busybox()?;
    let ctx = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    std::fs::copy(&busybox, ctx.path().join("busybox")).map_err(|e| format!("copying {}: {e}", busybox.display()))?;
    let bin = ctx.path().join("bin");
    std::fs::create_dir(&bin).map_err(|e| e.to_string())?;
    for entry in std::fs::read_dir(common::fixtures()).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        // fs::copy keeps the permission bits, so the scripts stay executable.
        std::fs::copy(entry.path(), bin.join(entry.file_name())).map_err(|e| e.to_string())?;
    }
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\n\
         COPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         ENV PATH=/usr/local/bin:/bin\n\
         COPY bin/ /usr/local/bin/\n",
    )
    .map_err(|e| e.to_string())?;
    let out = std::process::Command::new("docker")
        .args(["build", "--network", "none", "--quiet", "--tag", IMAGE])
        .arg(ctx.path())
        .env("DOCKER_BUILDKIT", "0")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("docker build: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "docker build of {IMAGE} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Removes whatever containers its instance label still has when dropped (a failed test's
/// leftovers), so one test's gateway never sees another's containers.
struct Instance(String);

impl Instance {
    fn new(tag: &str) -> Instance {
        Instance(format!("dt-{tag}-{}", &unique()[..10]))
    }

    fn label(&self) -> String {
        format!("cligate.instance={}", self.0)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let Ok(out) = std::process::Command::new("docker")
            .args(["ps", "-a", "-q", "--filter", &format!("label={}", self.label())])
            .output()
        else {
            return;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(String::from)
            .collect();
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .output();
        }
    }
}

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn session(tag: &str) -> String {
    format!("{tag}-{}", unique())
}

/// A docker-mode gateway of its own instance, runs without network, a short kill grace.
async fn docker_gateway(instance: &Instance, extra: &[(&str, &str)]) -> Gateway {
    let mut vars = vec![
        ("CODEX_DOCKER_IMAGE", image()),
        ("DOCKER_NETWORK", "none"),
        ("CLIGATE_INSTANCE", instance.0.as_str()),
        ("KILL_GRACE_SECONDS", "1"),
    ];
    vars.extend_from_slice(extra);
    Gateway::start(&vars).await
}

/// `docker <args>`; panics unless it succeeds.
async fn docker(args: &[&str]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new("docker").args(args).stdin(Stdio::null()).output(),
    )
    .await
    .unwrap_or_else(|_| panic!("docker {args:?} hung"))
    .expect("running docker");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Ids of the containers (running or not) carrying `label` (`key=value`).
async fn containers(label: &str) -> Vec<String> {
    docker(&["ps", "-a", "-q", "--filter", &format!("label={label}")])
        .await
        .split_whitespace()
        .map(String::from)
        .collect()
}

fn session_label(sid: &str) -> String {
    format!("cligate.session={sid}")
}

/// Waits until no container carries `label`; panics after `limit`.
async fn assert_no_containers(label: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        let left = containers(label).await;
        if left.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "containers with {label} still exist after {limit:?}: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until a container carries `label` and returns its id.
async fn wait_container(label: &str, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        if let Some(id) = containers(label).await.into_iter().next() {
            return id;
        }
        assert!(start.elapsed() < limit, "no container with {label} after {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The pid of the run's `docker` client, from `GET /sessions/{id}`.
async fn client_pid(gw: &Gateway, sid: &str) -> u32 {
    let start = Instant::now();
    loop {
        let reply = gw.get(&format!("/sessions/{sid}")).await;
        assert_eq!(reply.status, 200, "{:?}", String::from_utf8_lossy(&reply.body));
        let body = reply.json();
        if body["state"] == "running" {
            return body["pid"].as_u64().unwrap_or_else(|| panic!("no pid: {body}")) as u32;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "never running: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens a run and checks it was accepted and its first frame names the session.
async fn open(gw: &Gateway, body: Value) -> RunStream {
    let sid = body["session_id"]
        .as_str()
        .expect("tests name their sessions")
        .to_string();
    let mut stream = gw.run(body).await;
    if stream.status != 200 {
        let status = stream.status;
        panic!("run refused ({status}): {}", stream.error_body().await);
    }
    let first = stream
        .next_within(Duration::from_secs(10))
        .await
        .expect("a session frame");
    assert_eq!(
        first,
        Frame::Session {
            id: sid.clone(),
            run_id: stream.headers["x-cligate-run-id"].to_str().unwrap().to_string()
        }
    );
    stream
}

/// Reads the rest of a stream that has had its session frame read: `(frames, code, reason)`.
async fn finish(stream: RunStream, limit: Duration) -> (Vec<Frame>, i64, String) {
    let frames = tokio::time::timeout(limit, stream.collect())
        .await
        .expect("the run ends in time")
        .0;
    assert_eq!(frames.iter().filter(|f| f.kind() == "exit").count(), 1, "{frames:?}");
    assert!(!frames.iter().any(|f| f.kind() == "session"), "{frames:?}");
    let Some(Frame::Exit { code, reason }) = frames.last() else {
        panic!("the last frame is not the exit: {frames:?}");
    };
    let (code, reason) = (i64::from(*code), reason.as_str().to_string());
    (frames, code, reason)
}

fn text(frames: &[Frame], kind: &str) -> String {
    frames
        .iter()
        .filter(|f| f.kind() == kind)
        .filter_map(|f| f.data())
        .collect()
}

/// A run that lasts until it is ended and dies of the first SIGTERM; prints "started\n" first.
fn polite_run(sid: &str) -> Value {
    json!({"cli": "sh", "args": ["-c", "echo started; exec sleep 300"], "session_id": sid})
}

/// A run that ignores SIGTERM (so only SIGKILL or removing the container ends it); prints
/// "pid <n>" lines first. The docker client forwards signals it gets to the container, so only
/// such a run tells "the container was ended" from "the docker client was ended".
fn stubborn_run(sid: &str) -> Value {
    json!({"cli": "ignore-term", "session_id": sid})
}

/// Opens a long run and waits for its first output (the CLI is running in its container).
async fn open_started(gw: &Gateway, body: Value) -> RunStream {
    let needle = if body["cli"] == "ignore-term" {
        "pid "
    } else {
        "started\n"
    };
    let mut stream = open(gw, body).await;
    tokio::time::timeout(Duration::from_secs(30), stream.stdout_until(needle))
        .await
        .expect("the CLI starts in its container");
    stream
}

#[tokio::test]
async fn args_exit_codes_and_a_mebibyte_of_stdin_pass_through_the_container() {
    let inst = Instance::new("e2e");
    let gw = docker_gateway(&inst, &[]).await;
    let (s_args, s_exit, s_echo) = (session("args"), session("exit"), session("echo"));
    let odd = ["a b", "it's \"quoted\"", "$(x)", "", "  lead", "*", "--rm", "-e"];
    let mut prompt = String::with_capacity(1 << 20);
    let mut i = 0u32;
    while prompt.len() < 1 << 20 {
        prompt.push_str(&format!("line {i:07} of the prompt, with some é and ✓ in it\n"));
        i += 1;
    }
    prompt.truncate(1 << 20);
    prompt.push_str("no newline at the end");

    let (args, exit, echo) = tokio::join!(
        gw.run_to_end(json!({"cli": "args", "args": odd, "stdin": "ignored", "session_id": s_args})),
        gw.run_to_end(json!({"cli": "exit-code", "args": ["7"], "session_id": s_exit})),
        async {
            tokio::time::timeout(
                Duration::from_secs(60),
                gw.run_to_end(json!({"cli": "echo-stdin", "stdin": prompt, "session_id": s_echo})),
            )
            .await
            .expect("1 MiB through `docker run -i` does not deadlock")
        },
    );

    assert_eq!(args.exit(), (0, "exited".to_string()), "{:?}", args.0);
    assert_eq!(args.session(), s_args);
    let expected: String = odd.iter().map(|a| format!("[{a}]\n")).collect();
    assert_eq!(args.stdout(), expected);

    assert_eq!(exit.exit(), (7, "exited".to_string()), "{:?}", exit.0);
    assert_eq!(exit.stdout(), "exiting with 7\n");

    assert_eq!(echo.exit(), (0, "exited".to_string()), "stderr: {}", echo.stderr());
    let got = echo.stdout();
    if got != prompt {
        let at = got.bytes().zip(prompt.bytes()).position(|(a, b)| a != b);
        panic!(
            "echo differs: got {} bytes, sent {}; first difference at {at:?}",
            got.len(),
            prompt.len()
        );
    }
    for sid in [&s_args, &s_exit, &s_echo] {
        assert_no_containers(&session_label(sid), GONE_WITHIN).await;
    }
}

#[tokio::test]
async fn container_env_is_built_from_config_request_and_args_and_secrets_stay_off_the_command_line() {
    let inst = Instance::new("env");
    let key = format!("sk-gateway-{}", unique());
    let base = format!("http://litellm-{}.invalid:4000", &unique()[..12]);
    let gw = docker_gateway(
        &inst,
        &[
            ("LITELLM_BASE_URL", &base),
            ("LITELLM_API_KEY", &key),
            ("MODEL_LIST", "auto,gpt-test"),
        ],
    )
    .await;
    let env_lines = |out: &str| -> Vec<String> { out.lines().map(String::from).collect() };

    // Gateway defaults, model from the args.
    let sid = session("env-defaults");
    let f = gw
        .run_to_end(
            json!({"cli": "show-env", "args": ["--model", "gpt-x"], "env": {"EXTRA": "v 1"}, "session_id": sid}),
        )
        .await;
    assert_eq!(f.exit(), (0, "exited".to_string()), "{:?}", f.0);
    let lines = env_lines(&f.stdout());
    for want in [
        "CLI_PROVIDER_NAME=show-env".to_string(),
        format!("LITELLM_BASE_URL={base}"),
        format!("LITELLM_API_KEY={key}"),
        "LITELLM_MODEL=gpt-x".to_string(),
        "EXTRA=v 1".to_string(),
    ] {
        assert!(lines.contains(&want), "{want:?} missing from {lines:?}");
    }
    // Only named variables cross into the container: nothing of the gateway's own environment.
    assert!(!lines.iter().any(|l| l.starts_with("CARGO")), "{lines:?}");

    // The request overrides the defaults but not the provider name; `auto` resolves.
    let sid = session("env-override");
    let f = gw
        .run_to_end(json!({
            "cli": "show-env",
            "args": ["-m", "auto"],
            "env": {"LITELLM_BASE_URL": "http://mine", "LITELLM_API_KEY": "sk-mine", "CLI_PROVIDER_NAME": "evil"},
            "session_id": sid,
        }))
        .await;
    assert_eq!(f.exit(), (0, "exited".to_string()), "{:?}", f.0);
    let lines = env_lines(&f.stdout());
    for want in [
        "CLI_PROVIDER_NAME=show-env",
        "LITELLM_BASE_URL=http://mine",
        "LITELLM_API_KEY=sk-mine",
        "LITELLM_MODEL=gpt-test",
    ] {
        assert!(lines.contains(&want.to_string()), "{want:?} missing from {lines:?}");
    }
    assert!(
        !lines.iter().any(|l| l.contains(&key) || l.contains(&base)),
        "{lines:?}"
    );

    // No model anywhere: no LITELLM_MODEL at all.
    let sid = session("env-nomodel");
    let f = gw.run_to_end(json!({"cli": "show-env", "session_id": sid})).await;
    assert_eq!(f.exit(), (0, "exited".to_string()), "{:?}", f.0);
    assert!(!f.stdout().contains("LITELLM_MODEL"), "{}", f.stdout());

    // While a run is going, its docker client's command line names the variables only.
    let sid = session("env-cmdline");
    let stream = open(&gw, json!({"cli": "sleep", "args": ["300"], "session_id": sid})).await;
    let pid = client_pid(&gw, &sid).await;
    // Once the container exists the client has long been exec'd: its cmdline is its own.
    wait_container(&session_label(&sid), Duration::from_secs(20)).await;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("the docker client's cmdline");
    let argv: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert!(argv[0].ends_with("docker"), "{argv:?}");
    let whole = argv.join(" ");
    assert!(!whole.contains(&key), "API key on the command line: {argv:?}");
    assert!(!whole.contains(&base), "base URL on the command line: {argv:?}");
    for name in ["LITELLM_API_KEY", "LITELLM_BASE_URL", "CLI_PROVIDER_NAME"] {
        assert!(
            argv.windows(2).any(|w| w[0] == "-e" && w[1] == name),
            "-e {name} missing: {argv:?}"
        );
    }
    assert!(!argv.iter().any(|a| a.starts_with("-e") && a.contains('=')), "{argv:?}");
    // The values travel in the client's environment instead.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("the docker client's environment");
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        environ.split('\0').any(|v| v == format!("LITELLM_API_KEY={key}")),
        "key not in the client's env"
    );

    assert_eq!(gw.post(&format!("/sessions/{sid}/stop"), "").await.status, 200);
    let (_, _, reason) = finish(stream, Duration::from_secs(30)).await;
    assert_eq!(reason, "stopped");
    assert_no_containers(&session_label(&sid), GONE_WITHIN).await;
}

#[tokio::test]
async fn timeout_ends_the_container_not_just_the_client() {
    let inst = Instance::new("timeout");
    let gw = docker_gateway(&inst, &[("RUN_RESPONSE_TIMEOUT_SECONDS", "1")]).await;
    let sid = session("timeout");
    let stream = open(&gw, json!({"cli": "ignore-term", "session_id": sid})).await;
    let pid = client_pid(&gw, &sid).await;
    let (frames, code, reason) = finish(stream, Duration::from_secs(40)).await;
    assert_eq!((code, reason.as_str()), (124, "timeout"), "{frames:?}");
    assert_eq!(
        frames[frames.len() - 2],
        Frame::Stderr {
            data: "Request timed out while waiting for CLI response (1s).".into()
        },
        "{frames:?}"
    );
    assert_no_containers(&session_label(&sid), GONE_WITHIN).await;
    assert_gone(&[pid], GONE_WITHIN).await;
    // The run is over for the gateway too.
    // Ended: the session answers from its run's record.
    assert_eq!(gw.get(&format!("/sessions/{sid}")).await.json()["reason"], "timeout");
}

#[tokio::test]
async fn stop_ends_the_run_and_removes_its_container() {
    let inst = Instance::new("stop");
    let gw = docker_gateway(&inst, &[]).await;
    let (sid, polite_sid) = (session("stop"), session("stop-polite"));
    let (stream, polite) = tokio::join!(
        open_started(&gw, stubborn_run(&sid)),
        open_started(&gw, polite_run(&polite_sid))
    );
    let run_id = stream.headers["x-cligate-run-id"].to_str().unwrap().to_string();
    let (pid, polite_pid) = (client_pid(&gw, &sid).await, client_pid(&gw, &polite_sid).await);

    // The container is the one the contract describes.
    let ids = containers(&session_label(&sid)).await;
    assert_eq!(ids.len(), 1, "{ids:?}");
    let inspect: Value = serde_json::from_str(&docker(&["inspect", &ids[0]]).await).unwrap();
    let c = &inspect[0];
    assert_eq!(c["Name"], format!("/cligate-{run_id}"));
    assert_eq!(c["State"]["Running"], true);
    let labels = &c["Config"]["Labels"];
    assert_eq!(labels["cligate.instance"], inst.0.as_str());
    assert_eq!(labels["cligate.session"], sid.as_str());
    assert_eq!(labels["cligate.run"], run_id.as_str());
    let host = &c["HostConfig"];
    assert_eq!(host["AutoRemove"], true, "--rm");
    assert_eq!(host["Init"], true, "--init");
    assert_eq!(host["NetworkMode"], "none");
    assert_eq!(host["PidsLimit"], 1024);
    let security = host["SecurityOpt"].as_array().unwrap();
    assert!(security.contains(&json!("no-new-privileges")), "{host}");
    assert_eq!(c["Config"]["OpenStdin"], true, "-i");

    for s in [&sid, &polite_sid] {
        let reply = gw.post(&format!("/sessions/{s}/stop"), "").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json(), json!({"session_id": s, "status": "stopped"}));
    }
    let ((frames, code, reason), (polite_frames, polite_code, polite_reason)) = tokio::join!(
        finish(stream, Duration::from_secs(30)),
        finish(polite, Duration::from_secs(30))
    );
    // SIGTERM is ignored, so it took SIGKILL: 128 + 9.
    assert_eq!((code, reason.as_str()), (137, "stopped"), "{frames:?}");
    // SIGTERM ended it: 128 + 15.
    assert_eq!(
        (polite_code, polite_reason.as_str()),
        (143, "stopped"),
        "{polite_frames:?}"
    );
    for s in [&sid, &polite_sid] {
        assert_no_containers(&session_label(s), GONE_WITHIN).await;
    }
    assert_gone(&[pid, polite_pid], GONE_WITHIN).await;

    gw.post(&format!("/sessions/{sid}/stop"), "").await.assert_error(404);
}

#[tokio::test]
async fn client_disconnect_removes_the_container() {
    let inst = Instance::new("disconnect");
    let gw = docker_gateway(&inst, &[]).await;
    let sid = session("disconnect");
    let mut stream = open(&gw, stubborn_run(&sid)).await;
    let first = stream.until("stdout").await;
    assert!(first.data().unwrap().starts_with("pid "), "{first:?}");
    let pid = client_pid(&gw, &sid).await;
    assert_eq!(containers(&session_label(&sid)).await.len(), 1);
    stream.disconnect();

    assert_no_containers(&session_label(&sid), GONE_WITHIN).await;
    assert_gone(&[pid], GONE_WITHIN).await;
    let start = Instant::now();
    while gw.get(&format!("/sessions/{sid}")).await.json()["state"] != "finished" {
        assert!(start.elapsed() < GONE_WITHIN, "session still running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        gw.get(&format!("/sessions/{sid}")).await.json()["reason"],
        "disconnected"
    );
}

#[tokio::test]
async fn shutdown_ends_running_containers_and_tells_the_client() {
    let inst = Instance::new("shutdown");
    let mut gw = docker_gateway(&inst, &[("SHUTDOWN_GRACE_SECONDS", "1")]).await;
    let (sid, polite_sid) = (session("shutdown"), session("shutdown-polite"));
    let (stream, polite) = tokio::join!(
        open_started(&gw, stubborn_run(&sid)),
        open_started(&gw, polite_run(&polite_sid))
    );
    let (pid, polite_pid) = (client_pid(&gw, &sid).await, client_pid(&gw, &polite_sid).await);

    let server = gw.begin_shutdown();
    let (a, b) = tokio::join!(
        finish(stream, Duration::from_secs(40)),
        finish(polite, Duration::from_secs(40))
    );
    for ((frames, code, reason), want) in [(a, 137), (b, 143)] {
        assert_eq!((code, reason.as_str()), (want, "shutdown"), "{frames:?}");
        assert!(
            text(&frames, "stderr").ends_with("Run ended: the gateway is shutting down."),
            "{frames:?}"
        );
    }
    for s in [&sid, &polite_sid] {
        assert_no_containers(&session_label(s), GONE_WITHIN).await;
    }
    assert_gone(&[pid, polite_pid], GONE_WITHIN).await;
    tokio::time::timeout(Duration::from_secs(60), server)
        .await
        .expect("the server task ends")
        .expect("the server task does not panic")
        .expect("the server task returns Ok");
}

#[tokio::test]
async fn start_up_removes_this_instances_leftovers_only() {
    let mine = Instance::new("cleanup-mine");
    let other = Instance::new("cleanup-other");
    let img = image();
    let start_leftover = |inst: &Instance| {
        let label = inst.label();
        async move {
            docker(&["run", "-d", "--label", &label, "--network", "none", img, "sleep", "300"])
                .await
                .trim()
                .to_string()
        }
    };
    let (leftover, foreign) = tokio::join!(start_leftover(&mine), start_leftover(&other));
    let running = |id: String| async move {
        docker(&["ps", "-a", "-q", "--no-trunc", "--filter", &format!("id={id}")])
            .await
            .trim()
            .to_string()
    };
    assert_eq!(running(leftover.clone()).await, leftover);

    let gw = docker_gateway(&mine, &[]).await;
    assert_eq!(
        running(leftover.clone()).await,
        "",
        "this instance's leftover survived start-up"
    );
    assert_eq!(
        running(foreign.clone()).await,
        foreign,
        "another instance's container was removed"
    );
    let metrics = String::from_utf8(gw.get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("cligate_container_cleanups_total{when=\"startup\"} 1")),
        "{metrics}"
    );
    drop(other); // Removes the foreign container.
    assert_eq!(running(foreign).await, "");
}

#[tokio::test]
async fn the_janitor_removes_containers_that_belong_to_no_run_and_spares_running_ones() {
    let inst = Instance::new("janitor");
    let gw = docker_gateway(&inst, &[("DOCKER_JANITOR_SECONDS", "0.5")]).await;
    let sid = session("janitor-run");
    let stream = open_started(&gw, polite_run(&sid)).await;
    let own = wait_container(&session_label(&sid), Duration::from_secs(10)).await;
    // What a `docker run` client that died between create and start leaves: a created container,
    // and one that runs without any run of this gateway behind it.
    let label = inst.label();
    let created = docker(&[
        "create",
        "--label",
        &label,
        "--network",
        "none",
        image(),
        "sleep",
        "300",
    ])
    .await;
    // The janitor may remove it between `docker run`'s create and start (it is doing its job
    // then); try again until one runs.
    let mut stray = String::new();
    let mut raced = 0;
    for _ in 0..20 {
        let out = Command::new("docker")
            .args([
                "run",
                "-d",
                "--label",
                &label,
                "--network",
                "none",
                image(),
                "sleep",
                "300",
            ])
            .stdin(Stdio::null())
            .output()
            .await
            .expect("running docker");
        if out.status.success() {
            stray = String::from_utf8_lossy(&out.stdout).into_owned();
            break;
        }
        raced += 1;
    }
    assert!(!stray.is_empty(), "no stray container could be started");
    for id in [created.trim(), stray.trim()] {
        let start = Instant::now();
        while !docker(&["ps", "-a", "-q", "--filter", &format!("id={id}")])
            .await
            .trim()
            .is_empty()
        {
            assert!(start.elapsed() < GONE_WITHIN, "the janitor left {id}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(
        containers(&session_label(&sid)).await,
        [own],
        "the running run's container was removed"
    );
    // Each `docker run` the janitor beat to it was one more removal of a stray container.
    let metrics = String::from_utf8(gw.get("/metrics").await.body.to_vec()).unwrap();
    let removed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cligate_container_cleanups_total{when=\"janitor\"} "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no janitor cleanups in {metrics}"));
    assert!(
        (2..=2 + raced).contains(&removed),
        "{removed} janitor cleanups for 2 strays and {raced} raced starts: {metrics}"
    );
    assert_eq!(gw.post(&format!("/sessions/{sid}/stop"), "").await.status, 200);
    let (_, _, reason) = finish(stream, Duration::from_secs(30)).await;
    assert_eq!(reason, "stopped");
}

#[tokio::test]
async fn readiness_follows_the_image_and_an_unreachable_engine_stops_start_up() {
    let inst = Instance::new("ready");
    let gw = docker_gateway(&inst, &[]).await;
    let reply = gw.get("/readyz").await;
    assert_eq!(reply.status, 200, "{:?}", String::from_utf8_lossy(&reply.body));
    let body = reply.json();
    assert_eq!(body["mode"], "docker", "{body}");
    assert_eq!(body["image"], IMAGE, "{body}");

    let missing = format!("cligate-test-missing-{}:nope", &unique()[..8]);
    let gw = docker_gateway(&inst, &[("CODEX_DOCKER_IMAGE", &missing)]).await;
    let body = gw.get("/readyz").await.assert_error(503);
    assert!(body["detail"].as_str().unwrap().contains(&missing), "{body}");

    // An engine that is not there. The gateway finds the engine as the docker client does
    // (DOCKER_HOST, read from its environment), so this is the real binary.
    let dir = tempfile::tempdir().unwrap();
    let nowhere = format!("unix://{}/docker.sock", dir.path().display());
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(env!("CARGO_BIN_EXE_cligate"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATA_DIR", dir.path())
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("CODEX_DOCKER_IMAGE", image())
            .env("DOCKER_HOST", &nowhere)
            .env("CLIGATE_INSTANCE", inst.0.as_str())
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("a gateway without an engine stops at once")
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a gateway without a reachable engine started: {err}"
    );
    assert!(err.starts_with("cligate: CODEX_DOCKER_IMAGE"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[tokio::test]
async fn a_cli_missing_from_the_image_exits_127_in_a_well_formed_stream() {
    let inst = Instance::new("missing");
    let gw = docker_gateway(&inst, &[]).await;
    let sid = session("missing");
    let f = gw
        .run_to_end(json!({"cli": "not-installed-cli", "args": ["x"], "session_id": sid}))
        .await;
    assert_eq!(f.session(), sid);
    assert_eq!(f.exit(), (127, "exited".to_string()), "{:?}", f.0);
    assert!(f.stderr().contains("not-installed-cli"), "{:?}", f.0);
    assert_no_containers(&session_label(&sid), GONE_WITHIN).await;
}

#[tokio::test]
async fn a_partial_line_arrives_long_before_the_container_ends() {
    let inst = Instance::new("partial");
    let gw = docker_gateway(&inst, &[]).await;
    let sid = session("partial");
    let mut stream = open(&gw, json!({"cli": "slow-partial", "session_id": sid})).await;
    let started = Instant::now();
    let first = stream.until("stdout").await;
    let prompt_at = started.elapsed();
    assert_eq!(first.data(), Some("prompt> "), "the prompt is a frame of its own");
    let (frames, code, reason) = finish(stream, Duration::from_secs(30)).await;
    let end_at = started.elapsed();
    assert_eq!((code, reason.as_str()), (0, "exited"), "{frames:?}");
    assert_eq!(text(&frames, "stdout"), "done\n");
    // The script sleeps 5 s between the prompt and its end.
    assert!(
        end_at - prompt_at > Duration::from_secs(3),
        "prompt at {prompt_at:?}, end at {end_at:?}: the prompt was held back"
    );
    assert!(prompt_at < Duration::from_secs(5), "prompt only after {prompt_at:?}");
}

#[test]
fn the_busybox_check_tells_static_from_dynamic_binaries() {
    let dynamic = std::fs::read("/bin/sh").expect("/bin/sh");
    assert!(has_interpreter(&dynamic), "/bin/sh is dynamically linked on Debian");
    assert!(has_interpreter(b"#!/bin/sh\n"), "a script is not a static binary");
    let busybox = static_busybox().unwrap_or_else(|e| panic!("{e}"));
    assert!(!has_interpreter(&std::fs::read(busybox).unwrap()));
}

#[tokio::test]
async fn the_operator_key_goes_only_with_the_operator_base_url() {
    let inst = Instance::new("key");
    let key = format!("sk-gateway-{}", unique());
    let base = format!("http://litellm-{}.invalid:4000", &unique()[..12]);
    let gw = docker_gateway(&inst, &[("LITELLM_BASE_URL", &base), ("LITELLM_API_KEY", &key)]).await;
    let container_env = |tag: &'static str, env: Value| {
        let gw = &gw;
        async move {
            let f = gw
                .run_to_end(json!({"cli": "show-env", "env": env, "session_id": session(tag)}))
                .await;
            assert_eq!(f.exit(), (0, "exited".to_string()), "{:?}", f.0);
            f.stdout().lines().map(String::from).collect::<Vec<String>>()
        }
    };
    let api_keys = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.starts_with("LITELLM_API_KEY="))
            .cloned()
            .collect()
    };

    // The operator's server (by default or named again): the operator's key.
    for env in [json!({}), json!({"LITELLM_BASE_URL": base})] {
        let lines = container_env("key-operator", env.clone()).await;
        assert_eq!(api_keys(&lines), [format!("LITELLM_API_KEY={key}")], "{env}");
    }
    // The caller's server without a key of its own: no key at all in the container.
    for env in [
        json!({"LITELLM_BASE_URL": "http://attacker"}),
        json!({"OPENAI_BASE_URL": "http://attacker"}),
        json!({"ANTHROPIC_BASE_URL": "http://attacker"}),
    ] {
        let lines = container_env("key-attacker", env.clone()).await;
        assert!(api_keys(&lines).is_empty(), "{env}: {lines:?}");
        assert!(!lines.iter().any(|l| l.contains(&key)), "{env}: {lines:?}");
        assert!(lines.iter().any(|l| l.ends_with("=http://attacker")), "{lines:?}");
    }
    // The caller's server with its own key: that key.
    let lines = container_env(
        "key-own",
        json!({"LITELLM_BASE_URL": "http://attacker", "LITELLM_API_KEY": "sk-caller"}),
    )
    .await;
    assert_eq!(api_keys(&lines), ["LITELLM_API_KEY=sk-caller"]);
    assert!(!lines.iter().any(|l| l.contains(&key)), "{lines:?}");
}

#[tokio::test]
async fn docker_mode_refuses_tool_configuration_keys_unless_the_operator_allows_them() {
    let inst = Instance::new("envrule");
    let gw = docker_gateway(&inst, &[]).await;
    let git = json!({"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "core.fsmonitor", "GIT_CONFIG_VALUE_0": "id"});
    for env in [
        git.clone(),
        json!({"NODE_OPTIONS": "--require /x"}),
        json!({"DOCKER_HOST": "tcp://x:1"}),
    ] {
        let body = json!({"cli": "show-env", "env": env, "session_id": session("envrule")}).to_string();
        let reply = gw.post("/run", &body).await.assert_error(400);
        assert!(reply["detail"].as_str().unwrap().contains("RUN_ENV_ALLOW"), "{reply}");
    }
    assert!(
        containers(&inst.label()).await.is_empty(),
        "a refused run started a container"
    );

    // Allowed by the operator, the same keys reach the container.
    let inst = Instance::new("envallow");
    let gw = docker_gateway(&inst, &[("RUN_ENV_ALLOW", "GIT_CONFIG_*")]).await;
    let f = gw
        .run_to_end(json!({"cli": "show-env", "env": git, "session_id": session("envallow")}))
        .await;
    assert_eq!(f.exit(), (0, "exited".to_string()), "{:?}", f.0);
    assert!(
        f.stdout().lines().any(|l| l == "GIT_CONFIG_KEY_0=core.fsmonitor"),
        "{}",
        f.stdout()
    );
}

/// A docker-mode gateway killed with SIGKILL while runs stream: at its next start its runs are
/// `interrupted` (`gateway_lost`), their containers are gone and their logs read to the last
/// whole frame.
#[tokio::test]
async fn a_killed_docker_gateway_leaves_no_container_and_its_runs_are_interrupted() {
    let inst = Instance::new("crash");
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().display().to_string();
    let vars = [
        ("CODEX_DOCKER_IMAGE", image()),
        ("DOCKER_NETWORK", "none"),
        ("CLIGATE_INSTANCE", inst.0.as_str()),
        ("KILL_GRACE_SECONDS", "1"),
        ("DATA_DIR", data_dir.as_str()),
        ("DATA_DIR_MIN_FREE_BYTES", "0"),
    ];
    let mut gw = common::Binary::start(&vars).await;
    let mut ids = Vec::new();
    let mut streams = Vec::new();
    for n in 0..2 {
        let sid = session(&format!("crash{n}"));
        let body = json!({"cli": "sh", "session_id": sid,
            "args": ["-c", "i=0; while true; do echo \"line $i\"; i=$((i+1)); sleep 0.05; done"]});
        let mut s = RunStream::open(gw.addr, body.to_string().into_bytes(), &[]).await;
        assert_eq!(s.status, 200);
        ids.push(s.headers["x-cligate-run-id"].to_str().unwrap().to_string());
        tokio::time::timeout(Duration::from_secs(30), s.stdout_until("line 3\n"))
            .await
            .expect("the run prints in its container");
        streams.push(s);
    }
    assert_eq!(containers(&inst.label()).await.len(), 2);
    gw.kill_9().await;
    drop(streams);

    let gw = common::Binary::start(&vars).await;
    assert_no_containers(&inst.label(), GONE_WITHIN).await;
    for id in &ids {
        let r = common::request(gw.addr, "GET", &format!("/runs/{id}"), None, &[]).await;
        assert_eq!(r.status, 200);
        let record = r.json();
        assert_eq!(
            (record["state"].as_str(), record["reason"].as_str()),
            (Some("interrupted"), Some("gateway_lost"))
        );
        assert_eq!(record["mode"], "docker");
        let page = common::request(gw.addr, "GET", &format!("/runs/{id}/log?max_bytes=4194304"), None, &[])
            .await
            .json();
        let content = page["content"].as_str().unwrap();
        assert!(content.contains("\"data\":\"line 3\\n\""), "{content}");
        assert!(content.ends_with('\n') && page["eof"] == true, "{page}");
    }
}

/// Detached runs in docker mode: one runs to its end in its container, another is stopped by
/// run id and its container removed.
#[tokio::test]
async fn detached_runs_in_containers_end_and_stop_by_run_id() {
    let inst = Instance::new("detached");
    let gw = docker_gateway(&inst, &[]).await;
    let submit = |body: Value| {
        let addr = gw.addr;
        async move {
            let r = common::request(addr, "POST", "/runs", Some(body.to_string().into_bytes()), &[]).await;
            assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
            r.json()["run_id"].as_str().unwrap().to_string()
        }
    };
    let record = |id: String| {
        let addr = gw.addr;
        async move {
            let deadline = Instant::now() + GONE_WITHIN;
            loop {
                let r = common::request(addr, "GET", &format!("/runs/{id}"), None, &[])
                    .await
                    .json();
                if r["state"] == "finished" {
                    return r;
                }
                assert!(Instant::now() < deadline, "never finished: {r}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let done = submit(json!({"cli": "args", "args": ["in", "a container"]})).await;
    let r = record(done.clone()).await;
    assert_eq!((r["exit_code"].as_i64(), r["mode"].as_str()), (Some(0), Some("docker")));
    let log = common::request(gw.addr, "GET", &format!("/runs/{done}/log"), None, &[])
        .await
        .json();
    assert!(log["content"].as_str().unwrap().contains("[a container]"), "{log}");

    let sid = session("detached-stop");
    let long = submit(json!({"cli": "sh", "session_id": sid, "args": ["-c", "echo started; sleep 60"]})).await;
    wait_container(&session_label(&sid), GONE_WITHIN).await;
    let stop = common::request(gw.addr, "POST", &format!("/runs/{long}/stop"), None, &[]).await;
    assert_eq!(stop.status, 200);
    let r = record(long).await;
    assert_eq!(r["reason"], "stopped");
    assert_no_containers(&session_label(&sid), GONE_WITHIN).await;
}

/// Git outside the gateway, `dev` as the default branch.
fn seed_git(dir: &std::path::Path, args: &[&str]) -> String {
    common::git_in(dir, "dev", args)
}

#[tokio::test]
async fn a_container_works_in_its_branch_at_slash_workspace_and_its_changes_are_committed() {
    let remote = tempfile::tempdir().unwrap();
    seed_git(remote.path(), &["init", "--quiet", "seed"]);
    let seed = remote.path().join("seed");
    std::fs::write(seed.join("README.md"), "# demo\n").unwrap();
    std::fs::write(seed.join("old.txt"), "old\n").unwrap();
    seed_git(&seed, &["add", "."]);
    seed_git(&seed, &["commit", "--quiet", "-m", "seed"]);
    seed_git(remote.path(), &["clone", "--quiet", "--bare", "seed", "origin.git"]);
    let origin = remote.path().join("origin.git");
    let projects = remote.path().join("projects.toml");
    std::fs::write(
        &projects,
        format!("[projects.demo]\nurl = \"{}\"\nbase = \"dev\"\n", origin.display()),
    )
    .unwrap();
    let instance = Instance::new("workspace");
    let gw = docker_gateway(&instance, &[("PROJECTS_FILE", projects.to_str().unwrap())]).await;
    let script = "pwd; cat README.md; echo from-container > made.txt; rm old.txt; echo $HOME; echo kept > $HOME/note";
    let frames = gw
        .run_to_end(json!({
            "cli": "sh",
            "args": ["-c", script],
            "workspace": {"project": "demo", "branch": "dock/1", "push": true},
            "state_key": "dock-home",
        }))
        .await;
    assert_eq!(frames.exit(), (0, "exited".into()), "{}", frames.stderr());
    assert_eq!(frames.stdout(), "/workspace\n# demo\n/cligate-home\n");
    let git = frames
        .0
        .iter()
        .find_map(|f| match f {
            Frame::Git(g) => Some(g.clone()),
            _ => None,
        })
        .expect("a git frame");
    assert!(git.committed && git.pushed && git.error.is_none(), "{git:?}");
    let head = seed_git(&origin, &["rev-parse", "refs/heads/dock/1"]);
    assert_eq!(git.head.as_deref(), Some(head.as_str()));
    assert_eq!(
        seed_git(&origin, &["diff", "--name-status", "dev", "dock/1"]),
        "A\tmade.txt\nD\told.txt"
    );
    assert_eq!(seed_git(&origin, &["show", "dock/1:made.txt"]), "from-container");
    // The home was mounted from DATA_DIR and outlives the container.
    let note = gw.data_dir.join("state/_/dock-home/note");
    assert_eq!(std::fs::read_to_string(&note).unwrap(), "kept\n");
}
