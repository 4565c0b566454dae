//! Processes that escape their run: a CLI that starts `setsid sh -c '…' &` or Node's
//! `spawn(…, {detached: true})` leaves a process outside the run's process group. Whatever ends
//! the run (the CLI exiting, stop, timeout, the gateway being SIGKILLed), those processes end
//! with it, and they do not hold the exit frame back.

mod common;

use std::time::{Duration, Instant};

use common::{Binary, EndReason, Frame, FrameFields, Gateway, alive, assert_gone, pids_in};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

/// How soon an escaped process must be gone once the run has ended.
const GONE: Duration = Duration::from_secs(1);

/// Kills what a failed test left running (nothing, when the gateway did its job).
struct Reap(Vec<u32>);

impl Drop for Reap {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
    }
}

#[tokio::test]
async fn a_setsid_escapee_ends_with_the_run_and_does_not_hold_the_exit_frame() {
    let gw = Gateway::start(&[]).await;
    let started = Instant::now();
    let frames = gw.run_to_end(json!({"cli": "escape-setsid"})).await;
    let took = started.elapsed();
    let pids = pids_in(&frames.stdout());
    let _reap = Reap(pids.clone());
    assert_eq!(frames.exit(), (0, "exited".into()));
    assert_eq!(pids.len(), 1, "{frames:?}");
    // The escapee holds the run's stdout: the old supervisor gave the pipe 2 s (PIPE_DRAIN)
    // before it let go of it, and left the escapee running.
    assert!(took < Duration::from_millis(1500), "the exit frame took {took:?}");
    assert_gone(&pids, GONE).await;
}

#[tokio::test]
async fn a_detached_node_child_ends_with_the_run() {
    let gw = Gateway::start(&[]).await;
    for stdio in ["ignore", "inherit"] {
        let started = Instant::now();
        let frames = gw.run_to_end(json!({"cli": "escape-node", "args": [stdio]})).await;
        let took = started.elapsed();
        let pids = pids_in(&frames.stdout());
        let _reap = Reap(pids.clone());
        assert_eq!(frames.exit(), (0, "exited".into()), "{stdio}: {frames:?}");
        assert_eq!(pids.len(), 1, "{stdio}: {frames:?}");
        assert_gone(&pids, GONE).await;
        assert!(
            took < Duration::from_millis(1500),
            "{stdio}: the exit frame took {took:?}"
        );
    }
}

#[tokio::test]
async fn an_escapee_that_keeps_forking_is_ended_with_everything_it_started() {
    let gw = Gateway::start(&[]).await;
    let script = "setsid sh -c 'echo pid $$; for i in $(seq 100); do sleep 300 & echo pid $!; sleep 0.01; done' & \
                  sleep 0.3";
    let frames = gw.run_to_end(json!({"cli": "sh", "args": ["-c", script]})).await;
    let pids = pids_in(&frames.stdout());
    let _reap = Reap(pids.clone());
    assert_eq!(frames.exit(), (0, "exited".into()));
    assert!(pids.len() >= 2, "{frames:?}");
    assert_gone(&pids, GONE).await;
}

#[tokio::test]
async fn stop_ends_an_escaped_tree() {
    let gw = Gateway::start(&[]).await;
    let mut stream = gw
        .run(json!({"cli": "escape-setsid", "args": ["wait"], "session_id": "escape-stop"}))
        .await;
    let pids = stream.pids(2).await;
    let _reap = Reap(pids.clone());
    assert!(pids.iter().all(|p| alive(*p)));
    assert_eq!(gw.post("/sessions/escape-stop/stop", "").await.status, 200);
    let frames = stream.collect().await;
    assert_eq!(frames.0.last().unwrap().reason(), Some(EndReason::Stopped));
    assert_gone(&pids, GONE).await;
}

#[tokio::test]
async fn timeout_ends_an_escaped_tree() {
    let gw = Gateway::start(&[("RUN_RESPONSE_TIMEOUT_SECONDS", "1"), ("KILL_GRACE_SECONDS", "0.5")]).await;
    let mut stream = gw.run(json!({"cli": "escape-setsid", "args": ["wait"]})).await;
    let pids = stream.pids(2).await;
    let _reap = Reap(pids.clone());
    let frames = stream.collect().await;
    assert_eq!(
        frames.0.last().unwrap(),
        &Frame::Exit {
            code: 124,
            reason: EndReason::Timeout
        }
    );
    assert_gone(&pids, GONE).await;
}

/// Children of `parent` whose command line contains `needle`.
fn children_with(parent: u32, needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1));
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(&parent.to_string()) && String::from_utf8_lossy(&cmdline).contains(needle) {
            found.push(pid);
        }
    }
    found
}

/// Starts `escape-setsid wait` on `binary` and returns its stream and the pids of the CLI and
/// of its escapee.
async fn escaped_run(binary: &Binary) -> (common::RunStream, Vec<u32>) {
    let body = json!({"cli": "escape-setsid", "args": ["wait"]})
        .to_string()
        .into_bytes();
    let mut stream = common::RunStream::open(binary.addr, body, &[]).await;
    assert_eq!(stream.status, 200);
    let pids = stream.pids(2).await;
    assert!(pids.iter().all(|p| alive(*p)), "{pids:?}");
    (stream, pids)
}

fn instance(name: &str) -> String {
    format!("escape-{name}-{}", std::process::id())
}

/// The real binary, as the gateway instance `instance`, allowed `escape-setsid` only.
async fn real_gateway(instance: &str) -> Binary {
    Binary::start(&[("CLI_LIST", "escape-setsid"), ("CLIGATE_INSTANCE", instance)]).await
}

#[tokio::test]
async fn the_startup_line_names_the_containment() {
    let mut binary = real_gateway(&instance("line")).await;
    let line = binary.message("process containment").await;
    // The same host gives an in-process gateway the same mechanism.
    let gw = Gateway::start(&[]).await;
    let expected = gw.app.containment.mechanism();
    assert!(["cgroup-v2", "cgroup-v1", "proc-marker"].contains(&expected));
    assert_eq!(line["containment"], expected, "{line}");
    assert!(line["path"].as_str().is_some_and(|p| !p.is_empty()), "{line}");
    if expected != "proc-marker" {
        let path = line["path"].as_str().unwrap();
        assert!(path.contains(&format!("cligate.{}", instance("line"))), "{line}");
        assert!(std::path::Path::new(path).is_dir(), "{line}");
    }
    binary.kill_9().await;
}

#[tokio::test]
async fn a_gateway_killed_with_sigkill_leaves_no_run_behind() {
    let mut binary = real_gateway(&instance("kill9")).await;
    let (stream, pids) = escaped_run(&binary).await;
    let _reap = Reap(pids.clone());
    binary.kill_9().await;
    drop(stream);
    assert_gone(&pids, Duration::from_secs(5)).await;
    // The watchdog did it, and says so in the gateway's log format.
    let line = binary
        .message("the gateway is gone; killed what was left of its runs")
        .await;
    assert!(line["killed"].as_u64().unwrap() >= 2, "{line}");
}

#[tokio::test]
async fn a_restarted_gateway_ends_what_a_killed_one_left() {
    let name = instance("restart");
    let mut binary = real_gateway(&name).await;
    let (stream, pids) = escaped_run(&binary).await;
    let _reap = Reap(pids.clone());
    // Without its watchdog, nothing ends the runs of a killed gateway but the next start-up.
    for watchdog in children_with(binary.pid(), "--watchdog") {
        kill(Pid::from_raw(watchdog as i32), Signal::SIGKILL).unwrap();
    }
    binary.kill_9().await;
    drop(stream);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(pids.iter().all(|p| alive(*p)), "{pids:?}");

    let mut again = real_gateway(&name).await;
    assert_gone(&pids, Duration::from_secs(5)).await;
    let line = again.message("process containment").await;
    assert!(line["swept"].as_u64().unwrap() >= 2, "{line}");
    // The new gateway's own runs are not its predecessor's leftovers.
    let (stream, pids) = escaped_run(&again).await;
    let _reap = Reap(pids.clone());
    drop(stream);
    assert_gone(&pids, Duration::from_secs(5)).await;
    again.kill_9().await;
}
