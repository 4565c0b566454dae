//! The local executor: the CLI runs as a child process of the gateway, in the gateway's
//! environment minus what the request may not inherit, in its own process group and scope.

use std::sync::Arc;

use async_trait::async_trait;

use super::process::Process;
use super::{Execution, Executor, Launch, Prepared, StartFailure};
use crate::config::Config;
use crate::run::containment::Scope;
use crate::run::plan::{model_from_args, redirects};
use crate::run::request::RunSpec;
use crate::workspace::Place;

/// Runs CLIs as local processes.
#[derive(Debug)]
pub struct Local {
    config: Arc<Config>,
}

impl Local {
    pub fn new(config: Arc<Config>) -> Local {
        Local { config }
    }
}

#[async_trait]
impl Executor for Local {
    fn name(&self) -> &'static str {
        "local"
    }

    /// The CLI with the request's args verbatim and its env over the gateway's. When the request
    /// points the CLI at another server, the gateway's credentials are not inherited; the
    /// projects' git credentials never are. A run on a branch works in the branch's worktree, a
    /// run with a `state_key` has its home (`HOME`, `CODEX_HOME`, XDG dirs) there.
    fn plan(&self, spec: &RunSpec, _run_id: &str) -> Launch {
        let config = &self.config;
        let mut env = spec.env.clone();
        if let Some(home) = &spec.place.home {
            env.extend(Place::home_env(&home.local.to_string_lossy()));
        }
        let mut env_remove: Vec<String> = if redirects(spec, config) {
            config
                .gateway_credentials
                .iter()
                .filter(|key| !spec.env.contains_key(*key))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        env_remove.extend(config.projects.secret_variables());
        Launch {
            program: spec.cli.clone().into(),
            args: spec.args.clone(),
            env,
            container: None,
            model: model_from_args(&spec.args).map(String::from),
            env_remove,
            cwd: spec.place.workdir.as_ref().map(|d| d.local.clone()),
        }
    }

    async fn prepare(&self) -> anyhow::Result<Prepared> {
        Ok(Prepared::default())
    }

    async fn ready(&self) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        Ok(serde_json::Map::new())
    }

    fn start(&self, launch: &Launch, scope: &Scope) -> Result<Box<dyn Execution>, StartFailure> {
        Ok(Box::new(Process::start(launch, &self.config.search_path, scope)?))
    }
}
