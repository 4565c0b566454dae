//! Settings: environment variables read once at start-up into an immutable, validated
//! [`Config`]. Each variable is declared once, in the `settings!` table below (name, default,
//! help, parser, and the executor it belongs to); `--help`, the README check and the parsing are
//! made from that table. A bad value stops start-up with one line naming the variable.

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use ipnet::IpNet;

/// Whom a setting belongs to: the gateway itself, or one way of launching runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Gateway,
    /// Read only in docker mode (`CODEX_DOCKER_IMAGE` set), though checked in every mode.
    Docker,
}

impl Section {
    pub const ALL: [Section; 2] = [Section::Gateway, Section::Docker];

    /// The heading of this section in `--help`.
    pub fn title(self) -> &'static str {
        match self {
            Section::Gateway => "Gateway",
            Section::Docker => "Docker executor (docker mode: CODEX_DOCKER_IMAGE set)",
        }
    }
}

/// One environment variable cligate reads, as `--help` and the README show it.
#[derive(Debug, Clone, Copy)]
pub struct Variable {
    pub name: &'static str,
    /// The value used when the variable is unset (or blank); empty = "unset", no value.
    pub default: &'static str,
    pub help: &'static str,
    pub section: Section,
}

/// What the environment says about one variable; its parser decides what a blank value means.
#[derive(Clone, Copy)]
struct Value<'a> {
    /// Exactly as set; `None` when unset.
    set: Option<&'a str>,
    default: &'static str,
}

impl<'a> Value<'a> {
    /// The trimmed value, or the default when unset or blank.
    fn text(self) -> &'a str {
        self.set
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .unwrap_or(self.default)
    }

    /// The value as set (a blank value stays blank), or the default when unset.
    fn raw(self) -> &'a str {
        self.set.unwrap_or(self.default)
    }

    /// [`Value::text`] unless that is empty (unset or blank, and no default).
    fn given(self) -> Option<&'a str> {
        Some(self.text()).filter(|s| !s.is_empty())
    }
}

/// A setting's parser; its error is prefixed with the variable's name.
type Parser<T> = fn(Value) -> Result<T, String>;

/// Declares every setting once: `NAME => field: Type = "default", parser, "help";`, grouped by
/// [`Section`]. Makes [`VARIABLES`] and [`Values`], whose `read` runs each parser on its value.
macro_rules! settings {
    ($( $section:ident { $( $name:ident => $field:ident: $ty:ty = $default:literal, $parse:expr, $help:literal; )* } )*) => {
        /// Every variable cligate reads, in `--help` and README order.
        pub const VARIABLES: &[Variable] = &[$($(
            Variable { name: stringify!($name), default: $default, help: $help, section: Section::$section },
        )*)*];

        /// Each setting parsed on its own, before the checks that span several.
        struct Values {
            $($( $field: $ty, )*)*
        }

        impl Values {
            fn read(env: &HashMap<String, String>) -> Result<Values> {
                Ok(Values {
                    $($( $field: parse(env, stringify!($name), $default, $parse)?, )*)*
                })
            }
        }
    };
}

settings! {
    Gateway {
        CLI_LIST => clis: Vec<String> = "codex", cli_list,
            "comma-separated allow-list of CLI names";
        MODEL_LIST => models: Vec<String> = "auto", |v| Ok(list(v.raw())),
            "comma-separated model ids returned by GET /models";
        RUN_RESPONSE_TIMEOUT_SECONDS => timeout: Option<Duration> = "", optional_seconds,
            "wall-clock limit of a run; empty or <= 0 disables it";
        RUN_IDLE_TIMEOUT_SECONDS => idle_timeout: Option<Duration> = "", optional_seconds,
            "end a run that prints nothing for this long; empty or <= 0 disables it";
        RUN_OUTPUT_LIMIT_BYTES => output_limit: Option<u64> = "1073741824", zero_is_off,
            "end a run once it has printed this many bytes (its log is on disk); 0 disables it";
        LISTEN_ADDR => listen_addr: SocketAddr = "0.0.0.0:8000", socket_addr,
            "address and port to listen on";
        KILL_GRACE_SECONDS => kill_grace: Duration = "5", seconds,
            "time between SIGTERM and SIGKILL when a run is ended";
        SHUTDOWN_GRACE_SECONDS => shutdown_grace: Duration = "10", seconds,
            "on SIGTERM/SIGINT, time running runs get to finish before they are ended";
        MAX_CONCURRENT_RUNS => max_concurrent: usize = "32", at_least_one,
            "runs executing at once";
        MAX_QUEUED_RUNS => max_queued: usize = "64", |v| Ok(whole(v)? as usize),
            "requests waiting for a run slot; more are refused with 503";
        DETACHED_RUN_NICE => detached_nice: i32 = "15", niceness,
            "CPU niceness (0-19) of detached runs: the gateway's work for them and their CLI processes yield the CPU to request handling, so submits and reads stay quick while runs execute; 0 = no lower";
        STREAM_READER_NICE => reader_nice: i32 = "10", niceness,
            "CPU niceness (0-19) of connections whose first request is GET /runs/{id}/stream: followers of a run's log yield the CPU to the runs and to request handling, and catch up from the log; 0 = no lower";
        QUEUE_TIMEOUT_SECONDS => queue_timeout: Option<Duration> = "30", optional_seconds,
            "longest wait for a run slot before 503; 0 = no limit";
        MAX_REQUEST_BYTES => max_request_bytes: usize = "16777216", request_bytes,
            "largest accepted request body (413 above)";
        AUTH_TOKENS => auth_tokens: Vec<Token> = "", |v| tokens(list(v.raw()), false),
            "comma-separated bearer tokens (or name:token); when set (or AUTH_TOKENS_FILE, ADMIN_TOKENS), every route but health needs one";
        AUTH_TOKENS_FILE => file_tokens: Vec<Token> = "", tokens_file,
            "file with one bearer token (or name:token) per line";
        ADMIN_TOKENS => admin_tokens: Vec<Token> = "", |v| tokens(list(v.raw()), true),
            "comma-separated bearer tokens (or name:token) that see and stop every run; also accepted where AUTH_TOKENS are";
        RUN_ENV_ALLOW => env_allow: Vec<String> = "", env_allow,
            "comma-separated env keys a request may set (names, or PREFIX_* patterns); unset = every key but the refused families";
        REQUEST_READ_TIMEOUT_SECONDS => request_read_timeout: Duration = "30", positive_seconds,
            "longest time to receive a request's headers and body (408 after)";
        MAX_CONNECTIONS => max_connections: usize = "1024", at_least_one,
            "open client connections at most (lowered to fit RLIMIT_NOFILE); further connections wait in the listen backlog";
        ALLOWED_CLIENTS => allowed_clients: Vec<IpNet> = "", allowed_clients,
            "comma-separated client IPs/CIDRs allowed to connect; empty = everyone";
        CLIGATE_INSTANCE => instance: String = "cligate", instance,
            "names this gateway's containers and run cgroups/processes (leftovers are cleaned at start-up)";
        DATA_DIR => data_dir: PathBuf = "./cligate-data", |v| Ok(PathBuf::from(v.text())),
            "directory of the run store (SQLite) and run logs; created when missing; one gateway at a time";
        DATABASE_URL => database_url: Option<DatabaseUrl> = "", database_url,
            "postgres:// or postgresql:// URL of the run store; unset = SQLite in DATA_DIR";
        RUN_RETENTION_DAYS => run_retention: Option<Duration> = "30", retention_days,
            "ended runs (records and logs) older than this are deleted; 0 = keep forever";
        RUN_RETENTION_BYTES => run_retention_bytes: Option<u64> = "", retention_bytes,
            "the oldest ended runs are deleted while their logs exceed this many bytes; unset = no bound";
        DATA_DIR_MIN_FREE_BYTES => data_dir_min_free_bytes: u64 = "1073741824", whole,
            "new runs are refused while DATA_DIR has less free space than this; 0 = no check";
        DATABASE_CONNECT_TIMEOUT_SECONDS => database_connect_timeout: Duration = "30", positive_seconds,
            "how long start-up waits for PostgreSQL to answer before it gives up";
        ADVERTISE_URL => advertise_url: Option<url::Url> = "", advertise_url,
            "with PostgreSQL: the http:// URL other replicas reach this one at; unset = http:// and the bound address (0.0.0.0 becomes 127.0.0.1)";
        REPLICA_SECRET => replica_secret: Option<Secret> = "", replica_secret,
            "with PostgreSQL: shared key of the replica-to-replica calls (16 bytes at least); unset = runs of other replicas are not forwarded to";
        REPLICA_DEAD_SECONDS => replica_dead: Duration = "15", replica_dead,
            "with PostgreSQL: a replica whose heartbeat (every third of this) is older is dead; its runs become interrupted";
        RUN_LOG_IN_MEMORY => run_log_in_memory: bool = "false", boolean,
            "benchmarks only: keep run logs in memory instead of files (unbounded; nothing outlives the run)";
        CALLBACK_ALLOWED_URLS => callback_allowed_urls: Vec<url::Url> = "", callback_prefixes,
            "comma-separated http(s) URL prefixes a detached run's callback_url must start with; empty = callbacks refused";
        CALLBACK_SECRET => callback_secret: Option<Secret> = "", callback_secret,
            "HMAC-SHA256 key of the X-Cligate-Signature header of callbacks; required with CALLBACK_ALLOWED_URLS";
        CALLBACK_RETRY_SECONDS => callback_retry: Duration = "3600", positive_seconds,
            "how long a callback is retried after its run ended before it is given up as failed";
        CALLBACK_TIMEOUT_SECONDS => callback_timeout: Duration = "10", positive_seconds,
            "limit of one callback attempt (connect, send, response head)";
        PROJECTS_FILE => projects_file: Option<PathBuf> = "", |v| Ok(v.given().map(PathBuf::from)),
            "TOML (or .json) file of the operator's git projects runs may work on; unset = no workspaces";
        WORKSPACE_ROOT => workspace_root: Option<PathBuf> = "$DATA_DIR/workspaces", workspace_root,
            "where each project's repository and its branches' worktrees live";
        WORKSPACE_HOST_ROOT => workspace_host_root: Option<PathBuf> = "", absolute_path,
            "docker mode, gateway in a container: WORKSPACE_ROOT as the engine's host sees it";
        WORKSPACE_TREE_IDLE_SECONDS => workspace_tree_idle: Option<Duration> = "604800", optional_seconds,
            "a branch's worktree no run has used for this long is removed (the branch and its commits stay in the project's repository); 0 = keep forever";
        GIT_AUTHOR_NAME => git_author_name: String = "cligate", |v| Ok(v.text().to_string()),
            "author and committer name of the commits after runs";
        GIT_AUTHOR_EMAIL => git_author_email: String = "cligate@localhost", |v| Ok(v.text().to_string()),
            "author and committer e-mail of the commits after runs";
        GIT_TIMEOUT_SECONDS => git_timeout: Duration = "120", positive_seconds,
            "limit of each git step (fetch, push, commit, preview); the step is killed after it";
        LOG_FORMAT => log_json: bool = "text", log_format,
            "text or json";
        RUST_LOG => _rust_log: () = "info", |_| Ok(()),
            "log filter (read by the logger itself)";
    }
    Docker {
        CODEX_DOCKER_IMAGE => docker_image: Option<String> = "", |v| Ok(v.given().map(String::from)),
            "image for docker mode; unset = local mode";
        LITELLM_BASE_URL => litellm_base_url: Option<String> = "", |v| Ok(v.given().map(String::from)),
            "passed into the container unless the request overrides it";
        LITELLM_API_KEY => litellm_api_key: Option<String> = "", |v| Ok(v.given().map(String::from)),
            "passed into the container unless the request sets its own key or its own base URL";
        DOCKER_BIN => docker_bin: String = "docker", |v| Ok(v.text().to_string()),
            "docker client used in docker mode";
        DOCKER_NETWORK => docker_network: Option<String> = "", |v| Ok(v.given().map(String::from)),
            "--network for run containers (default: the engine's default)";
        DOCKER_MEMORY => docker_memory: Option<String> = "", |v| Ok(v.given().map(String::from)),
            "--memory for run containers";
        DOCKER_CPUS => docker_cpus: Option<String> = "", |v| Ok(v.given().map(String::from)),
            "--cpus for run containers";
        DOCKER_PIDS_LIMIT => docker_pids_limit: u64 = "1024", whole,
            "--pids-limit for run containers; 0 = none";
        DOCKER_USER => docker_user: Option<String> = "", |v| Ok(v.given().map(String::from)),
            "--user for run containers";
        DOCKER_EXTRA_ARGS => docker_extra_args: Vec<String> = "", json_args,
            "JSON array of further `docker run` options (operator only)";
        DOCKER_JANITOR_SECONDS => docker_janitor_interval: Duration = "60", positive_seconds,
            "how often containers of this instance that belong to no run are removed";
    }
}

/// Runs one setting's parser on its value (or default) and names the variable in its error.
fn parse<T>(env: &HashMap<String, String>, name: &str, default: &'static str, parser: Parser<T>) -> Result<T> {
    let value = Value {
        set: env.get(name).map(String::as_str),
        default,
    };
    parser(value).map_err(|why| anyhow!("{name}: {why}"))
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
    /// `DETACHED_RUN_NICE`: the niceness detached runs execute at (0–19).
    pub detached_nice: i32,
    /// `STREAM_READER_NICE`: the niceness of connections that follow a run's log (0–19).
    pub reader_nice: i32,
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
    /// A worktree unused this long is removed; `None` = kept forever.
    pub workspace_tree_idle: Option<Duration>,
    /// Name and e-mail of the gateway's commits.
    pub git_author: (String, String),
    /// Limit of each git step.
    pub git_timeout: Duration,
    /// `ADVERTISE_URL`: where other replicas reach this one (`None`: from the bound address).
    pub advertise_url: Option<url::Url>,
    /// `REPLICA_SECRET`: authenticates replica-to-replica calls; `None` = no forwarding.
    pub replica_secret: Option<Secret>,
    /// `REPLICA_DEAD_SECONDS`: a replica whose heartbeat is older is dead.
    pub replica_dead: Duration,
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
        let env: HashMap<String, String> = vars.into_iter().collect();
        let mut credentials: Vec<String> = env
            .keys()
            .filter(|key| crate::run::plan::is_credential(key))
            .cloned()
            .collect();
        credentials.sort();
        let search_path = env.get("PATH").map(OsString::from).unwrap_or_default();
        let mut config = Values::read(&env)?.validate(search_path)?;
        config.gateway_credentials = credentials;
        if let Some(file) = &config.projects_file {
            // The credentials it names are read from the same environment.
            config.projects = crate::workspace::projects::load(file, |k| env.get(k).cloned())?;
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

impl Values {
    /// The checks that span several settings, then the [`Config`] the rest of the code reads.
    fn validate(self, search_path: OsString) -> Result<Config> {
        if self.callback_secret.is_none() && !self.callback_allowed_urls.is_empty() {
            bail!("CALLBACK_SECRET: must be set when CALLBACK_ALLOWED_URLS is (callbacks are signed with it)");
        }
        let docker = self.docker_image.is_some();
        for entry in &self.env_allow {
            if let Some((pattern, family)) = crate::run::env_rule::floor_conflict(entry, docker) {
                bail!(
                    "RUN_ENV_ALLOW: '{entry}' would let requests set {pattern}, which no request may set in {} mode ({}: {})",
                    if docker { "docker" } else { "local" },
                    family.name,
                    family.why
                );
            }
        }
        let tokens = distinct_names([
            ("AUTH_TOKENS", &self.auth_tokens),
            ("AUTH_TOKENS_FILE", &self.file_tokens),
            ("ADMIN_TOKENS", &self.admin_tokens),
        ])?;
        let mode = match &self.docker_image {
            None => Mode::Local,
            Some(image) => Mode::Docker(DockerConfig {
                image: image.clone(),
                bin: resolve_program(&self.docker_bin, &search_path).ok_or_else(|| {
                    anyhow!(
                        "DOCKER_BIN: '{}' not found on PATH (docker mode needs the docker client)",
                        self.docker_bin
                    )
                })?,
                run_options: self.docker_run_options(),
                instance: self.instance.clone(),
                janitor_interval: self.docker_janitor_interval,
            }),
        };
        let workspace_root = self
            .workspace_root
            .clone()
            .unwrap_or_else(|| self.data_dir.join("workspaces"));
        Ok(Config {
            clis: self.clis,
            models: self.models,
            mode,
            litellm_base_url: self.litellm_base_url,
            litellm_api_key: self.litellm_api_key,
            timeout: self.timeout,
            idle_timeout: self.idle_timeout,
            output_limit: self.output_limit,
            listen_addr: self.listen_addr,
            kill_grace: self.kill_grace,
            shutdown_grace: self.shutdown_grace,
            max_concurrent: self.max_concurrent,
            max_queued: self.max_queued,
            detached_nice: self.detached_nice,
            reader_nice: self.reader_nice,
            queue_timeout: self.queue_timeout,
            max_request_bytes: self.max_request_bytes,
            request_read_timeout: self.request_read_timeout,
            max_connections: self.max_connections,
            env_allow: self.env_allow,
            access: Access {
                tokens,
                allowed: self.allowed_clients,
            },
            log_json: self.log_json,
            search_path,
            gateway_credentials: Vec::new(),
            instance: self.instance,
            data_dir: self.data_dir,
            database_url: self.database_url,
            run_retention: self.run_retention,
            run_retention_bytes: self.run_retention_bytes,
            data_dir_min_free_bytes: self.data_dir_min_free_bytes,
            run_log_in_memory: self.run_log_in_memory,
            database_connect_timeout: self.database_connect_timeout,
            callback_allowed_urls: self.callback_allowed_urls,
            callback_secret: self.callback_secret,
            callback_retry: self.callback_retry,
            callback_timeout: self.callback_timeout,
            projects: Default::default(),
            projects_file: self.projects_file,
            workspace_root,
            workspace_host_root: self.workspace_host_root,
            workspace_tree_idle: self.workspace_tree_idle,
            git_author: (self.git_author_name, self.git_author_email),
            git_timeout: self.git_timeout,
            advertise_url: self.advertise_url,
            replica_secret: self.replica_secret,
            replica_dead: self.replica_dead,
        })
    }

    /// `docker run` options from the DOCKER_* settings, in a fixed order, extra arguments last.
    fn docker_run_options(&self) -> Vec<String> {
        let flags = [
            ("network", self.docker_network.clone()),
            ("memory", self.docker_memory.clone()),
            ("cpus", self.docker_cpus.clone()),
            ("user", self.docker_user.clone()),
            (
                "pids-limit",
                Some(self.docker_pids_limit).filter(|&n| n > 0).map(|n| n.to_string()),
            ),
        ];
        flags
            .into_iter()
            .filter_map(|(name, value)| value.map(|v| format!("--{name}={v}")))
            .chain(self.docker_extra_args.iter().cloned())
            .collect()
    }
}

/// All tokens in order; one name may not stand for two different secrets.
fn distinct_names(sources: [(&str, &Vec<Token>); 3]) -> Result<Vec<Token>> {
    let mut tokens: Vec<Token> = Vec::new();
    for (variable, entries) in sources {
        for token in entries.iter().cloned() {
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
    }
    Ok(tokens)
}

// Parsers: each gets its variable's value and answers the setting or why the value is wrong.

/// Trims and drops blanks of a comma-separated list.
fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// `WORKSPACE_ROOT`: `None` for the default (under `DATA_DIR`, known only once it is read).
fn workspace_root(value: Value) -> Result<Option<PathBuf>, String> {
    Ok(Some(value.text()).filter(|t| *t != value.default).map(PathBuf::from))
}

/// An absolute path, or `None` when unset.
fn absolute_path(value: Value) -> Result<Option<PathBuf>, String> {
    match value.given() {
        Some(p) if !p.starts_with('/') => Err(format!("'{p}' is not an absolute path")),
        p => Ok(p.map(PathBuf::from)),
    }
}

/// Seconds as a float; empty or `<= 0` mean "off".
fn optional_seconds(value: Value) -> Result<Option<Duration>, String> {
    let Some(text) = value.given() else {
        return Ok(None);
    };
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if !secs.is_finite() {
        return Err(format!("'{text}' is not a finite number of seconds"));
    }
    if secs <= 0.0 {
        return Ok(None);
    }
    Duration::try_from_secs_f64(secs)
        .map(Some)
        .map_err(|_| format!("'{text}' is too large"))
}

/// Seconds; `<= 0` is zero.
fn seconds(value: Value) -> Result<Duration, String> {
    Ok(optional_seconds(value)?.unwrap_or(Duration::ZERO))
}

fn positive_seconds(value: Value) -> Result<Duration, String> {
    match seconds(value)? {
        t if t.is_zero() => Err("must be more than 0".to_string()),
        t => Ok(t),
    }
}

fn whole(value: Value) -> Result<u64, String> {
    let text = value.text();
    text.parse().map_err(|_| format!("'{text}' is not a whole number"))
}

fn zero_is_off(value: Value) -> Result<Option<u64>, String> {
    Ok(Some(whole(value)?).filter(|&n| n > 0))
}

fn at_least_one(value: Value) -> Result<usize, String> {
    match whole(value)? {
        0 => Err("must be at least 1".to_string()),
        n => Ok(n as usize),
    }
}

/// A nice value a process may take without privileges: 0 (as the gateway) to 19 (lowest).
fn niceness(value: Value) -> Result<i32, String> {
    match whole(value)? {
        n @ 0..=19 => Ok(n as i32),
        n => Err(format!("{n} is not a niceness from 0 to 19")),
    }
}

fn boolean(value: Value) -> Result<bool, String> {
    match value.text() {
        "false" | "0" => Ok(false),
        "true" | "1" => Ok(true),
        other => Err(format!("'{other}' is neither true nor false")),
    }
}

fn socket_addr(value: Value) -> Result<SocketAddr, String> {
    let text = value.text();
    text.parse()
        .map_err(|_| format!("'{text}' is not an address like 0.0.0.0:8000"))
}

fn request_bytes(value: Value) -> Result<usize, String> {
    match whole(value)? {
        n if n < 64 => Err(format!("{n} is too small to hold a request")),
        n => Ok(n as usize),
    }
}

fn log_format(value: Value) -> Result<bool, String> {
    match value.text() {
        "text" => Ok(false),
        "json" => Ok(true),
        other => Err(format!("'{other}' is neither 'text' nor 'json'")),
    }
}

/// Sorted and de-duplicated; a name set but blank is an empty allow-list, refused.
fn cli_list(value: Value) -> Result<Vec<String>, String> {
    let mut clis = list(value.raw());
    if clis.is_empty() {
        return Err("the allow-list is empty; name at least one CLI".to_string());
    }
    if let Some(bad) = clis.iter().find(|c| !valid_cli_name(c)) {
        return Err(format!(
            "'{bad}' is not a plain program name (letters, digits, . _ - +; no paths)"
        ));
    }
    clis.sort();
    clis.dedup();
    Ok(clis)
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

/// Names and `PREFIX_*` patterns; what the floor refuses is checked with the mode, later.
fn env_allow(value: Value) -> Result<Vec<String>, String> {
    let entries = list(value.raw());
    for entry in &entries {
        let name = entry.strip_suffix('*').unwrap_or(entry);
        let ok = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if !ok {
            return Err(format!("'{entry}' is neither a variable name nor a PREFIX_* pattern"));
        }
    }
    Ok(entries)
}

fn tokens(entries: Vec<String>, admin: bool) -> Result<Vec<Token>, String> {
    entries
        .iter()
        .map(|entry| {
            let token = Token::parse(entry, admin);
            if token.secret.len() < 16 {
                return Err(format!(
                    "a token of {} characters is too short to be a secret (16 at least)",
                    token.secret.len()
                ));
            }
            Ok(token)
        })
        .collect()
}

/// One token per line; blank lines and `#` comments skipped; a file without a token is refused.
fn tokens_file(value: Value) -> Result<Vec<Token>, String> {
    let Some(file) = value.given() else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read '{file}': {e}"))?;
    let entries: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    if entries.is_empty() {
        return Err(format!("'{file}' holds no token"));
    }
    tokens(entries, false)
}

fn allowed_clients(value: Value) -> Result<Vec<IpNet>, String> {
    list(value.raw())
        .iter()
        .map(|entry| {
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| format!("'{entry}' is not an IP address or CIDR"))
        })
        .collect()
}

fn instance(value: Value) -> Result<String, String> {
    let instance = value.text();
    if !instance
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!("'{instance}' may hold only letters, digits, '.', '_' and '-'"));
    }
    Ok(instance.to_string())
}

fn database_url(value: Value) -> Result<Option<DatabaseUrl>, String> {
    let Some(url) = value.given() else {
        return Ok(None);
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(format!(
            "'{}' is not a postgres:// or postgresql:// URL (unset it for SQLite in DATA_DIR)",
            crate::store::redact(url)
        ));
    }
    Ok(Some(DatabaseUrl(url.to_string())))
}

fn retention_days(value: Value) -> Result<Option<Duration>, String> {
    match whole(value)? {
        0 => Ok(None),
        days => days
            .checked_mul(86_400)
            .map(|secs| Some(Duration::from_secs(secs)))
            .ok_or_else(|| format!("{days} days is too long")),
    }
}

/// Unset = no bound; set, it must be more than 0.
fn retention_bytes(value: Value) -> Result<Option<u64>, String> {
    if value.given().is_none() {
        return Ok(None);
    }
    match whole(value)? {
        0 => Err("must be more than 0 (unset it for no bound)".to_string()),
        n => Ok(Some(n)),
    }
}

/// Each prefix must be an absolute http(s) URL without user info, query or fragment.
fn callback_prefixes(value: Value) -> Result<Vec<url::Url>, String> {
    list(value.raw())
        .iter()
        .map(|entry| crate::callbacks::parse_prefix(entry))
        .collect()
}

/// Never printed, not even in the error; taken as set (not trimmed).
fn callback_secret(value: Value) -> Result<Option<Secret>, String> {
    match value.raw() {
        "" => Ok(None),
        s if s.len() < 16 => Err(format!(
            "a key of {} bytes is too short to be a secret (16 at least)",
            s.len()
        )),
        s => Ok(Some(Secret::new(s))),
    }
}

/// An absolute http(s) URL with a host and nothing after the path (a path prefix is kept).
fn advertise_url(value: Value) -> Result<Option<url::Url>, String> {
    let Some(text) = value.given() else {
        return Ok(None);
    };
    let url = url::Url::parse(text).map_err(|e| format!("'{text}' is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!("'{text}' must be an http:// or https:// URL with a host"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!("'{text}' must not carry user info, a query or a fragment"));
    }
    Ok(Some(url))
}

/// Never printed, not even in the error.
fn replica_secret(value: Value) -> Result<Option<Secret>, String> {
    match value.given() {
        None => Ok(None),
        Some(s) if s.len() < 16 => Err(format!(
            "a key of {} bytes is too short to be a secret (16 at least)",
            s.len()
        )),
        Some(s) => Ok(Some(Secret::new(s))),
    }
}

fn replica_dead(value: Value) -> Result<Duration, String> {
    match seconds(value)? {
        t if t < Duration::from_secs(1) => Err("must be 1 or more".to_string()),
        t => Ok(t),
    }
}

fn json_args(value: Value) -> Result<Vec<String>, String> {
    match value.given() {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str(text).map_err(|_| format!("not a JSON array of strings: {text}")),
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
            ("DETACHED_RUN_NICE", "20"),
            ("DETACHED_RUN_NICE", "-5"),
            ("STREAM_READER_NICE", "20"),
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

    /// The README's settings tables, one per [`Section`] in order: each row's name and text.
    fn readme_tables() -> Vec<Vec<(String, String)>> {
        let readme = include_str!("../README.md");
        let start = readme
            .find("\n## Configuration\n")
            .expect("README has a Configuration section");
        let end = readme[start + 1..]
            .find("\n## ")
            .map_or(readme.len(), |i| start + 1 + i);
        let mut tables: Vec<Vec<(String, String)>> = Vec::new();
        let mut in_table = false;
        for line in readme[start..end].lines() {
            let row = line.starts_with('|');
            if row && !in_table {
                tables.push(Vec::new());
            }
            in_table = row;
            if let Some((name, _)) = line.strip_prefix("| `").and_then(|rest| rest.split_once("` |")) {
                tables.last_mut().unwrap().push((name.to_string(), line.to_string()));
            }
        }
        tables.retain(|t| !t.is_empty());
        tables
    }

    #[test]
    fn readme_documents_every_variable_with_its_default_in_its_section() {
        let tables = readme_tables();
        assert_eq!(
            tables.len(),
            Section::ALL.len(),
            "one README table per section: {tables:?}"
        );
        for (section, table) in Section::ALL.iter().zip(&tables) {
            let documented: Vec<&str> = table.iter().map(|(name, _)| name.as_str()).collect();
            let declared: Vec<&str> = VARIABLES
                .iter()
                .filter(|v| v.section == *section)
                .map(|v| v.name)
                .collect();
            assert_eq!(
                documented, declared,
                "README table of {section:?}, in the order of the table"
            );
        }
        for v in VARIABLES.iter().filter(|v| !v.default.is_empty()) {
            let (_, row) = tables.iter().flatten().find(|(name, _)| name == v.name).unwrap();
            assert!(
                row.contains(&format!("`{}`", v.default)),
                "README row of {} lacks its default: {row}",
                v.name
            );
        }
    }

    #[test]
    fn replica_settings_are_checked() {
        let c = config(&[]).unwrap();
        assert_eq!(
            (c.advertise_url.clone(), c.replica_dead),
            (None, Duration::from_secs(15))
        );
        assert!(c.replica_secret.is_none());
        let c = config(&[
            ("ADVERTISE_URL", "http://10.0.0.5:8000/"),
            ("REPLICA_SECRET", "0123456789abcdef"),
            ("REPLICA_DEAD_SECONDS", "4.5"),
        ])
        .unwrap();
        assert_eq!(c.advertise_url.unwrap().as_str(), "http://10.0.0.5:8000/");
        assert_eq!(c.replica_dead, Duration::from_millis(4500));
        assert!(!format!("{:?}", c.replica_secret).contains("0123456789abcdef"));
        for (name, value, says) in [
            ("ADVERTISE_URL", "10.0.0.5:8000", "ADVERTISE_URL"),
            ("ADVERTISE_URL", "ftp://h/", "http:// or https://"),
            ("ADVERTISE_URL", "http://u:p@h/", "user info"),
            ("ADVERTISE_URL", "http://h/?x=1", "query"),
            ("REPLICA_SECRET", "short", "too short"),
            ("REPLICA_DEAD_SECONDS", "0.5", "1 or more"),
            ("REPLICA_DEAD_SECONDS", "0", "1 or more"),
            ("REPLICA_DEAD_SECONDS", "soon", "REPLICA_DEAD_SECONDS"),
        ] {
            let err = config(&[(name, value)]).unwrap_err().to_string();
            assert!(err.starts_with(name) && err.contains(says), "{name}={value}: {err}");
        }
    }

    #[test]
    fn each_default_is_the_value_used_when_the_variable_is_unset() {
        // Compared as Debug text; which credential names are set is not a setting.
        let shown = |vars: &[(&str, &str)]| {
            let mut c = config(vars).unwrap();
            c.gateway_credentials.clear();
            format!("{c:?}")
        };
        let explicit: Vec<(&str, &str)> = VARIABLES
            .iter()
            .filter(|v| !v.default.is_empty())
            .map(|v| (v.name, v.default))
            .collect();
        assert_eq!(shown(&explicit), shown(&[]));
        // Blank is the default too, but for the lists, where blank is an empty list, and the
        // secret, taken exactly as set.
        let blank: Vec<(&str, &str)> = VARIABLES
            .iter()
            .filter(|v| !matches!(v.name, "CLI_LIST" | "MODEL_LIST" | "CALLBACK_SECRET"))
            .map(|v| (v.name, " "))
            .collect();
        assert_eq!(shown(&blank), shown(&[]));
        assert!(config(&[("MODEL_LIST", "")]).unwrap().models.is_empty());
        let err = config(&[("CLI_LIST", "")]).unwrap_err().to_string();
        assert!(err.starts_with("CLI_LIST: the allow-list is empty"), "{err}");
    }

    #[test]
    fn names_are_unique_and_docker_settings_are_checked_in_local_mode_too() {
        let mut names: Vec<&str> = VARIABLES.iter().map(|v| v.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), VARIABLES.len());
        for (name, value) in [
            ("DOCKER_PIDS_LIMIT", "many"),
            ("DOCKER_JANITOR_SECONDS", "0"),
            ("DOCKER_EXTRA_ARGS", "--read-only"),
        ] {
            let err = config(&[(name, value)]).unwrap_err().to_string();
            assert!(err.starts_with(name), "{name}={value}: {err}");
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
        assert_eq!(c.workspace_tree_idle, Some(Duration::from_secs(7 * 86_400)));
        for (off, idle) in [("0", None), ("1.5", Some(Duration::from_millis(1500)))] {
            let c = config(&[("WORKSPACE_TREE_IDLE_SECONDS", off)]).unwrap();
            assert_eq!(c.workspace_tree_idle, idle, "{off}");
        }
        assert!(
            config(&[("WORKSPACE_TREE_IDLE_SECONDS", "a week")])
                .unwrap_err()
                .to_string()
                .contains("WORKSPACE_TREE_IDLE_SECONDS")
        );
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
