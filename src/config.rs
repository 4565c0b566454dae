//! Settings: environment variables read once at start-up (with `envy`) into an immutable,
//! validated [`Config`]. A bad value stops start-up with one line naming the variable.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use ipnet::IpNet;
use serde::Deserialize;

/// Every variable cligate reads: name, default, meaning. `--help` and the README are made from it.
pub const VARIABLES: &[(&str, &str, &str)] = &[
    ("CLI_LIST", "codex", "comma-separated allow-list of CLI names"),
    (
        "MODEL_LIST",
        "auto",
        "comma-separated model ids returned by GET /models",
    ),
    ("CODEX_DOCKER_IMAGE", "", "image for docker mode; unset = local mode"),
    (
        "LITELLM_BASE_URL",
        "",
        "docker mode: passed into the container unless the request overrides it",
    ),
    (
        "LITELLM_API_KEY",
        "",
        "docker mode: passed into the container unless the request sets its own key or its own base URL",
    ),
    (
        "RUN_RESPONSE_TIMEOUT_SECONDS",
        "",
        "wall-clock limit of a run; empty or <= 0 disables it",
    ),
    (
        "RUN_IDLE_TIMEOUT_SECONDS",
        "",
        "end a run that prints nothing for this long; empty or <= 0 disables it",
    ),
    (
        "RUN_OUTPUT_LIMIT_BYTES",
        "1073741824",
        "end a run once it has printed this many bytes (its log is on disk); 0 disables it",
    ),
    ("LISTEN_ADDR", "0.0.0.0:8000", "address and port to listen on"),
    (
        "KILL_GRACE_SECONDS",
        "5",
        "time between SIGTERM and SIGKILL when a run is ended",
    ),
    (
        "SHUTDOWN_GRACE_SECONDS",
        "10",
        "on SIGTERM/SIGINT, time running runs get to finish before they are ended",
    ),
    ("MAX_CONCURRENT_RUNS", "32", "runs executing at once"),
    (
        "MAX_QUEUED_RUNS",
        "64",
        "requests waiting for a run slot; more are refused with 503",
    ),
    (
        "QUEUE_TIMEOUT_SECONDS",
        "30",
        "longest wait for a run slot before 503; 0 = no limit",
    ),
    (
        "MAX_REQUEST_BYTES",
        "16777216",
        "largest accepted request body (413 above)",
    ),
    (
        "AUTH_TOKENS",
        "",
        "comma-separated bearer tokens (or name:token); when set (or AUTH_TOKENS_FILE, ADMIN_TOKENS), every route but health needs one",
    ),
    (
        "AUTH_TOKENS_FILE",
        "",
        "file with one bearer token (or name:token) per line",
    ),
    (
        "ADMIN_TOKENS",
        "",
        "comma-separated bearer tokens (or name:token) that see and stop every run; also accepted where AUTH_TOKENS are",
    ),
    (
        "RUN_ENV_ALLOW",
        "",
        "comma-separated env keys a request may set (names, or PREFIX_* patterns); unset = every key but the refused families",
    ),
    (
        "REQUEST_READ_TIMEOUT_SECONDS",
        "30",
        "longest time to receive a request's headers and body (408 after)",
    ),
    (
        "MAX_CONNECTIONS",
        "1024",
        "open client connections at most (lowered to fit RLIMIT_NOFILE); further connections wait in the listen backlog",
    ),
    (
        "ALLOWED_CLIENTS",
        "",
        "comma-separated client IPs/CIDRs allowed to connect; empty = everyone",
    ),
    ("DOCKER_BIN", "docker", "docker client used in docker mode"),
    (
        "DOCKER_NETWORK",
        "",
        "docker mode: --network for run containers (default: the engine's default)",
    ),
    ("DOCKER_MEMORY", "", "docker mode: --memory for run containers"),
    ("DOCKER_CPUS", "", "docker mode: --cpus for run containers"),
    (
        "DOCKER_PIDS_LIMIT",
        "1024",
        "docker mode: --pids-limit for run containers; 0 = none",
    ),
    ("DOCKER_USER", "", "docker mode: --user for run containers"),
    (
        "DOCKER_EXTRA_ARGS",
        "",
        "docker mode: JSON array of further `docker run` options (operator only)",
    ),
    (
        "CLIGATE_INSTANCE",
        "cligate",
        "names this gateway's containers and run cgroups/processes (leftovers are cleaned at start-up)",
    ),
    (
        "DOCKER_JANITOR_SECONDS",
        "60",
        "docker mode: how often containers of this instance that belong to no run are removed",
    ),
    (
        "DATA_DIR",
        "./cligate-data",
        "directory of the run store (SQLite) and run logs; created when missing",
    ),
    (
        "DATABASE_URL",
        "",
        "postgres:// or postgresql:// URL of the run store; unset = SQLite in DATA_DIR",
    ),
    (
        "RUN_RETENTION_DAYS",
        "30",
        "ended runs (records and logs) older than this are deleted; 0 = keep forever",
    ),
    (
        "RUN_RETENTION_BYTES",
        "",
        "the oldest ended runs are deleted while their logs exceed this many bytes; unset = no bound",
    ),
    (
        "DATA_DIR_MIN_FREE_BYTES",
        "1073741824",
        "new runs are refused while DATA_DIR has less free space than this; 0 = no check",
    ),
    (
        "DATABASE_CONNECT_TIMEOUT_SECONDS",
        "30",
        "how long start-up waits for PostgreSQL to answer before it gives up",
    ),
    (
        "RUN_LOG_IN_MEMORY",
        "false",
        "benchmarks only: keep run logs in memory instead of files (unbounded; nothing outlives the run)",
    ),
    (
        "CALLBACK_ALLOWED_URLS",
        "",
        "comma-separated http(s) URL prefixes a detached run's callback_url must start with; empty = callbacks refused",
    ),
    (
        "CALLBACK_SECRET",
        "",
        "HMAC-SHA256 key of the X-Cligate-Signature header of callbacks; required with CALLBACK_ALLOWED_URLS",
    ),
    (
        "CALLBACK_RETRY_SECONDS",
        "3600",
        "how long a callback is retried after its run ended before it is given up as failed",
    ),
    (
        "CALLBACK_TIMEOUT_SECONDS",
        "10",
        "limit of one callback attempt (connect, send, response head)",
    ),
    (
        "PROJECTS_FILE",
        "",
        "TOML (or .json) file of the operator's git projects runs may work on; unset = no workspaces",
    ),
    (
        "WORKSPACE_ROOT",
        "$DATA_DIR/workspaces",
        "where each project's repository and its branches' worktrees live",
    ),
    (
        "WORKSPACE_HOST_ROOT",
        "",
        "docker mode, gateway in a container: WORKSPACE_ROOT as the engine's host sees it",
    ),
    (
        "GIT_AUTHOR_NAME",
        "cligate",
        "author and committer name of the commits after runs",
    ),
    (
        "GIT_AUTHOR_EMAIL",
        "cligate@localhost",
        "author and committer e-mail of the commits after runs",
    ),
    (
        "GIT_TIMEOUT_SECONDS",
        "120",
        "limit of each git step (fetch, push, commit, preview); the step is killed after it",
    ),
    ("LOG_FORMAT", "text", "text or json"),
    ("RUST_LOG", "info", "log filter"),
];

/// The raw strings, exactly as found in the environment. Everything is a string here so that
/// validation can name the variable and the value it did not like.
#[derive(Debug, Default, Deserialize)]
struct Raw {
    cli_list: Option<String>,
    model_list: Option<String>,
    codex_docker_image: Option<String>,
    litellm_base_url: Option<String>,
    litellm_api_key: Option<String>,
    run_response_timeout_seconds: Option<String>,
    run_idle_timeout_seconds: Option<String>,
    run_output_limit_bytes: Option<String>,
    listen_addr: Option<String>,
    kill_grace_seconds: Option<String>,
    shutdown_grace_seconds: Option<String>,
    max_concurrent_runs: Option<String>,
    max_queued_runs: Option<String>,
    queue_timeout_seconds: Option<String>,
    max_request_bytes: Option<String>,
    auth_tokens: Option<String>,
    auth_tokens_file: Option<String>,
    admin_tokens: Option<String>,
    run_env_allow: Option<String>,
    request_read_timeout_seconds: Option<String>,
    max_connections: Option<String>,
    allowed_clients: Option<String>,
    docker_bin: Option<String>,
    docker_network: Option<String>,
    docker_memory: Option<String>,
    docker_cpus: Option<String>,
    docker_pids_limit: Option<String>,
    docker_user: Option<String>,
    docker_extra_args: Option<String>,
    cligate_instance: Option<String>,
    docker_janitor_seconds: Option<String>,
    log_format: Option<String>,
    data_dir: Option<String>,
    database_url: Option<String>,
    run_retention_days: Option<String>,
    run_retention_bytes: Option<String>,
    data_dir_min_free_bytes: Option<String>,
    run_log_in_memory: Option<String>,
    database_connect_timeout_seconds: Option<String>,
    callback_allowed_urls: Option<String>,
    callback_secret: Option<String>,
    callback_retry_seconds: Option<String>,
    callback_timeout_seconds: Option<String>,
    projects_file: Option<String>,
    workspace_root: Option<String>,
    workspace_host_root: Option<String>,
    git_author_name: Option<String>,
    git_author_email: Option<String>,
    git_timeout_seconds: Option<String>,
    path: Option<String>,
}

/// How runs are launched.
#[derive(Debug, Clone)]
pub enum Mode {
    /// The CLI runs as a child process of the gateway, found on `PATH`.
    Local,
    /// The CLI runs as `docker run --rm -i … IMAGE <cli> <args…>`.
    Docker(DockerConfig),
}

/// Operator-controlled settings for docker mode. Nothing in a request can add to these.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    pub image: String,
    /// The docker client; a bare name is looked up on `PATH` at start-up.
    pub bin: PathBuf,
    /// `docker run` options built from the DOCKER_* variables, in order.
    pub run_options: Vec<String>,
    /// Label value that marks this gateway's containers, so a restarted gateway finds its leftovers.
    pub instance: String,
    /// How often to look for containers of this instance that belong to no run.
    pub janitor_interval: Duration,
}

/// One accepted bearer token and the identity it stands for.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// Who holds it: the `name` of a `name:token` entry, else `token-` and the first 12 hex
    /// digits of the token's SHA-256. Recorded on runs and logged; never the token itself.
    pub name: String,
    pub secret: String,
    /// An `ADMIN_TOKENS` entry: sees and stops every run.
    pub admin: bool,
}

impl std::fmt::Debug for Token {
    /// Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

/// Who may call the gateway.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Accepted bearer tokens; empty = no token needed.
    pub tokens: Vec<Token>,
    /// Accepted client networks; empty = every address.
    pub allowed: Vec<IpNet>,
}

/// The validated, immutable configuration shared by every task.
#[derive(Debug, Clone)]
pub struct Config {
    /// Sorted, de-duplicated allow-list.
    pub clis: Vec<String>,
    /// Model ids in the operator's order.
    pub models: Vec<String>,
    pub mode: Mode,
    pub litellm_base_url: Option<String>,
    pub litellm_api_key: Option<String>,
    pub timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub output_limit: Option<u64>,
    pub listen_addr: SocketAddr,
    pub kill_grace: Duration,
    pub shutdown_grace: Duration,
    pub max_concurrent: usize,
    pub max_queued: usize,
    pub queue_timeout: Option<Duration>,
    pub max_request_bytes: usize,
    /// Longest time to receive a request's head and body.
    pub request_read_timeout: Duration,
    /// Open client connections at most.
    pub max_connections: usize,
    /// `RUN_ENV_ALLOW` entries (a name, or a prefix ending in `*`); empty = the default rule.
    pub env_allow: Vec<String>,
    pub access: Access,
    pub log_json: bool,
    /// Where local-mode CLIs are looked up (the gateway's own `PATH`).
    pub search_path: OsString,
    /// Names of the credential variables (`*_API_KEY`, …) in the gateway's own environment,
    /// sorted: a local-mode CLI does not inherit them when its request sets its own base URL.
    pub gateway_credentials: Vec<String>,
    /// `CLIGATE_INSTANCE`: names this gateway's containers and run cgroups, so a restarted
    /// gateway finds what its predecessor left.
    pub instance: String,
    /// The run store's SQLite file and the run logs live here.
    pub data_dir: PathBuf,
    /// PostgreSQL for the run store instead of SQLite in `data_dir`.
    pub database_url: Option<DatabaseUrl>,
    /// Ended runs older than this are deleted; `None` = kept forever.
    pub run_retention: Option<Duration>,
    /// Ended runs are deleted, oldest first, while their logs add up to more; `None` = no bound.
    pub run_retention_bytes: Option<u64>,
    /// New runs are refused while `data_dir`'s file system has less free space; 0 = no check.
    pub data_dir_min_free_bytes: u64,
    /// `RUN_LOG_IN_MEMORY`: logs in memory, for measuring what the log files cost.
    pub run_log_in_memory: bool,
    /// How long start-up waits for PostgreSQL.
    pub database_connect_timeout: Duration,
    /// `CALLBACK_ALLOWED_URLS`, parsed: a callback URL must start with one of these; empty =
    /// callbacks refused.
    pub callback_allowed_urls: Vec<url::Url>,
    /// `CALLBACK_SECRET`: the HMAC key of callback signatures; set whenever prefixes are.
    pub callback_secret: Option<Secret>,
    /// Callbacks are retried until this long after their run ended.
    pub callback_retry: Duration,
    /// Limit of one callback attempt.
    pub callback_timeout: Duration,
    /// `PROJECTS_FILE`, read at start-up (with the credentials it names).
    pub projects: crate::workspace::projects::Projects,
    pub projects_file: Option<PathBuf>,
    /// Repositories and worktrees (default `$DATA_DIR/workspaces`).
    pub workspace_root: PathBuf,
    /// `WORKSPACE_ROOT` as the docker engine's host sees it.
    pub workspace_host_root: Option<PathBuf>,
    /// Name and e-mail of the gateway's commits.
    pub git_author: (String, String),
    /// Limit of each git step.
    pub git_timeout: Duration,
}

/// A secret setting (`CALLBACK_SECRET`), whose value `Debug` never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// `DATABASE_URL`: a PostgreSQL URL, whose password `Debug` never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", crate::store::redact(&self.0))
    }
}

impl Config {
    /// Reads and validates the process environment.
    pub fn from_env() -> Result<Config> {
        Config::from_vars(std::env::vars())
    }

    /// Reads and validates the given variables (tests pass their own).
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Config> {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let mut credentials: Vec<String> = vars
            .iter()
            .map(|(key, _)| key)
            .filter(|key| crate::run::plan::is_credential(key))
            .cloned()
            .collect();
        credentials.sort();
        credentials.dedup();
        let lookup: std::collections::HashMap<String, String> = vars.iter().cloned().collect();
        let raw: Raw = envy::from_iter(vars).map_err(|e| anyhow!("reading the environment: {e}"))?;
        let mut config = raw.validate()?;
        config.gateway_credentials = credentials;
        if let Some(file) = &config.projects_file {
            config.projects = crate::workspace::projects::load(file, |k| lookup.get(k).cloned())?;
        }
        Ok(config)
    }

    pub fn docker(&self) -> Option<&DockerConfig> {
        match &self.mode {
            Mode::Docker(d) => Some(d),
            Mode::Local => None,
        }
    }
}

/// Trims and drops blanks of a comma-separated list.
fn list(value: Option<&str>) -> Vec<String> {
    value
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// A value that is present and not blank.
fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Seconds as a float; empty, unset or `<= 0` mean "off".
fn optional_seconds(name: &str, value: &Option<String>) -> Result<Option<Duration>> {
    let Some(text) = given(value) else {
        return Ok(None);
    };
    let secs: f64 = text
        .parse()
        .map_err(|_| anyhow!("{name}: '{text}' is not a number of seconds"))?;
    if !secs.is_finite() {
        bail!("{name}: '{text}' is not a finite number of seconds");
    }
    if secs <= 0.0 {
        return Ok(None);
    }
    Duration::try_from_secs_f64(secs)
        .map(Some)
        .map_err(|_| anyhow!("{name}: '{text}' is too large"))
}

fn seconds(name: &str, value: &Option<String>, default: f64) -> Result<Duration> {
    match given(value) {
        None => Ok(Duration::from_secs_f64(default)),
        Some(_) => Ok(optional_seconds(name, value)?.unwrap_or(Duration::ZERO)),
    }
}

fn number(name: &str, value: &Option<String>, default: u64) -> Result<u64> {
    match given(value) {
        None => Ok(default),
        Some(text) => text
            .parse()
            .map_err(|_| anyhow!("{name}: '{text}' is not a whole number")),
    }
}

/// A CLI name is a plain file name: never a path, never an option.
fn valid_cli_name(name: &str) -> bool {
    !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
        && name != "."
        && name != ".."
}

impl Raw {
    fn validate(self) -> Result<Config> {
        let mut clis = match &self.cli_list {
            None => vec!["codex".to_string()],
            Some(v) => list(Some(v)),
        };
        if clis.is_empty() {
            bail!("CLI_LIST: the allow-list is empty; name at least one CLI");
        }
        if let Some(bad) = clis.iter().find(|c| !valid_cli_name(c)) {
            bail!("CLI_LIST: '{bad}' is not a plain program name (letters, digits, . _ - +; no paths)");
        }
        clis.sort();
        clis.dedup();

        let models = match &self.model_list {
            None => vec!["auto".to_string()],
            Some(v) => list(Some(v)),
        };

        let listen_text = given(&self.listen_addr).unwrap_or("0.0.0.0:8000");
        let listen_addr: SocketAddr = listen_text
            .parse()
            .map_err(|_| anyhow!("LISTEN_ADDR: '{listen_text}' is not an address like 0.0.0.0:8000"))?;

        let output_limit = match number("RUN_OUTPUT_LIMIT_BYTES", &self.run_output_limit_bytes, 1 << 30)? {
            0 => None,
            n => Some(n),
        };
        let max_concurrent = number("MAX_CONCURRENT_RUNS", &self.max_concurrent_runs, 32)?;
        if max_concurrent == 0 {
            bail!("MAX_CONCURRENT_RUNS: must be at least 1");
        }
        let max_request_bytes = number("MAX_REQUEST_BYTES", &self.max_request_bytes, 16 << 20)?;
        if max_request_bytes < 64 {
            bail!("MAX_REQUEST_BYTES: {max_request_bytes} is too small to hold a request");
        }

        let access = Access {
            tokens: self.tokens()?,
            allowed: self.allowed_clients()?,
        };

        let log_json = match given(&self.log_format).unwrap_or("text") {
            "text" => false,
            "json" => true,
            other => bail!("LOG_FORMAT: '{other}' is neither 'text' nor 'json'"),
        };

        let mode = match given(&self.codex_docker_image) {
            None => Mode::Local,
            Some(image) => Mode::Docker(self.docker(image)?),
        };

        Ok(Config {
            clis,
            models,
            mode,
            litellm_base_url: given(&self.litellm_base_url).map(String::from),
            litellm_api_key: given(&self.litellm_api_key).map(String::from),
            timeout: optional_seconds("RUN_RESPONSE_TIMEOUT_SECONDS", &self.run_response_timeout_seconds)?,
            idle_timeout: optional_seconds("RUN_IDLE_TIMEOUT_SECONDS", &self.run_idle_timeout_seconds)?,
            output_limit,
            listen_addr,
            kill_grace: seconds("KILL_GRACE_SECONDS", &self.kill_grace_seconds, 5.0)?,
            shutdown_grace: seconds("SHUTDOWN_GRACE_SECONDS", &self.shutdown_grace_seconds, 10.0)?,
            max_concurrent: max_concurrent as usize,
            max_queued: number("MAX_QUEUED_RUNS", &self.max_queued_runs, 64)? as usize,
            queue_timeout: match given(&self.queue_timeout_seconds) {
                None => Some(Duration::from_secs(30)),
                Some(_) => optional_seconds("QUEUE_TIMEOUT_SECONDS", &self.queue_timeout_seconds)?,
            },
            max_request_bytes: max_request_bytes as usize,
            request_read_timeout: {
                let t = seconds("REQUEST_READ_TIMEOUT_SECONDS", &self.request_read_timeout_seconds, 30.0)?;
                if t.is_zero() {
                    bail!("REQUEST_READ_TIMEOUT_SECONDS: must be more than 0");
                }
                t
            },
            max_connections: match number("MAX_CONNECTIONS", &self.max_connections, 1024)? {
                0 => bail!("MAX_CONNECTIONS: must be at least 1"),
                n => n as usize,
            },
            env_allow: self.env_allow()?,
            access,
            log_json,
            instance: self.instance()?.to_string(),
            data_dir: PathBuf::from(given(&self.data_dir).unwrap_or("./cligate-data")),
            database_url: self.database_url()?,
            run_retention: match number("RUN_RETENTION_DAYS", &self.run_retention_days, 30)? {
                0 => None,
                days => Some(Duration::from_secs(
                    days.checked_mul(86_400)
                        .ok_or_else(|| anyhow!("RUN_RETENTION_DAYS: {days} days is too long"))?,
                )),
            },
            run_retention_bytes: match given(&self.run_retention_bytes) {
                None => None,
                Some(_) => match number("RUN_RETENTION_BYTES", &self.run_retention_bytes, 0)? {
                    0 => bail!("RUN_RETENTION_BYTES: must be more than 0 (unset it for no bound)"),
                    n => Some(n),
                },
            },
            data_dir_min_free_bytes: number("DATA_DIR_MIN_FREE_BYTES", &self.data_dir_min_free_bytes, 1 << 30)?,
            run_log_in_memory: match given(&self.run_log_in_memory).unwrap_or("false") {
                "false" | "0" => false,
                "true" | "1" => true,
                other => bail!("RUN_LOG_IN_MEMORY: '{other}' is neither true nor false"),
            },
            database_connect_timeout: match seconds(
                "DATABASE_CONNECT_TIMEOUT_SECONDS",
                &self.database_connect_timeout_seconds,
                30.0,
            )? {
                t if t.is_zero() => bail!("DATABASE_CONNECT_TIMEOUT_SECONDS: must be more than 0"),
                t => t,
            },
            callback_allowed_urls: self.callback_allowed_urls()?,
            callback_secret: self.callback_secret()?,
            callback_retry: match seconds("CALLBACK_RETRY_SECONDS", &self.callback_retry_seconds, 3600.0)? {
                t if t.is_zero() => bail!("CALLBACK_RETRY_SECONDS: must be more than 0"),
                t => t,
            },
            callback_timeout: match seconds("CALLBACK_TIMEOUT_SECONDS", &self.callback_timeout_seconds, 10.0)? {
                t if t.is_zero() => bail!("CALLBACK_TIMEOUT_SECONDS: must be more than 0"),
                t => t,
            },
            projects: Default::default(),
            projects_file: given(&self.projects_file).map(PathBuf::from),
            workspace_root: given(&self.workspace_root)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(given(&self.data_dir).unwrap_or("./cligate-data")).join("workspaces")),
            workspace_host_root: match given(&self.workspace_host_root) {
                Some(p) if !p.starts_with('/') => bail!("WORKSPACE_HOST_ROOT: '{p}' is not an absolute path"),
                p => p.map(PathBuf::from),
            },
            git_author: (
                given(&self.git_author_name).unwrap_or("cligate").to_string(),
                given(&self.git_author_email).unwrap_or("cligate@localhost").to_string(),
            ),
            git_timeout: match seconds("GIT_TIMEOUT_SECONDS", &self.git_timeout_seconds, 120.0)? {
                t if t.is_zero() => bail!("GIT_TIMEOUT_SECONDS: must be more than 0"),
                t => t,
            },
            search_path: self.path.map(OsString::from).unwrap_or_default(),
            gateway_credentials: Vec::new(),
        })
    }

    /// Each prefix must be an absolute http(s) URL without user info, query or fragment.
    fn callback_allowed_urls(&self) -> Result<Vec<url::Url>> {
        list(self.callback_allowed_urls.as_deref())
            .iter()
            .map(|entry| crate::callbacks::parse_prefix(entry).map_err(|why| anyhow!("CALLBACK_ALLOWED_URLS: {why}")))
            .collect()
    }

    /// Required when prefixes are set; never printed, not even in the error.
    fn callback_secret(&self) -> Result<Option<Secret>> {
        let secret = self.callback_secret.as_deref().filter(|s| !s.is_empty());
        let prefixes = !list(self.callback_allowed_urls.as_deref()).is_empty();
        match secret {
            None if prefixes => {
                bail!("CALLBACK_SECRET: must be set when CALLBACK_ALLOWED_URLS is (callbacks are signed with it)")
            }
            Some(s) if s.len() < 16 => bail!(
                "CALLBACK_SECRET: a key of {} bytes is too short to be a secret (16 at least)",
                s.len()
            ),
            s => Ok(s.map(Secret::new)),
        }
    }

    fn database_url(&self) -> Result<Option<DatabaseUrl>> {
        let Some(url) = given(&self.database_url) else {
            return Ok(None);
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            bail!(
                "DATABASE_URL: '{}' is not a postgres:// or postgresql:// URL (unset it for SQLite in DATA_DIR)",
                crate::store::redact(url)
            );
        }
        Ok(Some(DatabaseUrl(url.to_string())))
    }

    fn tokens(&self) -> Result<Vec<Token>> {
        let mut entries: Vec<(&str, String, bool)> = list(self.auth_tokens.as_deref())
            .into_iter()
            .map(|t| ("AUTH_TOKENS", t, false))
            .collect();
        if let Some(file) = given(&self.auth_tokens_file) {
            let text =
                std::fs::read_to_string(file).with_context(|| format!("AUTH_TOKENS_FILE: cannot read '{file}'"))?;
            let before = entries.len();
            entries.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(|t| ("AUTH_TOKENS_FILE", t.to_string(), false)),
            );
            if entries.len() == before {
                bail!("AUTH_TOKENS_FILE: '{file}' holds no token");
            }
        }
        entries.extend(
            list(self.admin_tokens.as_deref())
                .into_iter()
                .map(|t| ("ADMIN_TOKENS", t, true)),
        );
        let mut tokens: Vec<Token> = Vec::with_capacity(entries.len());
        for (variable, entry, admin) in entries {
            let token = Token::parse(&entry, admin);
            if token.secret.len() < 16 {
                bail!(
                    "{variable}: a token of {} characters is too short to be a secret (16 at least)",
                    token.secret.len()
                );
            }
            if let Some(other) = tokens.iter().find(|t| t.name == token.name && t.secret != token.secret) {
                bail!(
                    "{variable}: the name '{}' is given to two different tokens{}",
                    token.name,
                    if other.admin != token.admin {
                        " (one of them an admin token)"
                    } else {
                        ""
                    }
                );
            }
            tokens.push(token);
        }
        Ok(tokens)
    }

    fn env_allow(&self) -> Result<Vec<String>> {
        let entries = list(self.run_env_allow.as_deref());
        let docker = given(&self.codex_docker_image).is_some();
        for entry in &entries {
            let name = entry.strip_suffix('*').unwrap_or(entry);
            let ok = !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !name.as_bytes()[0].is_ascii_digit();
            if !ok {
                bail!("RUN_ENV_ALLOW: '{entry}' is neither a variable name nor a PREFIX_* pattern");
            }
            if let Some((pattern, family)) = crate::run::env_rule::floor_conflict(entry, docker) {
                bail!(
                    "RUN_ENV_ALLOW: '{entry}' would let requests set {pattern}, which no request may set in {} mode ({}: {})",
                    if docker { "docker" } else { "local" },
                    family.name,
                    family.why
                );
            }
        }
        Ok(entries)
    }

    fn allowed_clients(&self) -> Result<Vec<IpNet>> {
        list(self.allowed_clients.as_deref())
            .iter()
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| anyhow!("ALLOWED_CLIENTS: '{entry}' is not an IP address or CIDR"))
            })
            .collect()
    }

    fn instance(&self) -> Result<&str> {
        let instance = given(&self.cligate_instance).unwrap_or("cligate");
        if !instance
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            bail!("CLIGATE_INSTANCE: '{instance}' may hold only letters, digits, '.', '_' and '-'");
        }
        Ok(instance)
    }

    fn docker(&self, image: &str) -> Result<DockerConfig> {
        let bin = given(&self.docker_bin).unwrap_or("docker");
        let bin = resolve_program(bin, self.path.as_deref().unwrap_or("").as_ref())
            .ok_or_else(|| anyhow!("DOCKER_BIN: '{bin}' not found on PATH (docker mode needs the docker client)"))?;
        let instance = self.instance()?;
        let mut run_options = Vec::new();
        let mut flag = |name: &str, value: Option<&str>| {
            if let Some(v) = value {
                run_options.push(format!("--{name}={v}"));
            }
        };
        flag("network", given(&self.docker_network));
        flag("memory", given(&self.docker_memory));
        flag("cpus", given(&self.docker_cpus));
        flag("user", given(&self.docker_user));
        let pids = number("DOCKER_PIDS_LIMIT", &self.docker_pids_limit, 1024)?;
        if pids > 0 {
            run_options.push(format!("--pids-limit={pids}"));
        }
        if let Some(extra) = given(&self.docker_extra_args) {
            let extra: Vec<String> = serde_json::from_str(extra)
                .map_err(|_| anyhow!("DOCKER_EXTRA_ARGS: not a JSON array of strings: {extra}"))?;
            run_options.extend(extra);
        }
        let janitor_interval = seconds("DOCKER_JANITOR_SECONDS", &self.docker_janitor_seconds, 60.0)?;
        if janitor_interval.is_zero() {
            bail!("DOCKER_JANITOR_SECONDS: must be more than 0");
        }
        Ok(DockerConfig {
            image: image.to_string(),
            bin,
            run_options,
            instance: instance.to_string(),
            janitor_interval,
        })
    }
}

impl Token {
    /// `name:token` names the token; any other entry is the token alone, named by its hash.
    fn parse(entry: &str, admin: bool) -> Token {
        if let Some((name, secret)) = entry.split_once(':') {
            let plain_name = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if plain_name && secret.len() >= 16 {
                return Token {
                    name: name.to_string(),
                    secret: secret.to_string(),
                    admin,
                };
            }
        }
        use sha2::Digest;
        let digest = sha2::Sha256::digest(entry.as_bytes());
        let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        Token {
            name: format!("token-{hex}"),
            secret: entry.to_string(),
            admin,
        }
    }
}

/// Finds `program` the way a shell would: a name with a `/` is taken as is, anything else is
/// searched for as an executable file in each directory of `path`.
pub fn resolve_program(program: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable =
        |p: &std::path::Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        let p = PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    std::env::split_paths(path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config> {
        Config::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = config(&[]).unwrap();
        assert_eq!(c.clis, ["codex"]);
        assert_eq!(c.models, ["auto"]);
        assert!(matches!(c.mode, Mode::Local));
        assert_eq!(c.listen_addr, "0.0.0.0:8000".parse().unwrap());
        assert_eq!(c.timeout, None);
    }

    #[test]
    fn lists_are_trimmed_sorted_and_deduplicated() {
        let c = config(&[("CLI_LIST", " qwen, codex,,codex ,claude "), ("MODEL_LIST", "b, a ,,")]).unwrap();
        assert_eq!(c.clis, ["claude", "codex", "qwen"]);
        assert_eq!(c.models, ["b", "a"]);
    }

    #[test]
    fn timeout_off_when_empty_or_not_positive() {
        for v in ["", "0", "-3", "  "] {
            assert_eq!(
                config(&[("RUN_RESPONSE_TIMEOUT_SECONDS", v)]).unwrap().timeout,
                None,
                "{v:?}"
            );
        }
        let c = config(&[("RUN_RESPONSE_TIMEOUT_SECONDS", "1.5")]).unwrap();
        assert_eq!(c.timeout, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn bad_values_name_their_variable() {
        let cases: &[(&str, &str)] = &[
            ("RUN_RESPONSE_TIMEOUT_SECONDS", "soon"),
            ("RUN_RESPONSE_TIMEOUT_SECONDS", "inf"),
            ("RUN_IDLE_TIMEOUT_SECONDS", "x"),
            ("LISTEN_ADDR", "localhost"),
            ("CLI_LIST", " , "),
            ("CLI_LIST", "/bin/sh"),
            ("CLI_LIST", "-rf"),
            ("MAX_CONCURRENT_RUNS", "0"),
            ("MAX_QUEUED_RUNS", "-1"),
            ("AUTH_TOKENS", "short"),
            ("AUTH_TOKENS_FILE", "/nonexistent/tokens"),
            ("ALLOWED_CLIENTS", "10.0.0.0/33"),
            ("LOG_FORMAT", "xml"),
            ("RUN_OUTPUT_LIMIT_BYTES", "1k"),
            ("REQUEST_READ_TIMEOUT_SECONDS", "0"),
            ("MAX_CONNECTIONS", "0"),
            ("ADMIN_TOKENS", "short"),
            ("DATABASE_URL", "mysql://db/x"),
            ("RUN_RETENTION_DAYS", "-1"),
            ("RUN_RETENTION_DAYS", "999999999999999999"),
            ("RUN_RETENTION_BYTES", "0"),
            ("RUN_RETENTION_BYTES", "1G"),
            ("DATA_DIR_MIN_FREE_BYTES", "lots"),
        ];
        for (name, value) in cases {
            let err = config(&[(name, value)]).unwrap_err().to_string();
            assert!(err.starts_with(name), "{name}={value}: {err}");
        }
    }

    #[test]
    fn docker_mode_needs_the_client_and_builds_options() {
        let err = config(&[
            ("CODEX_DOCKER_IMAGE", "img"),
            ("DOCKER_BIN", "no-such-docker"),
            ("PATH", "/nonexistent"),
        ])
        .unwrap_err();
        assert!(err.to_string().starts_with("DOCKER_BIN"), "{err}");
        let c = config(&[
            ("CODEX_DOCKER_IMAGE", "img"),
            ("DOCKER_BIN", "/bin/sh"),
            ("DOCKER_NETWORK", "host"),
            ("DOCKER_EXTRA_ARGS", r#"["--read-only"]"#),
        ])
        .unwrap();
        let d = c.docker().unwrap();
        assert_eq!(d.run_options, ["--network=host", "--pids-limit=1024", "--read-only"]);
        assert!(
            config(&[
                ("CODEX_DOCKER_IMAGE", "i"),
                ("DOCKER_BIN", "/bin/sh"),
                ("DOCKER_EXTRA_ARGS", "--x")
            ])
            .is_err()
        );
    }

    #[test]
    fn readme_documents_every_variable_with_its_default() {
        let readme = include_str!("../README.md");
        for (name, default, _) in VARIABLES {
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `{name}` |")))
                .unwrap_or_else(|| panic!("README has no row for {name}"));
            if !default.is_empty() {
                assert!(
                    row.contains(&format!("`{default}`")),
                    "README row of {name} lacks its default: {row}"
                );
            }
        }
    }

    #[test]
    fn tokens_come_from_the_variable_and_the_file() {
        let dir = std::env::temp_dir().join(format!("cligate-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tokens");
        std::fs::write(
            &file,
            "# ops team\n  token-from-the-file-1  \n\ntoken-from-the-file-2\n",
        )
        .unwrap();
        let c = config(&[
            ("AUTH_TOKENS", "token-from-the-variable"),
            ("AUTH_TOKENS_FILE", file.to_str().unwrap()),
        ])
        .unwrap();
        let secrets: Vec<&str> = c.access.tokens.iter().map(|t| t.secret.as_str()).collect();
        assert_eq!(
            secrets,
            [
                "token-from-the-variable",
                "token-from-the-file-1",
                "token-from-the-file-2"
            ]
        );
        std::fs::write(&file, "# nothing but a comment\n").unwrap();
        let err = config(&[("AUTH_TOKENS_FILE", file.to_str().unwrap())]).unwrap_err();
        assert!(err.to_string().starts_with("AUTH_TOKENS_FILE"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tokens_carry_a_name_never_the_secret() {
        let c = config(&[
            ("AUTH_TOKENS", "alice:alice-secret-0123456789,plain-token-0123456789"),
            ("ADMIN_TOKENS", "ops:ops-secret-0123456789abc"),
        ])
        .unwrap();
        let t = &c.access.tokens;
        assert_eq!(
            (t[0].name.as_str(), t[0].secret.as_str(), t[0].admin),
            ("alice", "alice-secret-0123456789", false)
        );
        assert!(
            t[1].name.starts_with("token-") && t[1].name.len() == 18,
            "{}",
            t[1].name
        );
        assert!(!t[1].name.contains("plain"));
        assert_eq!((t[2].name.as_str(), t[2].admin), ("ops", true));
        assert!(!format!("{t:?}").contains("secret-0123"), "Debug hides secrets");
        // A short secret after a name is refused, the whole entry is not taken as the token.
        let err = config(&[("AUTH_TOKENS", "x:short")]).unwrap_err().to_string();
        assert!(err.starts_with("AUTH_TOKENS"), "{err}");
        let err = config(&[
            ("ADMIN_TOKENS", "a:0123456789abcdefgh"),
            ("AUTH_TOKENS", "a:zzzzzzzzzzzzzzzzzzzz"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("two different tokens"), "{err}");
    }

    #[test]
    fn env_allow_takes_names_and_prefix_patterns() {
        let c = config(&[("RUN_ENV_ALLOW", "OPENAI_API_KEY, MY_*")]).unwrap();
        assert_eq!(c.env_allow, ["OPENAI_API_KEY", "MY_*"]);
        for bad in ["A-B", "*", "1X", "A*B"] {
            let err = config(&[("RUN_ENV_ALLOW", bad)]).unwrap_err().to_string();
            assert!(err.starts_with("RUN_ENV_ALLOW"), "{bad}: {err}");
        }
    }

    #[test]
    fn env_allow_cannot_open_the_floor() {
        for bad in [
            "PATH",
            "MY_A,LD_PRELOAD",
            "LD_*",
            "L*",
            "DYLD_INSERT_LIBRARIES",
            "GLIBC_TUNABLES",
        ] {
            let err = config(&[("RUN_ENV_ALLOW", bad)]).unwrap_err().to_string();
            assert!(
                err.starts_with("RUN_ENV_ALLOW") && err.contains("local mode"),
                "{bad}: {err}"
            );
        }
        let docker = [("CODEX_DOCKER_IMAGE", "img"), ("DOCKER_BIN", "/bin/sh")];
        for bad in [
            "DOCKER_HOST",
            "DOCKER_*",
            "BUILDKIT_*",
            "HOME",
            "HTTPS_PROXY",
            "no_proxy",
            "PATH",
            "LD_*",
        ] {
            let err = config(&[docker[0], docker[1], ("RUN_ENV_ALLOW", bad)])
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("RUN_ENV_ALLOW") && err.contains("docker mode"),
                "{bad}: {err}"
            );
        }
        // What the floor leaves open: HOME and proxies in local mode, tool settings anywhere.
        config(&[("RUN_ENV_ALLOW", "HOME,HTTPS_PROXY,OPENSSL_CONF,GIT_*")]).unwrap();
        config(&[
            docker[0],
            docker[1],
            ("RUN_ENV_ALLOW", "OPENSSL_CONF,GIT_*,NODE_*,MY_*"),
        ])
        .unwrap();
    }

    #[test]
    fn run_store_settings() {
        let c = config(&[]).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./cligate-data"));
        assert_eq!(c.database_url, None);
        assert_eq!(c.run_retention, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(c.run_retention_bytes, None);
        assert_eq!(c.data_dir_min_free_bytes, 1_073_741_824);
        let c = config(&[
            ("DATA_DIR", "/var/lib/cligate"),
            ("DATABASE_URL", "postgres://gw:hunter2@db:5432/cligate"),
            ("RUN_RETENTION_DAYS", "0"),
            ("RUN_RETENTION_BYTES", "5000000000"),
            ("DATA_DIR_MIN_FREE_BYTES", "0"),
        ])
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/cligate"));
        assert_eq!(
            c.database_url.as_ref().map(DatabaseUrl::as_str),
            Some("postgres://gw:hunter2@db:5432/cligate")
        );
        assert_eq!((c.run_retention, c.run_retention_bytes), (None, Some(5_000_000_000)));
        assert_eq!(c.data_dir_min_free_bytes, 0);
        assert!(
            !format!("{c:?}").contains("hunter2"),
            "Debug hides the database password"
        );
        let err = config(&[("DATABASE_URL", "mysql://u:hunter2@db/x")])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(config(&[("DATABASE_URL", "postgresql://db/x")]).is_ok());
    }

    #[test]
    fn callback_settings() {
        let c = config(&[]).unwrap();
        assert!(c.callback_allowed_urls.is_empty() && c.callback_secret.is_none());
        assert_eq!(c.callback_retry, Duration::from_secs(3600));
        assert_eq!(c.callback_timeout, Duration::from_secs(10));
        let c = config(&[
            (
                "CALLBACK_ALLOWED_URLS",
                "https://hooks.example/cligate/, http://10.0.0.5:9000",
            ),
            ("CALLBACK_SECRET", "callback-hunter2-0123456789"),
            ("CALLBACK_RETRY_SECONDS", "60"),
            ("CALLBACK_TIMEOUT_SECONDS", "2.5"),
        ])
        .unwrap();
        assert_eq!(c.callback_allowed_urls.len(), 2);
        assert_eq!(c.callback_retry, Duration::from_secs(60));
        assert_eq!(c.callback_timeout, Duration::from_millis(2500));
        assert!(!format!("{c:?}").contains("hunter2"), "Debug hides the callback secret");
        let err = config(&[("CALLBACK_ALLOWED_URLS", "https://hooks.example/")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("CALLBACK_SECRET"), "{err}");
        for bad in [
            "ftp://hooks.example/",
            "file:///tmp",
            "hooks.example",
            "http://u:p@h/",
            "http://h/?q",
        ] {
            let err = config(&[
                ("CALLBACK_ALLOWED_URLS", bad),
                ("CALLBACK_SECRET", "0123456789abcdefgh"),
            ])
            .unwrap_err()
            .to_string();
            assert!(err.starts_with("CALLBACK_ALLOWED_URLS"), "{bad}: {err}");
        }
        let err = config(&[
            ("CALLBACK_ALLOWED_URLS", "http://h/"),
            ("CALLBACK_SECRET", "short-hunter2"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("CALLBACK_SECRET") && !err.contains("hunter2"), "{err}");
        for (name, value) in [("CALLBACK_RETRY_SECONDS", "0"), ("CALLBACK_TIMEOUT_SECONDS", "x")] {
            let err = config(&[(name, value)]).unwrap_err().to_string();
            assert!(err.starts_with(name), "{err}");
        }
    }

    #[test]
    fn allowed_clients_accept_addresses_and_networks() {
        let c = config(&[("ALLOWED_CLIENTS", "127.0.0.1, 10.0.0.0/8,::1")]).unwrap();
        assert_eq!(c.access.allowed.len(), 3);
    }
}
