//! Keeps every process a run starts inside the run, wherever it moves: a new session (`setsid`),
//! a new process group, a double fork, Node's `spawn(…, {detached: true})`. The run's process
//! group only holds the well-behaved ones; this module ends the rest, at the end of the run, when
//! the gateway dies (through a watchdog process) and at the next start-up (leftovers of a dead
//! gateway of the same instance).
//!
//! Three mechanisms, the first the host allows, chosen once at start-up:
//! - `cgroup-v2`: each run gets a cgroup `<gateway's cgroup>/cligate.<instance>/<owner>/<run id>`
//!   (or an empty one an earlier run of this gateway left, which keeps that run's name);
//!   the child is in it before it runs any code (born there by `clone3`, or writing itself to
//!   `cgroup.procs` between `clone` and `exec`; see [`crate::exec::spawn`]), and
//!   nothing it starts can leave it (only a privileged process that writes to another
//!   `cgroup.procs` could). The run ends with `cgroup.kill` (or freeze, SIGKILL every member),
//!   so a fork bomb cannot race the kill; then the directory is removed.
//! - `cgroup-v1`: the same in the v1 `freezer` hierarchy; the run ends with freeze, SIGKILL
//!   every member, thaw.
//! - `proc-marker` (no cgroup hierarchy to use): the child's environment carries
//!   `CLIGATE_RUN=<instance>/<owner>/<run id>`, which every descendant inherits; the run ends
//!   by scanning `/proc/*/environ` for it and SIGKILLing what carries it, until a scan finds
//!   nothing. A process that execs itself with a cleaned environment escapes this one.
//!
//! `<owner>` is `gw-<pid>-<start time>` of the gateway process, so a gateway tells its own runs
//! from those of a live sibling of the same instance, and from those of a dead predecessor.

use std::ffi::{CStr, CString, OsStr};
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::libc;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The environment variable that marks a run's processes in `proc-marker` mode.
pub const MARKER_VAR: &str = "CLIGATE_RUN";
/// The hidden argument that makes the binary a watchdog (see [`watchdog_main`]).
pub const WATCHDOG_FLAG: &str = "--watchdog";
/// Longest wait for a killed run's processes to be gone.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often a killed cgroup is checked for being empty.
const POLL: Duration = Duration::from_millis(5);

/// How this gateway keeps track of the processes of its runs.
#[derive(Debug)]
pub struct Containment {
    instance: String,
    /// `gw-<pid>-<start time>` of the gateway process.
    owner: String,
    kind: Kind,
    /// Empty cgroup v2 directories of ended runs, handed to new runs (a mkdir and an rmdir per
    /// run saved).
    spare: Arc<Spare>,
}

/// Empty cgroups ready for a run.
#[derive(Debug, Default)]
struct Spare(Mutex<Vec<Cgroup>>);

/// A run's cgroup: its directory, its `cgroup.procs` (for a child that joins it by itself) and,
/// on cgroup v2, descriptors opened once with the cgroup and kept with it while it is reused.
/// Each run used to open, read and close `cgroup.events` and `cgroup.stat` at its end and open
/// the directory for `CLONE_INTO_CGROUP` at its start: a seventh of the HTTP workers' time at
/// 1 500 short runs a second. A cgroup file read again from offset 0 shows its state now.
#[derive(Debug)]
struct Cgroup {
    dir: PathBuf,
    procs: CString,
    v2: Option<Handles>,
}

#[derive(Debug)]
struct Handles {
    /// The directory (`O_PATH`), for `CLONE_INTO_CGROUP`.
    dir: OwnedFd,
    events: fs::File,
    stat: fs::File,
}

impl Cgroup {
    /// The cgroup at `dir` (which exists); with its descriptors when `v2`.
    fn open(dir: PathBuf, v2: bool) -> io::Result<Cgroup> {
        let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
            .map_err(|_| io::Error::other("a cgroup path with a NUL byte"))?;
        let v2 = match v2 {
            false => None,
            true => Some(Handles {
                dir: fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
                    .open(&dir)?
                    .into(),
                events: fs::File::open(dir.join("cgroup.events"))?,
                stat: fs::File::open(dir.join("cgroup.stat"))?,
            }),
        };
        Ok(Cgroup { dir, procs, v2 })
    }

    /// Whether a cgroup v2 holds no process and has no cgroup below it (read through its kept
    /// descriptors); false on cgroup v1, which has no such summary.
    fn empty_leaf(&self) -> bool {
        let Some(h) = &self.v2 else { return false };
        let has = |file: &fs::File, line: &[u8]| {
            let mut buf = [0u8; 512];
            let n = std::os::unix::fs::FileExt::read_at(file, &mut buf, 0).unwrap_or(0);
            buf[..n].split(|&b| b == b'\n').any(|l| l == line)
        };
        has(&h.events, b"populated 0") && has(&h.stat, b"nr_descendants 0")
    }
}

/// Most empty cgroups kept for reuse (more than the runs that end at once is no use).
const SPARE_MAX: usize = 64;

#[derive(Debug, Clone)]
enum Kind {
    Cgroup {
        /// `<gateway's cgroup>/cligate.<instance>`.
        instance_dir: PathBuf,
        /// A cgroup v1 `freezer` hierarchy rather than cgroup v2.
        v1: bool,
    },
    Marker,
}

impl Containment {
    /// Uses a cgroup per run when the host lets this process create one and move a process into
    /// it — cgroup v2, else a cgroup v1 `freezer` hierarchy; the `/proc` marker otherwise.
    pub fn detect(instance: &str) -> Containment {
        let owner = owner_of(std::process::id()).unwrap_or_else(|| format!("gw-{}-0", std::process::id()));
        let kind = [false, true]
            .into_iter()
            .find_map(|v1| match cgroup_dir(instance, &owner, v1) {
                Ok(instance_dir) => Some(Kind::Cgroup { instance_dir, v1 }),
                Err(e) => {
                    tracing::debug!(v1, error = %e, "no usable cgroup hierarchy");
                    None
                }
            })
            .unwrap_or(Kind::Marker);
        Containment {
            instance: instance.to_string(),
            owner,
            kind,
            spare: Arc::default(),
        }
    }

    /// A cgroup v1 `freezer` hierarchy, even where cgroup v2 would do (tests of that mechanism).
    pub fn cgroup_v1(instance: &str) -> io::Result<Containment> {
        let owner = owner_of(std::process::id()).unwrap_or_else(|| format!("gw-{}-0", std::process::id()));
        let instance_dir = cgroup_dir(instance, &owner, true)?;
        Ok(Containment {
            instance: instance.to_string(),
            owner,
            kind: Kind::Cgroup { instance_dir, v1: true },
            spare: Arc::default(),
        })
    }

    /// The `/proc` marker, whatever the host offers (tests of the fallback).
    pub fn proc_marker(instance: &str) -> Containment {
        Containment {
            instance: instance.to_string(),
            owner: owner_of(std::process::id()).unwrap_or_else(|| format!("gw-{}-0", std::process::id())),
            kind: Kind::Marker,
            spare: Arc::default(),
        }
    }

    /// `cgroup-v2`, `cgroup-v1` or `proc-marker`.
    pub fn mechanism(&self) -> &'static str {
        match self.kind {
            Kind::Cgroup { v1: false, .. } => "cgroup-v2",
            Kind::Cgroup { v1: true, .. } => "cgroup-v1",
            Kind::Marker => "proc-marker",
        }
    }

    /// Where this gateway's runs are: its cgroup directory, or the marker's prefix.
    pub fn location(&self) -> String {
        match &self.kind {
            Kind::Cgroup { instance_dir, .. } => instance_dir.join(&self.owner).display().to_string(),
            Kind::Marker => format!("{MARKER_VAR}={}", self.prefix()),
        }
    }

    fn prefix(&self) -> String {
        format!("{}/{}/", self.instance, self.owner)
    }

    /// Opens the run's scope: an empty cgroup that an ended run left (cgroup v2), else a new one
    /// named after the run. Its processes are ended by [`Scope::end`], or when it is dropped.
    pub fn scope(&self, run_id: &str) -> io::Result<Scope> {
        let kind = match &self.kind {
            Kind::Cgroup { instance_dir, v1 } => {
                let reused = self.spare.0.lock().expect("spare cgroups").pop();
                let cgroup = match reused {
                    Some(found) => found,
                    None => {
                        let dir = instance_dir.join(&self.owner).join(run_id);
                        fs::create_dir_all(&dir)?;
                        Cgroup::open(dir, !v1)?
                    }
                };
                let spare = (!v1).then(|| self.spare.clone());
                ScopeKind::Cgroup { cgroup, spare }
            }
            Kind::Marker => ScopeKind::Marker {
                marker: format!("{}{run_id}", self.prefix()),
            },
        };
        Ok(Scope { kind, armed: true })
    }

    /// Ends what gateways of this instance that are no longer running left behind. Returns how
    /// many of their processes were killed. Blocks (up to a few seconds).
    pub fn sweep_leftovers(&self) -> usize {
        match &self.kind {
            Kind::Cgroup { instance_dir, .. } => {
                let Ok(entries) = fs::read_dir(instance_dir) else {
                    return 0;
                };
                let mut killed = 0;
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    let Some(owner) = name.to_str() else { continue };
                    if entry.path().is_dir() && owner.starts_with("gw-") && !owner_alive(owner) {
                        killed += end_cgroup_tree(&entry.path());
                    }
                }
                tidy_other_instances(instance_dir);
                killed
            }
            Kind::Marker => {
                let prefix = format!("{}/", self.instance);
                kill_marked(|marker| {
                    marker
                        .strip_prefix(&prefix)
                        .and_then(|rest| rest.split('/').next())
                        .is_some_and(|owner| !owner_alive(owner))
                })
            }
        }
    }

    /// Ends every run of this gateway (what the watchdog does once the gateway is gone). Blocks.
    pub fn end_all(&self) -> usize {
        self.spare.0.lock().expect("spare cgroups").clear();
        match &self.kind {
            Kind::Cgroup { instance_dir, .. } => {
                let killed = end_cgroup_tree(&instance_dir.join(&self.owner));
                // The instance's directory too, once no gateway of the instance uses it.
                let _ = fs::remove_dir(instance_dir);
                killed
            }
            Kind::Marker => {
                let prefix = self.prefix();
                kill_marked(|marker| marker.starts_with(&prefix))
            }
        }
    }

    /// Starts the watchdog: this binary again, in [`WATCHDOG_FLAG`] mode, reading a pipe whose
    /// write end only this process holds. When the pipe reaches end-of-file — this process is
    /// gone, however it died — the watchdog ends every run of this gateway. Keep the returned
    /// handle for as long as the gateway runs. Only the real binary starts one (the program is
    /// `/proc/self/exe`).
    pub fn start_watchdog(&self) -> io::Result<Watchdog> {
        // Both ends close on exec: no CLI inherits the write end (which would keep the pipe open).
        let (read, write) = io::pipe()?;
        let dir = match &self.kind {
            Kind::Cgroup { instance_dir, .. } => instance_dir.as_os_str(),
            Kind::Marker => OsStr::new("-"),
        };
        let mut cmd = std::process::Command::new("/proc/self/exe");
        cmd.arg(WATCHDOG_FLAG)
            .arg(self.mechanism())
            .arg(&self.instance)
            .arg(&self.owner)
            .arg(dir)
            .stdin(Stdio::from(read))
            .stdout(Stdio::null())
            // Its own group: a signal to the gateway's group (Ctrl-C) does not reach it.
            .process_group(0);
        let child = cmd.spawn()?;
        let pid = child.id();
        // Reaped when it ends (it outlives a healthy gateway otherwise).
        std::thread::Builder::new()
            .name("watchdog-reaper".into())
            .spawn(move || {
                let mut child = child;
                if let Ok(status) = child.wait()
                    && !status.success()
                {
                    tracing::warn!(%status, "the containment watchdog ended");
                }
            })?;
        Ok(Watchdog { _write: write, pid })
    }
}

/// The gateway's end of the watchdog's pipe: dropping it (or the process dying) tells the
/// watchdog to end every run of this gateway.
pub struct Watchdog {
    _write: io::PipeWriter,
    pub pid: u32,
}

/// The watchdog process: waits for end-of-file on stdin, then ends every run of the gateway it
/// watches. `args` are those after [`WATCHDOG_FLAG`]: mechanism, instance, owner, cgroup directory.
pub fn watchdog_main(args: &[String]) -> std::process::ExitCode {
    let [mechanism, instance, owner, dir] = args else {
        eprintln!("cligate: {WATCHDOG_FLAG} is internal");
        return std::process::ExitCode::from(2);
    };
    // Terminal signals are the gateway's business; it outlives them to clean up after it.
    for signal in [Signal::SIGINT, Signal::SIGHUP, Signal::SIGPIPE] {
        // SAFETY: ignoring a signal installs no handler code.
        let _ = unsafe { nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigIgn) };
    }
    let kind = match mechanism.as_str() {
        "cgroup-v2" | "cgroup-v1" => Kind::Cgroup {
            instance_dir: PathBuf::from(dir),
            v1: mechanism == "cgroup-v1",
        },
        _ => Kind::Marker,
    };
    let containment = Containment {
        instance: instance.clone(),
        owner: owner.clone(),
        kind,
        spare: Arc::default(),
    };
    let mut stdin = io::stdin().lock();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let killed = containment.end_all();
    if killed > 0 {
        // In the gateway's log format (the watchdog inherits its environment and stderr).
        let message = "the gateway is gone; killed what was left of its runs";
        if std::env::var("LOG_FORMAT").is_ok_and(|f| f.trim() == "json") {
            let line = serde_json::json!({"level": "WARN", "message": message, "killed": killed, "target": "cligate::watchdog"});
            eprintln!("{line}");
        } else {
            eprintln!(" WARN cligate::watchdog: {message} killed={killed}");
        }
    }
    std::process::ExitCode::SUCCESS
}

/// One run's processes.
#[derive(Debug)]
pub struct Scope {
    kind: ScopeKind,
    armed: bool,
}

#[derive(Debug)]
enum ScopeKind {
    Cgroup {
        cgroup: Cgroup,
        /// Where the cgroup goes back once empty (cgroup v2 only).
        spare: Option<Arc<Spare>>,
    },
    Marker {
        marker: String,
    },
}

impl Scope {
    /// Makes a `Command`'s child start inside the scope: in its cgroup before it runs any code
    /// (a `pre_exec` hook, which makes std fork), or with the marker in its environment. Runs are
    /// started by [`crate::exec::spawn`] instead, with [`Scope::cgroup_procs`] and [`Scope::marker`].
    pub fn prepare(&self, cmd: &mut tokio::process::Command) {
        match &self.kind {
            ScopeKind::Cgroup { cgroup, .. } => {
                let procs = cgroup.procs.clone();
                // SAFETY: the hook only calls open, write and close (async-signal-safe) and
                // allocates nothing.
                unsafe {
                    cmd.pre_exec(move || join_cgroup(&procs));
                }
            }
            ScopeKind::Marker { marker } => {
                cmd.env(MARKER_VAR, marker);
            }
        }
    }

    /// The `cgroup.procs` file a child writes itself into (cgroup mechanisms).
    pub fn cgroup_procs(&self) -> Option<&CStr> {
        match &self.kind {
            ScopeKind::Cgroup { cgroup, .. } => Some(&cgroup.procs),
            ScopeKind::Marker { .. } => None,
        }
    }

    /// The cgroup v2 directory (`O_PATH`) a child can be born in (`CLONE_INTO_CGROUP`).
    pub fn cgroup_dir(&self) -> Option<BorrowedFd<'_>> {
        match &self.kind {
            ScopeKind::Cgroup { cgroup, .. } => cgroup.v2.as_ref().map(|h| h.dir.as_fd()),
            ScopeKind::Marker { .. } => None,
        }
    }

    /// Whether [`Scope::cgroup_procs`] belongs to a cgroup v2 (a child can be born in it).
    pub fn cgroup_v2(&self) -> bool {
        matches!(&self.kind, ScopeKind::Cgroup { spare: Some(_), .. })
    }

    /// The variable and value a child carries in its environment (`proc-marker`).
    pub fn marker(&self) -> Option<(&'static str, &str)> {
        match &self.kind {
            ScopeKind::Cgroup { .. } => None,
            ScopeKind::Marker { marker } => Some((MARKER_VAR, marker)),
        }
    }

    /// Kills whatever of the run is still running, wherever it moved, and waits until it is gone
    /// (so pipes it held are closed); returns how many processes were killed. A cgroup v2 that is
    /// empty already (the usual end: the run's processes have exited) is seen so by one read of
    /// `cgroup.events`, without waiting or leaving this thread, and kept for another run.
    pub async fn end(mut self) -> usize {
        self.armed = false;
        let kind = std::mem::replace(&mut self.kind, ScopeKind::Marker { marker: String::new() });
        let kind = match kind {
            ScopeKind::Cgroup {
                cgroup,
                spare: Some(spare),
            } if cgroup.empty_leaf() => {
                let mut pool = spare.0.lock().expect("spare cgroups");
                if pool.len() < SPARE_MAX {
                    pool.push(cgroup);
                    return 0;
                }
                drop(pool);
                // Its descriptors do not keep a cgroup from being removed.
                if fs::remove_dir(&cgroup.dir).is_ok() {
                    return 0;
                }
                ScopeKind::Cgroup {
                    cgroup,
                    spare: Some(spare),
                }
            }
            kind => kind,
        };
        match kind {
            // Off the runtime's threads: freezing (where cgroup.kill is missing) and the /proc scan
            // can take a while.
            ScopeKind::Cgroup { cgroup, .. } => tokio::task::spawn_blocking(move || end_cgroup_tree(&cgroup.dir)).await,
            ScopeKind::Marker { marker } => tokio::task::spawn_blocking(move || kill_marked(|m| m == marker)).await,
        }
        .unwrap_or(0)
    }
}

impl Drop for Scope {
    /// A supervisor that never reached [`Scope::end`] (a panic): end the run anyway, off this
    /// thread.
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        match std::mem::replace(&mut self.kind, ScopeKind::Marker { marker: String::new() }) {
            ScopeKind::Cgroup { cgroup, .. } => {
                let dir = cgroup.dir;
                kill_cgroup(&dir);
                let _ = std::thread::Builder::new().spawn(move || {
                    wait_empty(&dir);
                    remove_cgroup(&dir);
                });
            }
            ScopeKind::Marker { marker } => {
                let _ = std::thread::Builder::new().spawn(move || kill_marked(|m| m == marker));
            }
        }
    }
}

/// The pre-exec hook: moves the calling (child) process into the cgroup whose `cgroup.procs`
/// is `procs`. Only async-signal-safe calls, no allocation.
fn join_cgroup(procs: &CStr) -> io::Result<()> {
    // SAFETY: plain system calls on a valid NUL-terminated path and a local buffer.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let written = libc::write(fd, b"0".as_ptr().cast(), 1);
        let error = io::Error::last_os_error();
        libc::close(fd);
        if written != 1 {
            return Err(error);
        }
    }
    Ok(())
}

/// `gw-<pid>-<start time>` for a running, non-zombie process.
fn owner_of(pid: u32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces and parentheses): state is the 3rd
    // field of the line, start time the 22nd.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if matches!(rest.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    Some(format!("gw-{pid}-{}", rest.get(19)?))
}

/// Whether the gateway named `owner` (`gw-<pid>-<start time>`) is still running.
fn owner_alive(owner: &str) -> bool {
    let pid = owner
        .strip_prefix("gw-")
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<u32>().ok());
    pid.and_then(owner_of).as_deref() == Some(owner)
}

/// The cgroup directory this instance's runs go under (in the v2 hierarchy, or the v1 `freezer`
/// one), after checking that a process can be moved into a cgroup there and that a cgroup there
/// can be frozen or killed as a whole.
fn cgroup_dir(instance: &str, owner: &str, v1: bool) -> io::Result<PathBuf> {
    let (mount, root) = cgroup_mount(v1)?;
    let own = fs::read_to_string("/proc/self/cgroup")?
        .lines()
        .find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let wanted = if v1 {
                controllers.split(',').any(|c| c == "freezer")
            } else {
                controllers.is_empty()
            };
            wanted.then(|| path.to_string())
        })
        .ok_or_else(|| io::Error::other("this process is in no cgroup of that hierarchy"))?;
    let relative = own.strip_prefix(root.as_str()).unwrap_or(&own).trim_start_matches('/');
    let instance_dir = mount.join(relative).join(format!("cligate.{instance}"));
    // One probe per call: gateways in one process (tests) may detect at the same time.
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let probe = instance_dir
        .join(owner)
        .join(format!("probe-{}", PROBES.fetch_add(1, Ordering::Relaxed)));
    fs::create_dir_all(&probe)?;
    let killable = ["cgroup.kill", "cgroup.freeze", "freezer.state"]
        .iter()
        .any(|f| probe.join(f).exists());
    let result = probe_move(&probe);
    remove_cgroup(&probe);
    result?;
    if !killable {
        return Err(io::Error::other(
            "a cgroup there can be neither killed nor frozen (cgroup v2 before Linux 5.2?)",
        ));
    }
    Ok(instance_dir)
}

/// The first cgroup2 mount (or cgroup v1 mount with the `freezer` controller): its mount point
/// and the cgroup path at its root.
fn cgroup_mount(v1: bool) -> io::Result<(PathBuf, String)> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let right: Vec<&str> = right.split_whitespace().collect();
            let found = match (v1, right.first()?) {
                (false, &"cgroup2") => true,
                (true, &"cgroup") => right.get(2)?.split(',').any(|o| o == "freezer"),
                _ => false,
            };
            if !found {
                return None;
            }
            let fields: Vec<&str> = left.split_whitespace().collect();
            Some((PathBuf::from(unescape(fields.get(4)?)), fields.get(3)?.to_string()))
        })
        .ok_or_else(|| io::Error::other("no such cgroup file system is mounted"))
}

/// Mount points in mountinfo escape blanks as `\040` and the like.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(code) = u8::from_str_radix(&field[i + 1..i + 4], 8)
        {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Forks a child that only moves itself into `probe` and exits, and says whether that worked.
fn probe_move(probe: &Path) -> io::Result<()> {
    let procs = CString::new(probe.join("cgroup.procs").as_os_str().as_bytes())
        .map_err(|_| io::Error::other("a cgroup path with a NUL byte"))?;
    // SAFETY: the child only makes async-signal-safe calls (open, write, close, _exit).
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Child => {
            let code = match join_cgroup(&procs) {
                Ok(()) => 0,
                Err(e) => e.raw_os_error().unwrap_or(1).clamp(1, 255),
            };
            // SAFETY: ends the forked child without running any of the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            match nix::sys::wait::waitpid(child, None).map_err(io::Error::from)? {
                nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(()),
                nix::sys::wait::WaitStatus::Exited(_, errno) => Err(io::Error::from_raw_os_error(errno)),
                other => Err(io::Error::other(format!("the probe ended with {other:?}"))),
            }
        }
    }
}

/// Pids in one cgroup (not its children).
fn members(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Whether any process is left in the cgroup or below it.
fn populated(dir: &Path) -> bool {
    match fs::read_to_string(dir.join("cgroup.events")) {
        Ok(events) => events.lines().any(|l| l == "populated 1"),
        // cgroup v1 has no such summary.
        Err(_) => count_tree(dir) > 0,
    }
}

/// SIGKILLs every process in the cgroup and below it; returns how many there were.
fn kill_cgroup(dir: &Path) -> usize {
    let count = count_tree(dir);
    if count == 0 {
        return 0;
    }
    if fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return count;
    }
    // cgroup v2 before cgroup.kill (Linux 5.14): freeze, so nothing can fork, then kill every
    // member.
    let frozen = fs::write(dir.join("cgroup.freeze"), "1").is_ok();
    let deadline = Instant::now() + KILL_WAIT;
    while frozen
        && Instant::now() < deadline
        && !fs::read_to_string(dir.join("cgroup.events"))
            .unwrap_or_default()
            .lines()
            .any(|l| l == "frozen 1")
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    // cgroup v1: the freezer (a frozen task dies of SIGKILL only once thawed).
    let v1_frozen = !frozen && fs::write(dir.join("freezer.state"), "FROZEN").is_ok();
    while v1_frozen
        && Instant::now() < deadline
        && fs::read_to_string(dir.join("freezer.state")).unwrap_or_default().trim() != "FROZEN"
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    for_each_cgroup(dir, &mut |d| {
        for pid in members(d) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    });
    let _ = fs::write(dir.join("cgroup.freeze"), "0");
    if v1_frozen {
        let _ = fs::write(dir.join("freezer.state"), "THAWED");
    }
    count
}

fn count_tree(dir: &Path) -> usize {
    let mut count = 0;
    for_each_cgroup(dir, &mut |d| count += members(d).len());
    count
}

/// Calls `f` for `dir` and every cgroup below it, children first.
fn for_each_cgroup(dir: &Path, f: &mut dyn FnMut(&Path)) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                for_each_cgroup(&entry.path(), f);
            }
        }
    }
    f(dir);
}

fn wait_empty(dir: &Path) {
    let deadline = Instant::now() + KILL_WAIT;
    while populated(dir) && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
}

/// Removes a cgroup and the (empty) cgroups below it.
fn remove_cgroup(dir: &Path) {
    for_each_cgroup(dir, &mut |d| {
        if let Err(e) = fs::remove_dir(d)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(cgroup = %d.display(), error = %e, "cannot remove a run's cgroup");
        }
    });
}

/// Removes the empty cgroups that dead gateways of other instances left next to `instance_dir`
/// (gateways that never started again, such as in-process test gateways). Kills nothing: a
/// directory that still holds a process is left to its own instance's next start-up.
fn tidy_other_instances(instance_dir: &Path) {
    let Some(parent) = instance_dir.parent() else { return };
    let Ok(instances) = fs::read_dir(parent) else { return };
    for instance in instances.flatten() {
        let dir = instance.path();
        let is_other = instance.file_name().to_str().is_some_and(|n| n.starts_with("cligate."));
        if !is_other || dir == instance_dir {
            continue;
        }
        for owner in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = owner.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with("gw-") && !owner_alive(name) && !populated(&owner.path()) {
                for_each_cgroup(&owner.path(), &mut |d| {
                    let _ = fs::remove_dir(d);
                });
            }
        }
        let _ = fs::remove_dir(&dir);
    }
}

/// Kills everything in a cgroup tree, waits for it to be gone and removes the tree.
fn end_cgroup_tree(dir: &Path) -> usize {
    let killed = kill_cgroup(dir);
    wait_empty(dir);
    remove_cgroup(dir);
    killed
}

/// The marker in a process's environment, if it has one.
fn marker_of(pid: &str) -> Option<String> {
    let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
    let wanted = format!("{MARKER_VAR}=");
    environ
        .split(|b| *b == 0)
        .find_map(|var| var.strip_prefix(wanted.as_bytes()))
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

/// SIGKILLs every process whose marker satisfies `matches`, scanning again until a scan finds
/// none (what was forked meanwhile is found by the next scan); returns how many were killed.
fn kill_marked(matches: impl Fn(&str) -> bool) -> usize {
    let own = std::process::id().to_string();
    let mut killed = 0;
    let deadline = Instant::now() + KILL_WAIT;
    loop {
        let mut found = 0;
        if let Ok(entries) = fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else {
                    continue;
                };
                if pid == own {
                    continue;
                }
                if marker_of(pid).is_some_and(|m| matches(&m))
                    && let Ok(pid) = pid.parse::<i32>()
                    && kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok()
                {
                    found += 1;
                }
            }
        }
        killed += found;
        if found == 0 || Instant::now() >= deadline {
            return killed;
        }
        // A killed process keeps its environment until it has exited; give it a moment.
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: i32) -> bool {
        owner_of(pid as u32).is_some()
    }

    /// Whether `pid` is gone within 5 s. A SIGKILL is delivered when the process next runs, so
    /// on a busy machine it can still be there just after `kill` returned.
    async fn dies(pid: i32) -> bool {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while alive(pid) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        true
    }

    /// Starts `sh` with a setsid'd grandchild in `scope`; returns both pids once known.
    async fn escapee_in(scope: &Scope) -> (tokio::process::Child, i32) {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg("setsid sh -c 'echo $$; exec sleep 300' & wait")
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        scope.prepare(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8];
        while tokio::io::AsyncReadExt::read(&mut out, &mut byte).await.unwrap() == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        (child, String::from_utf8(line).unwrap().trim().parse().unwrap())
    }

    #[tokio::test]
    async fn the_marker_scope_ends_a_process_that_left_the_session() {
        let containment = Containment::proc_marker(&format!("unit-{}", std::process::id()));
        assert_eq!(containment.mechanism(), "proc-marker");
        let scope = containment.scope("run-1").unwrap();
        let (mut child, escapee) = escapee_in(&scope).await;
        assert!(alive(escapee));
        assert!(scope.end().await >= 2);
        let _ = child.wait().await;
        let start = Instant::now();
        while alive(escapee) {
            assert!(start.elapsed() < Duration::from_secs(2), "{escapee} still runs");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn the_detected_scope_ends_a_process_that_left_the_session() {
        let containment = Containment::detect(&format!("unit-{}", std::process::id()));
        let scope = containment.scope("run-2").unwrap();
        let (mut child, escapee) = escapee_in(&scope).await;
        assert!(alive(escapee));
        scope.end().await;
        let _ = child.wait().await;
        let start = Instant::now();
        while alive(escapee) {
            assert!(start.elapsed() < Duration::from_secs(2), "{escapee} still runs");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Kind::Cgroup { instance_dir, .. } = &containment.kind {
            assert!(!instance_dir.join(&containment.owner).join("run-2").exists());
            containment.end_all();
            assert!(!instance_dir.exists());
        }
    }

    /// An empty cgroup v2 goes back to the gateway at the end of its run and the next run gets
    /// it; whatever that run leaves is still ended.
    #[tokio::test]
    async fn an_empty_cgroup_is_reused_and_still_contains_the_next_run() {
        let containment = Containment::detect(&format!("unit-reuse-{}", std::process::id()));
        if containment.mechanism() != "cgroup-v2" {
            eprintln!("no cgroup v2 here; skipped");
            return;
        }
        let first = containment.scope("first").unwrap();
        let dir = first.cgroup_procs().unwrap().to_owned();
        assert_eq!(first.end().await, 0);
        let second = containment.scope("second").unwrap();
        assert_eq!(second.cgroup_procs().unwrap(), dir.as_c_str(), "reused");
        let kept = |scope: &Scope| match &scope.kind {
            ScopeKind::Cgroup { cgroup, .. } => cgroup.empty_leaf(),
            ScopeKind::Marker { .. } => unreachable!(),
        };
        // Its descriptors, read empty at the end of the first run, now see the second's process.
        assert!(kept(&second));
        let (mut child, escapee) = escapee_in(&second).await;
        assert!(!kept(&second), "a populated cgroup read through its kept descriptors");
        assert!(second.end().await >= 2);
        let _ = child.wait().await;
        assert!(dies(escapee).await);
        containment.end_all();
        if let Kind::Cgroup { instance_dir, .. } = &containment.kind {
            assert!(!instance_dir.exists());
        }
    }

    /// What a dead gateway of the instance left is ended by the next one's start-up sweep, and
    /// what a live one runs is not; then the watchdog's `end_all` ends the live one's.
    async fn sweep_spares_live_owners(tag: &str, make: fn(&str) -> Containment) {
        let instance = format!("sweep-{tag}-{}", std::process::id());
        let live = make(&instance);
        let dead = Containment {
            owner: "gw-999999999-1".into(),
            ..make(&instance)
        };
        if let Kind::Cgroup { instance_dir, .. } = &dead.kind {
            fs::create_dir_all(instance_dir.join(&dead.owner)).unwrap();
        }
        let left = dead.scope("left").unwrap();
        let (mut left_child, left_escapee) = escapee_in(&left).await;
        std::mem::forget(left); // as if its gateway had died
        let running = live.scope("running").unwrap();
        let (mut running_child, running_escapee) = escapee_in(&running).await;

        let swept = tokio::task::spawn_blocking({
            let live = make(&instance);
            move || live.sweep_leftovers()
        });
        assert!(swept.await.unwrap() >= 2);
        let _ = left_child.wait().await;
        assert!(dies(left_escapee).await);
        assert!(alive(running_escapee));

        assert!(tokio::task::spawn_blocking(move || live.end_all()).await.unwrap() >= 2);
        let _ = running_child.wait().await;
        assert!(dies(running_escapee).await);
        if let Kind::Cgroup { instance_dir, .. } = &dead.kind {
            assert!(!instance_dir.exists(), "{}", instance_dir.display());
        }
        running.end().await;
    }

    #[tokio::test]
    async fn the_marker_sweep_spares_live_owners() {
        sweep_spares_live_owners("marker", Containment::proc_marker).await;
    }

    #[tokio::test]
    async fn the_detected_sweep_spares_live_owners() {
        sweep_spares_live_owners("detected", Containment::detect).await;
    }

    #[tokio::test]
    async fn the_cgroup_v1_freezer_scope_and_sweep_end_what_left_the_session() {
        let instance = format!("unit-v1-{}", std::process::id());
        let Ok(containment) = Containment::cgroup_v1(&instance) else {
            eprintln!("no writable cgroup v1 freezer hierarchy here; skipped");
            return;
        };
        assert_eq!(containment.mechanism(), "cgroup-v1");
        let scope = containment.scope("run-3").unwrap();
        let (mut child, escapee) = escapee_in(&scope).await;
        assert!(scope.end().await >= 2);
        let _ = child.wait().await;
        assert!(dies(escapee).await);
        containment.end_all();
        sweep_spares_live_owners("v1", |i| Containment::cgroup_v1(i).unwrap()).await;
    }

    #[test]
    fn owners_are_alive_only_with_the_same_start_time() {
        let me = owner_of(std::process::id()).unwrap();
        assert!(owner_alive(&me));
        assert!(!owner_alive(&format!("gw-{}-1", std::process::id())));
        assert!(!owner_alive("gw-999999999-1"));
        assert!(!owner_alive("nonsense"));
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/sys/fs/cgroup/a\\040b"), "/sys/fs/cgroup/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
