//! Processes that escape their run: a CLI that starts `setsid sh -c '…' &` or Node's
//! `spawn(…, {detached: true})` leaves a process outside the run's process group. Whatever ends
//! the run (the CLI exiting, stop, timeout, the gateway being SIGKILLed), those processes end
//! with it, and they do not hold the exit frame back.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{EndReason, Frame, FrameFields, Gateway, alive, assert_gone, fixtures, pids_in};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_cligate");
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

/// The real binary, serving on a free port, with its JSON log lines collected.
struct Binary {
    child: Child,
    addr: std::net::SocketAddr,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Binary {
    async fn start(instance: &str) -> Binary {
        let path = format!("{}:{}", fixtures().display(), std::env::var("PATH").unwrap_or_default());
        let mut child = Command::new(BIN)
            .env_clear()
            .env("DATA_DIR", common::scratch_data_dir())
            .env("PATH", path)
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .env("CLI_LIST", "escape-setsid")
            .env("CLIGATE_INSTANCE", instance)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                let _ = tx.send(line);
            }
        });
        let mut binary = Binary {
            child,
            addr: "127.0.0.1:1".parse().unwrap(),
            lines,
            seen: Vec::new(),
        };
        let listening = binary.log("listening").await;
        binary.addr = listening["addr"].as_str().unwrap().parse().unwrap();
        binary
    }

    /// The first JSON log line whose message is `message`.
    async fn log(&mut self, message: &str) -> Value {
        let parse = |line: &String| serde_json::from_str::<Value>(line).ok();
        if let Some(v) = self.seen.iter().filter_map(parse).find(|v| v["message"] == message) {
            return v;
        }
        loop {
            let line = tokio::time::timeout(Duration::from_secs(20), self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("no {message:?} in the log:\n{}", self.seen.join("\n")))
                .unwrap_or_else(|| panic!("the log ended without {message:?}:\n{}", self.seen.join("\n")));
            self.seen.push(line.clone());
            if let Some(v) = parse(&line).filter(|v| v["message"] == message) {
                return v;
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// SIGKILLs the gateway and reaps it.
    async fn kill_9(&mut self) {
        kill(Pid::from_raw(self.pid() as i32), Signal::SIGKILL).unwrap();
        let _ = self.child.wait().await;
    }
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

#[tokio::test]
async fn the_startup_line_names_the_containment() {
    let mut binary = Binary::start(&instance("line")).await;
    let line = binary.log("process containment").await;
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
    let mut binary = Binary::start(&instance("kill9")).await;
    let (stream, pids) = escaped_run(&binary).await;
    let _reap = Reap(pids.clone());
    binary.kill_9().await;
    drop(stream);
    assert_gone(&pids, Duration::from_secs(5)).await;
    // The watchdog did it, and says so in the gateway's log format.
    let line = binary
        .log("the gateway is gone; killed what was left of its runs")
        .await;
    assert!(line["killed"].as_u64().unwrap() >= 2, "{line}");
}

#[tokio::test]
async fn a_restarted_gateway_ends_what_a_killed_one_left() {
    let name = instance("restart");
    let mut binary = Binary::start(&name).await;
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

    let mut again = Binary::start(&name).await;
    assert_gone(&pids, Duration::from_secs(5)).await;
    let line = again.log("process containment").await;
    assert!(line["swept"].as_u64().unwrap() >= 2, "{line}");
    // The new gateway's own runs are not its predecessor's leftovers.
    let (stream, pids) = escaped_run(&again).await;
    let _reap = Reap(pids.clone());
    drop(stream);
    assert_gone(&pids, Duration::from_secs(5)).await;
    again.kill_9().await;
}
