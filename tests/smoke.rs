//! The HTTP half of `./test.sh smoke`: the gateway *image* in a container, with the host's Docker
//! socket, running the five CLIs of the `cligate-test-cli` image as sibling containers. test.sh
//! builds the images, starts that container and runs these tests against it
//! (`cargo test --test smoke -- --ignored`, with `CLIGATE_SMOKE_URL`,
//! `CLIGATE_SMOKE_LITELLM_BASE_URL` and `CLIGATE_SMOKE_LITELLM_API_KEY`); what needs a shell
//! (building, `docker exec`, leftovers, the compose file, the entrypoint alone) stays there.
//! Without that container they are ignored by a plain `cargo test`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{EndReason, Frame, Frames, RunStream, request};
use serde_json::{Value, json};

/// What test.sh tells the tests about the gateway it started.
struct Smoke {
    addr: SocketAddr,
    base_url: String,
    key: String,
}

fn smoke() -> Smoke {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: these tests are run by ./test.sh smoke"))
    };
    let url = var("CLIGATE_SMOKE_URL");
    let addr = url
        .strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("CLIGATE_SMOKE_URL={url} is not http://ADDRESS:PORT"));
    Smoke {
        addr,
        base_url: var("CLIGATE_SMOKE_LITELLM_BASE_URL"),
        key: var("CLIGATE_SMOKE_LITELLM_API_KEY"),
    }
}

fn session(what: &str) -> String {
    format!("smoke-{what}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// A run read to its end within a minute, checked as every finished stream must be: 200, the
/// session first, one exit last with `code` and reason `exited`, the CLI's stderr in frames.
async fn run(s: &Smoke, body: Value, code: i64) -> Frames {
    let sid = body["session_id"].as_str().unwrap().to_string();
    let stream = RunStream::open(s.addr, body.to_string().into_bytes(), &[]).await;
    assert_eq!(stream.status, 200, "{body}");
    let frames = tokio::time::timeout(Duration::from_secs(60), stream.collect())
        .await
        .unwrap_or_else(|_| panic!("{sid}: no end within 60 s"));
    assert_eq!(frames.session(), sid, "{frames:?}");
    assert_eq!(frames.exit(), (code, "exited".to_string()), "{frames:?}");
    assert!(
        frames.stderr().contains("this line goes to stderr"),
        "{sid}: the CLI's stderr is missing: {frames:?}"
    );
    frames
}

/// The fake CLI prints one fact per line; each `lines` entry must be one of them.
fn assert_lines(out: &str, lines: &[&str]) {
    for line in lines {
        assert!(out.lines().any(|l| l == *line), "no line {line:?} in:\n{out}");
    }
}

#[tokio::test]
#[ignore = "run by ./test.sh smoke against the gateway container it starts"]
async fn health_readiness_and_the_catalog() {
    let s = smoke();
    let get = |path: &'static str| request(s.addr, "GET", path, None, &[]);
    assert_eq!(get("/healthz").await.body, "ok");
    let ready = get("/readyz").await;
    assert_eq!(ready.status, 200, "{:?}", ready.body);
    assert_eq!(
        get("/clis").await.json(),
        json!({"clis": ["claude", "codex", "gemini", "opencode", "qwen"], "count": 5})
    );
    let models = get("/models").await.json();
    let mut names: Vec<&str> = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!((names, &models["count"]), (vec!["auto", "gpt-4o"], &json!(2)));
}

#[tokio::test]
#[ignore = "run by ./test.sh smoke against the gateway container it starts"]
async fn each_cli_runs_in_a_sibling_container_with_its_settings() {
    let s = smoke();
    let (base, key) = (s.base_url.as_str(), s.key.as_str());
    for cli in ["codex", "claude", "gemini", "opencode", "qwen"] {
        let body = json!({
            "cli": cli,
            "args": ["--model", "gpt-4o"],
            "stdin": format!("hello {cli}"),
            "env": {"CLIGATE_SMOKE": format!("yes-{cli}")},
            "session_id": session(cli),
        });
        let out = run(&s, body, 0).await.stdout();
        assert_lines(
            &out,
            &[
                &format!("FAKE_CLI={cli}"),
                &format!("STDIN=hello {cli}"),
                &format!("ENV CLIGATE_SMOKE=yes-{cli}"),
                &format!("ENV CLI_PROVIDER_NAME={cli}"),
                &format!("ENV LITELLM_BASE_URL={base}"),
                &format!("ENV LITELLM_API_KEY={key}"),
                "ENV LITELLM_MODEL=gpt-4o",
                "DONE",
            ],
        );
        match cli {
            "codex" => {
                assert_lines(
                    &out,
                    &[
                        "ARGV=exec --skip-git-repo-check --model gpt-4o",
                        "FILE /home/cli/.codex/config.toml",
                        r#"model_provider = "litellm""#,
                        r#"model = "gpt-4o""#,
                        "[model_providers.litellm]",
                        &format!(r#"base_url = "{base}/v1""#),
                        r#"env_key = "LITELLM_API_KEY""#,
                        r#"wire_api = "responses""#,
                    ],
                );
                assert!(
                    !out.lines().any(|l| l.ends_with(&format!(" = \"{key}\""))),
                    "the key is written into config.toml:\n{out}"
                );
            }
            "claude" => assert_lines(
                &out,
                &[
                    "ARGV=--model gpt-4o",
                    &format!("ENV ANTHROPIC_BASE_URL={base}"),
                    &format!("ENV ANTHROPIC_AUTH_TOKEN={key}"),
                    "ENV ANTHROPIC_MODEL=gpt-4o",
                    "ENV ANTHROPIC_DEFAULT_HAIKU_MODEL=gpt-4o",
                ],
            ),
            "gemini" => {
                assert_lines(
                    &out,
                    &[
                        "ARGV=--model gpt-4o",
                        &format!("ENV GOOGLE_GEMINI_BASE_URL={base}"),
                        &format!("ENV GEMINI_API_KEY={key}"),
                        "ENV GEMINI_MODEL=gpt-4o",
                    ],
                );
                assert!(out.contains(r#""selectedType": "gemini-api-key""#), "{out}");
            }
            "opencode" => {
                assert_lines(
                    &out,
                    &[
                        "ARGV=run --model litellm/gpt-4o",
                        "ARGC=3",
                        "ENV OPENCODE_CONFIG=/home/cli/.config/opencode/opencode.json",
                        r#"      "npm": "@ai-sdk/openai-compatible","#,
                        &format!(r#"        "baseURL": "{base}/v1","#),
                        r#"        "apiKey": "{env:LITELLM_API_KEY}""#,
                        r#"        "gpt-4o": { "name": "gpt-4o" }"#,
                        r#"  "model": "litellm/gpt-4o","#,
                    ],
                );
                assert!(out.contains(r#""litellm": {"#), "{out}");
            }
            "qwen" => assert_lines(
                &out,
                &[
                    "ARGV=--model gpt-4o",
                    &format!("ENV OPENAI_BASE_URL={base}/v1"),
                    &format!("ENV OPENAI_API_KEY={key}"),
                    "ENV OPENAI_MODEL=gpt-4o",
                ],
            ),
            _ => unreachable!(),
        }
    }
}

#[tokio::test]
#[ignore = "run by ./test.sh smoke against the gateway container it starts"]
async fn arguments_pass_through_and_the_exit_code_is_the_clis() {
    let s = smoke();
    // A first argument the entrypoint does not rewrite passes through.
    let body = json!({"cli": "codex", "args": ["--version"], "stdin": "", "session_id": session("version")});
    assert_lines(&run(&s, body, 0).await.stdout(), &["ARGV=--version"]);
    let body =
        json!({"cli": "qwen", "args": [], "stdin": "x", "env": {"FAKE_EXIT": "3"}, "session_id": session("exit")});
    run(&s, body, 3).await;
}

#[tokio::test]
#[ignore = "run by ./test.sh smoke against the gateway container it starts"]
async fn stop_ends_a_running_session_and_its_container() {
    let s = smoke();
    let sid = session("stop");
    let body = json!({"cli": "claude", "args": [], "stdin": "x", "env": {"FAKE_SLEEP": "60"}, "session_id": sid});
    let mut stream = RunStream::open(s.addr, body.to_string().into_bytes(), &[]).await;
    assert_eq!(stream.status, 200);
    tokio::time::timeout(Duration::from_secs(20), stream.stdout_until("SLEEPING="))
        .await
        .expect("the long session starts within 20 s");
    let stop = request(s.addr, "POST", &format!("/sessions/{sid}/stop"), None, &[]).await;
    assert!(stop.status.is_success(), "{stop:?}");
    let rest = tokio::time::timeout(Duration::from_secs(20), stream.collect())
        .await
        .expect("the stream ends within 20 s of the stop");
    assert!(
        matches!(
            rest.0.last(),
            Some(Frame::Exit {
                reason: EndReason::Stopped,
                ..
            })
        ),
        "{rest:?}"
    );
    assert!(
        !rest.stdout().lines().any(|l| l == "DONE"),
        "the CLI ran to its end: {rest:?}"
    );
}

/// `./test.sh cli-env`: one real CLI of the `cligate-cli-env` image (`CLIGATE_SMOKE_CLI`) answers
/// through the gateway with what the stand-in LiteLLM said; test.sh checks what it was asked.
#[tokio::test]
#[ignore = "run by ./test.sh cli-env against the gateway container it starts"]
async fn a_real_cli_answers_through_the_gateway() {
    let s = smoke();
    let cli = std::env::var("CLIGATE_SMOKE_CLI").expect("CLIGATE_SMOKE_CLI names the CLI");
    let sid = session(&cli);
    let body = json!({"cli": cli, "args": ["--model", "gpt-4o"], "stdin": "Say hello.", "session_id": sid});
    let stream = RunStream::open(s.addr, body.to_string().into_bytes(), &[]).await;
    assert_eq!(stream.status, 200);
    let frames = tokio::time::timeout(Duration::from_secs(180), stream.collect())
        .await
        .expect("the run ends within 180 s");
    assert_eq!(frames.exit(), (0, "exited".to_string()), "stderr:\n{}", frames.stderr());
    assert_eq!(
        frames.stdout().replace(['\r', '\n'], ""),
        "FAKE-ANSWER-42",
        "stdout is the model's answer only; stderr:\n{}",
        frames.stderr()
    );
}
