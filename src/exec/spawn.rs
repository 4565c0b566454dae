//! Starts a run's child the way `posix_spawn` does — `CLONE_VM`, the child borrowing the
//! gateway's memory until it execs — instead of `fork(2)`, while still putting the child into its
//! cgroup before it runs any code of its own; and without holding the calling thread while the
//! child gets going.
//!
//! std (and so tokio) falls back to `fork` as soon as a `pre_exec` hook is set, which is how
//! the child used to join its cgroup. A fork copies the page tables of the whole gateway and
//! write-protects every page it has, so the gateway then takes a copy-on-write fault on each page
//! it touches after every spawn: measured, that was the largest single cost of a short run. Here
//! the child shares the parent's memory, makes only raw system calls on data prepared by the
//! parent (see [`super::child`]), and then execs:
//!
//! 1. every signal handler the gateway installed is reset to the default (the child must never
//!    run a gateway handler in the gateway's memory; all signals are blocked until then): by the
//!    kernel where `clone3` takes `CLONE_CLEAR_SIGHAND`, so that the child only resets SIGPIPE,
//!    else one signal at a time;
//! 2. it writes itself into the run's cgroup (`cgroup.procs`), when there is one and it was not
//!    born there (below);
//! 3. `setpgid(0, 0)`: its own process group, and `chdir` to its working directory if it has one;
//! 4. the pipes become its stdin, stdout and stderr;
//! 5. an empty signal mask (as std gives a child), then `execve`.
//!
//! A failure at any step is written into the memory the child shares with the parent (no pipe
//! is needed for it), and the child exits with 127; the parent reads it once the child has been
//! reaped ([`Spawned::start_failure`]).
//!
//! **The parent does not wait for the exec.** `posix_spawn` (and this module until now) passes
//! `CLONE_VFORK`: the calling thread sleeps until the child execs. Traced with `perf sched`, that
//! thread — one of the two HTTP workers on a 2-core machine — was usually woken only after the
//! child had *exited*: the child ran on the parent's CPU, and the woken parent queued behind it
//! while the other CPU idled (a median 0.93 ms per `echo` run, the child's whole life). So the
//! child is started with `clone3` without `CLONE_VFORK` on x86-64: the caller goes on at once
//! and keeps the child's stack and arguments in [`Spawned`] until the child is reaped (a stack
//! of which the child touched a few pages, and the argument strings). Nothing waits for the exec
//! itself: a failed one is an exit with a report, read at the end.
//!
//! On cgroup v2 the child is born in its run's cgroup (`CLONE_INTO_CGROUP`, Linux 5.7): moving a
//! process between cgroups takes a lock whose writer waits for an RCU grace period while the
//! lock is idle, so a run started after a quiet spell waited 6–15 ms in its `cgroup.procs` write
//! (measured here with 20 ms between starts; 0.1 ms when they follow each other closely).
//! Without `CLONE_INTO_CGROUP` (Linux 5.3–5.6, cgroup v1) the child moves itself as in step 2;
//! where `clone3` is refused (Docker's default seccomp profile answers `ENOSYS`, so a gateway in
//! a container meets this) the older `clone` starts it the same way, without `CLONE_VFORK`.
//! Only other architectures use `clone(CLONE_VM | CLONE_VFORK)` as `posix_spawn` does.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::libc;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use super::child::{CHILD_STACK, ChildArgs, STEP_CGROUP, child_main, clone_vm, clone3_vm};

/// What to start.
pub struct SpawnSpec<'a> {
    /// The program's path (already resolved on `PATH`); also the child's `argv[0]`.
    pub program: &'a Path,
    pub args: &'a [String],
    /// Set over the gateway's environment.
    pub env: &'a BTreeMap<String, String>,
    /// Removed from the gateway's environment.
    pub env_remove: &'a [&'a str],
    /// The `cgroup.procs` file of the cgroup the child joins before it execs.
    pub cgroup_procs: Option<&'a CStr>,
    /// That cgroup is a cgroup v2 one: the child is born in it where the kernel allows.
    pub cgroup_v2: bool,
    /// That cgroup's directory, opened (`O_PATH`) by its owner; opened here when `None`.
    pub cgroup_dir: Option<BorrowedFd<'a>>,
    /// The child's working directory (the gateway's when `None`).
    pub cwd: Option<&'a Path>,
}

/// Why a spawn failed: the child could not join its cgroup, or could not be started.
#[derive(Debug)]
pub enum SpawnError {
    Cgroup(io::Error),
    Start(io::Error),
}

/// A started child: its pipes, and a pidfd to wait for it without blocking a thread. Dropped
/// before it was waited for, it is killed and reaped (like tokio's `kill_on_drop`).
#[derive(Debug)]
pub struct Spawned {
    pid: i32,
    pidfd: AsyncFd<OwnedFd>,
    status: Option<ExitStatus>,
    born_in_cgroup: bool,
    /// The child's report of a failed step (step, errno), taken from its memory when it was
    /// reaped; `None` until then.
    report: Option<[i32; 2]>,
    /// What the child runs on until it execs; kept until it is reaped.
    memory: Option<ChildMemory>,
    /// The write end of its stdin (blocking, not registered with a runtime: most runs write
    /// nothing and only close it).
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
}

/// Everything the child reads before it execs, and its stack: owned here, at addresses that do
/// not move, until the child has been reaped.
struct ChildMemory {
    args: Box<ChildArgs>,
    stack: Vec<u8>,
    _strings: (CString, Vec<CString>, Vec<CString>, Option<CString>, Option<CString>),
    _pointers: (Vec<*const libc::c_char>, Vec<*const libc::c_char>),
}

// SAFETY: the raw pointers point into the value's own heap allocations, which move with it; the
// parent never reads or writes through them after the clone.
unsafe impl Send for ChildMemory {}

impl ChildMemory {
    /// The child's report of a failed step: `[0, _]` when none failed (so far).
    fn report(&self) -> [i32; 2] {
        let step = self.args.report[0].load(Ordering::Acquire);
        [step, self.args.report[1].load(Ordering::Relaxed)]
    }
}

impl std::fmt::Debug for ChildMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChildMemory")
    }
}

/// Whether `clone3` is worth trying (cleared once the kernel shows it has none).
static CLONE3: AtomicBool = AtomicBool::new(cfg!(target_arch = "x86_64"));
/// Whether `CLONE_INTO_CGROUP` is (cleared once the kernel shows it is too old for it).
static INTO_CGROUP: AtomicBool = AtomicBool::new(true);

/// The directory of a `…/cgroup.procs` file, opened for `CLONE_INTO_CGROUP`.
fn cgroup_dir(procs: &CStr) -> Option<OwnedFd> {
    let dir = Path::new(OsStr::from_bytes(procs.to_bytes())).parent()?;
    let dir = CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: opens a path; the descriptor is new and owned here.
    let fd = unsafe { libc::open(dir.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    // SAFETY: `fd` is a new descriptor when not negative.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in an argument"))
}

/// A close-on-exec pipe whose two fds are ≥ 3 (so that moving them to 0–2 never clobbers one).
fn pipe_above_stdio() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills `fds` with two new descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and owned here.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((above_stdio(r)?, above_stdio(w)?))
}

/// The read end of one of our own pipes as a non-blocking tokio receiver: without tokio's checks
/// of what it is (an `fstat` and an `F_GETFL`), which would tell nothing new here.
fn receiver(fd: OwnedFd) -> io::Result<pipe::Receiver> {
    // SAFETY: sets the status flags of our own descriptor (a pipe's read end, opened with none).
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    pipe::Receiver::from_owned_fd_unchecked(fd)
}

fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: duplicates a valid descriptor; the new one is owned here.
    let dup = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `dup` is new.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// The gateway's environment as `KEY=value` strings, read once: it does not change while the
/// gateway serves (the same assumption as the supervisor's secret list), and copying it for
/// every spawn was a hundred allocations per run.
fn base_environment() -> &'static [(OsString, CString)] {
    static BASE: std::sync::OnceLock<Vec<(OsString, CString)>> = std::sync::OnceLock::new();
    BASE.get_or_init(|| {
        std::env::vars_os()
            .filter_map(|(k, v)| {
                let mut kv = k.clone().into_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                Some((k, CString::new(kv).ok()?))
            })
            .collect()
    })
}

/// The child's environment: the gateway's, less `remove`, with `set` over it. Returns the new
/// strings (for `set`) and the pointers of the whole environment, null-terminated; the
/// pointers are valid while the returned strings live.
fn environment(
    set: &BTreeMap<String, String>,
    remove: &[&str],
) -> io::Result<(Vec<CString>, Vec<*const libc::c_char>)> {
    let removed = |k: &OsStr| remove.iter().any(|r| OsStr::new(r) == k);
    let added: Vec<CString> = set
        .iter()
        .filter(|(k, _)| !removed(OsStr::new(k)))
        .map(|(k, v)| cstring(format!("{k}={v}").as_bytes()))
        .collect::<io::Result<_>>()?;
    let base = base_environment();
    let mut envp = Vec::with_capacity(base.len() + added.len() + 1);
    envp.extend(
        base.iter()
            .filter(|(k, _)| !removed(k) && !k.to_str().is_some_and(|k| set.contains_key(k)))
            .map(|(_, kv)| kv.as_ptr()),
    );
    envp.extend(added.iter().map(|kv| kv.as_ptr()));
    envp.push(std::ptr::null());
    Ok((added, envp))
}
/// Starts the child (see the module's documentation) and returns as soon as it exists; a step
/// that fails in the child is an exit with status 127, and [`Spawned::start_failure`] says
/// which. Must be called on a Tokio runtime.
pub fn spawn(spec: &SpawnSpec) -> Result<Spawned, SpawnError> {
    spawn_with(spec, CLONE3.load(Ordering::Relaxed))
}

/// [`spawn`], trying `clone3` first or not.
fn spawn_with(spec: &SpawnSpec, try_clone3: bool) -> Result<Spawned, SpawnError> {
    let start = SpawnError::Start;
    let path = cstring(spec.program.as_os_str().as_bytes()).map_err(start)?;
    let mut args = Vec::with_capacity(spec.args.len() + 1);
    args.push(path.clone());
    for a in spec.args {
        args.push(cstring(a.as_bytes()).map_err(start)?);
    }
    let (env, envp) = environment(spec.env, spec.env_remove).map_err(start)?;
    let cwd = spec
        .cwd
        .map(|d| cstring(d.as_os_str().as_bytes()))
        .transpose()
        .map_err(start)?;
    let procs = spec.cgroup_procs.map(CStr::to_owned);
    let argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();

    let (stdin_r, stdin_w) = pipe_above_stdio().map_err(start)?;
    let (stdout_r, stdout_w) = pipe_above_stdio().map_err(start)?;
    let (stderr_r, stderr_w) = pipe_above_stdio().map_err(start)?;
    let procs_ptr = procs.as_ref().map_or(std::ptr::null(), |p| p.as_ptr());
    let mut memory = ChildMemory {
        args: Box::new(ChildArgs {
            path: path.as_ptr(),
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
            fds: [stdin_r.as_raw_fd(), stdout_w.as_raw_fd(), stderr_w.as_raw_fd()],
            procs: procs_ptr,
            cwd: cwd.as_ref().map_or(std::ptr::null(), |d| d.as_ptr()),
            report: Default::default(),
            handlers_cleared: false,
        }),
        stack: Vec::with_capacity(CHILD_STACK),
        _strings: (path, args, env, cwd, procs),
        _pointers: (argv, envp),
    };
    let opened;
    let born_in = match spec.cgroup_procs {
        Some(procs) if spec.cgroup_v2 && try_clone3 && INTO_CGROUP.load(Ordering::Relaxed) => match spec.cgroup_dir {
            Some(dir) => Some(dir.as_raw_fd()),
            None => {
                opened = cgroup_dir(procs);
                opened.as_ref().map(|d| d.as_raw_fd())
            }
        },
        _ => None,
    };
    let mut pidfd: libc::c_int = -1;
    let mut born = false;
    // SAFETY: all signals are blocked around the clone (restored at once in the parent; the
    // child resets handlers before unblocking). The child runs `child_main` on `memory.stack`
    // (the top, 16-byte aligned) with `memory.args`, both kept unchanged until it has been
    // reaped (`Spawned::wait`, `reap_in_background`).
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let stack = memory.stack.as_mut_ptr();
        let top = (stack.add(CHILD_STACK) as usize & !15) as *mut u8;
        let arg: *mut libc::c_void = (&mut *memory.args as *mut ChildArgs).cast();
        let enosys = -(libc::ENOSYS as libc::c_long);
        let mut pid: libc::c_long = -1;
        if try_clone3 {
            let mut refused = None;
            // Set for the child, which reads it once it runs (it shares this memory).
            memory.args.handlers_cleared = true;
            if let Some(dir) = born_in {
                memory.args.procs = std::ptr::null();
                pid = clone3_vm(stack, Some(dir), &mut pidfd, arg);
                born = pid > 0;
                if pid < 0 {
                    // E2BIG, EINVAL: a clone3 without CLONE_INTO_CGROUP (Linux 5.3–5.6), which
                    // does not change; any other refusal is this cgroup's. Either way the child
                    // moves itself.
                    if [libc::E2BIG, libc::EINVAL].contains(&(-pid as libc::c_int)) {
                        INTO_CGROUP.store(false, Ordering::Relaxed);
                    }
                    memory.args.procs = procs_ptr;
                    refused = Some(pid);
                }
            }
            if pid < 0 && refused != Some(enosys) {
                pid = clone3_vm(stack, None, &mut pidfd, arg);
            }
            if pid == enosys || pid == -(libc::EINVAL as libc::c_long) {
                // No clone3 (or seccomp says so), or one without CLONE_CLEAR_SIGHAND (Linux
                // 5.3–5.4): later runs do not ask again.
                CLONE3.store(false, Ordering::Relaxed);
            }
        }
        if pid < 0 {
            memory.args.handlers_cleared = false;
            pid = clone_vm(top, &mut pidfd, arg);
        }
        if pid == enosys {
            pid = libc::clone(
                child_main,
                top.cast(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
                arg,
                &mut pidfd as *mut libc::c_int,
            ) as libc::c_long;
            if pid < 0 {
                pid = -(io::Error::last_os_error().raw_os_error().unwrap_or(libc::EAGAIN) as libc::c_long);
            }
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(start(io::Error::from_raw_os_error(-pid as i32)));
        }
        pid as i32
    };
    // SAFETY: CLONE_PIDFD gave us a new descriptor.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // The child has its own copies of these (no CLONE_FILES).
    drop((stdin_r, stdout_w, stderr_w));
    let registered = (|| -> io::Result<_> {
        Ok((
            // SAFETY: an OwnedFd keeps its descriptor open and unchanged while the AsyncFd owns it.
            unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }.map_err(io::Error::from)?,
            stdin_w,
            // Driven by the output runtime (see `super::output_runtime`).
            super::on_output_runtime(|| receiver(stdout_r))?,
            super::on_output_runtime(|| receiver(stderr_r))?,
        ))
    })();
    match registered {
        Ok((pidfd, stdin, stdout, stderr)) => Ok(Spawned {
            pid,
            born_in_cgroup: born,
            pidfd,
            status: None,
            report: None,
            memory: Some(memory),
            stdin: Some(stdin),
            stdout: Some(stdout),
            stderr: Some(stderr),
        }),
        Err(e) => {
            reap_in_background(pid, Some(memory));
            Err(start(e))
        }
    }
}

/// SIGKILLs `pid` (our child) and reaps it off the caller's thread; `memory` (what the child
/// may still be running on) goes only once it is reaped.
fn reap_in_background(pid: i32, memory: Option<ChildMemory>) {
    // SAFETY: `pid` is our unreaped child, so the number cannot name another process.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    // Leaked, not freed, if the thread cannot be started.
    let memory = ManuallyDrop::new(memory);
    let _ = std::thread::Builder::new().name("reaper".into()).spawn(move || {
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        drop(ManuallyDrop::into_inner(memory));
    });
}

impl Spawned {
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Whether the child was born in its cgroup (`CLONE_INTO_CGROUP`) rather than moved there.
    pub fn born_in_cgroup(&self) -> bool {
        self.born_in_cgroup
    }

    /// Once the child has exited: the step that failed before it could run its program
    /// (joining its cgroup, or the exec), if one did. Read once.
    pub fn start_failure(&mut self) -> Option<SpawnError> {
        let [step, errno] = match (&self.report, &self.memory) {
            (Some(report), _) => *report,
            // Not reaped yet (a caller that did not wait): whatever it has written so far.
            (None, Some(memory)) => memory.report(),
            (None, None) => return None,
        };
        self.report = Some([0, 0]);
        let error = io::Error::from_raw_os_error(errno);
        match step {
            0 => None,
            STEP_CGROUP => Some(SpawnError::Cgroup(error)),
            _ => Some(SpawnError::Start(error)),
        }
    }

    /// Sends `signal` to the child itself, through its pidfd: once it has been reaped, nothing
    /// (its pid may name another process by then).
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: a signal to the process our own pidfd names; no pointers but a null info.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.get_ref().as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }

    /// Waits for the child to exit and reaps it; later calls return the same status.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        loop {
            let mut guard = self.pidfd.readable().await?;
            let mut status = 0;
            // SAFETY: our own child, not reaped yet (we hold its pidfd and status is None).
            let done = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if done == self.pid {
                let status = ExitStatus::from_raw(status);
                self.status = Some(status);
                self.report = self.memory.take().map(|m| m.report());
                return Ok(status);
            }
            if done < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
                continue;
            }
            guard.clear_ready();
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.status.is_none() {
            reap_in_background(self.pid, self.memory.take());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::containment::Containment;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Spawns a child that is expected to fail, and returns what its exit reports.
    async fn failure(spec: &SpawnSpec<'_>) -> Result<ExitStatus, SpawnError> {
        let mut child = spawn(spec)?;
        let status = child.wait().await.unwrap();
        match child.start_failure() {
            Some(e) => {
                assert_eq!(status.code(), Some(127));
                Err(e)
            }
            None => Ok(status),
        }
    }

    async fn output(mut child: Spawned, stdin: &[u8]) -> (String, ExitStatus) {
        let mut w = pipe::Sender::from_owned_fd(child.stdin.take().unwrap()).unwrap();
        w.write_all(stdin).await.unwrap();
        drop(w);
        let mut out = String::new();
        child.stdout.take().unwrap().read_to_string(&mut out).await.unwrap();
        let status = child.wait().await.unwrap();
        assert_eq!(child.wait().await.unwrap(), status);
        (out, status)
    }

    /// A spawn of `program` with `args`, the gateway's environment, and no cgroup.
    fn plain<'a>(program: &'a Path, args: &'a [String]) -> SpawnSpec<'a> {
        static NO_ENV: BTreeMap<String, String> = BTreeMap::new();
        SpawnSpec {
            program,
            args,
            env: &NO_ENV,
            env_remove: &[],
            cgroup_procs: None,
            cgroup_v2: false,
            cgroup_dir: None,
            cwd: None,
        }
    }

    /// The child's first code already runs in the run's cgroup (or carries the marker), in its
    /// own process group, with the environment asked for and default signal handling — born in
    /// a cgroup v2 where the kernel has `clone3`, and moving itself there otherwise.
    #[tokio::test]
    async fn the_child_starts_in_its_scope_with_its_pipes_and_environment() {
        let containment = Containment::detect(&format!("unit-spawn-{}", std::process::id()));
        // Born in its cgroup by clone3; moving itself after clone3; and after the older clone
        // (where clone3 is refused, as under Docker's seccomp profile).
        for (born, clone3) in [(true, true), (false, true), (false, false)] {
            let scope = containment.scope(&format!("spawned-{born}-{clone3}")).unwrap();
            let mut env = BTreeMap::new();
            env.insert("CLIGATE_SPAWN_TEST".to_string(), "a b".to_string());
            let mut vars = env.clone();
            if let Some((k, v)) = scope.marker() {
                vars.insert(k.into(), v.into());
            }
            let script = "read line; echo \"$line\"; echo \"$CLIGATE_SPAWN_TEST\"; echo \"${HOME-unset}\"; \
                          echo \"$$ $(cut -d' ' -f5 /proc/$$/stat)\"; cat /proc/$$/cgroup; echo \"$CLIGATE_RUN\"; exit 3";
            let args = ["-c".to_string(), script.to_string()];
            let spec = SpawnSpec {
                program: Path::new("/bin/sh"),
                args: &args,
                env: &vars,
                env_remove: &["HOME"],
                cgroup_procs: scope.cgroup_procs(),
                cgroup_v2: scope.cgroup_v2() && born,
                cgroup_dir: scope.cgroup_dir(),
                cwd: None,
            };
            let child = spawn_with(&spec, clone3).unwrap();
            let expect_born = spec.cgroup_v2 && CLONE3.load(Ordering::Relaxed);
            assert_eq!(child.born_in_cgroup(), expect_born, "born in its cgroup: {born}");
            let (out, status) = output(child, b"hello\n").await;
            assert_eq!(status.code(), Some(3), "{out}");
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(&lines[..3], ["hello", "a b", "unset"], "{out}");
            let (pid, pgid) = lines[3].split_once(' ').unwrap();
            assert_eq!(pid, pgid, "its own process group");
            match scope.cgroup_procs() {
                Some(procs) => {
                    let dir = Path::new(procs.to_str().unwrap()).parent().unwrap();
                    assert!(
                        out.lines()
                            .any(|l| l.starts_with("0::") && dir.ends_with(l[3..].trim_start_matches('/')))
                            || out.lines().any(|l| l.contains("freezer")
                                && dir.ends_with(l.rsplit(':').next().unwrap().trim_start_matches('/'))),
                        "{out} not in {}",
                        dir.display()
                    );
                }
                None => assert!(out.contains("/spawned"), "{out}"),
            }
            scope.end().await;
        }
    }

    /// A cgroup v2 directory that cannot be opened, or one `clone3` refuses (a plain directory
    /// here): the child tries to move itself, and fails the same way as on a host without
    /// `clone3`; later runs still try `clone3`.
    #[tokio::test]
    async fn a_cgroup_that_cannot_be_entered_is_a_cgroup_error_either_way() {
        let dir = tempfile::tempdir().unwrap();
        let plain_dir = CString::new(dir.path().join("cgroup.procs").into_os_string().into_vec()).unwrap();
        let missing = CString::new("/nonexistent/cgroup.procs").unwrap();
        let before = (CLONE3.load(Ordering::Relaxed), INTO_CGROUP.load(Ordering::Relaxed));
        for (procs, cgroup_v2) in [(&missing, true), (&missing, false), (&plain_dir, true)] {
            let spec = SpawnSpec {
                cgroup_procs: Some(procs),
                cgroup_v2,
                cgroup_dir: None,
                ..plain(Path::new("/bin/true"), &[])
            };
            let result = failure(&spec).await;
            assert!(
                matches!(result, Err(SpawnError::Cgroup(_))),
                "{procs:?} {cgroup_v2}: {result:?}"
            );
        }
        assert_eq!(
            (CLONE3.load(Ordering::Relaxed), INTO_CGROUP.load(Ordering::Relaxed)),
            before
        );
        // The same through the older clone (where clone3 is refused).
        let spec = SpawnSpec {
            cgroup_procs: Some(&missing),
            cgroup_v2: true,
            cgroup_dir: None,
            ..plain(Path::new("/bin/true"), &[])
        };
        let mut child = spawn_with(&spec, false).unwrap();
        assert_eq!(child.wait().await.unwrap().code(), Some(127));
        assert!(matches!(child.start_failure(), Some(SpawnError::Cgroup(_))));
    }

    #[tokio::test]
    async fn a_missing_program_is_a_start_error_and_nothing_is_left() {
        let spec = plain(Path::new("/nonexistent/cligate-nothing"), &[]);
        match failure(&spec).await {
            Err(SpawnError::Start(e)) => assert_eq!(e.kind(), io::ErrorKind::NotFound),
            other => panic!("{other:?}"),
        }
    }

    /// A file that is not executable: the child's exec fails, and its report says why.
    #[tokio::test]
    async fn a_program_that_cannot_be_executed_is_a_start_error() {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("not-executable");
        std::fs::write(&program, "#!/bin/sh\n").unwrap();
        let spec = plain(&program, &[]);
        match failure(&spec).await {
            Err(SpawnError::Start(e)) => assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}"),
            other => panic!("{other:?}"),
        }
    }

    /// Dropped before it was waited for, the child is killed and reaped (and the memory it may
    /// still be running on freed only then).
    #[tokio::test]
    async fn a_child_dropped_unwaited_is_killed_and_reaped() {
        let args = ["30".to_string()];
        let spec = plain(Path::new("/bin/sleep"), &args);
        let child = spawn(&spec).unwrap();
        assert!(child.memory.is_some());
        let proc_dir = format!("/proc/{}", child.id());
        drop(child);
        // Reaped: not even a zombie is left.
        for _ in 0..1000 {
            if !Path::new(&proc_dir).exists() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("{proc_dir} is still there");
    }

    #[tokio::test]
    async fn sigpipe_is_the_default_in_the_child() {
        // `yes` into a closed pipe dies of SIGPIPE only if SIGPIPE is not ignored.
        let args = [
            "-c".to_string(),
            "yes | head -c1 >/dev/null; kill -0 $$; exec yes".to_string(),
        ];
        let spec = plain(Path::new("/bin/sh"), &args);
        let mut child = spawn(&spec).unwrap();
        drop(child.stdout.take());
        let status = child.wait().await.unwrap();
        assert_eq!(status.signal(), Some(libc::SIGPIPE), "{status:?}");
    }
}
