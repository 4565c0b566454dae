//! Drives one execution to its end, whatever executor started it. Stdin is written while stdout
//! and stderr are read, so no pipe can deadlock; the execution is raced against the deadline,
//! the idle timer, the output cap and a stop request; whatever ends the run, the executor ends
//! and reaps all of it (process tree, container) before the supervisor returns. Frames go to the
//! run's log at the child's pace; no reader can slow the child (readers follow the log), only
//! the disk can.
//! Processes that left the group (a new session, a detached child) are ended through the run's
//! [`Scope`] (see [`super::containment`]).

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::containment::{Containment, Scope};
use super::frame::{EndReason, Stream};
use super::output::LineFramer;
use super::{End, Run, RunState};
use crate::exec::{Execution, Executor, Launch, StartFailure, Stdio, output_runtime};
use crate::runlog::RunLog;

/// Bytes read from a pipe at once: at first a little (most pipes, stderr above all, carry little),
/// doubled each time a read fills it, up to a whole default pipe buffer.
const READ_BUF_FIRST: usize = 8 * 1024;
const READ_BUF_MAX: usize = 64 * 1024;
/// Most frames appended to the log at once. What a pipe already holds is read and framed before
/// the append, so a child that writes faster than it is read costs one write to the log and one
/// wake of its readers per this many bytes, not per read; output that trickles in is appended
/// as soon as the pipe has nothing more. (128 KiB streamed no faster and raised the memory of
/// 50 runs with stalled readers from 13 to 15 MiB.)
const APPEND_MAX: usize = 64 * 1024;
/// How long an unfinished line is held for the rest of it before it is sent anyway.
const PARTIAL_FLUSH: Duration = Duration::from_millis(40);
/// How long pipes may stay open after the run's processes are gone (only a process outside the
/// run's scope, e.g. one the pipe was passed to over a socket, can still hold them).
const PIPE_DRAIN: Duration = Duration::from_secs(2);
/// Longest wait for the pipes after the run's process group is gone.
const DRAIN_MAX: Duration = Duration::from_secs(30);

/// Where a run's encoded frames go: its log, which every reader follows.
pub type FrameSink = Arc<RunLog>;

/// The limits a run is held to.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub output_limit: Option<u64>,
    pub kill_grace: Duration,
}

/// What the run did, for logs and metrics.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub end: End,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
}

/// Byte counters and the output clock, shared by the two pumps and the supervisor.
#[derive(Debug)]
struct Meter {
    start: Instant,
    stdout: AtomicU64,
    stderr: AtomicU64,
    /// Milliseconds since `start` of the last output.
    last_output_ms: AtomicU64,
    limit: Option<u64>,
    /// Cancelled when the output cap is reached.
    limit_hit: CancellationToken,
    /// Cancelled when the log cannot be written (disk full, I/O error): the run ends.
    log_broken: CancellationToken,
}

impl Meter {
    /// Counts `n` bytes of `stream` and returns how many of them are within the cap.
    fn take(&self, stream: Stream, n: usize) -> usize {
        self.last_output_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
        let counter = match stream {
            Stream::Stdout => &self.stdout,
            Stream::Stderr => &self.stderr,
        };
        let Some(limit) = self.limit else {
            counter.fetch_add(n as u64, Ordering::Relaxed);
            return n;
        };
        let before = self.stdout.load(Ordering::Relaxed) + self.stderr.load(Ordering::Relaxed);
        let allowed = limit.saturating_sub(before).min(n as u64);
        counter.fetch_add(allowed, Ordering::Relaxed);
        if allowed < n as u64 {
            self.limit_hit.cancel();
        }
        allowed as usize
    }

    async fn idle(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last_output_ms.load(Ordering::Relaxed));
            let due = self.start + last + idle;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

/// Runs `launch` to its end, appending its output frames (and the gateway's own stderr lines)
/// to `sink`. The session and exit frames are the caller's: it records the end first.
pub async fn supervise(
    run: &Run,
    containment: &Containment,
    executor: &dyn Executor,
    launch: Launch,
    stdin: String,
    limits: &Limits,
    sink: FrameSink,
) -> Outcome {
    let meter = Arc::new(Meter {
        start: Instant::now(),
        stdout: AtomicU64::new(0),
        stderr: AtomicU64::new(0),
        last_output_ms: AtomicU64::new(0),
        limit: limits.output_limit,
        limit_hit: CancellationToken::new(),
        log_broken: CancellationToken::new(),
    });
    let spawned = match containment.scope(&run.id) {
        Ok(scope) => match executor.start(&launch, &scope) {
            Ok(execution) => Ok((execution, scope)),
            Err(failed) => {
                scope.end().await;
                Err(failed)
            }
        },
        Err(e) => Err(StartFailure {
            code: 1,
            message: format!("cligate: cannot create the run's cgroup: {e}\n"),
        }),
    };
    let end = match spawned {
        Ok((execution, scope)) => drive(run, execution, scope, stdin, limits, &meter, &sink).await,
        Err(StartFailure { code, message }) => {
            send_text(&sink, Stream::Stderr, &message).await;
            End {
                code,
                reason: EndReason::SpawnFailed,
            }
        }
    };
    run.set_state(RunState::Finished(end));
    Outcome {
        end,
        stdout_bytes: meter.stdout.load(Ordering::Relaxed),
        stderr_bytes: meter.stderr.load(Ordering::Relaxed),
    }
}

async fn drive(
    run: &Run,
    mut execution: Box<dyn Execution>,
    scope: Scope,
    stdin: String,
    limits: &Limits,
    meter: &Arc<Meter>,
    sink: &FrameSink,
) -> End {
    run.set_state(RunState::Running { pid: execution.pid() });
    let Stdio {
        stdin: stdin_pipe,
        stdout,
        stderr,
    } = execution.stdio().expect("a started execution has its pipes");

    // Written concurrently with reading: a child that echoes its input cannot deadlock, and one
    // that never reads it (a closed pipe) is not an error.
    // An empty stdin needs no task: dropping the pipe closes it.
    let writer = (!stdin.is_empty()).then(|| {
        tokio::spawn(async move {
            let Ok(mut pipe) = tokio::net::unix::pipe::Sender::from_owned_fd(stdin_pipe) else {
                return;
            };
            let _ = pipe.write_all(stdin.as_bytes()).await;
            let _ = pipe.shutdown().await;
        })
    });
    let ended = CancellationToken::new();
    let pumps = [
        output_runtime().spawn(pump(stdout, Stream::Stdout, sink.clone(), meter.clone(), ended.clone())),
        output_runtime().spawn(pump(stderr, Stream::Stderr, sink.clone(), meter.clone(), ended.clone())),
    ];

    let deadline = limits.timeout.map(|t| tokio::time::Instant::from_std(meter.start + t));
    let mut exited: Option<ExitStatus> = None;
    let reason = tokio::select! {
        status = execution.wait() => {
            exited = Some(status);
            EndReason::Exited
        }
        reason = run.stop_requested() => reason,
        _ = meter.log_broken.cancelled() => EndReason::Internal,
        _ = sleep_until(deadline) => EndReason::Timeout,
        _ = idle(meter, limits.idle_timeout) => EndReason::IdleTimeout,
        _ = meter.limit_hit.cancelled() => EndReason::OutputLimit,
    };

    let status = match exited {
        Some(status) => status,
        None => execution.terminate(limits.kill_grace).await,
    };
    // A child that could not join its cgroup or exec its program exited at once, saying why.
    let start_failure = exited.and_then(|_| execution.start_failure());
    // Anything still in the group is a leftover of this run; so is anything that left the group.
    // Once the scope is empty, no pipe of the run is held open any more.
    execution.finish(exited.is_some()).await;
    let escaped = scope.end().await;
    if escaped > 0 {
        tracing::debug!(run_id = run.id, processes = escaped, "ended what was left of the run");
    }
    if let Some(writer) = writer {
        writer.abort();
    }
    ended.cancel();
    drain(pumps).await;
    if let Some(StartFailure { code, message }) = start_failure {
        send_text(sink, Stream::Stderr, &message).await;
        return End {
            code,
            reason: EndReason::SpawnFailed,
        };
    }
    // A pump that stops reading at the cap (or at a broken log) closes its pipe, and the child
    // may die of that (SIGPIPE) in the same instant, or exit by itself before the pump reached
    // the cap in what the pipe still held: either way its output was cut, and that is the reason.
    let reason = match reason {
        EndReason::Exited if meter.limit_hit.is_cancelled() => EndReason::OutputLimit,
        EndReason::Exited if meter.log_broken.is_cancelled() => EndReason::Internal,
        reason => reason,
    };

    let code = match reason {
        EndReason::Timeout | EndReason::IdleTimeout => 124,
        EndReason::Internal => 1,
        _ => exit_code(status),
    };
    if let Some(text) = final_message(reason, limits) {
        send_text(sink, Stream::Stderr, &text).await;
    }
    End { code, reason }
}

/// Waits for both pumps to deliver what the pipes still hold. A slow client is waited for; a
/// process that escaped the group and keeps writing is not, past [`DRAIN_MAX`].
async fn drain(pumps: [JoinHandle<()>; 2]) {
    let [out, err] = pumps;
    let (abort_out, abort_err) = (out.abort_handle(), err.abort_handle());
    if tokio::time::timeout(DRAIN_MAX, async {
        let _ = out.await;
        let _ = err.await;
    })
    .await
    .is_err()
    {
        abort_out.abort();
        abort_err.abort();
    }
}

/// `128 + N` for a signal, the exit code otherwise.
fn exit_code(status: ExitStatus) -> i32 {
    status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(1)
}

fn final_message(reason: EndReason, limits: &Limits) -> Option<String> {
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64()).unwrap_or_default();
    match reason {
        EndReason::Timeout => Some(format!(
            "Request timed out while waiting for CLI response ({}s).",
            secs(limits.timeout)
        )),
        EndReason::IdleTimeout => Some(format!(
            "Run ended: no output for {}s (RUN_IDLE_TIMEOUT_SECONDS).",
            secs(limits.idle_timeout)
        )),
        EndReason::OutputLimit => Some(format!(
            "Run ended: output reached the limit of {} bytes (RUN_OUTPUT_LIMIT_BYTES).",
            limits.output_limit.unwrap_or_default()
        )),
        EndReason::Shutdown => Some("Run ended: the gateway is shutting down.".to_string()),
        _ => None,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn idle(meter: &Meter, idle: Option<Duration>) {
    match idle {
        Some(d) => meter.idle(d).await,
        None => std::future::pending().await,
    }
}

/// Copies one pipe into frames until it closes, the client goes away or the cap is reached.
/// Once `ended` is cancelled (the run's process group is gone) a pipe that stays silent for
/// [`PIPE_DRAIN`] is given up: only a process that escaped the group can still be holding it.
async fn pump(
    mut pipe: impl AsyncRead + Unpin,
    stream: Stream,
    sink: FrameSink,
    meter: Arc<Meter>,
    ended: CancellationToken,
) {
    let mut framer = LineFramer::new(stream);
    let mut buf = vec![0u8; READ_BUF_FIRST];
    let mut out = BytesMut::new();
    loop {
        let partial = framer.has_partial();
        let framed = !out.is_empty();
        let read = tokio::select! {
            biased;
            read = pipe.read(&mut buf) => read,
            // The pipe has nothing more for now: what was framed goes to the log.
            _ = std::future::ready(()), if framed => {
                if !flush(&sink, &mut out, &meter) {
                    return;
                }
                continue;
            }
            _ = tokio::time::sleep(PARTIAL_FLUSH), if partial => {
                framer.flush_partial(&mut out);
                if !flush(&sink, &mut out, &meter) {
                    return;
                }
                continue;
            }
            _ = async { ended.cancelled().await; tokio::time::sleep(PIPE_DRAIN).await } => break,
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let allowed = meter.take(stream, n);
        framer.push(&buf[..allowed], &mut out);
        if n == buf.len() && buf.len() < READ_BUF_MAX {
            buf.resize(buf.len() * 2, 0);
        }
        if allowed < n {
            break;
        }
        if out.len() >= APPEND_MAX && !flush(&sink, &mut out, &meter) {
            return;
        }
    }
    framer.finish(&mut out);
    flush(&sink, &mut out, &meter);
}

/// Appends what `out` holds to the log; false (and the run is ended) when the log cannot be
/// written.
fn flush(sink: &FrameSink, out: &mut BytesMut, meter: &Meter) -> bool {
    if out.is_empty() {
        return true;
    }
    match sink.append(out.split().freeze()) {
        Ok(_) => true,
        Err(e) => {
            if !meter.log_broken.is_cancelled() {
                tracing::error!(error = %e, "writing a run's log failed; ending the run");
                meter.log_broken.cancel();
            }
            false
        }
    }
}

async fn send_text(sink: &FrameSink, stream: Stream, text: &str) {
    let mut out = BytesMut::new();
    super::frame::encode_output(stream, text, &mut out);
    let _ = sink.append(out.freeze());
}
