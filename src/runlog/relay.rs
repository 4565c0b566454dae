//! Wakes the followers of a live log without the writer ever waiting for one of them.
//!
//! Followers (every `/stream` reader) run on threads of a lower priority (`STREAM_READER_NICE`,
//! see [`crate::priority`]). Such a thread can be taken off the CPU at any instruction, also
//! while it holds a lock, and on a busy machine it gets the CPU back only after the gateway's
//! threads and the CLIs have had their share. A writer that needed that lock (a `watch` that the
//! writer publishes to and followers borrow, the waiter list of a `Notify`, the log's latest
//! chunks) would wait as long, and with it the run's pipe and the child: a follower would slow
//! the run. So the writer shares no lock with followers. It publishes the log's end in an atomic
//! ([`super::RunLog::end`]) and, when the relay is waiting, writes an eventfd (the kernel wakes
//! the relay's runtime; no lock of ours is held); the relay, one task among the followers, reads
//! the end and tells them through a `watch` of its own, whose locks only followers and the relay
//! take.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use super::{LogEnd, RunLog};

#[derive(Debug)]
pub(super) struct Relay {
    wake: Arc<Wake>,
    /// What followers wait on; only the relay's task sends.
    end: watch::Sender<LogEnd>,
}

/// What the writer and the relay's task share: an atomic and a descriptor, no lock.
#[derive(Debug)]
struct Wake {
    /// Set by the task before it looks at the end and waits; whoever clears it writes `kick`.
    armed: AtomicBool,
    kick: OwnedFd,
}

impl Relay {
    /// A relay for `log`, its task started on the current runtime (the first follower's).
    pub(super) fn start(log: Weak<RunLog>, now: LogEnd) -> io::Result<Relay> {
        // SAFETY: eventfd(2) returns a new descriptor or -1.
        let fd = unsafe { nix::libc::eventfd(0, nix::libc::EFD_NONBLOCK | nix::libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is ours alone.
        let kick = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an `OwnedFd` keeps its descriptor open, and the same, for as long as it lives.
        let waits = unsafe { AsyncFd::register_with_interest(kick.try_clone()?, Interest::READABLE) }
            .map_err(io::Error::other)?;
        let wake = Arc::new(Wake {
            armed: AtomicBool::new(false),
            kick,
        });
        let end = watch::Sender::new(now);
        tokio::spawn(relay(log, wake.clone(), waits, end.clone()));
        Ok(Relay { wake, end })
    }

    /// A follower's changes of the end. The relay looks at the end once more for it: a writer
    /// that published while the relay was being set up (before the log held it) found none to
    /// kick.
    pub(super) fn join(&self) -> watch::Receiver<LogEnd> {
        let changes = self.end.subscribe();
        std::sync::atomic::fence(Ordering::SeqCst);
        self.wake.write();
        changes
    }

    /// After the writer has published a new end: wakes the task if it waits. Lock-free: one
    /// atomic swap, and a write(2) when the task was waiting.
    pub(super) fn kick(&self) {
        if self.wake.armed.swap(false, Ordering::SeqCst) {
            self.wake.write();
        }
    }

    /// Wakes the task whether or not it waits (the log is going away).
    pub(super) fn wake(&self) {
        self.wake.write();
    }
}

impl Wake {
    fn write(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our own eventfd. It can only fail when
        // the counter is near overflow, i.e. the task has a wake pending anyway.
        unsafe { nix::libc::write(self.kick.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }
}

/// The relay's task: passes each new end to the followers, until the log is closed or gone.
///
/// No wake is lost: the task sets `armed` and then reads the end, the writer publishes the end
/// and then clears `armed` (all sequentially consistent), so either the task sees the new end
/// or the writer sees `armed` and writes the eventfd.
async fn relay(log: Weak<RunLog>, wake: Arc<Wake>, waits: AsyncFd<OwnedFd>, end: watch::Sender<LogEnd>) {
    let mut last = *end.borrow();
    loop {
        wake.armed.store(true, Ordering::SeqCst);
        let Some(now) = log.upgrade().map(|log| log.end()) else {
            return; // the log is gone, and with it every follower (each holds it)
        };
        if now != last {
            last = now;
            end.send_replace(now);
            if now.closed {
                return;
            }
            continue;
        }
        match waits.readable().await {
            Ok(mut ready) => {
                let mut count = [0u8; 8];
                // SAFETY: reads at most 8 bytes into a live buffer from our own eventfd; a read
                // resets its counter, so what was written is consumed either way.
                unsafe { nix::libc::read(waits.get_ref().as_raw_fd(), count.as_mut_ptr().cast(), 8) };
                ready.clear_ready();
            }
            Err(e) => {
                // Only when its runtime shuts down, and the followers with it.
                tracing::debug!(error = %e, "a log's relay stops");
                return;
            }
        }
    }
}
