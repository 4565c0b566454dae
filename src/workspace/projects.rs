//! The operator's projects (`PROJECTS_FILE`): which repositories runs may work on. A request
//! names a project id, never a URL — a URL chosen by a caller would let it make the gateway
//! fetch from, and push to, anywhere with the operator's credentials.
//!
//! TOML (or JSON when the file name ends in `.json`):
//!
//! ```toml
//! [projects.myproj]
//! url = "https://git.example.org/team/myproj.git"   # any URL git accepts, without a password
//! base = "dev"                                       # default base branch
//! token_env = "MYPROJ_GIT_TOKEN"                     # optional: variable holding the credential
//! username = "x-access-token"                        # optional: user name sent with the token
//! ```
//!
//! The credential is read from the gateway's environment at start-up and handed only to git,
//! through `GIT_ASKPASS` (see [`super::git`]).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, anyhow};
use serde::Deserialize;

use super::branch::{check_branch, check_name};
use crate::config::Secret;

/// One project, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    pub id: String,
    /// The remote (never shown to callers).
    pub url: String,
    /// The default base branch of new branches.
    pub base: String,
    /// The credential git is given when the remote asks for one.
    pub credential: Option<Credential>,
}

/// A user name and a token from the operator's environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Credential {
    pub username: String,
    /// The variable it came from (named in logs, never the value).
    pub variable: String,
    pub token: Secret,
}

/// The projects, by id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Projects(pub BTreeMap<String, Project>);

impl Projects {
    pub fn get(&self, id: &str) -> Option<&Project> {
        self.0.get(id)
    }

    /// The names of the variables holding credentials: no CLI inherits them.
    pub fn secret_variables(&self) -> Vec<String> {
        self.0
            .values()
            .filter_map(|p| p.credential.as_ref().map(|c| c.variable.clone()))
            .collect()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    projects: BTreeMap<String, Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    url: String,
    #[serde(default)]
    base: Option<String>,
    #[serde(default)]
    token_env: Option<String>,
    #[serde(default)]
    username: Option<String>,
}

/// Reads `path`; `lookup` finds a variable of the gateway's environment. Errors name the file
/// and the project.
pub fn load(path: &Path, lookup: impl Fn(&str) -> Option<String>) -> Result<Projects> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| anyhow!("PROJECTS_FILE: cannot read '{shown}': {e}"))?;
    let file: File = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| anyhow!("PROJECTS_FILE: '{shown}' is not valid: {e}"))?
    } else {
        toml::from_str(&text).map_err(|e| anyhow!("PROJECTS_FILE: '{shown}' is not valid: {}", one_line(&e)))?
    };
    let mut projects = BTreeMap::new();
    for (id, entry) in file.projects {
        let fail = |why: String| anyhow!("PROJECTS_FILE: project '{}': {why}", id.escape_debug());
        check_name("the id", &id).map_err(fail)?;
        check_url(&entry.url).map_err(fail)?;
        let base = entry.base.unwrap_or_else(|| "main".into());
        check_branch(&base).map_err(fail)?;
        let credential = match entry.token_env {
            None => None,
            Some(variable) => {
                let token = lookup(&variable)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| fail(format!("token_env names '{variable}', which is not set")))?;
                if token.contains(['\n', '\0']) {
                    return Err(fail(format!("the value of '{variable}' holds a newline or NUL")));
                }
                let username = entry.username.unwrap_or_else(|| "x-access-token".into());
                if username.is_empty() || username.contains(['\n', '\0']) {
                    return Err(fail("username must be one line".into()));
                }
                Some(Credential {
                    username,
                    variable,
                    token: Secret::new(token),
                })
            }
        };
        projects.insert(
            id.clone(),
            Project {
                id,
                url: entry.url,
                base,
                credential,
            },
        );
    }
    Ok(Projects(projects))
}

/// A URL git may be given: one line, not an option, no password in it (credentials go through
/// `token_env`, never into a URL that git writes to disk).
fn check_url(url: &str) -> Result<(), String> {
    if url.is_empty() || url.starts_with('-') || url.contains(['\n', '\r', '\0']) {
        return Err("url must be one line and not start with '-'".into());
    }
    if let Ok(parsed) = url::Url::parse(url)
        && parsed.password().is_some()
    {
        return Err("url holds a password: put the credential in the variable named by token_env".into());
    }
    Ok(())
}

fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(name: &str, text: &str, vars: &[(&str, &str)]) -> Result<Projects> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        load(&path, |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn toml_and_json_files_give_the_same_projects() {
        let toml = r#"
            [projects.web]
            url = "https://git.example.org/team/web.git"
            base = "dev"
            token_env = "WEB_TOKEN"
            [projects.tools]
            url = "/srv/git/tools.git"
        "#;
        let json = r#"{"projects": {"web": {"url": "https://git.example.org/team/web.git", "base": "dev",
            "token_env": "WEB_TOKEN"}, "tools": {"url": "/srv/git/tools.git"}}}"#;
        let a = load_text("p.toml", toml, &[("WEB_TOKEN", "s3cret")]).unwrap();
        let b = load_text("p.json", json, &[("WEB_TOKEN", "s3cret")]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.get("tools").unwrap().base, "main");
        let web = a.get("web").unwrap();
        assert_eq!(web.base, "dev");
        let credential = web.credential.as_ref().unwrap();
        assert_eq!(
            (credential.username.as_str(), credential.token.expose()),
            ("x-access-token", &b"s3cret"[..])
        );
        assert!(!format!("{a:?}").contains("s3cret"));
        assert_eq!(a.secret_variables(), ["WEB_TOKEN"]);
    }

    #[test]
    fn bad_files_name_the_project_and_the_problem() {
        let cases = [
            ("[projects.a]\nurl = \"https://u:pw@h/r.git\"", "password"),
            ("[projects.a]\nurl = \"--upload-pack=x\"", "start with '-'"),
            ("[projects.\"a/b\"]\nurl = \"x\"", "the id"),
            ("[projects.a]\nurl = \"x\"\nbase = \"a..b\"", "not a valid branch"),
            ("[projects.a]\nurl = \"x\"\ntoken_env = \"MISSING\"", "MISSING"),
            ("[projects.a]\nurl = \"x\"\nbranch = \"x\"", "unknown field"),
            ("[projects.a]\n", "missing field"),
            ("not toml", "not valid"),
        ];
        for (text, expected) in cases {
            let err = load_text("p.toml", text, &[]).unwrap_err().to_string();
            assert!(
                err.starts_with("PROJECTS_FILE: ") && err.contains(expected),
                "{text}: {err}"
            );
        }
        let err = load(Path::new("/nonexistent/p.toml"), |_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read"), "{err}");
    }
}
