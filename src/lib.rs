//! cligate: an HTTP gateway that runs allow-listed command-line programs (AI coding CLIs) for
//! remote clients, as local processes or sibling Docker containers, and streams their output
//! back as NDJSON frames.
//!
//! # Layout
//! A request flows through the modules in this order:
//! - [`server`]: accept loop, connections, graceful shutdown.
//! - [`api`]: routes, access control ([`auth`]), errors; `POST /run` in [`api::run`]; the web
//!   UI's embedded files in [`api::ui`].
//! - [`admission`]: may the run start now, wait, or be refused.
//! - [`runs`]: the run service: submit, admit, start, stop, finish; the only place runs are made.
//! - [`run::request`] → [`exec`]: validate the request, then the executor (local process or
//!   docker container) plans the exact launch (pure) and starts it.
//! - [`run::supervisor`]: drives one execution: streams, enforces limits, ends it.
//! - [`run::output`] and [`run::frame`]: bytes → UTF-8 lines → NDJSON frames.
//! - [`run::registry`]: running sessions, for stop and duplicate checks.
//! - [`runlog`]: each run's append-only log, read from byte offsets by every stream.
//! - [`config`], [`metrics`], [`body`]: settings, Prometheus, bodies.
//! - [`priority`]: runtimes at a lower CPU priority, for detached runs and log followers.
//! - [`store`]: durable run records (SQLite or PostgreSQL).
//! - [`replicas`]: several gateways on one PostgreSQL: heartbeats, dead replicas' runs;
//!   requests about another replica's run are forwarded by [`api::forward`].
//! - [`callbacks`]: POSTs a detached run's final record to its `callback_url`, signed, retried,
//!   resumed after a restart; called by [`runs`] when such a run ends.

pub mod admission;
pub mod api;
pub mod auth;
pub mod body;
pub mod callbacks;
pub mod config;
pub mod data_lock;
pub mod exec;
pub mod metrics;
pub mod priority;
pub mod replicas;
pub mod run;
pub mod runlog;
pub mod runs;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod workspace;
