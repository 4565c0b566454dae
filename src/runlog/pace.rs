//! Keeps a `/stream` follower that is far behind a fast-growing log from taking the CPU its run
//! needs.
//!
//! A follower that is behind is always ready to run: it reads a piece, sends it and reads the
//! next. When a run writes hundreds of MiB/s (a fire hose, not an AI CLI's pace), fifty such
//! followers and their clients fill every core the run's child and its pipe reader share with
//! them, and each of the run's hand-offs through its pipe then waits for a core. Their lower
//! priority (`STREAM_READER_NICE`) does not prevent that: measured on two cores, a 64 MiB run
//! took 145 ms with 50 followers against 61 ms alone, 63 ms of it the child and the pipe reader
//! waiting for a core after a wake-up. Such a follower gains little by keeping pace anyway: the
//! run outruns it whatever it does. So while the log grows faster than [`FAST`] and a follower is
//! more than [`FAR_BEHIND`] behind its end, the follower waits [`PAUSE`] after each piece; it
//! reads at full speed again once the log slows down or closes, and catches up then. A follower
//! near the end (a live tail) and any log growing at the pace of a CLI's output are never
//! paused; neither is the run's own client, which is not a follower.

use std::time::Duration;

use tokio::time::Instant;

use super::LogEnd;

/// How far behind the end a follower must be to be paused (four pieces).
pub(super) const FAR_BEHIND: u64 = 256 << 10;
/// The growth (bytes per second) above which a log's followers far behind it are paused.
pub(super) const FAST: u64 = 32 << 20;
/// The least time over which growth is measured.
pub(super) const WINDOW: Duration = Duration::from_millis(10);
/// The wait after each piece of a paused follower.
pub(super) const PAUSE: Duration = Duration::from_millis(50);

/// One follower's view of how fast its log grows.
#[derive(Debug)]
pub(super) struct Pace {
    /// When the last window began, and the log's size then.
    mark: (Instant, u64),
    /// Whether the log grew faster than [`FAST`] over the last whole window.
    fast: bool,
}

impl Pace {
    /// For a follower of a log that began (empty) at `began`: its first window runs from then,
    /// so a follower that joins a fast run late is paused from its first piece, not after ten
    /// milliseconds of reading at full speed (fifty such joiners read a few MiB each).
    pub(super) fn since(began: Instant) -> Pace {
        Pace {
            mark: (began, 0),
            fast: false,
        }
    }

    /// After a piece up to `offset` was read, with the log's `end` and the time `now`: how long
    /// the follower waits before reading on.
    pub(super) fn after_read(&mut self, offset: u64, end: LogEnd, now: Instant) -> Option<Duration> {
        if end.closed {
            return None;
        }
        let (since, size) = self.mark;
        let took = now.saturating_duration_since(since);
        if took >= WINDOW {
            let grown = end.size.saturating_sub(size);
            self.fast = grown as f64 / took.as_secs_f64() > FAST as f64;
            self.mark = (now, end.size);
        }
        (self.fast && end.size.saturating_sub(offset) > FAR_BEHIND).then_some(PAUSE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(size: u64) -> LogEnd {
        LogEnd { size, closed: false }
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_follower_far_behind_a_fast_log_waits_and_reads_on_once_it_slows() {
        let t = Instant::now();
        let ms = |n: u64| t + Duration::from_millis(n);
        let mut p = Pace::since(t);
        // Not a whole window since the log began.
        assert_eq!(p.after_read(MIB / 16, live(2 * MIB), ms(5)), None);
        // 4 MiB in 10 ms: 400 MiB/s.
        assert_eq!(p.after_read(MIB / 8, live(4 * MIB), ms(10)), Some(PAUSE));
        // Within the next window it stays paused, however little the log grew so far.
        assert_eq!(p.after_read(MIB / 4, live(4 * MIB), ms(12)), Some(PAUSE));
        // 1 MiB over the 52 ms since: 19 MiB/s, slower than FAST: full speed again.
        assert_eq!(p.after_read(MIB / 2, live(5 * MIB), ms(62)), None);
        assert_eq!(p.after_read(MIB, live(5 * MIB), ms(63)), None);
    }

    #[test]
    fn a_follower_that_joins_a_fast_run_late_waits_from_its_first_piece() {
        let t = Instant::now();
        let ms = |n: u64| t + Duration::from_millis(n);
        // 24 MiB in the 30 ms since the log began.
        assert_eq!(Pace::since(t).after_read(MIB / 16, live(24 * MIB), ms(30)), Some(PAUSE));
        // 10 MiB in 10 s: a log that grows like a CLI's.
        assert_eq!(Pace::since(t).after_read(MIB / 16, live(10 * MIB), ms(10_000)), None);
    }

    #[test]
    fn a_follower_near_the_end_or_of_a_slow_or_closed_log_never_waits() {
        let t = Instant::now();
        let ms = |n: u64| t + Duration::from_millis(n);
        // Near the end of a fast log: a live tail.
        let mut p = Pace::since(t);
        assert_eq!(p.after_read(100 * MIB, live(100 * MIB + FAR_BEHIND), ms(100)), None);
        assert!(p.fast, "1 GiB/s is fast");
        // Far behind a log growing at 30 MiB/s.
        let mut p = Pace::since(t);
        assert_eq!(p.after_read(0, live(3 * MIB), ms(100)), None);
        // Far behind a fast log that has closed.
        let mut p = Pace::since(t);
        assert_eq!(p.after_read(MIB, live(100 * MIB), ms(100)), Some(PAUSE));
        let closed = LogEnd {
            size: 100 * MIB,
            closed: true,
        };
        assert_eq!(p.after_read(2 * MIB, closed, ms(101)), None);
    }
}
