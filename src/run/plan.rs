//! The contract's rules about a run's argv and environment that hold whatever executes it:
//! which variables are credentials, when a request points a CLI at another server (and so gets
//! none of the operator's), how the model is inferred. Each executor's `plan` builds its
//! [`Launch`](crate::exec::Launch) from these; the tests below check the plans of both.

use super::request::RunSpec;
use crate::config::Config;

/// Gateway settings a launched process must not inherit: they are the gateway's own secrets.
pub const GATEWAY_SECRETS: &[&str] = &["AUTH_TOKENS", "AUTH_TOKENS_FILE"];

/// Ends of variable names that point a CLI at a model server (the image's entrypoint maps
/// `LITELLM_*` onto CLI-specific ones such as `OPENAI_BASE_URL` or `ANTHROPIC_BASE_URL`).
pub const BASE_URL_SUFFIXES: &[&str] = &["_BASE_URL", "_API_BASE", "_API_URL", "_ENDPOINT"];

/// Ends of variable names holding a credential a CLI sends to its model server.
pub const CREDENTIAL_SUFFIXES: &[&str] = &["_API_KEY", "_AUTH_TOKEN", "_API_TOKEN"];

/// Whether `key` (any case) names a credential a CLI sends to its model server.
pub fn is_credential(key: &str) -> bool {
    let upper = key.to_ascii_uppercase();
    CREDENTIAL_SUFFIXES.iter().any(|s| upper.ends_with(s))
}

/// Whether the request points the CLI at a server other than the operator's: a
/// `LITELLM_BASE_URL` other than the operator's, or any other base-URL-like variable. Such a
/// run brings its own credentials or gets none: the operator's must never travel to it.
pub fn redirects(spec: &RunSpec, config: &Config) -> bool {
    spec.env.iter().any(|(key, value)| {
        if key == "LITELLM_BASE_URL" {
            return config.litellm_base_url.as_deref() != Some(value.as_str());
        }
        let upper = key.to_ascii_uppercase();
        BASE_URL_SUFFIXES.iter().any(|s| upper.ends_with(s))
    })
}

/// The model named by `--model X`, `-m X` or `--model=X` (the first of them).
pub fn model_from_args(args: &[String]) -> Option<&str> {
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--model" || arg == "-m" {
            return it.next().map(String::as_str);
        }
        if let Some(model) = arg.strip_prefix("--model=") {
            return Some(model);
        }
    }
    None
}

/// `args` without any model flag or its value.
pub fn strip_model_flags(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--model" || arg == "-m" {
            it.next();
        } else if !arg.starts_with("--model=") {
            out.push(arg.clone());
        }
    }
    out
}

/// `auto` (any case) means the first configured model that is not `auto`; `None` when there is
/// no such model.
pub fn resolve_auto<'a>(model: &'a str, models: &'a [String]) -> Option<&'a str> {
    if model.eq_ignore_ascii_case("auto") {
        models
            .iter()
            .map(String::as_str)
            .find(|m| !m.eq_ignore_ascii_case("auto"))
    } else {
        Some(model)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::*;
    use crate::exec::Launch;

    /// The launch the configured executor plans.
    fn plan(spec: &RunSpec, config: &Config, run_id: &str) -> Launch {
        crate::exec::for_config(&Arc::new(config.clone()))
            .expect("an executor")
            .plan(spec, run_id)
    }

    fn config(extra: &[(&str, &str)]) -> Config {
        let mut vars: Vec<(String, String)> = vec![
            ("CLI_LIST".into(), "codex,opencode,claude".into()),
            ("CODEX_DOCKER_IMAGE".into(), "cli-image:1".into()),
            ("DOCKER_BIN".into(), "/bin/sh".into()),
        ];
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Config::from_vars(vars).unwrap()
    }

    fn spec(cli: &str, args: &[&str], env: &[(&str, &str)]) -> RunSpec {
        RunSpec {
            cli: cli.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            stdin: String::new(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            session_id: "s-1".into(),
            workspace: None,
            state_key: None,
            place: Default::default(),
        }
    }

    fn env_of(l: &Launch) -> Vec<(&str, &str)> {
        l.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn model_inference_takes_the_first_flag_of_any_form() {
        assert_eq!(model_from_args(&strings(&["--model", "a", "-m", "b"])), Some("a"));
        assert_eq!(model_from_args(&strings(&["x", "-m", "b", "--model=c"])), Some("b"));
        assert_eq!(model_from_args(&strings(&["--model=c", "--model", "d"])), Some("c"));
        assert_eq!(model_from_args(&strings(&["--model"])), None);
        assert_eq!(model_from_args(&strings(&["--models", "x", "-mx"])), None);
    }

    #[test]
    fn local_mode_runs_the_cli_with_args_verbatim() {
        let c = Config::from_vars([("CLI_LIST".to_string(), "codex".to_string())]).unwrap();
        let l = plan(
            &spec("codex", &["--model", "m", "a b", "$(x)"], &[("K", "V")]),
            &c,
            "r1",
        );
        assert_eq!(l.program, PathBuf::from("codex"));
        assert_eq!(l.args, strings(&["--model", "m", "a b", "$(x)"]));
        assert_eq!(env_of(&l), [("K", "V")]);
        assert_eq!(l.container, None);
        assert_eq!(l.model.as_deref(), Some("m"));
    }

    #[test]
    fn docker_argv_is_run_rm_interactive_named_labelled_with_env_names_only() {
        let c = config(&[("LITELLM_BASE_URL", "http://llm"), ("LITELLM_API_KEY", "sk-secret")]);
        let l = plan(
            &spec("codex", &["--model", "gpt-4", "exec"], &[("EXTRA", "v")]),
            &c,
            "r1",
        );
        assert_eq!(l.program, PathBuf::from("/bin/sh"));
        assert_eq!(
            l.args,
            strings(&[
                "run",
                "--rm",
                "-i",
                "--init",
                "--name",
                "cligate-r1",
                "--label",
                "cligate.instance=cligate",
                "--label",
                "cligate.session=s-1",
                "--label",
                "cligate.run=r1",
                "--security-opt",
                "no-new-privileges",
                "--pids-limit=1024",
                "-e",
                "CLI_PROVIDER_NAME",
                "-e",
                "EXTRA",
                "-e",
                "LITELLM_API_KEY",
                "-e",
                "LITELLM_BASE_URL",
                "-e",
                "LITELLM_MODEL",
                "cli-image:1",
                "codex",
                "--model",
                "gpt-4",
                "exec",
            ])
        );
        assert!(
            !l.args
                .iter()
                .any(|a| a.contains("sk-secret") || a.contains("http://llm"))
        );
        assert_eq!(
            env_of(&l),
            [
                ("CLI_PROVIDER_NAME", "codex"),
                ("EXTRA", "v"),
                ("LITELLM_API_KEY", "sk-secret"),
                ("LITELLM_BASE_URL", "http://llm"),
                ("LITELLM_MODEL", "gpt-4"),
            ]
        );
        assert_eq!(l.container.as_deref(), Some("cligate-r1"));
    }

    #[test]
    fn request_env_overrides_litellm_defaults_but_not_the_provider_name() {
        let c = config(&[("LITELLM_BASE_URL", "http://default"), ("LITELLM_API_KEY", "k0")]);
        let l = plan(
            &spec(
                "claude",
                &[],
                &[("LITELLM_BASE_URL", "http://mine"), ("CLI_PROVIDER_NAME", "evil")],
            ),
            &c,
            "r",
        );
        assert_eq!(l.env["LITELLM_BASE_URL"], "http://mine");
        // Was "k0" (the operator's key went to the caller's server); now the caller's URL gets
        // no operator key.
        assert!(!l.env.contains_key("LITELLM_API_KEY"), "{:?}", l.env);
        assert_eq!(l.env["CLI_PROVIDER_NAME"], "claude");
    }

    #[test]
    fn the_operator_key_goes_only_with_the_operator_base_url() {
        let c = config(&[("LITELLM_BASE_URL", "http://llm"), ("LITELLM_API_KEY", "sk-op")]);
        let key_of = |env: &[(&str, &str)]| {
            let l = plan(&spec("codex", &[], env), &c, "r");
            assert!(l.env_remove.is_empty(), "docker mode removes nothing: {l:?}");
            let key = l.env.get("LITELLM_API_KEY").cloned();
            assert_eq!(
                key.is_some(),
                l.args.contains(&"LITELLM_API_KEY".to_string()),
                "-e names exactly the variables set: {l:?}"
            );
            key
        };
        assert_eq!(key_of(&[]).as_deref(), Some("sk-op"));
        assert_eq!(key_of(&[("LITELLM_BASE_URL", "http://llm")]).as_deref(), Some("sk-op"));
        assert_eq!(
            key_of(&[("LITELLM_MODEL", "m"), ("MY_FLAG", "1")]).as_deref(),
            Some("sk-op")
        );
        for redirect in [
            "LITELLM_BASE_URL",
            "OPENAI_BASE_URL",
            "ANTHROPIC_BASE_URL",
            "GOOGLE_GEMINI_BASE_URL",
            "OPENAI_API_BASE",
            "AZURE_OPENAI_ENDPOINT",
            "MY_API_URL",
            "openai_base_url",
        ] {
            assert_eq!(key_of(&[(redirect, "http://attacker")]), None, "{redirect}");
            assert_eq!(
                key_of(&[(redirect, "http://attacker"), ("LITELLM_API_KEY", "sk-own")]).as_deref(),
                Some("sk-own"),
                "{redirect}"
            );
        }
        // Even the operator's URL under another name gets no key: only LITELLM_BASE_URL is
        // compared with the operator's.
        assert_eq!(key_of(&[("OPENAI_BASE_URL", "http://llm")]), None);
        // No operator URL: any LITELLM_BASE_URL is the caller's own.
        let c = config(&[("LITELLM_API_KEY", "sk-op")]);
        let l = plan(&spec("codex", &[], &[("LITELLM_BASE_URL", "http://x")]), &c, "r");
        assert!(!l.env.contains_key("LITELLM_API_KEY"));
    }

    #[test]
    fn local_mode_drops_the_gateway_credentials_when_the_request_sets_a_base_url() {
        let mut c = Config::from_vars([
            ("CLI_LIST".to_string(), "codex".to_string()),
            ("LITELLM_BASE_URL".to_string(), "http://llm".to_string()),
            ("LITELLM_API_KEY".to_string(), "sk-op".to_string()),
            ("OPENAI_API_KEY".to_string(), "sk-openai".to_string()),
            ("ANTHROPIC_AUTH_TOKEN".to_string(), "tok".to_string()),
        ])
        .unwrap();
        assert_eq!(
            c.gateway_credentials,
            ["ANTHROPIC_AUTH_TOKEN", "LITELLM_API_KEY", "OPENAI_API_KEY"]
        );
        let removed = |env: &[(&str, &str)]| plan(&spec("codex", &[], env), &c, "r").env_remove;
        assert!(removed(&[]).is_empty());
        assert!(removed(&[("LITELLM_BASE_URL", "http://llm"), ("OPENAI_API_KEY", "x")]).is_empty());
        assert_eq!(
            removed(&[("OPENAI_BASE_URL", "http://attacker")]),
            ["ANTHROPIC_AUTH_TOKEN", "LITELLM_API_KEY", "OPENAI_API_KEY"]
        );
        // The request's own credentials are its to send.
        assert_eq!(
            removed(&[("LITELLM_BASE_URL", "http://attacker"), ("OPENAI_API_KEY", "mine")]),
            ["ANTHROPIC_AUTH_TOKEN", "LITELLM_API_KEY"]
        );
        c.gateway_credentials.clear();
        let l = plan(&spec("codex", &[], &[("OPENAI_BASE_URL", "http://attacker")]), &c, "r");
        assert!(l.env_remove.is_empty());
    }

    #[test]
    fn model_comes_from_request_env_then_args() {
        let c = config(&[]);
        let l = plan(
            &spec("codex", &["-m", "from-args"], &[("LITELLM_MODEL", "from-env")]),
            &c,
            "r",
        );
        assert_eq!(l.env["LITELLM_MODEL"], "from-env");
        let l = plan(&spec("codex", &["--model=eq"], &[]), &c, "r");
        assert_eq!(l.env["LITELLM_MODEL"], "eq");
        let l = plan(&spec("codex", &["exec"], &[]), &c, "r");
        assert!(!l.env.contains_key("LITELLM_MODEL"));
        assert!(!l.args.contains(&"LITELLM_MODEL".to_string()));
    }

    #[test]
    fn auto_resolves_to_the_first_real_model_or_is_left_out() {
        let c = config(&[("MODEL_LIST", "AUTO, gpt-4o, o3")]);
        let l = plan(&spec("codex", &["--model", "Auto"], &[]), &c, "r");
        assert_eq!(l.env["LITELLM_MODEL"], "gpt-4o");
        assert_eq!(l.model.as_deref(), Some("gpt-4o"));
        let l = plan(&spec("codex", &[], &[("LITELLM_MODEL", "auto")]), &c, "r");
        assert_eq!(l.env["LITELLM_MODEL"], "gpt-4o");

        let c = config(&[("MODEL_LIST", "auto")]);
        let l = plan(
            &spec("codex", &["--model", "auto"], &[("LITELLM_MODEL", "auto")]),
            &c,
            "r",
        );
        assert!(!l.env.contains_key("LITELLM_MODEL"));
        assert!(!l.args.contains(&"LITELLM_MODEL".to_string()));
        // The args themselves are untouched for CLIs other than opencode.
        assert!(l.args.ends_with(&strings(&["codex", "--model", "auto"])));
    }

    #[test]
    fn opencode_loses_its_model_flags_but_keeps_the_model() {
        let c = config(&[]);
        let l = plan(
            &spec(
                "opencode",
                &["run", "--model", "a", "-m", "b", "--model=c", "x", "--model"],
                &[],
            ),
            &c,
            "r",
        );
        assert!(l.args.ends_with(&strings(&["cli-image:1", "opencode", "run", "x"])));
        assert_eq!(l.env["LITELLM_MODEL"], "a");
    }

    #[test]
    fn operator_options_come_before_the_image_and_request_cannot_add_any() {
        let c = config(&[("DOCKER_NETWORK", "llm-net"), ("DOCKER_MEMORY", "2g")]);
        let l = plan(&spec("codex", &["--privileged", "-v", "/:/host"], &[]), &c, "r");
        let image = l.args.iter().position(|a| a == "cli-image:1").unwrap();
        assert!(l.args[..image].contains(&"--network=llm-net".to_string()));
        assert!(l.args[..image].contains(&"--memory=2g".to_string()));
        assert!(!l.args[..image].iter().any(|a| a == "--privileged" || a == "-v"));
        assert_eq!(
            l.args[image + 1..],
            strings(&["codex", "--privileged", "-v", "/:/host"])
        );
    }

    #[test]
    fn a_branch_run_works_in_its_worktree_and_a_state_key_gives_it_a_home() {
        use crate::workspace::{Dir, Place};
        let dir = |local: &str, host: &str| Dir {
            local: local.into(),
            host: host.into(),
        };
        let mut s = spec("codex", &["exec"], &[]);
        s.place = Place {
            workdir: Some(dir("/data/ws/p/trees/b", "/srv/ws/p/trees/b")),
            home: Some(dir("/data/state/_/k", "/data/state/_/k")),
        };
        // Docker: the host's paths are mounted, the worktree is the working directory and HOME
        // is the mounted home; the options come before the image.
        let l = plan(&s, &config(&[]), "r");
        let image = l.args.iter().position(|a| a == "cli-image:1").unwrap();
        let options = &l.args[..image];
        for pair in [
            ["-v", "/srv/ws/p/trees/b:/workspace"],
            ["-w", "/workspace"],
            ["-v", "/data/state/_/k:/cligate-home"],
        ] {
            assert!(options.windows(2).any(|w| w == pair), "{pair:?} in {options:?}");
        }
        assert_eq!(l.env["HOME"], "/cligate-home");
        assert_eq!(l.env["CODEX_HOME"], "/cligate-home/.codex");
        assert!(options.windows(2).any(|w| w == ["-e", "HOME"]));
        assert_eq!(l.cwd, None);
        // Local: the worktree here is the working directory, the home here is HOME.
        let c = Config::from_vars([("CLI_LIST".to_string(), "codex".to_string())]).unwrap();
        let l = plan(&s, &c, "r");
        assert_eq!(l.cwd.as_deref(), Some(std::path::Path::new("/data/ws/p/trees/b")));
        assert_eq!(l.env["HOME"], "/data/state/_/k");
        assert_eq!(l.env["XDG_CONFIG_HOME"], "/data/state/_/k/.config");
        assert_eq!(l.args, ["exec"]);
    }
}
