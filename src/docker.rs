//! Talking to the Docker engine through the `docker` client: ending a run's container, finding
//! the containers a crashed gateway left behind, and checking that the engine and image exist.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::Command;

use crate::run::plan::LABEL_INSTANCE;

/// How long one engine call may take before we give up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `docker <args>`, returning its stdout; fails on a non-zero exit or a hung engine.
async fn call(bin: &Path, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(CALL_TIMEOUT, cmd.output())
        .await
        .with_context(|| {
            format!(
                "docker {} did not answer in {}s",
                args.join(" "),
                CALL_TIMEOUT.as_secs()
            )
        })?
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "docker {}: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sends `signal` to the container's main process through the engine.
pub async fn kill(bin: &Path, container: &str, signal: &str) -> Result<()> {
    call(bin, &["kill", "--signal", signal, container]).await.map(drop)
}

/// Kills and removes the container; true when there was one to remove.
pub async fn remove(bin: &Path, container: &str) -> bool {
    match call(bin, &["rm", "--force", container]).await {
        Ok(_) => true,
        Err(e) => {
            let text = e.to_string();
            if !text.contains("No such container") && !text.contains("already in progress") {
                tracing::warn!(container, error = %text, "removing container failed");
            }
            false
        }
    }
}

/// Names of the containers labelled as this instance's (running or not).
pub async fn list_instance(bin: &Path, instance: &str) -> Result<Vec<String>> {
    let filter = format!("label={LABEL_INSTANCE}={instance}");
    let out = call(bin, &["ps", "--all", "--filter", &filter, "--format", "{{.Names}}"]).await?;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// Removes every container of this instance: what a crashed gateway left running.
pub async fn clean_instance(bin: &Path, instance: &str) -> Result<usize> {
    let mut removed = 0;
    for name in list_instance(bin, instance).await? {
        if remove(bin, &name).await {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Checks that the engine answers.
pub async fn engine_version(bin: &Path) -> Result<String> {
    Ok(call(bin, &["version", "--format", "{{.Server.Version}}"])
        .await?
        .trim()
        .to_string())
}

/// Checks that the run image exists locally.
pub async fn image_exists(bin: &Path, image: &str) -> Result<()> {
    call(bin, &["image", "inspect", "--format", "{{.Id}}", image])
        .await
        .map(drop)
        .with_context(|| format!("image '{image}' is not available to the engine"))
}
