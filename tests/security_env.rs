//! Request variables that would make a real Node.js CLI run code or write files (GIT_CONFIG_*,
//! NODE_V8_COVERAGE, NODE_REDIRECT_WARNINGS, OPENSSL_CONF) are refused by default, take effect
//! only when the operator lists them in RUN_ENV_ALLOW, and the gateway's credentials never go
//! to a base URL a request chose. Everything runs real processes over real sockets.

mod common;

use std::path::{Path, PathBuf};

use common::{Binary, Gateway};
use serde_json::{Value, json};

/// One attack: the variables a request sets, and the file or directory that appears if it works.
struct Attack {
    name: &'static str,
    env: Value,
    evidence: PathBuf,
}

/// A scratch directory with a git repository in it, and the four attacks aimed at it.
struct Scene {
    dir: tempfile::TempDir,
    attacks: Vec<Attack>,
}

impl Scene {
    fn new() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        run("git", &["init", "-q", repo.to_str().unwrap()]);
        let at = |name: &str| dir.path().join(name);

        // A shared library whose constructor leaves a marker: what OPENSSL_CONF can make Node load.
        let marker = at("openssl-loaded");
        let source = at("evil.c");
        std::fs::write(
            &source,
            format!(
                "#include <stdio.h>\n\
                 __attribute__((constructor)) static void hit(void) {{\n\
                 FILE *f = fopen(\"{}\", \"w\"); if (f) {{ fputs(\"loaded\\n\", f); fclose(f); }} }}\n",
                marker.display()
            ),
        )
        .unwrap();
        let library = at("evil.so");
        run(
            "cc",
            &[
                "-shared",
                "-fPIC",
                "-o",
                library.to_str().unwrap(),
                source.to_str().unwrap(),
            ],
        );
        let openssl_conf = at("openssl.cnf");
        std::fs::write(
            &openssl_conf,
            format!(
                "nodejs_conf = conf_sect\nopenssl_conf = conf_sect\n[conf_sect]\nengines = engine_sect\n\
                 [engine_sect]\nevil = evil_sect\n[evil_sect]\ndynamic_path = {}\ninit = 0\n",
                library.display()
            ),
        )
        .unwrap();

        let fsmonitor = at("fsmonitor-ran");
        let attacks = vec![
            Attack {
                name: "git fsmonitor",
                env: json!({
                    "GIT_CONFIG_COUNT": "1",
                    "GIT_CONFIG_KEY_0": "core.fsmonitor",
                    "GIT_CONFIG_VALUE_0": format!("touch {}; false", fsmonitor.display()),
                }),
                evidence: fsmonitor,
            },
            Attack {
                name: "V8 coverage",
                env: json!({"NODE_V8_COVERAGE": at("coverage")}),
                evidence: at("coverage"),
            },
            Attack {
                name: "redirected warnings",
                env: json!({"NODE_REDIRECT_WARNINGS": at("warnings.txt")}),
                evidence: at("warnings.txt"),
            },
            Attack {
                name: "OpenSSL engine",
                env: json!({"OPENSSL_CONF": openssl_conf}),
                evidence: marker,
            },
        ];
        Scene { dir, attacks }
    }

    fn repo(&self) -> String {
        self.dir.path().join("repo").to_str().unwrap().to_string()
    }

    fn body(&self, env: &Value) -> String {
        json!({"cli": "node-probe", "args": [self.repo()], "env": env}).to_string()
    }
}

fn run(program: &str, args: &[&str]) {
    let out = std::process::Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}

#[tokio::test]
async fn code_loading_and_file_writing_keys_are_refused_by_default_and_nothing_happens() {
    let scene = Scene::new();
    let gw = Gateway::start(&[]).await;
    for attack in &scene.attacks {
        let body = gw.post("/run", &scene.body(&attack.env)).await.assert_error(400);
        let detail = body["detail"].as_str().unwrap();
        let keys: Vec<&String> = attack.env.as_object().unwrap().keys().collect();
        assert!(
            keys.iter().any(|k| detail.contains(k.as_str()))
                && detail.contains("refused by default")
                && detail.contains("RUN_ENV_ALLOW"),
            "{}: {body}",
            attack.name
        );
    }
    // The fixture itself works: it runs git and emits its warning.
    let frames = gw
        .run_to_end(json!({"cli": "node-probe", "args": [scene.repo()]}))
        .await;
    assert_eq!(frames.exit(), (0, "exited".into()), "{:?}", frames.0);
    assert_eq!(frames.stdout(), "git status ran\ndone\n");
    assert!(frames.stderr().contains("node-probe warning"), "{}", frames.stderr());
    for attack in &scene.attacks {
        assert!(
            !exists(&attack.evidence),
            "{}: {} exists",
            attack.name,
            attack.evidence.display()
        );
    }
}

#[tokio::test]
async fn the_same_keys_take_effect_when_the_operator_allows_them_and_nothing_else_passes() {
    let scene = Scene::new();
    let gw = Gateway::start(&[(
        "RUN_ENV_ALLOW",
        "GIT_CONFIG_*,NODE_V8_COVERAGE,NODE_REDIRECT_WARNINGS,OPENSSL_CONF",
    )])
    .await;
    for attack in &scene.attacks {
        // run_to_end panics with the error body unless the run is accepted.
        gw.run_to_end(json!({"cli": "node-probe", "args": [scene.repo()], "env": attack.env}))
            .await;
        // The side effect this test looks for is real: the refusal above is what prevents it.
        assert!(
            exists(&attack.evidence),
            "{}: {} was not created",
            attack.name,
            attack.evidence.display()
        );
    }
    // A key outside the list is refused, even one the default rule lets pass.
    let body = gw
        .post("/run", &scene.body(&json!({"LITELLM_MODEL": "m"})))
        .await
        .assert_error(400);
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("LITELLM_MODEL") && detail.contains("not in RUN_ENV_ALLOW"),
        "{body}"
    );
}

#[tokio::test]
async fn with_an_allow_list_keys_inside_it_pass_and_keys_outside_it_are_refused() {
    let gw = Gateway::start(&[("RUN_ENV_ALLOW", "MY_*,OPENAI_API_KEY")]).await;
    let frames = gw
        .run_to_end(json!({"cli": "show-env", "env": {"MY_FLAG": "on", "OPENAI_API_KEY": "sk-x"}}))
        .await;
    assert_eq!(frames.exit(), (0, "exited".into()));
    let env = frames.stdout();
    assert!(
        env.lines().any(|l| l == "MY_FLAG=on") && env.lines().any(|l| l == "OPENAI_API_KEY=sk-x"),
        "{env}"
    );
    for key in ["ANTHROPIC_API_KEY", "MY", "my_flag"] {
        let body = gw
            .post("/run", &json!({"cli": "show-env", "env": {key: "v"}}).to_string())
            .await
            .assert_error(400);
        let detail = body["detail"].as_str().unwrap();
        assert!(
            detail.contains(key) && detail.contains("not in RUN_ENV_ALLOW"),
            "{key}: {body}"
        );
    }
}

#[tokio::test]
async fn the_allow_list_cannot_open_the_floor() {
    for allow in ["LD_PRELOAD", "MY_A,PATH", "LD_*", "DYLD_INSERT_LIBRARIES"] {
        let err = Gateway::try_start(&[("RUN_ENV_ALLOW", allow)])
            .await
            .err()
            .unwrap_or_else(|| panic!("{allow}: the gateway started"))
            .to_string();
        assert!(
            err.starts_with("RUN_ENV_ALLOW") && err.contains("no request may set"),
            "{allow}: {err}"
        );
    }
}

#[tokio::test]
async fn local_mode_keeps_the_gateway_keys_from_a_base_url_the_request_chose() {
    let op_key = format!("sk-operator-{}", uuid::Uuid::new_v4().simple());
    let openai_key = format!("sk-openai-{}", uuid::Uuid::new_v4().simple());
    let op_url = "http://litellm.operator.invalid:4000";
    let gw = Binary::start(&[
        ("LITELLM_BASE_URL", op_url),
        ("LITELLM_API_KEY", &op_key),
        ("OPENAI_API_KEY", &openai_key),
    ])
    .await;
    let gw = &gw;
    let env_of = |env: Value| {
        let body = json!({"cli": "show-env", "env": env});
        async move {
            let frames = gw.run_to_end(body).await;
            assert_eq!(frames.exit(), (0, "exited".into()));
            frames.stdout()
        }
    };

    // The operator's server: the CLI has the gateway's keys (so the test can see them).
    for env in [json!({}), json!({"LITELLM_BASE_URL": op_url, "MY_FLAG": "1"})] {
        let seen = env_of(env.clone()).await;
        assert!(
            seen.contains(&format!("LITELLM_API_KEY={op_key}\n"))
                && seen.contains(&format!("OPENAI_API_KEY={openai_key}\n")),
            "{env}: {seen}"
        );
    }
    // Another server: none of the gateway's keys.
    for env in [
        json!({"OPENAI_BASE_URL": "http://attacker.invalid"}),
        json!({"LITELLM_BASE_URL": "http://attacker.invalid"}),
        json!({"ANTHROPIC_BASE_URL": "http://attacker.invalid"}),
        json!({"OPENAI_API_BASE": "http://attacker.invalid"}),
    ] {
        let seen = env_of(env.clone()).await;
        assert!(
            !seen.contains(&op_key) && !seen.contains(&openai_key),
            "{env}: the gateway's key reached a CLI pointed at the caller's server:\n{seen}"
        );
        assert!(seen.contains("=http://attacker.invalid\n"), "{seen}");
    }
    // Another server with the request's own key: that key, and still none of the gateway's.
    let seen = env_of(json!({"OPENAI_BASE_URL": "http://attacker.invalid", "OPENAI_API_KEY": "sk-mine"})).await;
    assert!(seen.contains("OPENAI_API_KEY=sk-mine\n"), "{seen}");
    assert!(!seen.contains(&op_key) && !seen.contains(&openai_key), "{seen}");
}
