//! Prometheus metrics: what the gateway is doing, for scraping at `GET /metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CliLabels {
    pub cli: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FinishLabels {
    pub cli: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub stream: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabels {
    pub cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CleanupLabels {
    /// `run`: a container ended with its run; `startup`: a leftover of an earlier gateway;
    /// `janitor`: a container that belonged to no run.
    pub when: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabels {
    /// `CLIGATE_INSTANCE`.
    pub replica: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.5, 14))
}

/// Every metric the gateway exports. Cheap to update from any task.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub runs_started: Family<CliLabels, Counter>,
    pub runs_finished: Family<FinishLabels, Counter>,
    pub exit_codes: Family<CodeLabels, Counter>,
    pub run_duration: Family<CliLabels, Histogram, fn() -> Histogram>,
    pub bytes: Family<StreamLabels, Counter>,
    pub active_runs: Gauge,
    pub queued: Gauge,
    pub rejected: Family<CauseLabels, Counter>,
    pub container_cleanups: Family<CleanupLabels, Counter>,
    /// Bytes appended to run logs.
    pub log_bytes: Counter,
    /// Readers following a run's log now (attached `/run` bodies and `/runs/{id}/stream`).
    pub log_readers: Gauge,
    /// Time taken by run-store calls on the run path (insert, finish).
    pub store_seconds: Histogram,
    /// Runs removed by retention.
    pub retention_removed: Counter,
    /// Idle branch worktrees removed.
    pub worktrees_removed: Counter,
    /// Detached runs waiting for a slot now.
    pub detached_queued: Gauge,
    /// Callbacks the receiver accepted (2xx).
    pub callbacks_delivered: Counter,
    /// Callbacks given up after `CALLBACK_RETRY_SECONDS` (or no longer allowed).
    pub callbacks_failed: Counter,
    /// Callback attempts after the first of their delivery.
    pub callbacks_retried: Counter,
    /// Deliveries this process is working on now (waiting, attempting or backing off).
    pub callbacks_pending: Gauge,
    /// 1 for this gateway's replica id (`CLIGATE_INSTANCE`).
    pub replica: Family<ReplicaLabels, Gauge>,
    /// Live replicas other than this one (PostgreSQL; 0 with SQLite).
    pub replica_peers: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("cligate");
        let m = Metrics {
            runs_started: Family::default(),
            runs_finished: Family::default(),
            exit_codes: Family::default(),
            run_duration: Family::new_with_constructor(duration_histogram),
            bytes: Family::default(),
            active_runs: Gauge::default(),
            queued: Gauge::default(),
            rejected: Family::default(),
            container_cleanups: Family::default(),
            log_bytes: Counter::default(),
            log_readers: Gauge::default(),
            store_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            retention_removed: Counter::default(),
            worktrees_removed: Counter::default(),
            detached_queued: Gauge::default(),
            callbacks_delivered: Counter::default(),
            callbacks_failed: Counter::default(),
            callbacks_retried: Counter::default(),
            callbacks_pending: Gauge::default(),
            replica: Family::default(),
            replica_peers: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("runs_started", "Runs started, by CLI", m.runs_started.clone());
        registry.register(
            "runs_finished",
            "Runs finished, by CLI and end reason",
            m.runs_finished.clone(),
        );
        registry.register("run_exit_codes", "Runs finished, by exit code", m.exit_codes.clone());
        registry.register("run_duration_seconds", "Run duration, by CLI", m.run_duration.clone());
        registry.register(
            "output_bytes",
            "Bytes of CLI output streamed, by stream",
            m.bytes.clone(),
        );
        registry.register(
            "active_runs",
            "Runs holding a run slot now (executing or finishing)",
            m.active_runs.clone(),
        );
        registry.register(
            "queued_requests",
            "Run requests waiting for a slot now",
            m.queued.clone(),
        );
        registry.register("rejected_requests", "Requests refused, by cause", m.rejected.clone());
        registry.register(
            "container_cleanups",
            "Containers removed through the engine",
            m.container_cleanups.clone(),
        );
        registry.register("log_bytes", "Bytes appended to run logs", m.log_bytes.clone());
        registry.register(
            "log_readers",
            "Readers following a run's log now",
            m.log_readers.clone(),
        );
        registry.register(
            "store_seconds",
            "Run-store calls on the run path (record, finish)",
            m.store_seconds.clone(),
        );
        registry.register(
            "retention_removed_runs",
            "Finished runs removed by retention",
            m.retention_removed.clone(),
        );
        registry.register(
            "worktrees_removed",
            "Branch worktrees removed after WORKSPACE_TREE_IDLE_SECONDS unused",
            m.worktrees_removed.clone(),
        );
        registry.register(
            "detached_queued",
            "Detached runs waiting for a slot now",
            m.detached_queued.clone(),
        );
        registry.register(
            "callbacks_delivered",
            "Run callbacks accepted by their receiver",
            m.callbacks_delivered.clone(),
        );
        registry.register("callbacks_failed", "Run callbacks given up", m.callbacks_failed.clone());
        registry.register(
            "callbacks_retried",
            "Run callback attempts after the first",
            m.callbacks_retried.clone(),
        );
        registry.register(
            "callbacks_pending",
            "Run callbacks being delivered now",
            m.callbacks_pending.clone(),
        );
        registry.register("replica", "This gateway's replica id, always 1", m.replica.clone());
        registry.register(
            "replica_peers",
            "Live replicas other than this one sharing the PostgreSQL store",
            m.replica_peers.clone(),
        );
        registry.register(
            "build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        // Counted from zero, so the family is exposed (and rate() works) before the first clean-up.
        for when in ["run", "startup", "janitor"] {
            m.container_cleanups.get_or_create(&CleanupLabels { when }).inc_by(0);
        }
        Metrics { registry, ..m }
    }

    /// Names this gateway's replica (once, at start-up).
    pub fn replica(&self, id: &str) {
        self.replica
            .get_or_create(&ReplicaLabels {
                replica: id.to_string(),
            })
            .set(1);
    }

    pub fn observe_store(&self, took: std::time::Duration) {
        self.store_seconds.observe(took.as_secs_f64());
    }

    pub fn reject(&self, cause: &'static str) {
        self.rejected.get_or_create(&CauseLabels { cause }).inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}
