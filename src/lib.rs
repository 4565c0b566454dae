//! cligate: an HTTP gateway that runs allow-listed command-line programs (AI coding CLIs) for
//! remote clients, as local processes or sibling Docker containers, and streams their output
//! back as NDJSON frames.
//!
//! # Layout
//! A request flows through the modules in this order:
//! - [`server`]: accept loop, connections, graceful shutdown.
//! - [`api`]: routes, access control ([`auth`]), errors; `POST /run` in [`api::run`].
//! - [`admission`]: may the run start now, wait, or be refused.
//! - [`run::request`] → [`run::plan`]: validate the request, then build the exact launch (pure).
//! - [`run::supervisor`]: spawn, stream, enforce limits, end the process tree or container.
//! - [`run::output`] and [`run::frame`]: bytes → UTF-8 lines → NDJSON frames.
//! - [`run::registry`]: running sessions, for stop and duplicate checks.
//! - [`config`], [`metrics`], [`docker`], [`body`]: settings, Prometheus, engine calls, bodies.
//! - [`store`]: durable run records (SQLite or PostgreSQL); not yet called by the server.
//! - [`callbacks`]: POSTs a detached run's final record to its `callback_url`, signed, retried,
//!   resumed after a restart; called by [`runs`] when such a run ends.

pub mod admission;
pub mod api;
pub mod auth;
pub mod body;
pub mod callbacks;
pub mod config;
pub mod docker;
pub mod metrics;
pub mod run;
pub mod runlog;
pub mod runs;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod workspace;
