//! End to end with the real Codex CLI: `POST /run` starts `codex exec` (npm `@openai/codex`,
//! installed into `target/codex` by `tests/install-codex.sh`), which talks to a fake OpenAI
//! Responses API served by this test on 127.0.0.1. The gateway must deliver the prompt on
//! stdin, the request env (`CODEX_HOME`, the API key) to the process, and codex's answer as
//! stdout frames, ending with `exit 0 exited`.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Gateway;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// The text the fake model answers with; `codex exec` prints it, and only it, on stdout.
const REPLY: &str = "cligate e2e: the fake model says hello.";
/// The prompt, sent as the run's stdin (no trailing newline: codex passes stdin on verbatim).
const PROMPT: &str = "Please answer with the e2e greeting.";
const MODEL: &str = "fake-model";
const API_KEY: &str = "sk-cligate-e2e-fake";

/// The whole test, gateway start to last frame, must finish within this.
const LIMIT: Duration = Duration::from_secs(30);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `codex` that `tests/install-codex.sh` installs, checked to be the version the script pins.
/// Fails (does not skip) when it is missing or another version.
fn installed_codex() -> PathBuf {
    let script = repo().join("tests/install-codex.sh");
    let pinned = std::fs::read_to_string(&script)
        .unwrap_or_else(|e| panic!("reading {}: {e}", script.display()))
        .lines()
        .find_map(|l| l.strip_prefix("CODEX_VERSION=").map(|v| v.trim().to_string()))
        .expect("tests/install-codex.sh sets CODEX_VERSION=");
    let prefix = repo().join("target/codex");
    let bin = prefix.join("node_modules/.bin/codex");
    let package = prefix.join("node_modules/@openai/codex/package.json");
    let installed = std::fs::read(&package)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|p| p["version"].as_str().map(String::from));
    assert!(
        bin.is_file() && installed.as_deref() == Some(pinned.as_str()),
        "the Codex CLI {pinned} is not installed in {} (found: {}): run tests/install-codex.sh first",
        prefix.display(),
        installed.as_deref().unwrap_or("nothing"),
    );
    bin
}

/// A directory under cargo's per-target temp dir, removed on drop. (Not under /tmp: codex
/// refuses to set up its helper binaries in a CODEX_HOME there, and says so on stderr.)
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("codex-e2e-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One request the fake API received.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    authorization: Option<String>,
    content_encoding: Option<String>,
    body: Bytes,
}

/// A fake OpenAI Responses API: `POST /v1/responses` answers with a streamed SSE response
/// carrying [`REPLY`]; anything else is a 404. Every request is recorded.
struct FakeResponses {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl FakeResponses {
    async fn start() -> FakeResponses {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(req, log.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeResponses { addr, received, task }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for FakeResponses {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The SSE events of one complete answer, in the order the real API sends them.
fn answer_events() -> Vec<Value> {
    let (half, rest) = REPLY.split_at(REPLY.len() / 2);
    let message = |status: &str, content: Value| json!({"type": "message", "id": "msg_e2e", "role": "assistant", "status": status, "content": content});
    vec![
        json!({"type": "response.created", "response": {"id": "resp_e2e", "status": "in_progress"}}),
        json!({"type": "response.output_item.added", "output_index": 0, "item": message("in_progress", json!([]))}),
        json!({"type": "response.output_text.delta", "item_id": "msg_e2e", "output_index": 0, "content_index": 0,
            "delta": half}),
        json!({"type": "response.output_text.delta", "item_id": "msg_e2e", "output_index": 0, "content_index": 0,
            "delta": rest}),
        json!({"type": "response.output_text.done", "item_id": "msg_e2e", "output_index": 0, "content_index": 0,
            "text": REPLY}),
        json!({"type": "response.output_item.done", "output_index": 0,
            "item": message("completed", json!([{"type": "output_text", "text": REPLY, "annotations": []}]))}),
        json!({"type": "response.completed", "response": {"id": "resp_e2e", "status": "completed", "usage": {
            "input_tokens": 12, "input_tokens_details": null, "output_tokens": 8, "output_tokens_details": null,
            "total_tokens": 20}}}),
    ]
}

async fn answer(
    req: Request<Incoming>,
    log: Arc<Mutex<Vec<Received>>>,
) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(String::from);
    log.lock().unwrap().push(Received {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        authorization: header("authorization"),
        content_encoding: header("content-encoding"),
        body,
    });
    if parts.method != hyper::Method::POST || parts.uri.path() != "/v1/responses" {
        let body = Full::new(Bytes::from_static(b"{\"error\":{\"message\":\"not found\"}}")).boxed();
        return Ok(Response::builder().status(StatusCode::NOT_FOUND).body(body).unwrap());
    }
    // One body chunk per event, so codex really reads a stream.
    let frames = answer_events().into_iter().map(|event| {
        let sse = format!("event: {}\ndata: {event}\n\n", event["type"].as_str().unwrap());
        Ok::<_, Infallible>(Frame::data(Bytes::from(sse)))
    });
    let body = BodyExt::boxed(StreamBody::new(tokio_stream::iter(frames)));
    Ok(Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(body)
        .unwrap())
}

/// `CODEX_HOME/config.toml`: the fake provider, no retries, a short idle timeout, and the
/// features that reach the network on their own (plugin sync runs `git ls-remote` against
/// its plugin repository) or start helpers turned off.
fn codex_config(api: SocketAddr) -> String {
    format!(
        r#"model = "{MODEL}"
model_provider = "fake"
check_for_update_on_startup = false

[analytics]
enabled = false

[features]
plugins = false
remote_plugin = false
apps = false
shell_snapshot = false

[model_providers.fake]
name = "Fake Responses API"
base_url = "http://{api}/v1"
env_key = "FAKE_API_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
stream_idle_timeout_ms = 10000
"#
    )
}

#[tokio::test]
async fn codex_exec_answers_through_the_gateway() {
    let codex = installed_codex();
    let started = Instant::now();
    let api = FakeResponses::start().await;
    let tmp = TempDir::new();
    let (home, work) = (tmp.0.join("home"), tmp.0.join("work"));
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(home.join("config.toml"), codex_config(api.addr)).unwrap();

    let path = format!(
        "{}:{}",
        codex.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let gateway = Gateway::start(&[
        ("CLI_LIST", "codex"),
        ("PATH", &path),
        ("RUN_RESPONSE_TIMEOUT_SECONDS", "25"),
        // CODEX_HOME is of the refused `*HOME` family: the operator opens it for this test.
        ("RUN_ENV_ALLOW", "CODEX_HOME,FAKE_API_KEY"),
    ])
    .await;
    let run = json!({
        "cli": "codex",
        "args": ["exec", "--skip-git-repo-check", "--cd", work.to_str().unwrap()],
        "stdin": PROMPT,
        "env": {"CODEX_HOME": home.to_str().unwrap(), "FAKE_API_KEY": API_KEY},
    });
    let frames = tokio::time::timeout(LIMIT, gateway.run_to_end(run))
        .await
        .expect("codex run ends within 30 s");

    let stderr = frames.stderr();
    assert_eq!(frames.exit(), (0, "exited".to_string()), "codex stderr:\n{stderr}");
    assert_eq!(frames.stdout(), format!("{REPLY}\n"), "codex stderr:\n{stderr}");

    let received = api.received();
    let calls: Vec<(&str, &str)> = received.iter().map(|r| (r.method.as_str(), r.path.as_str())).collect();
    assert_eq!(calls, [("POST", "/v1/responses")], "codex stderr:\n{stderr}");
    let request = &received[0];
    assert_eq!(
        request.authorization.as_deref(),
        Some(format!("Bearer {API_KEY}").as_str())
    );
    assert_eq!(request.content_encoding, None, "request body is compressed");
    let body: Value = serde_json::from_slice(&request.body).unwrap_or_else(|e| {
        panic!(
            "request body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&request.body)
        )
    });
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["stream"], true);
    let input = body["input"].as_array().expect("input is an array");
    let last = input.last().expect("input is not empty");
    assert_eq!(
        (&last["role"], &last["content"]),
        (&json!("user"), &json!([{"type": "input_text", "text": PROMPT}])),
        "the prompt is the last input item: {last}"
    );

    assert!(started.elapsed() < LIMIT, "took {:?}", started.elapsed());
}

/// The texts of every message item of a Responses API request's `input`, as `role: text`.
fn conversation(body: &Bytes) -> Vec<String> {
    let body: Value = serde_json::from_slice(body).expect("request body is JSON");
    body["input"]
        .as_array()
        .expect("input is an array")
        .iter()
        .filter(|item| item["type"] == "message" || item.get("role").is_some())
        .flat_map(|item| {
            let role = item["role"].as_str().unwrap_or("?").to_string();
            item["content"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["text"].as_str())
                .map(move |text| format!("{role}: {text}"))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn a_state_key_lets_codex_exec_resume_the_last_conversation() {
    const SECOND: &str = "And once more, please.";
    let codex = installed_codex();
    let api = FakeResponses::start().await;
    // Not under /tmp (see TempDir): the state homes live in this DATA_DIR.
    let data = common::scratch_data_dir();
    for key in ["conv-1", "conv-2"] {
        let home = Path::new(&data).join("state/_").join(key);
        std::fs::create_dir_all(home.join(".codex")).unwrap();
        std::fs::write(home.join(".codex/config.toml"), codex_config(api.addr)).unwrap();
    }
    let path = format!(
        "{}:{}",
        codex.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let gateway = Gateway::start(&[
        ("CLI_LIST", "codex"),
        ("PATH", &path),
        ("DATA_DIR", &data),
        ("RUN_RESPONSE_TIMEOUT_SECONDS", "25"),
    ])
    .await;
    let env = json!({"FAKE_API_KEY": API_KEY});
    let first = json!({"cli": "codex", "args": ["exec", "--skip-git-repo-check"], "stdin": PROMPT,
        "env": env, "state_key": "conv-1"});
    let frames = tokio::time::timeout(LIMIT, gateway.run_to_end(first))
        .await
        .expect("the first run ends within 30 s");
    assert_eq!(
        frames.exit(),
        (0, "exited".into()),
        "codex stderr:\n{}",
        frames.stderr()
    );
    assert_eq!(frames.stdout(), format!("{REPLY}\n"));

    // A second run with the same key resumes: the model gets the first exchange, then the new prompt.
    let second = json!({"cli": "codex", "args": ["exec", "--skip-git-repo-check", "resume", "--last", SECOND],
        "env": env, "state_key": "conv-1"});
    let frames = tokio::time::timeout(LIMIT, gateway.run_to_end(second))
        .await
        .expect("the second run ends within 30 s");
    assert_eq!(
        frames.exit(),
        (0, "exited".into()),
        "codex stderr:\n{}",
        frames.stderr()
    );
    let received = api.received();
    assert_eq!(received.len(), 2, "{received:?}");
    let first_turn = conversation(&received[0].body);
    let resumed = conversation(&received[1].body);
    let (prompt, reply, second) = (
        format!("user: {PROMPT}"),
        format!("assistant: {REPLY}"),
        format!("user: {SECOND}"),
    );
    assert!(
        first_turn.contains(&prompt) && !first_turn.contains(&reply),
        "{first_turn:?}"
    );
    let at = |text: &String| resumed.iter().position(|t| t == text);
    assert!(
        at(&prompt) < at(&reply) && at(&reply) < at(&second) && at(&prompt).is_some(),
        "the resumed request carries the first conversation, then the new prompt: {resumed:?}"
    );

    // Another key is another conversation: nothing to resume.
    let other = json!({"cli": "codex", "args": ["exec", "--skip-git-repo-check", "resume", "--last", SECOND],
        "env": env, "state_key": "conv-2"});
    let frames = tokio::time::timeout(LIMIT, gateway.run_to_end(other))
        .await
        .expect("the third run ends within 30 s");
    assert!(
        api.received().len() == 2 || !conversation(&api.received()[2].body).contains(&prompt),
        "conv-2 does not see conv-1's conversation: {}",
        frames.stderr()
    );
}
