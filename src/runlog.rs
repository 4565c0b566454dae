//! A run's log: the NDJSON bytes of its frames, appended to one file per run under
//! `$DATA_DIR/logs`, read by any number of readers from a byte offset. The writer (the run's
//! supervisor) appends whole frames only and then publishes the new end, so a reader never sees
//! half a frame; readers follow the published end, each at its own pace, so a slow reader costs
//! one bounded read buffer and never slows the child. The run's own client is woken through a
//! `watch` it shares with the writer (both at the gateway's priority), every other follower
//! through the log's relay, which shares no lock with the writer. A log outlives the
//! process, the connection and the gateway: after a crash its torn last line (if any) is cut off
//! by [`LogDir::repair`].
//!
//! Creating a file costs the file system an inode allocation, which on a busy ext4 is the largest
//! single cost of a short run (measured: over a third of the gateway's CPU per `true` run, and
//! 410 µs per file in a directory next to many recently deleted ones). So a run's log is not
//! created on the run's path: a background thread keeps a few empty files ready, each already
//! named as the log of a run id nobody has had yet, and a new run takes one *with its name*: the
//! run's id is the ready file's ([`LogDir::lease_run_id`]), so nothing is created or renamed on
//! the run's path (renaming a ready file into place was 5% of the HTTP workers' time). And most
//! logs never free their inode: a finished run's log of at most [`KEEP_MAX`] bytes is kept with
//! its record in the store (see `Runs::finish`), and once the last reader of the live log is gone
//! its file is emptied and renamed to a new id in that pool ([`RunLog::recycle_when_unused`]); a
//! deleted log's file goes back there too. An id once handed out is never a ready file's name
//! again. A ready file looks like the empty log of a run, so the next process tells them apart by
//! the store: files no record names are taken up again, under new names ([`LogDir::adopt`]).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;

mod pace;
mod relay;
use pace::Pace;
use relay::Relay;

/// Largest piece a reader takes at once (also the most a reader holds).
pub const READ_CHUNK: usize = 64 * 1024;

/// How many bytes of the latest appended chunks stay in memory (at least the newest chunk), so
/// readers that keep up are served without reading the file back.
const RECENT_BYTES: usize = 128 * 1024;

/// Empty files the background thread keeps ready; it refills the pool when it falls below half.
const SPARES: usize = 64;
/// Files of kept logs given back before the background thread is woken to recycle them: one
/// wake per run was a futex wake and a context switch on a busy two-core machine; the pool keeps
/// enough ready files for the lag, and the thread's one-second timer recycles stragglers.
const RETURN_BATCH: usize = 16;
/// Empty files kept at most (recycled logs beyond the refill target), so that a burst of runs
/// as large as this finds a file for each without creating one.
const SPARES_MAX: usize = 1024;
/// The largest finished log kept in the store instead of its file.
pub const KEEP_MAX: u64 = 16 * 1024;
/// Names of the ready files of earlier versions (deleted at start-up).
const SPARE_PREFIX: &str = ".spare-";
/// The end of a log's file name; the rest is its run id.
const SUFFIX: &str = ".ndjson";

/// Where the logs live.
#[derive(Debug, Clone)]
pub struct LogDir {
    root: PathBuf,
    /// `RUN_LOG_IN_MEMORY` (benchmarks only): live logs are kept in memory, not written to files.
    memory: bool,
    spares: Arc<Spares>,
}

/// Empty files in the log directory, each named as the log of a run id nobody has had yet, ready
/// to become that run's log. Only their ids are kept (no descriptor is held for them).
#[derive(Debug)]
struct Spares {
    root: PathBuf,
    pool: Mutex<Pool>,
    /// Signalled when the pool runs low or a file is given back.
    low: Condvar,
    /// The background thread runs (it then empties given-back files, off the run's path).
    refilled: AtomicBool,
    /// Files the background thread tried to make.
    tries: AtomicU64,
}

#[derive(Debug, Default)]
struct Pool {
    /// Ids of ready files.
    ready: Vec<String>,
    /// Ids of ready files handed out ([`LogDir::lease_run_id`]) whose log is not created yet.
    lent: Vec<String>,
    /// Files of kept logs, to be emptied and made ready.
    returned: Vec<(PathBuf, File)>,
}

impl Spares {
    fn path(&self, id: &str) -> PathBuf {
        self.root.join(format!("{id}{SUFFIX}"))
    }

    /// Lends the id of a ready file, if there is one.
    fn lend(&self) -> Option<String> {
        let mut pool = self.pool.lock().expect("spares lock");
        let id = pool.ready.pop()?;
        pool.lent.push(id.clone());
        if pool.ready.len() < SPARES / 2 {
            self.low.notify_one();
        }
        Some(id)
    }

    /// Whether `id` was lent (and is no more): its ready file is there to be the log.
    fn claim(&self, id: &str) -> bool {
        let mut pool = self.pool.lock().expect("spares lock");
        let found = pool.lent.iter().position(|l| l == id);
        found.map(|i| pool.lent.swap_remove(i)).is_some()
    }

    /// A lent id whose log was never created: its file is ready again, under the same name
    /// unless the id was `spent` (stored somewhere), then under a new one.
    fn unlend(&self, id: &str, spent: bool) {
        let mut pool = self.pool.lock().expect("spares lock");
        let Some(i) = pool.lent.iter().position(|l| l == id) else {
            return;
        };
        let id = pool.lent.swap_remove(i);
        if !spent {
            pool.ready.push(id);
            return;
        }
        drop(pool);
        let _ = self.recycle_at(&self.path(&id));
    }

    /// Hands the file of a kept log to the background thread to be recycled (or recycles it
    /// here when there is no such thread).
    fn give_back(&self, path: PathBuf, file: File) {
        if self.refilled.load(Ordering::Relaxed) {
            let mut pool = self.pool.lock().expect("spares lock");
            pool.returned.push((path, file));
            if pool.returned.len() >= RETURN_BATCH {
                self.low.notify_one();
            }
        } else if let Err(e) = self.recycle(&path, &file) {
            tracing::warn!(path = %path.display(), error = %e, "cannot reuse a kept log's file");
        }
    }

    /// Empties the file at `path` (through `file`, its open descriptor) and renames it to a new
    /// id in the pool (`true`), or deletes it when the pool is full or it cannot be reused.
    fn recycle(&self, path: &Path, file: &File) -> io::Result<bool> {
        if self.pool.lock().expect("spares lock").ready.len() < SPARES_MAX && file.set_len(0).is_ok() {
            let id = fresh_id();
            if rename_new(path, &self.path(&id)).is_ok() {
                self.pool.lock().expect("spares lock").ready.push(id);
                return Ok(true);
            }
        }
        remove_if_there(path).map(|()| false)
    }

    /// [`Spares::recycle`] of the file at `path`, if there is one (`Ok(false)` when not, or
    /// when it was deleted).
    fn recycle_at(&self, path: &Path) -> io::Result<bool> {
        match OpenOptions::new().write(true).open(path) {
            Ok(file) => self.recycle(path, &file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(_) => remove_if_there(path).map(|()| false),
        }
    }

    /// Keeps the pool filled until the log directory is dropped.
    fn refill(spares: Weak<Spares>) {
        while let Some(pool) = spares.upgrade() {
            let returned = std::mem::take(&mut pool.pool.lock().expect("spares lock").returned);
            for (path, file) in returned {
                if let Err(e) = pool.recycle(&path, &file) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot reuse a kept log's file");
                }
            }
            // Filled up only once below half, not on every wake (files given back wake it).
            let ready = pool.pool.lock().expect("spares lock").ready.len();
            let missing = if ready < SPARES / 2 { SPARES - ready } else { 0 };
            let mut failed = false;
            for _ in 0..missing {
                pool.tries.fetch_add(1, Ordering::Relaxed);
                let id = fresh_id();
                match OpenOptions::new().write(true).create_new(true).open(pool.path(&id)) {
                    Ok(_) => pool.pool.lock().expect("spares lock").ready.push(id),
                    // Logs are then created on the run's path, which reports the error.
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            let guard = pool.pool.lock().expect("spares lock");
            // Woken when the pool runs low or a file comes back; the timeout notices a dropped
            // directory. After a failure (a full or read-only disk) the next try to fill the pool
            // waits for the timeout: no spinning.
            let idle = |p: &mut Pool| p.returned.len() < RETURN_BATCH && (failed || p.ready.len() >= SPARES / 2);
            drop(pool.low.wait_timeout_while(guard, Duration::from_secs(1), idle));
        }
    }
}

/// A new run id: 32 hex digits, a UUIDv7 (a millisecond timestamp, then random bits). Ids made
/// later sort later, so a run's entries in the store's `run_id`-keyed B-trees (the record's
/// primary key, its kept log) are appended at their last leaf, where a random id put each into a
/// leaf of its own in every commit: WAL frames per short run 10.4 -> 8.9, the store's CPU per run
/// -20% (`wrk -c8` of `true`, four alternating rounds). Ids are no secret: every record is
/// guarded by its owner (`crate::runs::read::visible`).
pub fn fresh_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// A run id from [`LogDir::lease_run_id`]. Dropped before its log was created (the run was
/// refused, or an idempotent retry named an earlier run), its ready file goes back to the pool.
#[derive(Debug)]
pub struct RunIdLease {
    id: String,
    spares: Arc<Spares>,
    spent: bool,
}

impl RunIdLease {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The id is about to be stored (with an idempotency key): should its run not be created,
    /// it is never handed out again.
    pub fn spend(&mut self) {
        self.spent = true;
    }
}

impl Drop for RunIdLease {
    fn drop(&mut self) {
        self.spares.unlend(&self.id, self.spent);
    }
}

/// The published state of a live log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogEnd {
    /// Bytes readable: always the end of a whole frame.
    pub size: u64,
    /// No more bytes will come (the run has ended).
    pub closed: bool,
}

impl LogDir {
    /// Uses (and creates) `root`. Ready files an earlier process left are taken up later, once
    /// the store says which files are logs ([`LogDir::log_ids`], [`LogDir::adopt`]); those of
    /// earlier versions (named `.spare-…`) are deleted.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<LogDir> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        for entry in std::fs::read_dir(&root)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(SPARE_PREFIX) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let spares = Spares {
            root: root.clone(),
            pool: Mutex::new(Pool::default()),
            low: Condvar::new(),
            refilled: AtomicBool::new(false),
            tries: AtomicU64::new(0),
        };
        Ok(LogDir {
            root,
            memory: false,
            spares: Arc::new(spares),
        })
    }

    /// The run ids of the log files in the directory now: logs, or ready files an earlier
    /// process left. Read before the background thread makes files of its own.
    pub fn log_ids(&self) -> io::Result<Vec<String>> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&self.root)?.flatten() {
            if let Some(id) = entry.file_name().to_str().and_then(|n| n.strip_suffix(SUFFIX))
                && !id.is_empty()
                && !id.starts_with('.')
            {
                ids.push(id.to_string());
            }
        }
        Ok(ids)
    }

    /// Takes up the files of `ids`, which no record names: ready files an earlier process
    /// left, or logs of runs that were never recorded. Each is emptied and renamed to a new id
    /// (an id that may have been handed out is not handed out again) into the pool while it has
    /// room, and deleted beyond. Returns how many joined the pool.
    pub fn adopt(&self, ids: impl IntoIterator<Item = String>) -> usize {
        ids.into_iter()
            .filter(|id| matches!(self.spares.recycle_at(&self.spares.path(id)), Ok(true)))
            .count()
    }

    /// Keeps live logs in memory instead of files: the same writer and readers without the file
    /// system, so that a benchmark can measure what the files cost. Nothing outlives the process.
    pub fn in_memory(mut self, memory: bool) -> LogDir {
        self.memory = memory;
        self
    }

    /// Starts the thread that keeps empty files ready for new logs (see the module's doc).
    pub fn keep_spares(self) -> io::Result<LogDir> {
        if !self.memory {
            self.spares.refilled.store(true, Ordering::Relaxed);
            let spares = Arc::downgrade(&self.spares);
            std::thread::Builder::new()
                .name("cligate-log-spares".into())
                .spawn(move || Spares::refill(spares))?;
        }
        Ok(self)
    }

    pub fn path(&self, run_id: &str) -> PathBuf {
        self.spares.path(run_id)
    }

    /// The id of a new run: a ready file's, whose file becomes its log in [`LogDir::create`]
    /// (no file is made or renamed on the run's path), or a fresh one when the pool is empty.
    pub fn lease_run_id(&self) -> RunIdLease {
        let id = match self.memory {
            true => None,
            false => self.spares.lend(),
        };
        RunIdLease {
            id: id.unwrap_or_else(fresh_id),
            spares: self.spares.clone(),
            spent: false,
        }
    }

    /// Creates the empty log of a new run: the ready file named by its id when the id was
    /// leased from the pool, else a new file (never an existing one).
    pub fn create(&self, run_id: &str) -> io::Result<Arc<RunLog>> {
        if self.memory {
            return Ok(Arc::new(RunLog::new(None)));
        }
        let path = self.path(run_id);
        let log = |file| {
            Arc::new(RunLog::new(Some(LiveFile {
                file,
                path: path.clone(),
                spares: self.spares.clone(),
            })))
        };
        if self.spares.claim(run_id)
            && let Ok(file) = OpenOptions::new().read(true).write(true).open(&path)
        {
            return Ok(log(file));
        }
        Ok(log(OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?))
    }

    /// Opens the log of a run that is not live (finished, or left by an earlier process) for
    /// reading; its size is the file's.
    pub fn open_finished(&self, run_id: &str) -> io::Result<LogFile> {
        let file = File::open(self.path(run_id))?;
        let size = file.metadata()?.len();
        Ok(LogFile {
            data: Data::File(file),
            size,
        })
    }

    /// Cuts a torn last line (a crash in the middle of a write) so that the log ends with a whole
    /// frame, and returns the size kept. A missing log is created empty.
    pub fn repair(&self, run_id: &str) -> io::Result<u64> {
        let path = self.path(run_id);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                File::create(&path)?;
                return Ok(0);
            }
            Err(e) => return Err(e),
        };
        let size = file.metadata()?.len();
        let keep = last_frame_end(&file, size)?;
        if keep != size {
            file.set_len(keep)?;
        }
        Ok(keep)
    }

    /// Deletes a run's log; a log that is already gone is fine. Its inode becomes a ready file
    /// (emptied) while the pool has room.
    pub fn remove(&self, run_id: &str) -> io::Result<()> {
        self.spares.recycle_at(&self.path(run_id)).map(|_| ())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Deletes `path`; one that is already gone is fine.
fn remove_if_there(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Renames `from` to `to` unless `to` exists (one system call where the file system can).
fn rename_new(from: &Path, to: &Path) -> io::Result<()> {
    use nix::errno::Errno;
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL | Errno::ENOSYS) if to.exists() => Err(io::ErrorKind::AlreadyExists.into()),
        Err(Errno::EINVAL | Errno::ENOSYS) => std::fs::rename(from, to),
        Err(e) => Err(e.into()),
    }
}

/// The offset just past the last newline of the first `size` bytes of `file` (0 if none).
fn last_frame_end(file: &File, size: u64) -> io::Result<u64> {
    let mut end = size;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let piece = &mut buf[..(end - start) as usize];
        file.read_exact_at(piece, start)?;
        if let Some(i) = memchr::memrchr(b'\n', piece) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// A log that is still being written: the writer's handle and the readers' meeting point.
#[derive(Debug)]
pub struct RunLog {
    /// `None` for an in-memory log (every chunk stays in `recent`).
    file: Option<LiveFile>,
    /// Set by [`RunLog::recycle_when_unused`]: the file goes back to the pool on drop.
    recycle: AtomicBool,
    /// The writers' side: taken by the run's pipes and its finish, never by a reader.
    writer: Mutex<Writer>,
    /// The latest chunks. Held only to copy a `Bytes` handle, never across an `.await`. With a
    /// file, writers and readers only *try* it: a reader that finds it taken reads the file, a
    /// writer does not keep its chunk here, so nobody waits for anybody (a follower on a
    /// lower-priority thread may be descheduled while holding it). In memory it is the log, and
    /// everyone waits for it (`RUN_LOG_IN_MEMORY` is for benchmarks).
    recent: Mutex<Recent>,
    /// The published end, `size << 1 | closed`: read without a lock.
    published: AtomicU64,
    /// Wakes the run's own client (see [`Reader::Client`]).
    end: watch::Sender<LogEnd>,
    /// Wakes every other reader (see [`relay`]); started by the first of them (`None`: it could
    /// not be, and they are woken like the client).
    relay: OnceLock<Option<Relay>>,
    /// When the log began: a follower's first measure of its growth (see `pace`).
    began: tokio::time::Instant,
}

#[derive(Debug, Default)]
struct Writer {
    size: u64,
    /// Set when a write failed: later appends are refused.
    failed: bool,
    closed: bool,
}

impl Writer {
    fn published(&self) -> u64 {
        self.size << 1 | u64::from(self.closed)
    }
}

#[derive(Debug, Default)]
struct Recent {
    /// The most recent chunks with their offsets, oldest first (with a file, one a writer could
    /// not add is missing; readers then read its bytes from the file).
    chunks: std::collections::VecDeque<(u64, Bytes)>,
    /// Their total length.
    bytes: usize,
}

/// Who follows a live log, and so how it is woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// The run's own client (its `/run` connection, on the HTTP workers): woken by the writer
    /// directly, through a `watch` they share.
    Client,
    /// Any other follower (`/runs/{id}/stream`, on lower-priority threads): woken through the
    /// log's relay, so that the writer never waits for a lock one of them holds.
    Follower,
}

/// A reader's changes of a live log's end: from the writer's `watch`, or through the relay.
#[derive(Debug)]
enum Changes {
    Direct(watch::Receiver<LogEnd>),
    Relayed(relay::Changes),
}

impl Changes {
    /// Marks the changes up to now as seen.
    fn seen(&mut self) {
        match self {
            Changes::Direct(rx) => {
                rx.borrow_and_update();
            }
            Changes::Relayed(changes) => changes.seen(),
        }
    }

    /// The `watch` itself (tests only).
    #[cfg(test)]
    fn receiver(&mut self) -> &mut watch::Receiver<LogEnd> {
        match self {
            Changes::Direct(rx) => rx,
            Changes::Relayed(changes) => changes.receiver(),
        }
    }

    /// Waits for a change after the last one seen; an error once the writer (or relay) is gone.
    async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        match self {
            Changes::Direct(rx) => rx.changed().await,
            Changes::Relayed(changes) => changes.changed().await,
        }
    }
}

/// A live log's file, where it is, and the pool it may go back to.
#[derive(Debug)]
struct LiveFile {
    file: File,
    path: PathBuf,
    spares: Arc<Spares>,
}

impl Drop for RunLog {
    fn drop(&mut self) {
        if let Some(Some(relay)) = self.relay.get() {
            relay.wake(); // its task ends: the log is gone
        }
        if *self.recycle.get_mut()
            && let Some(live) = self.file.take()
        {
            live.spares.give_back(live.path, live.file);
        }
    }
}

impl RunLog {
    fn new(file: Option<LiveFile>) -> RunLog {
        RunLog {
            file,
            recycle: AtomicBool::new(false),
            writer: Mutex::default(),
            recent: Mutex::default(),
            published: AtomicU64::new(0),
            end: watch::Sender::new(LogEnd { size: 0, closed: false }),
            relay: OnceLock::new(),
            began: tokio::time::Instant::now(),
        }
    }

    /// Appends whole frames and publishes the new end. The write goes to the page cache: the
    /// child is slowed only by the disk, never by a reader.
    pub fn append(&self, frames: Bytes) -> io::Result<u64> {
        if frames.is_empty() {
            return Ok(self.end().size);
        }
        let size = {
            let mut writer = self.writer.lock().expect("log writer lock");
            if writer.failed {
                return Err(io::Error::other("an earlier write to this log failed"));
            }
            if let Some(live) = &self.file
                && let Err(e) = live.file.write_all_at(&frames, writer.size)
            {
                writer.failed = true;
                return Err(e);
            }
            let offset = writer.size;
            writer.size += frames.len() as u64;
            self.remember(offset, frames);
            // Under the writer's lock, so that two writers (stdout and stderr pumps, the
            // finish) publish in order.
            self.published.store(writer.published(), Ordering::SeqCst);
            writer.size
        };
        self.end.send_modify(|end| end.size = end.size.max(size));
        self.kick_relay();
        Ok(size)
    }

    /// Keeps a new chunk in memory, and at most [`RECENT_BYTES`] (but the newest chunk) with it.
    fn remember(&self, offset: u64, chunk: Bytes) {
        let mut recent = match &self.file {
            Some(_) => match self.recent.try_lock() {
                Ok(recent) => recent,
                Err(_) => return, // a reader holds it: the chunk is read from the file
            },
            None => self.recent.lock().expect("log chunks lock"),
        };
        recent.bytes += chunk.len();
        recent.chunks.push_back((offset, chunk));
        while self.file.is_some() && recent.bytes > RECENT_BYTES && recent.chunks.len() > 1 {
            let (_, old) = recent.chunks.pop_front().expect("more than one chunk");
            recent.bytes -= old.len();
        }
    }

    fn kick_relay(&self) {
        // Between the end just published and the look at the relay, as in `Relay::join` between
        // the relay being set up and its wake: either this writer finds the relay, or the relay,
        // woken by a follower joining, finds this end.
        std::sync::atomic::fence(Ordering::SeqCst);
        if let Some(Some(relay)) = self.relay.get() {
            relay.kick();
        }
    }

    /// Marks the log complete: followers end once they have read everything. The chunks kept in
    /// memory go (a reader that has not caught up yet reads the file), so a finished run's
    /// stalled reader holds no more than its own buffer (unless a reader held them just then:
    /// they go with the log).
    pub fn close(&self) {
        {
            let mut writer = self.writer.lock().expect("log writer lock");
            writer.closed = true;
            self.published.store(writer.published(), Ordering::SeqCst);
        }
        if self.file.is_some()
            && let Ok(mut recent) = self.recent.try_lock()
        {
            recent.chunks.clear();
            recent.bytes = 0;
        }
        self.end.send_modify(|end| end.closed = true);
        self.kick_relay();
    }

    pub fn end(&self) -> LogEnd {
        let published = self.published.load(Ordering::SeqCst);
        LogEnd {
            size: published >> 1,
            closed: published & 1 == 1,
        }
    }

    /// Changes of the end, for `reader`. (A log already closed changes no more: its followers
    /// need no relay.)
    fn subscribe(self: &Arc<Self>, reader: Reader) -> Changes {
        if reader == Reader::Follower && !self.end().closed {
            let relay = self.relay.get_or_init(|| {
                Relay::start(Arc::downgrade(self), self.end())
                    .inspect_err(|e| tracing::warn!(error = %e, "a log's followers are woken like its client"))
                    .ok()
            });
            if let Some(relay) = relay {
                return Changes::Relayed(relay.join());
            }
        }
        Changes::Direct(self.end.subscribe())
    }

    /// Up to `max` published bytes from `offset` (empty at the end). Served from memory when the
    /// reader is at a recent chunk, else read back from the file.
    pub fn read(&self, offset: u64, max: usize) -> io::Result<Bytes> {
        let size = self.end().size;
        if offset >= size || max == 0 {
            return Ok(Bytes::new());
        }
        let recent = match &self.file {
            Some(_) => self.recent.try_lock().ok(),
            None => Some(self.recent.lock().expect("log chunks lock")),
        };
        if let Some(recent) = recent {
            // The chunk holding `offset`: the last one starting at or before it.
            let i = recent.chunks.partition_point(|(start, _)| *start <= offset);
            if let Some((start, chunk)) = i.checked_sub(1).map(|i| &recent.chunks[i])
                && offset < start + chunk.len() as u64
            {
                let from = (offset - start) as usize;
                let to = chunk.len().min(from + max).min((size - start) as usize);
                return Ok(chunk.slice(from..to));
            }
        }
        match &self.file {
            Some(live) => read_file(&live.file, offset, (size - offset).min(max as u64) as usize),
            None => Ok(Bytes::new()),
        }
    }

    /// Every published byte, when there are at most `max` and no write failed (`None` otherwise).
    pub fn contents(&self, max: u64) -> io::Result<Option<Bytes>> {
        let writer = self.writer.lock().expect("log writer lock");
        if writer.failed || writer.size > max {
            return Ok(None);
        }
        match &self.file {
            Some(live) => read_file(&live.file, 0, writer.size as usize).map(Some),
            None => {
                let recent = self.recent.lock().expect("log chunks lock");
                let mut all = BytesMut::with_capacity(writer.size as usize);
                for (_, chunk) in &recent.chunks {
                    all.extend_from_slice(chunk);
                }
                Ok(Some(all.freeze()))
            }
        }
    }

    /// Its contents are kept elsewhere now (with the run's record): once the last reader of this
    /// live log is gone, the file is emptied and goes back to the pool of ready files. Whoever
    /// opens the run's log afterwards must read the kept copy, never the file.
    pub fn recycle_when_unused(&self) {
        self.recycle.store(true, Ordering::Relaxed);
    }
}

/// A log that no longer grows: its file, or the copy kept with its record.
#[derive(Debug)]
pub struct LogFile {
    data: Data,
    pub size: u64,
}

#[derive(Debug)]
enum Data {
    File(File),
    Kept(Bytes),
}

impl LogFile {
    /// A finished log kept in memory (read from the store).
    pub fn kept(contents: Bytes) -> LogFile {
        LogFile {
            size: contents.len() as u64,
            data: Data::Kept(contents),
        }
    }

    pub fn read(&self, offset: u64, max: usize) -> io::Result<Bytes> {
        if offset >= self.size {
            return Ok(Bytes::new());
        }
        let len = (self.size - offset).min(max as u64) as usize;
        match &self.data {
            Data::File(file) => read_file(file, offset, len),
            Data::Kept(bytes) => Ok(bytes.slice(offset as usize..offset as usize + len)),
        }
    }
}

fn read_file(file: &File, offset: u64, len: usize) -> io::Result<Bytes> {
    use std::os::fd::AsRawFd;
    // Read into the buffer's spare capacity: zeroing 64 KiB per read first cost the readers of a
    // fast run about 3% of the gateway's CPU.
    let mut buf = BytesMut::with_capacity(len);
    while buf.len() < len {
        let filled = buf.len();
        let spare = buf.spare_capacity_mut();
        // SAFETY: pread writes at most `len - filled` bytes, all within the spare capacity
        // (`with_capacity(len)`), and `set_len` below keeps only the bytes it wrote.
        let n = unsafe {
            nix::libc::pread(
                file.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                len - filled,
                (offset + filled as u64) as nix::libc::off_t,
            )
        };
        match n {
            0 => break,
            n if n > 0 => unsafe { buf.set_len(filled + n as usize) },
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(buf.freeze())
}

/// Either kind of log, for readers that do not care whether the run is live.
#[derive(Debug, Clone)]
pub enum Source {
    Live(Arc<RunLog>),
    Finished(Arc<LogFile>),
}

impl Source {
    /// Bytes readable now, and whether more may come.
    pub fn end(&self) -> LogEnd {
        match self {
            Source::Live(log) => log.end(),
            Source::Finished(f) => LogEnd {
                size: f.size,
                closed: true,
            },
        }
    }

    pub fn read(&self, offset: u64, max: usize) -> io::Result<Bytes> {
        match self {
            Source::Live(log) => log.read(offset, max),
            Source::Finished(f) => f.read(offset, max),
        }
    }

    /// Whole frames from `offset`, at most `max` bytes (but at least one whole frame when one
    /// starts at `offset` and is longer than `max`, so a reader always makes progress).
    pub fn read_frames(&self, offset: u64, max: usize) -> io::Result<Bytes> {
        let chunk = self.read(offset, max)?;
        if chunk.is_empty() {
            return Ok(chunk);
        }
        if let Some(i) = memchr::memrchr(b'\n', &chunk) {
            return Ok(chunk.slice(..=i));
        }
        // One frame longer than `max`: read on until its end (frames are bounded, ~400 KiB at
        // most after escaping).
        let mut whole = BytesMut::from(&chunk[..]);
        loop {
            let more = self.read(offset + whole.len() as u64, READ_CHUNK)?;
            if more.is_empty() {
                return Ok(Bytes::new()); // no whole frame yet
            }
            match memchr::memchr(b'\n', &more) {
                Some(i) => {
                    whole.extend_from_slice(&more[..=i]);
                    return Ok(whole.freeze());
                }
                None => whole.extend_from_slice(&more),
            }
        }
    }
}

/// Follows a log from `offset` to its end: yields pieces of at most [`READ_CHUNK`] bytes as they
/// are published, and ends once the log is closed and read to the end (or cannot be read).
pub fn follow(
    source: Source,
    mut offset: u64,
    reader: Reader,
) -> impl tokio_stream::Stream<Item = Bytes> + Send + use<> {
    async_stream::stream! {
        let mut changes = match &source {
            Source::Live(log) => Some(log.subscribe(reader)),
            Source::Finished(_) => None,
        };
        // Only a follower of a live log is ever paused (see `pace`).
        let mut pace = match (&source, reader) {
            (Source::Live(log), Reader::Follower) => Some(Pace::since(log.began)),
            _ => None,
        };
        loop {
            if let Some(changes) = changes.as_mut() {
                // Seen before the end is read: a change after this read wakes the wait below.
                changes.seen();
            }
            let end = source.end();
            if offset < end.size {
                match source.read(offset, READ_CHUNK) {
                    Ok(chunk) if !chunk.is_empty() => {
                        offset += chunk.len() as u64;
                        yield chunk;
                        if let Some(pace) = pace.as_mut()
                            && let Some(wait) = pace.after_read(offset, source.end(), tokio::time::Instant::now())
                        {
                            tokio::time::sleep(wait).await;
                        }
                        continue;
                    }
                    _ => break,
                }
            }
            if end.closed {
                break;
            }
            match changes.as_mut() {
                Some(rx) => {
                    if rx.changed().await.is_err() {
                        // The writer is gone without closing: read what is there, then end.
                        let end = source.end();
                        if offset >= end.size {
                            break;
                        }
                    }
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    fn dir() -> (tempfile::TempDir, LogDir) {
        let tmp = tempfile::tempdir().unwrap();
        let logs = LogDir::open(tmp.path().join("logs")).unwrap();
        (tmp, logs)
    }

    #[tokio::test]
    async fn readers_follow_appends_from_any_offset_to_the_close() {
        for (id, kind) in [("r1", Reader::Client), ("r1f", Reader::Follower)] {
            let (_tmp, logs) = dir();
            let log = logs.create(id).unwrap();
            let reader = tokio::spawn(follow(Source::Live(log.clone()), 0, kind).collect::<Vec<Bytes>>());
            let late = tokio::spawn(follow(Source::Live(log.clone()), 3, kind).collect::<Vec<Bytes>>());
            for i in 0..100 {
                log.append(Bytes::from(format!("{{\"n\":{i}}}\n"))).unwrap();
                if i % 10 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            log.close();
            let all: Vec<u8> = reader.await.unwrap().concat();
            let on_disk = std::fs::read(logs.path(id)).unwrap();
            assert_eq!(all, on_disk, "{kind:?}");
            assert_eq!(late.await.unwrap().concat(), on_disk[3..], "{kind:?}");
            // After the run: the same bytes from the file.
            let file = Source::Finished(Arc::new(logs.open_finished(id).unwrap()));
            let again: Vec<u8> = follow(file, 0, kind).collect::<Vec<Bytes>>().await.concat();
            assert_eq!(again, on_disk, "{kind:?}");
        }
    }

    /// Followers that have caught up wait, and each append from another thread wakes them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_followers_are_woken_by_every_append() {
        let (_tmp, logs) = dir();
        let log = logs.create("slow").unwrap();
        let readers: Vec<_> = (0..5)
            .map(|_| tokio::spawn(follow(Source::Live(log.clone()), 0, Reader::Follower).collect::<Vec<Bytes>>()))
            .collect();
        let writer = log.clone();
        std::thread::spawn(move || {
            for i in 0..60 {
                writer.append(Bytes::from(format!("{{\"n\":{i}}}\n"))).unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
            writer.close();
        });
        let on_disk = || std::fs::read(logs.path("slow")).unwrap();
        for reader in readers {
            let all = tokio::time::timeout(Duration::from_secs(10), reader)
                .await
                .expect("a follower missed a wake")
                .unwrap()
                .concat();
            assert_eq!(all, on_disk());
        }
        assert_eq!(on_disk().iter().filter(|b| **b == b'\n').count(), 60);
    }

    /// A follower far behind a log that grows fast waits after each piece, and reads on at full
    /// speed once the log slows down or closes; the run's own client never waits. (Tokio's clock
    /// is paused: a wait is seen as time that passed, and the test says when the log grows.)
    #[tokio::test(start_paused = true)]
    async fn only_a_follower_far_behind_a_fast_log_waits() {
        use tokio::time::Instant;
        let (_tmp, logs) = dir();
        for (id, reader) in [("pc", Reader::Client), ("pf", Reader::Follower)] {
            let log = logs.create(id).unwrap();
            let frame = Bytes::from(format!("{{\"d\":\"{}\"}}\n", "x".repeat(READ_CHUNK - 9)));
            assert_eq!(frame.len(), READ_CHUNK);
            let grow = |mib: usize| {
                for _ in 0..mib * 16 {
                    log.append(frame.clone()).unwrap();
                }
            };
            let mut f = Box::pin(follow(Source::Live(log.clone()), 0, reader));
            let mut got = Vec::new();
            let mut next = async || {
                let t = Instant::now();
                let piece = f.next().await.expect("a piece");
                got.extend_from_slice(&piece);
                t.elapsed()
            };
            // A follower looks at the log's growth after each piece it has passed on.
            grow(4);
            assert_eq!(next().await, Duration::ZERO);
            assert_eq!(next().await, Duration::ZERO);
            // 4 MiB more within 10 ms: 400 MiB/s, and the reader is 8 MiB behind.
            tokio::time::advance(pace::WINDOW).await;
            grow(4);
            let waited = next().await;
            match reader {
                Reader::Follower => assert_eq!(waited, pace::PAUSE),
                Reader::Client => assert_eq!(waited, Duration::ZERO),
            }
            // The log did not grow during that wait: full speed again.
            assert_eq!(next().await, Duration::ZERO);
            assert_eq!(next().await, Duration::ZERO);
            // Fast again: it waits again.
            tokio::time::advance(pace::WINDOW).await;
            grow(4);
            let waited = next().await;
            assert_eq!(
                waited > Duration::ZERO,
                reader == Reader::Follower,
                "{reader:?} waited {waited:?}"
            );
            // Closed: no wait from then on, for the 11 MiB still to read.
            log.close();
            let t = Instant::now();
            while let Some(piece) = f.next().await {
                got.extend_from_slice(&piece);
            }
            assert_eq!(t.elapsed(), Duration::ZERO);
            assert_eq!(got, std::fs::read(logs.path(id)).unwrap());
        }
    }

    /// While no follower waits (each is behind, reading at its own pace), the writer appends
    /// without waking the relay; a follower that has caught up and waits is woken by the appends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_relay_is_woken_only_while_a_follower_waits() {
        let (_tmp, logs) = dir();
        let log = logs.create("quiet").unwrap();
        let line = |i: usize| Bytes::from(format!("{{\"n\":{i}}}\n"));
        log.append(line(0)).unwrap();
        // Behind: it has read one piece and is not asked for the next.
        let mut behind = Box::pin(follow(Source::Live(log.clone()), 0, Reader::Follower));
        assert_eq!(behind.next().await.unwrap(), line(0));
        let relay = || log.relay.get().unwrap().as_ref().unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await; // the relay's task waits
        for i in 1..=50 {
            log.append(line(i)).unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(relay().kicks(), 0, "the writer woke a relay no follower waited for");
        // It reads on, catches up and waits: the relay, asleep without waiting for the writer
        // until then, must learn of it.
        let rest = tokio::spawn(behind.collect::<Vec<Bytes>>());
        let since = std::time::Instant::now();
        while relay().waiting() == 0 {
            assert!(since.elapsed() < Duration::from_secs(10), "the follower never waited");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // the relay's task sees it and waits
        for i in 51..=100 {
            log.append(line(i)).unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(
            relay().kicks() >= 1,
            "a waiting follower was not woken through the relay"
        );
        log.close();
        let rest = tokio::time::timeout(Duration::from_secs(10), rest)
            .await
            .expect("the waiting follower was never woken")
            .unwrap();
        assert_eq!(
            [&line(0)[..], &rest.concat()].concat(),
            std::fs::read(logs.path("quiet")).unwrap()
        );
    }

    /// A writer that appends and closes while the first follower sets the relay up finds no
    /// relay to kick; the follower's joining makes the relay look at the end once more.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_close_while_the_relay_is_set_up_is_not_missed() {
        let (_tmp, logs) = dir();
        let log = logs.create("setup").unwrap();
        let relay = Relay::start(Arc::downgrade(&log), log.end()).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await; // its task waits
        log.append(Bytes::from("{\"n\":1}\n")).unwrap();
        log.close();
        log.relay.set(Some(relay)).unwrap();
        let mut changes = log.relay.get().unwrap().as_ref().unwrap().join();
        tokio::time::timeout(Duration::from_secs(5), changes.receiver().wait_for(|end| end.closed))
            .await
            .expect("the close was missed")
            .unwrap();
    }

    /// A follower may be descheduled at any point, also while it holds what followers share
    /// (its view of the end, the latest chunks): the writer goes on appending regardless.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_never_waits_for_a_follower() {
        let (_tmp, logs) = dir();
        let log = logs.create("w").unwrap();
        log.append(Bytes::from("{\"n\":0}\n")).unwrap();
        let reader = tokio::spawn(follow(Source::Live(log.clone()), 0, Reader::Follower).collect::<Vec<Bytes>>());
        for _ in 0..5000 {
            if log.relay.get().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(
            matches!(log.relay.get(), Some(Some(_))),
            "the follower started no relay"
        );
        let mut view = log.subscribe(Reader::Follower);
        let (done_tx, done) = std::sync::mpsc::channel();
        {
            let _end_held = view.receiver().borrow();
            let _chunks_held = log.recent.lock().unwrap();
            let writer = log.clone();
            std::thread::spawn(move || {
                for i in 1..100 {
                    writer.append(Bytes::from(format!("{{\"n\":{i}}}\n"))).unwrap();
                }
                writer.close();
                done_tx.send(()).unwrap();
            });
            let finished = done.recv_timeout(Duration::from_secs(10));
            assert!(finished.is_ok(), "the writer waited for a lock a follower held");
        }
        let all = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(all.concat(), std::fs::read(logs.path("w")).unwrap());
    }

    #[tokio::test]
    async fn reads_of_whole_frames_never_split_one() {
        let (_tmp, logs) = dir();
        let log = logs.create("r2").unwrap();
        let big = format!("{{\"d\":\"{}\"}}\n", "x".repeat(100_000));
        log.append(Bytes::from("{\"a\":1}\n")).unwrap();
        log.append(Bytes::from(big.clone())).unwrap();
        log.append(Bytes::from("{\"b\":2}\n")).unwrap();
        let src = Source::Live(log.clone());
        assert_eq!(&src.read_frames(0, 10).unwrap()[..], b"{\"a\":1}\n");
        assert_eq!(
            src.read_frames(0, 5).unwrap().len(),
            8,
            "a frame longer than max comes whole"
        );
        let second = src.read_frames(8, 100).unwrap();
        assert_eq!(second.len(), big.len());
        assert_eq!(src.read_frames(8 + big.len() as u64, 1 << 20).unwrap(), "{\"b\":2}\n");
        assert!(src.read_frames(10_000_000, 10).unwrap().is_empty());
    }

    #[tokio::test]
    async fn only_the_latest_chunks_stay_in_memory_and_none_once_closed() {
        let (_tmp, logs) = dir();
        let log = logs.create("k").unwrap();
        let frame = |c: &str, n| Bytes::from(format!("{{\"d\":\"{}\"}}\n", c.repeat(n)));
        for i in 0..10 {
            log.append(frame(&i.to_string(), 40_000)).unwrap();
            let recent = log.recent.lock().unwrap();
            assert!(recent.bytes <= RECENT_BYTES, "{} bytes held", recent.bytes);
            assert_eq!(recent.bytes, recent.chunks.iter().map(|(_, c)| c.len()).sum::<usize>());
            assert_eq!(
                recent.chunks.back().unwrap().0 + 40_009,
                log.end().size,
                "the newest is held"
            );
        }
        // A chunk larger than the bound is still held whole, alone.
        log.append(frame("z", RECENT_BYTES)).unwrap();
        assert_eq!(log.recent.lock().unwrap().chunks.len(), 1);
        log.close();
        assert_eq!(log.recent.lock().unwrap().bytes, 0);
        assert!(log.recent.lock().unwrap().chunks.is_empty());
        // Readers of the closed log get every byte from the file.
        let on_disk = std::fs::read(logs.path("k")).unwrap();
        assert_eq!(on_disk.len() as u64, log.end().size);
        let all = follow(Source::Live(log.clone()), 0, Reader::Client)
            .collect::<Vec<Bytes>>()
            .await
            .concat();
        assert_eq!(all, on_disk);
        // A follower of a closed log needs no relay.
        let all = follow(Source::Live(log.clone()), 0, Reader::Follower)
            .collect::<Vec<Bytes>>()
            .await
            .concat();
        assert_eq!(all, on_disk);
        assert!(log.relay.get().is_none());
    }

    #[tokio::test]
    async fn an_in_memory_log_serves_every_reader_without_a_file() {
        let (_tmp, logs) = dir();
        let logs = logs.in_memory(true);
        let log = logs.create("m").unwrap();
        let reader = tokio::spawn(follow(Source::Live(log.clone()), 0, Reader::Follower).collect::<Vec<Bytes>>());
        let mut all = Vec::new();
        for i in 0..50 {
            let frame = format!("{{\"n\":{i}}}\n");
            all.extend_from_slice(frame.as_bytes());
            log.append(Bytes::from(frame)).unwrap();
        }
        log.close();
        assert_eq!(reader.await.unwrap().concat(), all);
        assert_eq!(
            follow(Source::Live(log), 7, Reader::Client)
                .collect::<Vec<Bytes>>()
                .await
                .concat(),
            all[7..]
        );
        assert!(!logs.path("m").exists());
    }

    #[test]
    fn repair_cuts_a_torn_last_line_only() {
        let (_tmp, logs) = dir();
        std::fs::write(logs.path("t"), b"{\"a\":1}\n{\"b\":2}\n{\"c\":").unwrap();
        assert_eq!(logs.repair("t").unwrap(), 16);
        assert_eq!(std::fs::read(logs.path("t")).unwrap(), b"{\"a\":1}\n{\"b\":2}\n");
        assert_eq!(logs.repair("t").unwrap(), 16, "a whole log is left alone");
        std::fs::write(logs.path("u"), b"no newline at all").unwrap();
        assert_eq!(logs.repair("u").unwrap(), 0);
        assert_eq!(logs.repair("missing").unwrap(), 0);
        assert!(logs.path("missing").exists());
    }

    fn ready(logs: &LogDir) -> Vec<String> {
        logs.spares.pool.lock().unwrap().ready.clone()
    }

    fn inode(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().ino()
    }

    #[test]
    fn a_new_run_takes_a_ready_file_with_its_name_and_deleted_logs_become_ready_files() {
        let (tmp, logs) = dir();
        let logs = logs.keep_spares().unwrap();
        let start = std::time::Instant::now();
        while ready(&logs).len() < SPARES {
            assert!(start.elapsed() < Duration::from_secs(10), "the pool is never filled");
            std::thread::sleep(Duration::from_millis(10));
        }
        for id in ready(&logs) {
            assert_eq!(id.len(), 32, "named as a run id: {id}");
            assert_eq!(std::fs::metadata(logs.path(&id)).unwrap().len(), 0);
        }

        // The run's id is a ready file's name, and that file becomes its log.
        let lease = logs.lease_run_id();
        let id = lease.id().to_string();
        let file = inode(&logs.path(&id));
        assert!(!ready(&logs).contains(&id) && ready(&logs).len() == SPARES - 1);
        let log = logs.create(&id).unwrap();
        drop(lease);
        assert_eq!(inode(&logs.path(&id)), file, "the ready file is the log, not renamed");
        assert_eq!(
            ready(&logs).len(),
            SPARES - 1,
            "a lease whose log was made gives nothing back"
        );
        log.append(Bytes::from("{\"n\":1}\n")).unwrap();
        assert!(logs.create(&id).is_err(), "a run's log is never replaced");
        assert_eq!(std::fs::read(logs.path(&id)).unwrap(), b"{\"n\":1}\n");

        // A lease dropped unused gives its file back under the same name; a spent one (its id
        // was stored) under a new name.
        let unused = logs.lease_run_id();
        let unused_id = unused.id().to_string();
        drop(unused);
        assert!(ready(&logs).contains(&unused_id));
        let mut spent = logs.lease_run_id();
        spent.spend();
        let (spent_id, spent_file) = (spent.id().to_string(), inode(&logs.path(spent.id())));
        drop(spent);
        assert!(!logs.path(&spent_id).exists() && !ready(&logs).contains(&spent_id));
        assert!(ready(&logs).iter().any(|r| inode(&logs.path(r)) == spent_file));

        // A deleted log's inode becomes a ready file, emptied, under a new name.
        logs.remove(&id).unwrap();
        assert!(!logs.path(&id).exists());
        let recycled = ready(&logs)
            .into_iter()
            .find(|r| inode(&logs.path(r)) == file)
            .expect("the deleted log's inode is a ready file");
        assert_ne!(recycled, id);
        assert_eq!(std::fs::metadata(logs.path(&recycled)).unwrap().len(), 0, "emptied");
        logs.remove(&id).unwrap();

        // The next process: the files there are logs (with records) or ready files (without).
        let lease = logs.lease_run_id();
        let kept = lease.id().to_string();
        let kept_log = logs.create(&kept).unwrap();
        drop(lease);
        kept_log.append(Bytes::from("{}\n")).unwrap();
        drop(kept_log);
        let left = ready(&logs);
        drop(logs);
        std::fs::write(tmp.path().join("logs").join(&left[0]).with_extension("ndjson"), b"torn").unwrap();
        std::fs::write(tmp.path().join("logs/.spare-1.2-3"), b"").unwrap();
        let again = LogDir::open(tmp.path().join("logs")).unwrap();
        assert!(
            !tmp.path().join("logs/.spare-1.2-3").exists(),
            "an earlier version's ready file is deleted"
        );
        let mut found = again.log_ids().unwrap();
        found.sort();
        let mut expected = left.clone();
        expected.push(kept.clone());
        expected.sort();
        assert_eq!(found, expected);
        let inodes: Vec<u64> = left.iter().map(|r| inode(&again.path(r))).collect();
        assert_eq!(again.adopt(left.clone()), left.len());
        assert_eq!(
            std::fs::read(again.path(&kept)).unwrap(),
            b"{}\n",
            "a recorded log stays"
        );
        let pool = ready(&again);
        assert_eq!(pool.len(), left.len());
        for r in &pool {
            assert!(!left.contains(r), "taken up under a new name");
            assert!(inodes.contains(&inode(&again.path(r))), "the same files");
            assert_eq!(std::fs::metadata(again.path(r)).unwrap().len(), 0, "emptied");
        }
        for r in &left {
            assert!(!again.path(r).exists());
        }
    }

    #[test]
    fn a_kept_log_goes_back_to_the_pool_once_its_last_reader_is_gone() {
        use std::os::unix::fs::MetadataExt;
        let (_tmp, logs) = dir();
        let log = logs.create("kept").unwrap();
        log.append(Bytes::from("{\"n\":1}\n")).unwrap();
        log.append(Bytes::from("{\"n\":2}\n")).unwrap();
        assert_eq!(log.contents(1024).unwrap().unwrap(), "{\"n\":1}\n{\"n\":2}\n");
        assert_eq!(log.contents(15).unwrap(), None, "larger than asked for");
        let inode = std::fs::metadata(logs.path("kept")).unwrap().ino();

        // A log that is not kept stays where it is when dropped.
        let other = logs.create("other").unwrap();
        other.append(Bytes::from("{}\n")).unwrap();
        drop(other);
        assert_eq!(std::fs::read(logs.path("other")).unwrap(), b"{}\n");

        log.recycle_when_unused();
        let reader = Source::Live(log.clone());
        drop(log);
        assert!(logs.path("kept").exists(), "a reader still holds it");
        assert_eq!(reader.read(8, 100).unwrap(), "{\"n\":2}\n");
        drop(reader);
        assert!(!logs.path("kept").exists());
        let lease = logs.lease_run_id();
        let next = logs.create(lease.id()).unwrap();
        let meta = std::fs::metadata(logs.path(lease.id())).unwrap();
        assert_eq!(
            (meta.ino(), meta.len()),
            (inode, 0),
            "the next log is the kept one's file, emptied"
        );
        next.append(Bytes::from("{}\n")).unwrap();

        // What readers of the finished run get instead: the kept copy.
        let kept = Source::Finished(Arc::new(LogFile::kept(Bytes::from("{\"n\":1}\n{\"n\":2}\n"))));
        assert_eq!(kept.end(), LogEnd { size: 16, closed: true });
        assert_eq!(kept.read_frames(0, 10).unwrap(), "{\"n\":1}\n");
        assert_eq!(kept.read(8, 100).unwrap(), "{\"n\":2}\n");
        assert_eq!(kept.read(16, 100).unwrap(), "");
    }

    #[test]
    fn a_pool_that_cannot_be_filled_is_tried_again_later_not_in_a_loop() {
        let (tmp, logs) = dir();
        // The directory goes away: every file the thread makes fails.
        std::fs::remove_dir_all(tmp.path().join("logs")).unwrap();
        let logs = logs.keep_spares().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let tries = logs.spares.tries.load(Ordering::Relaxed);
        assert!(tries <= 2, "{tries} tries in 300 ms");
        assert!(logs.create("x").is_err(), "a log that cannot be made is an error");
    }
}
