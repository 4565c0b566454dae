//! `GET /healthz` (the process answers) and `GET /readyz` (it can run things: in docker mode the
//! engine answers and the image exists).

use crate::config::Config;
use crate::docker;

/// Ok, or what is wrong.
pub async fn ready(config: &Config, shutting_down: bool) -> Result<serde_json::Value, String> {
    if shutting_down {
        return Err("the gateway is shutting down".into());
    }
    let Some(d) = config.docker() else {
        return Ok(serde_json::json!({ "status": "ready", "mode": "local" }));
    };
    let engine = docker::engine_version(&d.bin)
        .await
        .map_err(|e| format!("docker engine not reachable: {e:#}"))?;
    docker::image_exists(&d.bin, &d.image)
        .await
        .map_err(|e| format!("{e:#}"))?;
    Ok(serde_json::json!({ "status": "ready", "mode": "docker", "engine": engine, "image": d.image }))
}
