//! Checkpoints of the SQLite WAL (copying its frames back into the database file) without
//! stopping the writer for them. A checkpoint (every [`EVERY`] commits; 64 at the time of these
//! figures) copies ~100 pages and makes two
//! `fsync`s, the first over the megabyte or two of WAL written since the last one (8.6 ms of the
//! ~12 ms traced here). When the writer made it between two batches, a write that arrived
//! meanwhile waited for all of it: latency p99 of one-at-a-time runs was 10–12 ms, against 3.1 ms
//! with no checkpoints at all.
//!
//! So the bulk of each checkpoint is made by a thread of its own on a connection of its own, while
//! the writer goes on committing; SQLite allows one checkpointer beside one writer. That alone
//! never lets the WAL start over: the writer only restarts it when *every* frame has been copied,
//! and a writer that never pauses always adds frames during the pass (a test's 4500 commits grew
//! it to 112 MB that way). So once the pass is done the writer itself copies what was added
//! during it, between two batches: a few pages, and two `fsync`s over little data, which still
//! take 2–4 ms each here (what latency p99 still shows, about 2× a direct spawn's). Its next
//! transaction then starts the WAL over.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use anyhow::{Context, Result};
use rusqlite::{Connection, OpenFlags};

/// Commits between two checkpoints at most. At 12–24 pages a commit, 64 (about SQLite's own
/// 1000-page threshold) copied the same pages back again and again: the last page of each index,
/// rewritten by every run, went to the database file once per 64 commits. Every 256 it goes once
/// per 256, and the WAL stays around 10–20 MiB: the store's CPU per short run went from 116 to
/// 105 µs (writer and checkpoint thread, `wrk -c8` of `true`, five alternating rounds; 1024 saved
/// nothing more and let the WAL reach 64 MiB).
const EVERY: u64 = 256;

const IDLE: u8 = 0;
const COPYING: u8 = 1;
const COPIED: u8 = 2;
/// The thread has ended (it only does when the writer is gone, or by a panic).
const GONE: u8 = 3;

/// The writer's side: counts commits, starts the background pass, finishes each pass.
pub(super) struct Checkpoints {
    commits: u64,
    /// `None` when the thread could not be started or has ended: the writer then checkpoints
    /// alone.
    background: Option<Background>,
}

struct Background {
    state: Arc<AtomicU8>,
    go: std::sync::mpsc::SyncSender<()>,
}

impl Checkpoints {
    /// Starts the checkpointer thread on its own connection to the database at `path`.
    pub(super) fn start(path: &Path) -> Checkpoints {
        let background = match Background::start(path) {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "checkpoints are made by the store's writer alone");
                None
            }
        };
        Checkpoints { commits: 0, background }
    }

    /// Called by the writer after each commit, once that batch's callers have their answers.
    pub(super) fn committed(&mut self, conn: &Connection) {
        self.commits += 1;
        match &self.background {
            None => {
                if self.commits >= EVERY {
                    self.commits = 0;
                    passive(conn);
                }
            }
            Some(b) => match b.state.load(Ordering::Acquire) {
                // The pass is over: copy what came meanwhile, so the WAL can start over.
                COPIED => {
                    passive(conn);
                    // (Unless the thread has ended meanwhile: then GONE stays for the next call.)
                    let _ = b
                        .state
                        .compare_exchange(COPIED, IDLE, Ordering::AcqRel, Ordering::Acquire);
                }
                GONE => {
                    self.background = None;
                    passive(conn);
                }
                IDLE if self.commits >= EVERY => {
                    self.commits = 0;
                    let started = b
                        .state
                        .compare_exchange(IDLE, COPYING, Ordering::AcqRel, Ordering::Acquire);
                    if started.is_err() || b.go.try_send(()).is_err() {
                        // The thread is gone: from now on the writer checkpoints alone.
                        self.background = None;
                        passive(conn);
                    }
                }
                _ => {}
            },
        }
    }
}

/// A connection of the thread that opens it (the writer's, the checkpoint thread's) to the
/// database at `path`, which exists.
pub(super) fn open(path: &Path) -> rusqlite::Result<Connection> {
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
}

impl Background {
    fn start(path: &Path) -> Result<Background> {
        let conn = open(path).context("opening the database for checkpoints")?;
        let state = Arc::new(AtomicU8::new(IDLE));
        let (go, passes) = std::sync::mpsc::sync_channel::<()>(1);
        let done = state.clone();
        std::thread::Builder::new()
            .name("cligate-store-checkpoint".into())
            .spawn(move || {
                // However the thread ends, the writer stops waiting for its pass.
                let _gone = Gone(done.clone());
                // Ends when the writer (the only sender) is dropped.
                while passes.recv().is_ok() {
                    passive(&conn);
                    done.store(COPIED, Ordering::Release);
                }
            })
            .context("starting the store's checkpoint thread")?;
        Ok(Background { state, go })
    }
}

struct Gone(Arc<AtomicU8>);

impl Drop for Gone {
    fn drop(&mut self) {
        self.0.store(GONE, Ordering::Release);
    }
}

/// Copies every frame no reader still needs back into the database file; never waits for the
/// writer (SQLite's PASSIVE mode).
fn passive(conn: &Connection) {
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
        tracing::warn!(error = %e, "cannot checkpoint the database's write-ahead log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commits `n` transactions of one 4 KiB row each, telling `checkpoints` after each; returns
    /// the largest size the WAL reached.
    fn commit(conn: &Connection, checkpoints: &mut Checkpoints, wal: &Path, n: usize) -> u64 {
        let mut largest = 0;
        for _ in 0..n {
            conn.execute("INSERT INTO t (x) VALUES (zeroblob(4096))", []).unwrap();
            checkpoints.committed(conn);
            largest = largest.max(std::fs::metadata(wal).unwrap().len());
        }
        largest
    }

    #[test]
    fn when_its_thread_is_gone_the_writer_checkpoints_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let wal = dir.path().join("t.db-wal");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.execute("CREATE TABLE t (x BLOB)", []).unwrap();

        // With its thread: 2000 commits of a page and an overflow page each (16 MiB of WAL
        // frames if it never started over) stay under 4 MiB (EVERY commits are about 2 MiB).
        let mut checkpoints = Checkpoints::start(&path);
        assert!(commit(&conn, &mut checkpoints, &wal, 2000) < 4 << 20);

        // The thread ended (as a panic would end it) in the middle of a pass.
        let (go, passes) = std::sync::mpsc::sync_channel(1);
        drop(passes);
        let state = Arc::new(AtomicU8::new(COPYING));
        drop(Gone(state.clone()));
        checkpoints.background = Some(Background { state, go });
        assert!(commit(&conn, &mut checkpoints, &wal, 2000) < 4 << 20);
        assert!(checkpoints.background.is_none(), "the writer went on alone");

        // Ended while idle: the writer finds out when it hands over the next pass.
        let (go, passes) = std::sync::mpsc::sync_channel(1);
        drop(passes);
        checkpoints.background = Some(Background {
            state: Arc::new(AtomicU8::new(IDLE)),
            go,
        });
        assert!(commit(&conn, &mut checkpoints, &wal, 2000) < 4 << 20);
        assert!(checkpoints.background.is_none(), "the writer went on alone");
    }
}
