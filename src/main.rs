//! The `cligate` binary: read the configuration, set up logging, bind, serve until SIGTERM/SIGINT.

use std::process::ExitCode;
use std::sync::Arc;

use cligate::config::{Config, VARIABLES};
use cligate::{server, telemetry};

fn help() -> String {
    let mut out = format!(
        "cligate {} — runs allow-listed CLIs for HTTP clients and streams their output as NDJSON.\n\n\
         Usage: cligate [--help | --version]\n\nConfiguration (environment variables):\n",
        env!("CARGO_PKG_VERSION")
    );
    for (name, default, meaning) in VARIABLES {
        let default = if default.is_empty() {
            "unset".to_string()
        } else {
            format!("default {default}")
        };
        out.push_str(&format!("  {name:<30} {meaning} ({default})\n"));
    }
    out
}

#[tokio::main]
async fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("--help" | "-h") => {
            print!("{}", help());
            return ExitCode::SUCCESS;
        }
        Some("--version" | "-V") => {
            println!("cligate {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("cligate: unknown argument '{other}'; settings come from the environment (see --help)");
            return ExitCode::from(2);
        }
    }
    let config = match Config::from_env() {
        Ok(c) => Arc::new(c),
        Err(e) => return startup_failed(&format!("{e:#}")),
    };
    telemetry::init(config.log_json);
    let listener = match server::bind(config.listen_addr) {
        Ok(l) => l,
        Err(e) => {
            return startup_failed(&format!("LISTEN_ADDR: cannot listen on {}: {e}", config.listen_addr));
        }
    };
    let app = match server::prepare(config.clone()).await {
        Ok(app) => app,
        Err(e) => return startup_failed(&format!("{e:#}")),
    };
    // After the last start-up check (a failed start-up is one line on stderr), before serving:
    // the connection cap (server::ConnectionCap) is computed from the raised limit.
    let (fd_soft, fd_hard) = match server::raise_fd_limit() {
        Ok((soft, hard)) => (Some(soft), Some(hard)),
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the file-descriptor limit (RLIMIT_NOFILE)");
            (None, None)
        }
    };
    tracing::info!(
        addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        fd_soft,
        fd_hard,
        clis = ?config.clis,
        mode = if config.docker().is_some() { "docker" } else { "local" },
        "listening"
    );
    match server::run(listener, app, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "server failed");
            ExitCode::FAILURE
        }
    }
}

/// Reports a start-up failure as exactly one line on stderr (`cligate: VARIABLE: reason`), also
/// when the reason quotes a multi-line message such as the docker client's stderr.
fn startup_failed(reason: &str) -> ExitCode {
    let one_line: Vec<&str> = reason.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    eprintln!("cligate: {}", one_line.join(" | "));
    ExitCode::from(2)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
