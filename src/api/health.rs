//! `GET /healthz` (the process answers) and `GET /readyz` (it can run things: the run store
//! answers, `DATA_DIR` is writable, and in docker mode the engine answers and the image exists).

use crate::api::App;

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
    let executor = &app.runs.executor;
    let mut body = serde_json::Map::new();
    body.insert("status".into(), "ready".into());
    body.insert("mode".into(), executor.name().into());
    body.extend(executor.ready().await?);
    body.insert("store".into(), app.runs.store.backend().name().into());
    body.insert("store_ms".into(), store_ms.into());
    // Which replica answered, and how many others are alive (as of its last heartbeat).
    body.insert("replica".into(), app.config.instance.as_str().into());
    body.insert("peers".into(), app.replicas.as_ref().map_or(0, |r| r.peers()).into());
    Ok(body.into())
}
