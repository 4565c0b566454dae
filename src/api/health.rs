//! `GET /healthz` (the process answers) and `GET /readyz` (it can run things: the run store
//! answers, `DATA_DIR` is writable, and in docker mode the engine answers and the image exists).

use crate::api::App;
use crate::docker;

/// Ok, or what is wrong.
pub async fn ready(app: &App, shutting_down: bool) -> Result<serde_json::Value, String> {
    if shutting_down {
        return Err("the gateway is shutting down".into());
    }
    let store_ms = app
        .runs
        .store
        .ping()
        .await
        .map_err(|e| format!("the run store does not answer (DATABASE_URL): {e:#}"))?
        .as_secs_f64()
        * 1000.0;
    let probe = app.runs.logs.root().join(".ready-probe");
    std::fs::write(&probe, b"ok")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| format!("DATA_DIR is not writable ({}): {e}", app.runs.logs.root().display()))?;
    let store = app.runs.store.backend().name();
    let config = &app.config;
    // Which replica answered, and how many others are alive (as of its last heartbeat).
    let replica = config.instance.as_str();
    let peers = app.replicas.as_ref().map_or(0, |r| r.peers());
    let Some(d) = config.docker() else {
        return Ok(serde_json::json!({
            "status": "ready", "mode": "local", "store": store, "store_ms": store_ms,
            "replica": replica, "peers": peers,
        }));
    };
    let engine = docker::engine_version(&d.bin)
        .await
        .map_err(|e| format!("docker engine not reachable: {e:#}"))?;
    docker::image_exists(&d.bin, &d.image)
        .await
        .map_err(|e| format!("{e:#}"))?;
    Ok(serde_json::json!({
        "status": "ready", "mode": "docker", "engine": engine, "image": d.image,
        "store": store, "store_ms": store_ms, "replica": replica, "peers": peers,
    }))
}
