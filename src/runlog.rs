//! A run's log: the NDJSON bytes of its frames, appended to one file per run under
//! `$DATA_DIR/logs`, read by any number of readers from a byte offset. The writer (the run's
//! supervisor) appends whole frames only and then publishes the new end, so a reader never sees
//! half a frame; readers follow the published end through a `watch`, each at its own pace, so a
//! slow reader costs one bounded read buffer and never slows the child. A log outlives the
//! process, the connection and the gateway: after a crash its torn last line (if any) is cut off
//! by [`LogDir::repair`].

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;

/// Largest piece a reader takes at once (also the most a reader holds).
pub const READ_CHUNK: usize = 64 * 1024;

/// How many recently appended chunks stay in memory, so readers that keep up are served without
/// reading the file back.
const RECENT_CHUNKS: usize = 4;

/// Where the logs live.
#[derive(Debug, Clone)]
pub struct LogDir {
    root: PathBuf,
    /// `RUN_LOG_IN_MEMORY` (benchmarks only): live logs are kept in memory, not written to files.
    memory: bool,
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
    /// Uses (and creates) `root`.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<LogDir> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        Ok(LogDir { root, memory: false })
    }

    /// Keeps live logs in memory instead of files: the same writer and readers without the file
    /// system, so that a benchmark can measure what the files cost. Nothing outlives the process.
    pub fn in_memory(mut self, memory: bool) -> LogDir {
        self.memory = memory;
        self
    }

    pub fn path(&self, run_id: &str) -> PathBuf {
        self.root.join(format!("{run_id}.ndjson"))
    }

    /// Creates the empty log of a new run.
    pub fn create(&self, run_id: &str) -> io::Result<Arc<RunLog>> {
        if self.memory {
            return Ok(Arc::new(RunLog::new(None)));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.path(run_id))?;
        Ok(Arc::new(RunLog::new(Some(file))))
    }

    /// Opens the log of a run that is not live (finished, or left by an earlier process) for
    /// reading; its size is the file's.
    pub fn open_finished(&self, run_id: &str) -> io::Result<LogFile> {
        let file = File::open(self.path(run_id))?;
        let size = file.metadata()?.len();
        Ok(LogFile { file, size })
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

    /// Deletes a run's log; a log that is already gone is fine.
    pub fn remove(&self, run_id: &str) -> io::Result<()> {
        match std::fs::remove_file(self.path(run_id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
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
    file: Option<File>,
    /// The end of the file and the latest chunks. Held only for a write to the page cache or a
    /// copy of a `Bytes` handle, never across an `.await`.
    tail: Mutex<Tail>,
    end: watch::Sender<LogEnd>,
}

#[derive(Debug, Default)]
struct Tail {
    size: u64,
    /// The most recent chunks with their offsets, oldest first.
    recent: std::collections::VecDeque<(u64, Bytes)>,
    /// Set when a write failed: later appends are refused.
    failed: bool,
}

impl RunLog {
    fn new(file: Option<File>) -> RunLog {
        RunLog {
            file,
            tail: Mutex::new(Tail::default()),
            end: watch::Sender::new(LogEnd { size: 0, closed: false }),
        }
    }

    /// Appends whole frames and publishes the new end. The write goes to the page cache: the
    /// child is slowed only by the disk, never by a reader.
    pub fn append(&self, frames: Bytes) -> io::Result<u64> {
        if frames.is_empty() {
            return Ok(self.end.borrow().size);
        }
        let size = {
            let mut tail = self.tail.lock().expect("log lock");
            if tail.failed {
                return Err(io::Error::other("an earlier write to this log failed"));
            }
            if let Some(file) = &self.file
                && let Err(e) = file.write_all_at(&frames, tail.size)
            {
                tail.failed = true;
                return Err(e);
            }
            let offset = tail.size;
            tail.size += frames.len() as u64;
            if tail.recent.len() == RECENT_CHUNKS && self.file.is_some() {
                tail.recent.pop_front();
            }
            tail.recent.push_back((offset, frames));
            tail.size
        };
        self.end.send_modify(|end| end.size = size);
        Ok(size)
    }

    /// Marks the log complete: followers end once they have read everything.
    pub fn close(&self) {
        self.end.send_modify(|end| end.closed = true);
    }

    pub fn end(&self) -> LogEnd {
        *self.end.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<LogEnd> {
        self.end.subscribe()
    }

    /// Up to `max` published bytes from `offset` (empty at the end). Served from memory when the
    /// reader is at a recent chunk, else read back from the file.
    pub fn read(&self, offset: u64, max: usize) -> io::Result<Bytes> {
        let size = self.end.borrow().size;
        if offset >= size || max == 0 {
            return Ok(Bytes::new());
        }
        {
            let tail = self.tail.lock().expect("log lock");
            // The chunk holding `offset`: the last one starting at or before it.
            let i = tail.recent.partition_point(|(start, _)| *start <= offset);
            if let Some((start, chunk)) = i.checked_sub(1).map(|i| &tail.recent[i])
                && offset < start + chunk.len() as u64
            {
                let from = (offset - start) as usize;
                let to = chunk.len().min(from + max).min((size - start) as usize);
                return Ok(chunk.slice(from..to));
            }
        }
        match &self.file {
            Some(file) => read_file(file, offset, (size - offset).min(max as u64) as usize),
            None => Ok(Bytes::new()),
        }
    }
}

/// A log that no longer grows.
#[derive(Debug)]
pub struct LogFile {
    file: File,
    pub size: u64,
}

impl LogFile {
    pub fn read(&self, offset: u64, max: usize) -> io::Result<Bytes> {
        if offset >= self.size {
            return Ok(Bytes::new());
        }
        read_file(&self.file, offset, (self.size - offset).min(max as u64) as usize)
    }
}

fn read_file(file: &File, offset: u64, len: usize) -> io::Result<Bytes> {
    let mut buf = BytesMut::zeroed(len);
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buf[filled..], offset + filled as u64)? {
            0 => break,
            n => filled += n,
        }
    }
    buf.truncate(filled);
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
pub fn follow(source: Source, mut offset: u64) -> impl tokio_stream::Stream<Item = Bytes> + Send + use<> {
    async_stream::stream! {
        let mut changes = match &source {
            Source::Live(log) => Some(log.subscribe()),
            Source::Finished(_) => None,
        };
        loop {
            let end = match changes.as_mut() {
                Some(rx) => *rx.borrow_and_update(),
                None => source.end(),
            };
            if offset < end.size {
                match source.read(offset, READ_CHUNK) {
                    Ok(chunk) if !chunk.is_empty() => {
                        offset += chunk.len() as u64;
                        yield chunk;
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
        let (_tmp, logs) = dir();
        let log = logs.create("r1").unwrap();
        let reader = tokio::spawn(follow(Source::Live(log.clone()), 0).collect::<Vec<Bytes>>());
        let late = tokio::spawn(follow(Source::Live(log.clone()), 3).collect::<Vec<Bytes>>());
        for i in 0..100 {
            log.append(Bytes::from(format!("{{\"n\":{i}}}\n"))).unwrap();
            if i % 10 == 0 {
                tokio::task::yield_now().await;
            }
        }
        log.close();
        let all: Vec<u8> = reader.await.unwrap().concat();
        let on_disk = std::fs::read(logs.path("r1")).unwrap();
        assert_eq!(all, on_disk);
        assert_eq!(late.await.unwrap().concat(), on_disk[3..]);
        // After the run: the same bytes from the file.
        let file = Source::Finished(Arc::new(logs.open_finished("r1").unwrap()));
        let again: Vec<u8> = follow(file, 0).collect::<Vec<Bytes>>().await.concat();
        assert_eq!(again, on_disk);
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
    async fn an_in_memory_log_serves_every_reader_without_a_file() {
        let (_tmp, logs) = dir();
        let logs = logs.in_memory(true);
        let log = logs.create("m").unwrap();
        let reader = tokio::spawn(follow(Source::Live(log.clone()), 0).collect::<Vec<Bytes>>());
        let mut all = Vec::new();
        for i in 0..50 {
            let frame = format!("{{\"n\":{i}}}\n");
            all.extend_from_slice(frame.as_bytes());
            log.append(Bytes::from(frame)).unwrap();
        }
        log.close();
        assert_eq!(reader.await.unwrap().concat(), all);
        assert_eq!(
            follow(Source::Live(log), 7).collect::<Vec<Bytes>>().await.concat(),
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
}
