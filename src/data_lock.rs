//! One gateway per `DATA_DIR`. A gateway's start-up takes over what a crashed predecessor left
//! in its `DATA_DIR` — it marks the runs recorded there `interrupted`, forgets their unused
//! idempotency keys, and takes up log files no record names as its own ready files — so a second
//! gateway started on the same directory (twice on one host, or `docker compose --scale` over one
//! named volume) would do all that to a live one. The first holds a lock on
//! `DATA_DIR/cligate.lock` for as long as it lives (the kernel drops it when the process dies,
//! however it dies), and a second stops at start-up naming the holder.
//!
//! The lock is a POSIX record lock (`fcntl(F_SETLK)`): held by the process, so gateways made
//! again in one process (the tests' restarts) share it, while another process is refused.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{Result, anyhow};
use nix::libc;

/// The lock's file in `DATA_DIR`.
pub const LOCK_FILE: &str = "cligate.lock";

/// The held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Creates `data_dir` if needed and locks it for this process; fails naming `DATA_DIR` when it
/// cannot be written or another process holds it (where the file system has no record locks,
/// it warns and goes on).
pub fn lock(data_dir: &Path) -> Result<DataDirLock> {
    let dir = data_dir.display();
    std::fs::create_dir_all(data_dir).map_err(|e| anyhow!("DATA_DIR: cannot create '{dir}': {e}"))?;
    let path = data_dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| anyhow!("DATA_DIR: cannot write '{}': {e}", path.display()))?;
    let mut whole = write_lock_of_whole_file();
    // SAFETY: F_SETLK reads the flock structure, which lives through the call.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &whole) } == -1 {
        let e = std::io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) {
            // A file system without record locks (some network and FUSE ones): the gateway works
            // as before, unguarded, and says so.
            tracing::warn!(path = %path.display(), error = %e, "cannot lock DATA_DIR; make sure no other gateway uses it");
            return Ok(DataDirLock { _file: file });
        }
        // SAFETY: F_GETLK fills in the flock structure, which lives through the call.
        let holder = match unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut whole) } {
            0 if whole.l_type != libc::F_UNLCK as libc::c_short => format!(" (pid {})", whole.l_pid),
            _ => String::new(),
        };
        return Err(anyhow!(
            "DATA_DIR: '{dir}' is in use by another running gateway{holder}; each gateway needs a DATA_DIR of its own"
        ));
    }
    // For people: which process holds it (the lock itself is what counts).
    let _ = file.set_len(0).and_then(|()| writeln!(file, "{}", std::process::id()));
    Ok(DataDirLock { _file: file })
}

fn write_lock_of_whole_file() -> libc::flock {
    // SAFETY: flock is plain data; all zeroes is a valid value (start 0, length 0: the whole file).
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_may_lock_again_and_the_file_says_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("new");
        let first = lock(&data).unwrap();
        let again = lock(&data).unwrap();
        let written = std::fs::read_to_string(data.join(LOCK_FILE)).unwrap();
        assert_eq!(written.trim(), std::process::id().to_string());
        drop((first, again));
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = lock(&file.path().join("sub")).unwrap_err().to_string();
        assert!(err.starts_with("DATA_DIR: cannot create"), "{err}");
    }
}
