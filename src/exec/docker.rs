//! The docker executor: each run is a sibling container started by `docker run --rm -i` (its
//! stdin, stdout and stderr are the client's pipes, which is what a CLI expects, EOF included),
//! and everything else — readiness, ending a container, finding what a crashed gateway left —
//! goes to the Docker Engine API through `bollard`: typed not-found and conflict errors instead
//! of matching a client's messages, API version negotiation, label filters, no process per call.
//! All the gateway knows about Docker is in this module.

use std::collections::{BTreeMap, HashMap};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use async_trait::async_trait;
use bollard::errors::Error as EngineError;
use bollard::query_parameters::{KillContainerOptions, ListContainersOptions, RemoveContainerOptions};
use nix::sys::signal::Signal;
use tokio::sync::OnceCell;

use super::process::Process;
use super::{Execution, Executor, Launch, Prepared, StartFailure, Stdio};
use crate::config::{Config, DockerConfig};
use crate::run::containment::Scope;
use crate::run::plan::{model_from_args, redirects, resolve_auto, strip_model_flags};
use crate::run::request::RunSpec;
use crate::workspace::{CONTAINER_HOME, CONTAINER_WORKDIR, Place};

/// Labels put on every container, so the gateway can find its own again after a crash.
pub const LABEL_INSTANCE: &str = "cligate.instance";
pub const LABEL_SESSION: &str = "cligate.session";
pub const LABEL_RUN: &str = "cligate.run";

/// How long one engine call may take before we give up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// The name of a run's container.
pub fn container_name(run_id: &str) -> String {
    format!("cligate-{run_id}")
}

/// Runs CLIs in sibling containers.
#[derive(Debug)]
pub struct Docker {
    config: Arc<Config>,
    engine: Engine,
}

impl Docker {
    /// The executor for `config` (which must be in docker mode). Does not contact the engine.
    pub fn new(config: Arc<Config>) -> anyhow::Result<Docker> {
        let engine = Engine::connect()?;
        Ok(Docker { config, engine })
    }

    fn settings(&self) -> &DockerConfig {
        self.config.docker().expect("the docker executor runs in docker mode")
    }
}

#[async_trait]
impl Executor for Docker {
    fn name(&self) -> &'static str {
        "docker"
    }

    /// `docker run --rm -i --init --name … --label … [operator options] -e KEY… IMAGE CLI ARGS`:
    /// the container gets the LiteLLM settings (the operator's key only with the operator's
    /// server), the request's env, the CLI's provider name and the inferred model; values travel
    /// in the client's environment, never on its command line.
    fn plan(&self, spec: &RunSpec, run_id: &str) -> Launch {
        plan(spec, &self.config, self.settings(), run_id)
    }

    async fn prepare(&self) -> anyhow::Result<Prepared> {
        let version = self.engine.version().await.map_err(|e| {
            anyhow!("CODEX_DOCKER_IMAGE: docker mode needs a Docker engine, but it does not answer: {e:#}")
        })?;
        let removed = self.clean_leftovers(&|_| false).await?;
        Ok(Prepared {
            engine: Some(version),
            removed,
        })
    }

    async fn ready(&self) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        let image = &self.settings().image;
        let engine = self
            .engine
            .version()
            .await
            .map_err(|e| format!("docker engine not reachable: {e:#}"))?;
        self.engine.image_exists(image).await.map_err(|e| format!("{e:#}"))?;
        let mut details = serde_json::Map::new();
        details.insert("engine".into(), engine.into());
        details.insert("image".into(), image.clone().into());
        Ok(details)
    }

    fn start(&self, launch: &Launch, scope: &Scope) -> Result<Box<dyn Execution>, StartFailure> {
        let process = Process::start(launch, &self.config.search_path, scope)?;
        Ok(Box::new(Container {
            process,
            engine: self.engine.clone(),
            name: launch.container.clone().expect("a docker launch names its container"),
            armed: true,
        }))
    }

    fn janitor_interval(&self) -> Option<Duration> {
        Some(self.settings().janitor_interval)
    }

    /// Removes this instance's containers that belong to no live run: what a crashed gateway
    /// left running, or one whose `docker run` client died between creating and starting it.
    async fn clean_leftovers(&self, in_use: &(dyn for<'r> Fn(&'r str) -> bool + Sync)) -> anyhow::Result<usize> {
        let mut removed = 0;
        for (name, run_id) in self.engine.list_instance(&self.settings().instance).await? {
            if run_id.as_deref().is_some_and(in_use) {
                continue;
            }
            if self.engine.remove(&name).await {
                tracing::info!(container = name, "removed a container that belongs to no run");
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The pure plan of a docker run.
fn plan(spec: &RunSpec, config: &Config, docker: &DockerConfig, run_id: &str) -> Launch {
    let mut env = BTreeMap::new();
    if let Some(url) = &config.litellm_base_url {
        env.insert("LITELLM_BASE_URL".to_string(), url.clone());
    }
    // The operator's key goes only with the operator's base URL.
    if let Some(key) = config.litellm_api_key.as_ref().filter(|_| !redirects(spec, config)) {
        env.insert("LITELLM_API_KEY".to_string(), key.clone());
    }
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.insert("CLI_PROVIDER_NAME".to_string(), spec.cli.clone());
    let requested = spec
        .env
        .get("LITELLM_MODEL")
        .map(String::as_str)
        .filter(|m| !m.is_empty())
        .or_else(|| model_from_args(&spec.args));
    let model = requested
        .and_then(|m| resolve_auto(m, &config.models))
        .map(String::from);
    match &model {
        Some(m) => env.insert("LITELLM_MODEL".to_string(), m.clone()),
        None => env.remove("LITELLM_MODEL"),
    };

    let container = container_name(run_id);
    let mut args: Vec<String> = ["run", "--rm", "-i", "--init", "--name"].map(String::from).into();
    args.push(container.clone());
    for (label, value) in [
        (LABEL_INSTANCE, docker.instance.as_str()),
        (LABEL_SESSION, spec.session_id.as_str()),
        (LABEL_RUN, run_id),
    ] {
        args.push("--label".into());
        args.push(format!("{label}={value}"));
    }
    args.extend(["--security-opt", "no-new-privileges"].map(String::from));
    args.extend(docker.run_options.iter().cloned());
    // A run on a branch works in its worktree; a `state_key`'s home is mounted and is `HOME`.
    if let Some(dir) = &spec.place.workdir {
        args.push("-v".into());
        args.push(format!("{}:{CONTAINER_WORKDIR}", dir.host.display()));
        args.extend(["-w".into(), CONTAINER_WORKDIR.into()]);
    }
    if let Some(home) = &spec.place.home {
        args.push("-v".into());
        args.push(format!("{}:{CONTAINER_HOME}", home.host.display()));
        env.extend(Place::home_env(CONTAINER_HOME));
    }
    for key in env.keys() {
        args.push("-e".into());
        args.push(key.clone());
    }
    args.push(docker.image.clone());
    args.push(spec.cli.clone());
    if spec.cli == "opencode" {
        args.extend(strip_model_flags(&spec.args));
    } else {
        args.extend(spec.args.iter().cloned());
    }

    Launch {
        program: docker.bin.clone(),
        args,
        env,
        container: Some(container),
        model,
        env_remove: Vec::new(),
        cwd: None,
    }
}

/// A run's `docker run` client and its container. Signals go to the container through the
/// engine (killing only the client would leave the container running). Dropping it while armed
/// removes the container.
struct Container {
    process: Process,
    engine: Engine,
    name: String,
    armed: bool,
}

#[async_trait]
impl Execution for Container {
    fn pid(&self) -> u32 {
        self.process.pid()
    }

    fn stdio(&mut self) -> Option<Stdio> {
        self.process.stdio()
    }

    async fn wait(&mut self) -> ExitStatus {
        self.process.wait().await
    }

    fn start_failure(&mut self) -> Option<StartFailure> {
        self.process.start_failure()
    }

    async fn terminate(&mut self, grace: Duration) -> ExitStatus {
        if let Err(e) = self.engine.kill(&self.name, "SIGTERM").await {
            tracing::debug!(container = %self.name, error = %e, "kill through the engine");
        }
        if let Some(status) = self.process.wait_for(grace).await {
            return status;
        }
        self.engine.remove(&self.name).await;
        self.process.kill().await
    }

    async fn finish(&mut self, exited_on_its_own: bool) {
        self.process.signal(Signal::SIGKILL);
        if !exited_on_its_own {
            // The client may have died between creating and starting the container, which
            // `--rm` then never removes.
            self.engine.remove(&self.name).await;
        }
        self.process.finish(exited_on_its_own).await;
        self.armed = false;
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.armed {
            let (engine, name) = (self.engine.clone(), std::mem::take(&mut self.name));
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { engine.remove(&name).await });
            }
        }
    }
}

/// The Docker Engine API, reached like the `docker` client does (`DOCKER_HOST`, else the local
/// socket), at the highest API version both sides speak (negotiated on first use).
#[derive(Debug, Clone)]
struct Engine {
    base: bollard::Docker,
    negotiated: Arc<OnceCell<bollard::Docker>>,
}

impl Engine {
    fn connect() -> anyhow::Result<Engine> {
        let base = bollard::Docker::connect_with_defaults()
            .context("CODEX_DOCKER_IMAGE: cannot reach the Docker engine (DOCKER_HOST)")?
            .with_timeout(CALL_TIMEOUT);
        Ok(Engine {
            base,
            negotiated: Arc::new(OnceCell::new()),
        })
    }

    /// The client at the negotiated API version. A failed negotiation is tried again next time.
    async fn client(&self) -> Result<&bollard::Docker, EngineError> {
        self.negotiated
            .get_or_try_init(|| self.base.clone().negotiate_version())
            .await
    }

    /// The engine's version: it answers.
    async fn version(&self) -> anyhow::Result<String> {
        let version = self.client().await?.version().await?;
        Ok(version.version.unwrap_or_else(|| "unknown".into()))
    }

    /// Whether the run image exists locally.
    async fn image_exists(&self, image: &str) -> anyhow::Result<()> {
        self.client()
            .await?
            .inspect_image(image)
            .await
            .map(drop)
            .map_err(|e| match status(&e) {
                Some(404) => anyhow!("image '{image}' is not available to the engine"),
                _ => anyhow!("image '{image}' is not available to the engine: {e}"),
            })
    }

    /// Sends `signal` to the container's main process.
    async fn kill(&self, name: &str, signal: &str) -> anyhow::Result<()> {
        let options = KillContainerOptions {
            signal: signal.to_string(),
        };
        match self.client().await?.kill_container(name, Some(options)).await {
            // Gone, or not running: nothing to signal.
            Err(e) if matches!(status(&e), Some(404 | 409)) => Ok(()),
            other => Ok(other?),
        }
    }

    /// Kills and removes the container; true when there was one to remove.
    async fn remove(&self, name: &str) -> bool {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        let result = match self.client().await {
            Ok(client) => client.remove_container(name, Some(options)).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => true,
            // Gone already (`--rm`), or its removal is already in progress.
            Err(e) if matches!(status(&e), Some(404 | 409)) => false,
            Err(e) => {
                tracing::warn!(container = name, error = %e, "removing container failed");
                false
            }
        }
    }

    /// The containers labelled as this instance's (running or not): name and run id.
    async fn list_instance(&self, instance: &str) -> anyhow::Result<Vec<(String, Option<String>)>> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_INSTANCE}={instance}")])]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let containers = self.client().await?.list_containers(Some(options)).await?;
        Ok(containers
            .into_iter()
            .filter_map(|c| {
                let name = c.names?.into_iter().next()?.trim_start_matches('/').to_string();
                let run = c.labels.and_then(|mut l| l.remove(LABEL_RUN));
                Some((name, run))
            })
            .collect())
    }
}

/// The HTTP status of an engine error, when the engine answered.
fn status(e: &EngineError) -> Option<u16> {
    match e {
        EngineError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}
