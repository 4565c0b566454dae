//! Starts a run's child the way `posix_spawn` does — `clone(CLONE_VM | CLONE_VFORK)`, the child
//! borrowing the gateway's memory until it execs — instead of `fork(2)`, while still moving the
//! child into its cgroup before it runs any code of its own.
//!
//! std (and so tokio) falls back to `fork` as soon as a `pre_exec` hook is set, which is how
//! the child used to join its cgroup. A fork copies the page tables of the whole gateway and
//! write-protects every page it has, so the gateway then takes a copy-on-write fault on each page
//! it touches after every spawn: measured, that was the largest single cost of a short run. Here
//! the child shares the parent's memory (the calling thread waits until the child has exec'd or
//! exited), does only async-signal-safe system calls on data prepared by the parent (no
//! allocation), and then execs:
//!
//! 1. every signal handler the gateway installed is reset to the default (the child must never
//!    run a gateway handler in the gateway's memory; all signals are blocked until then);
//! 2. it writes itself into the run's cgroup (`cgroup.procs`), when there is one and it was not
//!    born there (below);
//! 3. `setpgid(0, 0)`: its own process group, and `chdir` to its working directory if it has one;
//! 4. the pipes become its stdin, stdout and stderr;
//! 5. an empty signal mask (as std gives a child), then `execve`.
//!
//! A failure at any step is written to memory the parent reads once the child has exited.
//!
//! On cgroup v2 the child is born in its run's cgroup instead (`clone3` with `CLONE_INTO_CGROUP`,
//! Linux 5.7): moving a process between cgroups takes a lock whose writer waits for an RCU grace
//! period while the lock is idle, so a run started after a quiet spell waited 6–15 ms in its
//! `cgroup.procs` write (measured here with 20 ms between starts; 0.1 ms when they follow each
//! other closely). std and libc have no `clone3` that runs a function on a new stack, so
//! `clone3_vm` is the few instructions that do (x86-64). Elsewhere, or where `clone3` is refused
//! (an older kernel; seccomp profiles that answer `ENOSYS`), the child moves itself as in step 2.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::libc;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

/// Stack of the child while it shares the parent's memory (it only makes system calls).
const CHILD_STACK: usize = 64 * 1024;

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
    pub stdin: Option<pipe::Sender>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
}

/// Shared between the parent and the child (the child writes, the parent reads after the child
/// has exec'd or exited).
#[repr(C)]
struct ChildArgs {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    /// stdin's read end, stdout's and stderr's write ends (all ≥ 3, close-on-exec).
    fds: [libc::c_int; 3],
    /// `cgroup.procs` to join, or null.
    procs: *const libc::c_char,
    /// The working directory to change to, or null.
    cwd: *const libc::c_char,
    /// 0, or the step that failed (1: cgroup, 2: set-up, 3: exec).
    failed_at: libc::c_int,
    errno: libc::c_int,
}

/// The child, on its own stack in the parent's memory. Only async-signal-safe calls.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points to the parent's `ChildArgs`, alive until the parent resumes (after
    // this process has exec'd or exited); only system calls follow.
    unsafe {
        let a = &mut *(arg as *mut ChildArgs);
        unsafe fn fail(a: &mut ChildArgs, step: libc::c_int) -> ! {
            // SAFETY: reads this thread's errno, then ends the child without running anything.
            unsafe {
                a.errno = *libc::__errno_location();
                a.failed_at = step;
                libc::_exit(127)
            }
        }
        // 1. No gateway handler may run here: every caught signal back to its default.
        for sig in 1..libc::SIGRTMAX() + 1 {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction != libc::SIG_DFL
                && (old.sa_sigaction != libc::SIG_IGN || sig == libc::SIGPIPE)
            {
                // SIGPIPE too: the Rust runtime ignores it; a CLI gets the default, as from std.
                let mut new: libc::sigaction = std::mem::zeroed();
                new.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &new, std::ptr::null_mut());
            }
        }
        // 2. Into the run's cgroup before any code of the program runs.
        if !a.procs.is_null() {
            let fd = libc::open(a.procs, libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                fail(a, 1);
            }
            libc::close(fd);
        }
        // 3. Its own process group; 4. the pipes as 0, 1, 2 (dup2 clears close-on-exec).
        if libc::setpgid(0, 0) != 0 {
            fail(a, 2);
        }
        if !a.cwd.is_null() && libc::chdir(a.cwd) != 0 {
            fail(a, 2);
        }
        for (target, fd) in a.fds.into_iter().enumerate() {
            if libc::dup2(fd, target as libc::c_int) < 0 {
                fail(a, 2);
            }
        }
        // 5. An empty signal mask, then the program.
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::execve(a.path, a.argv, a.envp);
        fail(a, 3)
    }
}

/// Whether `clone3` into a cgroup is worth trying (cleared once the kernel shows it has none).
static CLONE3: AtomicBool = AtomicBool::new(cfg!(target_arch = "x86_64"));

/// The directory of a `…/cgroup.procs` file, opened for `CLONE_INTO_CGROUP`.
fn cgroup_dir(procs: &CStr) -> Option<OwnedFd> {
    let dir = Path::new(OsStr::from_bytes(procs.to_bytes())).parent()?;
    let dir = CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: opens a path; the descriptor is new and owned here.
    let fd = unsafe { libc::open(dir.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    // SAFETY: `fd` is a new descriptor when not negative.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `struct clone_args` of `clone3(2)`, up to `cgroup` (`CLONE_ARGS_SIZE_VER2`).
#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `clone3(CLONE_VM | CLONE_VFORK | CLONE_PIDFD | CLONE_INTO_CGROUP)`: the child is born in the
/// cgroup `cgroup` (a directory descriptor) and runs [`child_main`]`(arg)` on `stack`
/// ([`CHILD_STACK`] bytes, 16-byte aligned), never returning here. Returns the child's pid
/// (the parent resumes once it has exec'd or exited), or `-errno`.
///
/// # Safety
/// As for `clone(2)` with `CLONE_VM`: `stack` and whatever `arg` points to must stay alive
/// until this returns, and signals should be blocked.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_vm(
    stack: *mut u8,
    cgroup: libc::c_int,
    pidfd: &mut libc::c_int,
    arg: *mut libc::c_void,
) -> libc::c_long {
    let mut args = CloneArgs {
        flags: (libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD) as u64 | CLONE_INTO_CGROUP,
        pidfd: pidfd as *mut libc::c_int as u64,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack as u64,
        stack_size: CHILD_STACK as u64,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: cgroup as u64,
    };
    debug_assert_eq!(stack as usize % 16, 0, "the child's stack top must be 16-byte aligned");
    let entry: extern "C" fn(*mut libc::c_void) -> libc::c_int = child_main;
    let ret: libc::c_long;
    // SAFETY: the kernel starts the child after `syscall` with rax = 0 and rsp = the top of
    // `stack` (stack + stack_size), every other register as the parent's: it calls `entry(arg)`
    // (kept in r12/r13, which the syscall preserves) on that aligned stack and exits with its
    // result, never returning into this frame. The parent gets the pid or -errno in rax;
    // `syscall` clobbers rcx and r11.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "mov edi, eax",
            "mov eax, {exit}",
            "syscall",
            "ud2",
            "2:",
            exit = const libc::SYS_exit,
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") &mut args as *mut CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") arg,
            in("r13") entry,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn clone3_vm(_: *mut u8, _: libc::c_int, _: &mut libc::c_int, _: *mut libc::c_void) -> libc::c_long {
    -(libc::ENOSYS as libc::c_long)
}

/// `CLONE_INTO_CGROUP` (linux/sched.h), not in every libc crate.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

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

/// Starts the child (see the module's documentation). Must be called on a Tokio runtime.
pub fn spawn(spec: &SpawnSpec) -> Result<Spawned, SpawnError> {
    let start = SpawnError::Start;
    let path = cstring(spec.program.as_os_str().as_bytes()).map_err(start)?;
    let mut args = Vec::with_capacity(spec.args.len() + 1);
    args.push(path.clone());
    for a in spec.args {
        args.push(cstring(a.as_bytes()).map_err(start)?);
    }
    let (_env, envp) = environment(spec.env, spec.env_remove).map_err(start)?;
    let cwd = spec
        .cwd
        .map(|d| cstring(d.as_os_str().as_bytes()))
        .transpose()
        .map_err(start)?;
    let argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();

    let (stdin_r, stdin_w) = pipe_above_stdio().map_err(start)?;
    let (stdout_r, stdout_w) = pipe_above_stdio().map_err(start)?;
    let (stderr_r, stderr_w) = pipe_above_stdio().map_err(start)?;
    let mut child = ChildArgs {
        path: path.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        fds: [stdin_r.as_raw_fd(), stdout_w.as_raw_fd(), stderr_w.as_raw_fd()],
        procs: spec.cgroup_procs.map_or(std::ptr::null(), |p| p.as_ptr()),
        cwd: cwd.as_ref().map_or(std::ptr::null(), |d| d.as_ptr()),
        failed_at: 0,
        errno: 0,
    };
    let mut stack = Vec::<u8>::with_capacity(CHILD_STACK);
    let mut pidfd: libc::c_int = -1;
    let born_in = match spec.cgroup_procs {
        Some(procs) if spec.cgroup_v2 && CLONE3.load(Ordering::Relaxed) => cgroup_dir(procs),
        _ => None,
    };
    // SAFETY: all signals are blocked around the clone (restored at once in the parent; the
    // child resets handlers before unblocking). The child runs `child_main` on `stack` (the top,
    // 16-byte aligned) with `child`, both alive until clone returns: with CLONE_VFORK this thread
    // resumes only once the child has exec'd or exited.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        // Every access until clone returns goes through this pointer (the child writes through it).
        let args: *mut ChildArgs = &mut child;
        let arg = args.cast();
        let mut pid = -1;
        if let Some(dir) = &born_in {
            (*args).procs = std::ptr::null();
            pid = clone3_vm(stack.as_mut_ptr(), dir.as_raw_fd(), &mut pidfd, arg);
            if pid < 0 {
                // Refused: the child moves itself. ENOSYS: no clone3 (or seccomp says so);
                // E2BIG, EINVAL: a clone3 without CLONE_INTO_CGROUP (Linux 5.3–5.6). Neither
                // changes, so later runs do not ask again.
                if [libc::ENOSYS, libc::E2BIG, libc::EINVAL].contains(&(-pid as libc::c_int)) {
                    CLONE3.store(false, Ordering::Relaxed);
                }
                (*args).procs = spec.cgroup_procs.map_or(std::ptr::null(), |p| p.as_ptr());
            }
        }
        if pid < 0 {
            let top = (stack.as_mut_ptr().add(CHILD_STACK) as usize & !15) as *mut libc::c_void;
            pid = libc::clone(
                child_main,
                top,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
                arg,
                &mut pidfd as *mut libc::c_int,
            ) as libc::c_long;
        }
        let error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(start(error));
        }
        pid as i32
    };
    drop(stack);
    // SAFETY: CLONE_PIDFD gave us a new descriptor.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    drop((stdin_r, stdout_w, stderr_w));
    if child.failed_at != 0 {
        // It has exited already (_exit): reap it.
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let error = io::Error::from_raw_os_error(child.errno);
        return Err(match child.failed_at {
            1 => SpawnError::Cgroup(error),
            _ => SpawnError::Start(error),
        });
    }
    let registered = (|| -> io::Result<Spawned> {
        Ok(Spawned {
            pid,
            born_in_cgroup: child.procs.is_null() && born_in.is_some(),
            // SAFETY: an OwnedFd keeps its descriptor open and unchanged while the AsyncFd owns it.
            pidfd: unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }.map_err(io::Error::from)?,
            status: None,
            stdin: Some(pipe::Sender::from_owned_fd(stdin_w)?),
            // Driven by the output runtime (see `super::output_runtime`).
            stdout: Some(super::on_output_runtime(|| pipe::Receiver::from_owned_fd(stdout_r))?),
            stderr: Some(super::on_output_runtime(|| pipe::Receiver::from_owned_fd(stderr_r))?),
        })
    })();
    registered.map_err(|e| {
        reap_in_background(pid);
        start(e)
    })
}

/// SIGKILLs `pid` (our child) and reaps it off the caller's thread.
fn reap_in_background(pid: i32) {
    // SAFETY: `pid` is our unreaped child, so the number cannot name another process.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = std::thread::Builder::new().name("reaper".into()).spawn(move || {
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
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
            reap_in_background(self.pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::containment::Containment;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn output(mut child: Spawned, stdin: &[u8]) -> (String, ExitStatus) {
        let mut w = child.stdin.take().unwrap();
        w.write_all(stdin).await.unwrap();
        drop(w);
        let mut out = String::new();
        child.stdout.take().unwrap().read_to_string(&mut out).await.unwrap();
        let status = child.wait().await.unwrap();
        assert_eq!(child.wait().await.unwrap(), status);
        (out, status)
    }

    /// The child's first code already runs in the run's cgroup (or carries the marker), in its
    /// own process group, with the environment asked for and default signal handling — born in
    /// a cgroup v2 where the kernel has `clone3`, and moving itself there otherwise.
    #[tokio::test]
    async fn the_child_starts_in_its_scope_with_its_pipes_and_environment() {
        let containment = Containment::detect(&format!("unit-spawn-{}", std::process::id()));
        for born in [true, false] {
            let scope = containment.scope(&format!("spawned-{born}")).unwrap();
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
                cwd: None,
            };
            let child = spawn(&spec).unwrap();
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
        let plain = CString::new(dir.path().join("cgroup.procs").into_os_string().into_vec()).unwrap();
        let missing = CString::new("/nonexistent/cgroup.procs").unwrap();
        let before = CLONE3.load(Ordering::Relaxed);
        for (procs, cgroup_v2) in [(&missing, true), (&missing, false), (&plain, true)] {
            let spec = SpawnSpec {
                program: Path::new("/bin/true"),
                args: &[],
                env: &BTreeMap::new(),
                env_remove: &[],
                cgroup_procs: Some(procs),
                cgroup_v2,
                cwd: None,
            };
            let result = spawn(&spec);
            assert!(
                matches!(result, Err(SpawnError::Cgroup(_))),
                "{procs:?} {cgroup_v2}: {result:?}"
            );
        }
        assert_eq!(CLONE3.load(Ordering::Relaxed), before);
    }

    #[tokio::test]
    async fn a_missing_program_is_a_start_error_and_nothing_is_left() {
        let spec = SpawnSpec {
            program: Path::new("/nonexistent/cligate-nothing"),
            args: &[],
            env: &BTreeMap::new(),
            env_remove: &[],
            cgroup_procs: None,
            cgroup_v2: false,
            cwd: None,
        };
        match spawn(&spec) {
            Err(SpawnError::Start(e)) => assert_eq!(e.kind(), io::ErrorKind::NotFound),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn sigpipe_is_the_default_in_the_child() {
        // `yes` into a closed pipe dies of SIGPIPE only if SIGPIPE is not ignored.
        let args = [
            "-c".to_string(),
            "yes | head -c1 >/dev/null; kill -0 $$; exec yes".to_string(),
        ];
        let spec = SpawnSpec {
            program: Path::new("/bin/sh"),
            args: &args,
            env: &BTreeMap::new(),
            env_remove: &[],
            cgroup_procs: None,
            cgroup_v2: false,
            cwd: None,
        };
        let mut child = spawn(&spec).unwrap();
        drop(child.stdout.take());
        let status = child.wait().await.unwrap();
        assert_eq!(status.signal(), Some(libc::SIGPIPE), "{status:?}");
    }
}
