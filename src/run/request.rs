//! The `POST /run` body as clients send it, and its validation into a [`RunSpec`] that the rest
//! of the gateway can trust: an allow-listed CLI, well-formed env keys, nothing that changes
//! which program runs or how it is loaded.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::{Config, Mode};

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
}

/// A request that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    pub cli: String,
    pub args: Vec<String>,
    pub stdin: String,
    pub env: BTreeMap<String, String>,
    pub session_id: String,
}

/// Longest accepted session id.
const MAX_SESSION_ID: usize = 200;

/// Keys a request may not set in local mode: they change which binary runs or how it loads.
const LOCAL_REFUSED: &[&str] = &[
    "PATH",
    "IFS",
    "ENV",
    "BASH_ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "CDPATH",
    "GLOBIGNORE",
    "NODE_OPTIONS",
    "NODE_PATH",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PERL5LIB",
    "PERL5OPT",
    "PERLLIB",
    "RUBYOPT",
    "RUBYLIB",
    "GCONV_PATH",
    "HOSTALIASES",
    "LOCPATH",
    "NLSPATH",
    "GLIBC_TUNABLES",
];
const LOCAL_REFUSED_PREFIXES: &[&str] = &["LD_", "DYLD_", "MALLOC_"];

/// Keys a request may not set in docker mode: the `docker` client itself reads them (its values
/// reach the container through the client's environment), so they would steer the client.
const DOCKER_REFUSED: &[&str] = &["PATH", "HOME", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"];
const DOCKER_REFUSED_PREFIXES: &[&str] = &["LD_", "DYLD_", "DOCKER_", "BUILDKIT_"];

/// Whether `key` is a portable environment variable name.
pub fn valid_env_key(key: &str) -> bool {
    let mut bytes = key.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn refused(key: &str, mode: &Mode) -> bool {
    let upper = key.to_ascii_uppercase();
    let (exact, prefixes) = match mode {
        Mode::Local => (LOCAL_REFUSED, LOCAL_REFUSED_PREFIXES),
        Mode::Docker(_) => (DOCKER_REFUSED, DOCKER_REFUSED_PREFIXES),
    };
    exact.contains(&upper.as_str()) || prefixes.iter().any(|p| upper.starts_with(p))
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
            if refused(key, &config.mode) {
                return Err(format!("env key '{key}' may not be set by a request"));
            }
            if value.contains('\0') {
                return Err(format!("env value of '{key}' may not contain NUL characters"));
            }
        }
        let session_id = match self.session_id.filter(|s| !s.is_empty()) {
            None => uuid::Uuid::new_v4().to_string(),
            Some(id) => {
                if id.len() > MAX_SESSION_ID || id.chars().any(|c| c.is_control() || c == '/') {
                    return Err(format!(
                        "session_id must be 1 to {MAX_SESSION_ID} bytes without '/' or control characters"
                    ));
                }
                id
            }
        };
        Ok(RunSpec {
            cli: self.cli,
            args,
            stdin: self.stdin.unwrap_or_default(),
            env,
            session_id,
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
    fn loader_and_client_keys_are_refused_per_mode() {
        for key in ["PATH", "path", "LD_PRELOAD", "NODE_OPTIONS", "DYLD_INSERT_LIBRARIES"] {
            assert!(
                request(serde_json::json!({"cli": "codex", "env": {key: "x"}}))
                    .validate(&config(false))
                    .is_err(),
                "{key}"
            );
        }
        for key in ["DOCKER_HOST", "PATH", "HOME", "LD_PRELOAD", "https_proxy"] {
            assert!(
                request(serde_json::json!({"cli": "codex", "env": {key: "x"}}))
                    .validate(&config(true))
                    .is_err(),
                "{key}"
            );
        }
        // Container-side settings stay allowed in docker mode.
        assert!(
            request(serde_json::json!({"cli": "codex", "env": {"NODE_OPTIONS": "x", "LITELLM_MODEL": "m"}}))
                .validate(&config(true))
                .is_ok()
        );
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
