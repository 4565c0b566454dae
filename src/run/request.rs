//! The `POST /run` body as clients send it, and its validation into a [`RunSpec`] that the rest
//! of the gateway can trust: an allow-listed CLI, well-formed env keys that [`env_rule`] admits
//! (nothing that changes which program runs, what code it loads or where it talks to).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::env_rule;
use crate::config::Config;
use crate::workspace::branch::{check_branch, check_name};
use crate::workspace::{Place, WorkspaceSpec};

/// The request body. Unknown fields are ignored, as the reference service did.
#[derive(Debug, Deserialize)]
pub struct RunRequest {
    pub cli: String,
    #[serde(default)]
    pub args: Option<Vec<String>>,
    #[serde(default)]
    pub stdin: Option<String>,
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub session_id: Option<String>,
    /// Detached runs only (`POST /runs`): where the final record is delivered.
    #[serde(default)]
    pub callback_url: Option<String>,
    /// Run on a branch of one of the operator's projects (see [`crate::workspace`]).
    #[serde(default)]
    pub workspace: Option<WorkspaceRequest>,
    /// A persistent home for the CLI, shared by the runs that name it (one at a time).
    #[serde(default)]
    pub state_key: Option<String>,
}

/// The `workspace` field as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceRequest {
    pub project: String,
    pub branch: String,
    #[serde(default)]
    pub base: Option<String>,
    #[serde(default)]
    pub commit: Option<bool>,
    #[serde(default)]
    pub commit_message: Option<String>,
    #[serde(default)]
    pub push: Option<bool>,
}

/// Longest commit message accepted.
const MAX_COMMIT_MESSAGE: usize = 16 * 1024;

impl WorkspaceRequest {
    fn validate(self, config: &Config) -> Result<WorkspaceSpec, String> {
        if config.projects.0.is_empty() {
            return Err("workspace: this gateway has no projects (PROJECTS_FILE is not set)".into());
        }
        let project = config.projects.get(&self.project).ok_or_else(|| {
            format!(
                "workspace: project '{}' is not configured; known: {}",
                self.project.escape_debug(),
                config.projects.0.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        check_branch(&self.branch).map_err(|e| format!("workspace: {e}"))?;
        let base = self.base.unwrap_or_else(|| project.base.clone());
        check_branch(&base).map_err(|e| format!("workspace: base {e}"))?;
        if let Some(m) = &self.commit_message
            && (m.len() > MAX_COMMIT_MESSAGE || m.contains('\0'))
        {
            return Err(format!(
                "workspace: commit_message must be at most {MAX_COMMIT_MESSAGE} bytes without NUL"
            ));
        }
        Ok(WorkspaceSpec {
            project: self.project,
            branch: self.branch,
            base,
            commit: self.commit.unwrap_or(true),
            commit_message: self.commit_message.filter(|m| !m.trim().is_empty()),
            push: self.push.unwrap_or(false),
        })
    }
}

/// A request that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    pub cli: String,
    pub args: Vec<String>,
    pub stdin: String,
    pub env: BTreeMap<String, String>,
    pub session_id: String,
    pub workspace: Option<WorkspaceSpec>,
    pub state_key: Option<String>,
    /// The run's working directory and home, filled in by the run service.
    pub place: Place,
}

/// Longest accepted session id.
const MAX_SESSION_ID: usize = 200;

/// Whether `key` is a portable environment variable name.
pub fn valid_env_key(key: &str) -> bool {
    let mut bytes = key.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl RunRequest {
    /// Checks the request against the configuration. The error is a message for the client.
    pub fn validate(self, config: &Config) -> Result<RunSpec, String> {
        if !config.clis.contains(&self.cli) {
            return Err(format!(
                "cli '{}' is not allowed; allowed: {}",
                self.cli.escape_debug(),
                config.clis.join(", ")
            ));
        }
        let args = self.args.unwrap_or_default();
        if args.iter().any(|a| a.contains('\0')) {
            return Err("args may not contain NUL characters".into());
        }
        let env = self.env.unwrap_or_default();
        for (key, value) in &env {
            if !valid_env_key(key) {
                return Err(format!(
                    "env key '{}' is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)",
                    key.escape_debug()
                ));
            }
            env_rule::check(key, config)?;
            if value.contains('\0') {
                return Err(format!("env value of '{key}' may not contain NUL characters"));
            }
        }
        let session_id = match self.session_id.filter(|s| !s.is_empty()) {
            // Time-ordered, like run ids (see `crate::runlog::fresh_id`): the session index
            // is appended at its end.
            None => uuid::Uuid::now_v7().to_string(),
            Some(id) => {
                if id.len() > MAX_SESSION_ID || id.chars().any(|c| c.is_control() || c == '/') {
                    return Err(format!(
                        "session_id must be 1 to {MAX_SESSION_ID} bytes without '/' or control characters"
                    ));
                }
                id
            }
        };
        let workspace = self.workspace.map(|w| w.validate(config)).transpose()?;
        if let Some(key) = &self.state_key {
            check_name("state_key", key)?;
        }
        Ok(RunSpec {
            cli: self.cli,
            args,
            stdin: self.stdin.unwrap_or_default(),
            env,
            session_id,
            workspace,
            state_key: self.state_key,
            place: Place::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(docker: bool) -> Config {
        let mut vars = vec![("CLI_LIST".to_string(), "codex,opencode".to_string())];
        if docker {
            vars.push(("CODEX_DOCKER_IMAGE".into(), "img".into()));
            vars.push(("DOCKER_BIN".into(), "/bin/sh".into()));
        }
        Config::from_vars(vars).unwrap()
    }

    fn request(json: serde_json::Value) -> RunRequest {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn minimal_request_gets_defaults_and_a_uuid() {
        let spec = request(serde_json::json!({"cli": "codex"}))
            .validate(&config(false))
            .unwrap();
        assert!(spec.args.is_empty() && spec.stdin.is_empty() && spec.env.is_empty());
        assert!(uuid::Uuid::parse_str(&spec.session_id).is_ok());
        let spec = request(serde_json::json!({"cli": "codex", "session_id": "", "args": null}))
            .validate(&config(false))
            .unwrap();
        assert_eq!(spec.session_id.len(), 36);
    }

    #[test]
    fn cli_must_be_an_exact_allow_list_entry() {
        for cli in ["/usr/bin/codex", "./codex", "codex ", "CODEX", "sh", ""] {
            let err = request(serde_json::json!({"cli": cli}))
                .validate(&config(false))
                .unwrap_err();
            assert!(err.contains("not allowed"), "{cli}: {err}");
        }
    }

    #[test]
    fn env_keys_must_be_names() {
        for key in ["", "1A", "A-B", "A B", "A=B", "é"] {
            let err = request(serde_json::json!({"cli": "codex", "env": {key: "v"}}))
                .validate(&config(false))
                .unwrap_err();
            assert!(err.contains("not a valid variable name"), "{key}: {err}");
        }
        assert!(
            request(serde_json::json!({"cli": "codex", "env": {"_A1": "v"}}))
                .validate(&config(false))
                .is_ok()
        );
    }

    #[test]
    fn loader_runtime_and_client_keys_are_refused_in_both_modes() {
        for docker in [false, true] {
            for key in [
                "PATH",
                "path",
                "LD_PRELOAD",
                "NODE_OPTIONS",
                "DYLD_INSERT_LIBRARIES",
                "GIT_CONFIG_COUNT",
                "OPENSSL_CONF",
                "HOME",
                "https_proxy",
            ] {
                let err = request(serde_json::json!({"cli": "codex", "env": {key: "x"}}))
                    .validate(&config(docker))
                    .unwrap_err();
                assert!(err.contains("env key") && err.contains("RUN_ENV_ALLOW"), "{key}: {err}");
            }
        }
        assert!(
            request(serde_json::json!({"cli": "codex", "env": {"DOCKER_HOST": "x"}}))
                .validate(&config(true))
                .is_err()
        );
        // Model settings and credentials pass in both modes. (NODE_OPTIONS used to pass in docker
        // mode; it now acts inside the container just as GIT_* does, and is refused.)
        for docker in [false, true] {
            assert!(
                request(serde_json::json!({"cli": "codex", "env": {"OPENAI_API_KEY": "k", "LITELLM_MODEL": "m", "LITELLM_BASE_URL": "u"}}))
                    .validate(&config(docker))
                    .is_ok()
            );
        }
    }

    #[test]
    fn name_check_comes_before_the_rule_and_nul_after_it() {
        let err = request(serde_json::json!({"cli": "codex", "env": {"LD-X": "v"}}))
            .validate(&config(false))
            .unwrap_err();
        assert!(err.contains("not a valid variable name"), "{err}");
        let err = request(serde_json::json!({"cli": "codex", "env": {"MY_FLAG": "a\u{0}"}}))
            .validate(&config(false))
            .unwrap_err();
        assert!(err.contains("NUL"), "{err}");
    }

    #[test]
    fn nul_bytes_and_odd_session_ids_are_refused() {
        let c = config(false);
        assert!(
            request(serde_json::json!({"cli": "codex", "args": ["a\u{0}b"]}))
                .validate(&c)
                .is_err()
        );
        assert!(
            request(serde_json::json!({"cli": "codex", "env": {"A": "\u{0}"}}))
                .validate(&c)
                .is_err()
        );
        for id in ["a/b", "a\nb", &"x".repeat(201)] {
            assert!(
                request(serde_json::json!({"cli": "codex", "session_id": id}))
                    .validate(&c)
                    .is_err(),
                "{id}"
            );
        }
    }
}
