//! The `cligate` binary: read the configuration, set up logging, bind, start the containment
//! watchdog, serve until SIGTERM/SIGINT. `cligate --watchdog …` (internal, not in `--help`) is
//! that watchdog.

use std::process::ExitCode;
use std::sync::Arc;

use cligate::config::{Config, Section, VARIABLES};
use cligate::run::containment::{WATCHDOG_FLAG, watchdog_main};
use cligate::{server, telemetry};

fn help() -> String {
    let mut out = format!(
        "cligate {} — runs allow-listed CLIs for HTTP clients and streams their output as NDJSON.\n\n\
         Usage: cligate [--help | --version]\n\nConfiguration (environment variables):\n",
        env!("CARGO_PKG_VERSION")
    );
    for section in Section::ALL {
        out.push_str(&format!("\n{}:\n", section.title()));
        for v in VARIABLES.iter().filter(|v| v.section == section) {
            let default = if v.default.is_empty() {
                "unset".to_string()
            } else {
                format!("default {}", v.default)
            };
            out.push_str(&format!("  {:<32} {} ({default})\n", v.name, v.help));
        }
    }
    out
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(WATCHDOG_FLAG) {
        // No runtime, no logging set-up: it only waits for the gateway to be gone.
        return watchdog_main(&args[1..]);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return startup_failed(&format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(gateway(args.first().map(String::as_str)))
}

async fn gateway(arg: Option<&str>) -> ExitCode {
    match arg {
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
    let bound = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => return startup_failed(&format!("LISTEN_ADDR: cannot read the bound address: {e}")),
    };
    let app = match server::prepare(config.clone(), bound).await {
        Ok(app) => app,
        Err(e) => return startup_failed(&format!("{e:#}")),
    };
    // Ends this gateway's runs if it dies without shutting down (SIGKILL, OOM killer, a crash).
    let _watchdog = match app.containment.start_watchdog() {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the containment watchdog; runs of a killed gateway are ended at the next start-up");
            None
        }
    };
    // A replica registers before it says it listens: a name already in use stops start-up.
    if let Some(replicas) = &app.replicas
        && let Err(e) = replicas.register(bound).await
    {
        return startup_failed(&format!("{e:#}"));
    }
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
