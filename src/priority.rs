//! Runtimes whose threads run at a lower priority (a higher nice value) than the HTTP workers,
//! for work that can wait while requests are answered: detached runs (`DETACHED_RUN_NICE`) and
//! connections that follow a run's log (`STREAM_READER_NICE`).
//!
//! # Detached runs
//! Nobody waits on a connection for a detached run, while the client that submits it waits for
//! its `202`. On a busy gateway both want the same cores: the HTTP workers that answer submits and
//! reads, and the work of the runs already going (starting the child, its end, its record). On
//! the HTTP workers' runtime a submit queued behind that work, and the CPU was split evenly with
//! the children. So a detached run's task runs here instead, on threads with a higher nice value,
//! and what those threads start (the CLI, `docker run`, git) inherits it: the kernel then gives the
//! CPU to request handling first, and the runs take what is left, which on a gateway that is not
//! answering requests is all of it. Measured on two cores (`--only detached`): submit p50 5.6–6.8
//! ms on the HTTP runtime, about 4 ms on a runtime of its own at nice 0, 1.8–2.4 ms at nice 10
//! (above 2 in six rounds of seven), 1.4–2.0 ms at 15 (the default), 1.5 ms at 19.
//!
//! A run's pipes are still read on [`crate::exec::output_runtime`], at the gateway's priority.
//! The callback delivery that a detached run's end starts runs here too: it is that run's work.
//! Attached runs stay on the HTTP runtime: their client is waiting for every frame.
//!
//! # Log followers
//! A connection whose first request is `GET /runs/{id}/stream` is served here (see
//! [`crate::server`]): a follower of a run's log writes each byte the run writes once more, to its
//! own socket, and fifty followers of one fast run did fifty times the run's own work on the same
//! cores as the run's pipe reader and the CLI itself. Served at the gateway's priority they took
//! the CPU evenly with the run and halved its rate (`--only fanout`: 0.49× the same run without
//! readers). At a higher nice value they take what the run leaves, fall behind while it writes
//! and catch up from the log (every follower reads from its own offset; nothing is lost or held
//! in memory for it); a follower of a run that is not busy is served at once, as before.
//! The attached `/run` reader stays on the HTTP runtime: it is the run's own client.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use tokio::runtime::{Handle, Runtime};

/// The runtime of detached runs at `nice` (0 = the gateway's own priority).
pub fn detached_runtime(nice: i32) -> Handle {
    runtime("cligate-detached", nice)
}

/// The runtime of connections that follow a run's log, at `nice`.
pub fn reader_runtime(nice: i32) -> Handle {
    runtime("cligate-reader", nice)
}

/// The runtime `name` at `nice`: made on first use and kept for the life of the process, like
/// the output runtime. One per name and value, so that gateways with different settings in one
/// process (tests) each get theirs.
fn runtime(name: &'static str, nice: i32) -> Handle {
    static RUNTIMES: OnceLock<Mutex<HashMap<(&'static str, i32), &'static Runtime>>> = OnceLock::new();
    let mut runtimes = RUNTIMES.get_or_init(Default::default).lock().expect("runtimes lock");
    let runtime = runtimes.entry((name, nice)).or_insert_with(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores)
            .thread_name(name)
            .on_thread_start(move || lower_priority(nice))
            .enable_all()
            .build()
            .expect("a lower-priority runtime starts");
        Box::leak(Box::new(runtime))
    });
    runtime.handle().clone()
}

/// Raises the calling thread's nice value by `nice` (on Linux a nice value is a thread's, and
/// the processes it starts inherit it). Lowering one's priority needs no privilege; should it
/// fail anyway, the work runs at the gateway's priority, which is only slower for requests.
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    use nix::errno::Errno;
    Errno::clear();
    // SAFETY: nice(2) only changes the calling thread's scheduling weight. It answers -1 both
    // for a new value of -1 and for an error; errno tells them apart.
    if unsafe { nix::libc::nice(nice) } == -1 && Errno::last_raw() != 0 {
        tracing::warn!(nice, error = %Errno::last(), "cannot lower the priority of a runtime's threads");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nice value of the calling thread, from `/proc/thread-self/stat` (field 19).
    fn own_nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn its_threads_run_at_the_nice_value_and_each_value_has_its_runtime() {
        let base = own_nice();
        let low = detached_runtime(7).block_on(async { tokio::task::spawn(async { own_nice() }).await.unwrap() });
        assert_eq!(low, (base + 7).min(19));
        let same = detached_runtime(0).block_on(async { tokio::task::spawn(async { own_nice() }).await.unwrap() });
        assert_eq!(same, base);
        let blocking = detached_runtime(7).block_on(async { tokio::task::spawn_blocking(own_nice).await.unwrap() });
        assert_eq!(blocking, (base + 7).min(19));
    }
}
