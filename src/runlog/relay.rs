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
//!
//! The relay waits for the writer only while a follower waits for the relay: followers that are
//! behind (or paused, see `pace`) read the end themselves. While none waits, the writer finds the
//! relay unarmed and appends without a write(2), and the relay's thread sleeps: 50 followers
//! behind a fast run otherwise cost a wake of their runtime per append, about 4 300 for a
//! 256 MiB run.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

/// What the writer, the relay's task and the followers share: atomics and a descriptor, no lock.
#[derive(Debug)]
struct Wake {
    /// Set by the task before it looks at the end and waits; whoever clears it writes `kick`.
    armed: AtomicBool,
    /// Followers waiting for a change of the end; the one that makes it non-zero writes `kick`.
    waiting: AtomicUsize,
    kick: OwnedFd,
    /// The writer's writes of `kick` (tests only).
    #[cfg(test)]
    kicks: std::sync::atomic::AtomicU64,
}

/// A follower's changes of a live log's end, through its relay.
#[derive(Debug)]
pub(super) struct Changes {
    rx: watch::Receiver<LogEnd>,
    wake: Arc<Wake>,
}

impl Changes {
    /// Marks the changes up to now as seen.
    pub(super) fn seen(&mut self) {
        self.rx.borrow_and_update();
    }

    /// The relay's `watch` itself (tests only).
    #[cfg(test)]
    pub(super) fn receiver(&mut self) -> &mut watch::Receiver<LogEnd> {
        &mut self.rx
    }

    /// Waits for a change after the last one seen; an error once the relay is gone.
    pub(super) async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        let _waiting = Waiting::begin(&self.wake);
        self.rx.changed().await
    }
}

/// One follower counted in [`Wake::waiting`] for as long as it lives (also when its wait is
/// dropped: the connection went away).
struct Waiting<'a>(&'a Wake);

impl<'a> Waiting<'a> {
    fn begin(wake: &'a Wake) -> Waiting<'a> {
        if wake.waiting.fetch_add(1, Ordering::SeqCst) == 0 {
            wake.write(); // the relay may be asleep without waiting for the writer
        }
        Waiting(wake)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
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
            waiting: AtomicUsize::new(0),
            kick,
            #[cfg(test)]
            kicks: Default::default(),
        });
        let end = watch::Sender::new(now);
        tokio::spawn(relay(log, wake.clone(), waits, end.clone()));
        Ok(Relay { wake, end })
    }

    /// A follower's changes of the end. The relay looks at the end once more for it: a writer
    /// that published while the relay was being set up (before the log held it) found none to
    /// kick.
    pub(super) fn join(&self) -> Changes {
        let rx = self.end.subscribe();
        std::sync::atomic::fence(Ordering::SeqCst);
        self.wake.write();
        Changes {
            rx,
            wake: self.wake.clone(),
        }
    }

    /// After the writer has published a new end: wakes the task if it waits. Lock-free: one
    /// atomic swap, and a write(2) when the task was waiting.
    pub(super) fn kick(&self) {
        if self.wake.armed.swap(false, Ordering::SeqCst) {
            #[cfg(test)]
            self.wake.kicks.fetch_add(1, Ordering::Relaxed);
            self.wake.write();
        }
    }

    /// Followers waiting now (tests only).
    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.wake.waiting.load(Ordering::SeqCst)
    }

    /// How often the writer has woken the task (tests only).
    #[cfg(test)]
    pub(super) fn kicks(&self) -> u64 {
        self.wake.kicks.load(Ordering::Relaxed)
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
/// or the writer sees `armed` and writes the eventfd. The task arms only while a follower waits:
/// a follower counts itself in `waiting` after it found nothing new to read, and the one that
/// makes the count non-zero writes the eventfd, so the task, seeing the count, arms and reads
/// the end once more.
async fn relay(log: Weak<RunLog>, wake: Arc<Wake>, waits: AsyncFd<OwnedFd>, end: watch::Sender<LogEnd>) {
    let mut last = *end.borrow();
    loop {
        if wake.waiting.load(Ordering::SeqCst) > 0 {
            wake.armed.store(true, Ordering::SeqCst);
        }
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
