//! The child's side of a spawn (see [`super::spawn`]): the few system calls a new process makes
//! between `clone` and `execve`, while it still runs in the gateway's memory, and the `clone3`
//! (or older `clone`) that starts it on a stack of its own.
//!
//! The child shares the gateway's memory *and* the thread-local storage of the thread that
//! cloned it, and that thread goes on running at once (there is no `CLONE_VFORK` on the usual
//! path). So the child must touch nothing but its own stack and [`ChildArgs`]: no allocation, no
//! lock, and no libc wrapper either, since those write `errno`, which is the cloning thread's
//! `errno` too. On x86-64 every call here is a raw `syscall`; elsewhere the parent waits for the
//! child (`CLONE_VFORK`) and libc's wrappers are used.

use std::sync::atomic::{AtomicI32, Ordering};

use nix::libc;

/// Stack of the child while it shares the parent's memory: it only makes system calls, and the
/// stack is held until the child is reaped, so it is small.
pub const CHILD_STACK: usize = 16 * 1024;

/// What the child needs, prepared by the parent. It only reads it, except for [`Self::report`].
#[repr(C)]
pub struct ChildArgs {
    pub path: *const libc::c_char,
    pub argv: *const *const libc::c_char,
    pub envp: *const *const libc::c_char,
    /// stdin's read end, stdout's and stderr's write ends (all ≥ 3, close-on-exec).
    pub fds: [libc::c_int; 3],
    /// `cgroup.procs` to join, or null.
    pub procs: *const libc::c_char,
    /// The working directory to change to, or null.
    pub cwd: *const libc::c_char,
    /// A failed step, written by the child before it exits: the step (1: cgroup, 2: set-up,
    /// 3: exec; 0 while none failed) and the errno. The child shares this memory until it
    /// execs, so no pipe is needed to tell the parent, which reads it once the child has been
    /// reaped (the kernel's exit and wait order the stores before the read).
    pub report: [AtomicI32; 2],
    /// The child was started by `clone3` with `CLONE_CLEAR_SIGHAND`: the kernel has set every
    /// caught signal back to its default already, and only an ignored SIGPIPE is left to reset
    /// (one system call instead of two per signal, 70 per run).
    pub handlers_cleared: bool,
}

/// A failed step, as the child reports it.
pub const STEP_CGROUP: i32 = 1;

/// The child, on its own stack. Never returns: it execs, or reports and exits with 127.
pub extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points to the parent's `ChildArgs`, kept alive by the parent until this
    // process has been reaped; only raw system calls on that data and this stack follow.
    unsafe {
        let a = &*(arg as *const ChildArgs);
        // 1. No gateway handler may run here: every caught signal back to its default (all
        //    signals are blocked until step 5).
        if a.handlers_cleared {
            reset_sigpipe();
        } else {
            reset_signal_handlers();
        }
        // 2. Into the run's cgroup before any code of the program runs (when not born there).
        if !a.procs.is_null() {
            let fd = sys(
                libc::SYS_openat,
                [
                    libc::AT_FDCWD as usize,
                    a.procs as usize,
                    (libc::O_WRONLY | libc::O_CLOEXEC) as usize,
                    0,
                ],
            );
            if fd < 0 {
                fail(a, STEP_CGROUP, fd);
            }
            let written = sys(libc::SYS_write, [fd as usize, b"0".as_ptr() as usize, 1, 0]);
            if written != 1 {
                fail(
                    a,
                    STEP_CGROUP,
                    if written < 0 {
                        written
                    } else {
                        -(libc::EIO as libc::c_long)
                    },
                );
            }
            sys(libc::SYS_close, [fd as usize, 0, 0, 0]);
        }
        // 3. Its own process group, and its working directory.
        let done = sys(libc::SYS_setpgid, [0, 0, 0, 0]);
        if done < 0 {
            fail(a, 2, done);
        }
        if !a.cwd.is_null() {
            let done = sys(libc::SYS_chdir, [a.cwd as usize, 0, 0, 0]);
            if done < 0 {
                fail(a, 2, done);
            }
        }
        // 4. The pipes as 0, 1, 2 (`dup3` clears close-on-exec; the fds are ≥ 3, never equal).
        for (target, fd) in a.fds.into_iter().enumerate() {
            let done = sys(libc::SYS_dup3, [fd as usize, target, 0, 0]);
            if done < 0 {
                fail(a, 2, done);
            }
        }
        // 5. An empty signal mask (as std gives a child), then the program.
        let none: u64 = 0;
        sys(
            libc::SYS_rt_sigprocmask,
            [libc::SIG_SETMASK as usize, &none as *const u64 as usize, 0, 8],
        );
        let done = sys(libc::SYS_execve, [a.path as usize, a.argv as usize, a.envp as usize, 0]);
        fail(a, 3, done)
    }
}

/// Reports `step` and the error of `ret` (a negated errno) in `a`, then exits with 127.
///
/// # Safety
/// Only in the child.
unsafe fn fail(a: &ChildArgs, step: i32, ret: libc::c_long) -> ! {
    // Plain stores to memory the parent reads after reaping this process; no call, no errno.
    a.report[1].store((-ret) as i32, Ordering::Relaxed);
    a.report[0].store(step, Ordering::Release);
    // SAFETY: the process ends.
    unsafe {
        loop {
            sys(libc::SYS_exit_group, [127, 0, 0, 0]);
        }
    }
}

/// A system call with up to four arguments: its result, or a negated errno. Never touches
/// `errno`.
///
/// # Safety
/// As the system call itself.
#[cfg(target_arch = "x86_64")]
unsafe fn sys(number: libc::c_long, [a, b, c, d]: [usize; 4]) -> libc::c_long {
    let ret: libc::c_long;
    // SAFETY: the caller's; `syscall` clobbers rcx and r11 and uses no stack.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") number => ret,
            in("rdi") a,
            in("rsi") b,
            in("rdx") c,
            in("r10") d,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// Elsewhere the parent is suspended until the child execs (`CLONE_VFORK`), so libc's wrapper,
/// and its write to `errno`, are fine.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn sys(number: libc::c_long, [a, b, c, d]: [usize; 4]) -> libc::c_long {
    // SAFETY: the caller's.
    unsafe {
        let ret = libc::syscall(number, a, b, c, d);
        if ret < 0 {
            -(*libc::__errno_location() as libc::c_long)
        } else {
            ret
        }
    }
}

/// Sets every caught signal back to its default (ignored ones stay ignored, except SIGPIPE,
/// which the Rust runtime ignores and a CLI expects at its default, as std gives it).
#[cfg(target_arch = "x86_64")]
unsafe fn reset_signal_handlers() {
    /// The kernel's `struct sigaction` on x86-64.
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    const DEFAULT: KernelSigaction = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    let default = DEFAULT;
    for sig in 1..=64usize {
        let mut old = DEFAULT;
        // SAFETY: reads and writes this signal's disposition through local structs.
        unsafe {
            if sys(
                libc::SYS_rt_sigaction,
                [sig, 0, &mut old as *mut KernelSigaction as usize, 8],
            ) == 0
                && old.handler != libc::SIG_DFL
                && (old.handler != libc::SIG_IGN || sig == libc::SIGPIPE as usize)
            {
                sys(
                    libc::SYS_rt_sigaction,
                    [sig, &default as *const KernelSigaction as usize, 0, 8],
                );
            }
        }
    }
}

/// Sets SIGPIPE back to its default (the Rust runtime ignores it; a CLI expects the default, as
/// std gives it).
#[cfg(target_arch = "x86_64")]
unsafe fn reset_sigpipe() {
    let default = [libc::SIG_DFL, 0, 0, 0];
    // SAFETY: sets one signal's disposition from a local struct (the kernel's `struct sigaction`
    // on x86-64: handler, flags, restorer, mask).
    unsafe {
        sys(
            libc::SYS_rt_sigaction,
            [libc::SIGPIPE as usize, default.as_ptr() as usize, 0, 8],
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn reset_sigpipe() {
    // SAFETY: as `reset_signal_handlers`.
    unsafe { reset_signal_handlers() }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn reset_signal_handlers() {
    for sig in 1..libc::SIGRTMAX() + 1 {
        // SAFETY: as above, through libc (the parent is suspended, see `sys`).
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction != libc::SIG_DFL
                && (old.sa_sigaction != libc::SIG_IGN || sig == libc::SIGPIPE)
            {
                let mut new: libc::sigaction = std::mem::zeroed();
                new.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &new, std::ptr::null_mut());
            }
        }
    }
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

/// `CLONE_INTO_CGROUP` (linux/sched.h), not in every libc crate.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// `CLONE_CLEAR_SIGHAND` (Linux 5.5, before `clone3` learned `CLONE_INTO_CGROUP`): the child's
/// caught signals start at their default dispositions.
const CLONE_CLEAR_SIGHAND: u64 = 0x1_0000_0000;

/// `clone3(CLONE_VM | CLONE_PIDFD | CLONE_CLEAR_SIGHAND [| CLONE_INTO_CGROUP])`: the child runs
/// [`child_main`]`(arg)` on `stack` ([`CHILD_STACK`] bytes, 16-byte aligned) and never returns
/// here; with `cgroup` (a directory descriptor) it is born in that cgroup. The caller goes on
/// at once. Returns the child's pid, or a negated errno.
///
/// # Safety
/// As for `clone(2)` with `CLONE_VM`: `stack` and whatever `arg` points to must stay alive and
/// unchanged until the child has exec'd or exited, and signals should be blocked.
#[cfg(target_arch = "x86_64")]
pub unsafe fn clone3_vm(
    stack: *mut u8,
    cgroup: Option<libc::c_int>,
    pidfd: &mut libc::c_int,
    arg: *mut libc::c_void,
) -> libc::c_long {
    let mut flags = (libc::CLONE_VM | libc::CLONE_PIDFD) as u64 | CLONE_CLEAR_SIGHAND;
    if cgroup.is_some() {
        flags |= CLONE_INTO_CGROUP;
    }
    let mut args = CloneArgs {
        flags,
        pidfd: pidfd as *mut libc::c_int as u64,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack as u64,
        stack_size: CHILD_STACK as u64,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: cgroup.unwrap_or(0) as u64,
    };
    debug_assert_eq!(stack as usize % 16, 0, "the child's stack must be 16-byte aligned");
    // SAFETY: the caller's; `args` lives until the system call has returned in the parent.
    unsafe {
        clone_running_child(
            libc::SYS_clone3,
            [
                &mut args as *mut CloneArgs as usize,
                std::mem::size_of::<CloneArgs>(),
                0,
                0,
                0,
            ],
            arg,
        )
    }
}

/// `clone(CLONE_VM | CLONE_PIDFD)`, the older system call, for where `clone3` is refused (Docker's
/// default seccomp profile answers `ENOSYS` to it, and allows this one): the same child, started
/// the same way, and the caller goes on at once. `top` is the stack's top (16-byte aligned).
/// Returns the child's pid, or a negated errno.
///
/// # Safety
/// As for [`clone3_vm`].
#[cfg(target_arch = "x86_64")]
pub unsafe fn clone_vm(top: *mut u8, pidfd: &mut libc::c_int, arg: *mut libc::c_void) -> libc::c_long {
    debug_assert_eq!(top as usize % 16, 0, "the child's stack top must be 16-byte aligned");
    // SAFETY: the caller's. The x86-64 `clone` takes (flags, stack, parent_tid, child_tid, tls);
    // with CLONE_PIDFD the pidfd is written to `parent_tid`.
    unsafe {
        clone_running_child(
            libc::SYS_clone,
            [
                (libc::CLONE_VM | libc::CLONE_PIDFD | libc::SIGCHLD) as usize,
                top as usize,
                pidfd as *mut libc::c_int as usize,
                0,
                0,
            ],
            arg,
        )
    }
}

/// Makes the clone system call `number` with `args` (in rdi, rsi, rdx, r10, r8). In the child,
/// which the kernel starts on its new stack, calls [`child_main`]`(arg)` and exits with its
/// result, never returning here; in the parent, returns the child's pid or a negated errno.
///
/// # Safety
/// As for [`clone3_vm`]; `args` must give the child a new stack, 16-byte aligned at its top.
#[cfg(target_arch = "x86_64")]
unsafe fn clone_running_child(
    number: libc::c_long,
    [a, b, c, d, e]: [usize; 5],
    arg: *mut libc::c_void,
) -> libc::c_long {
    let entry: extern "C" fn(*mut libc::c_void) -> libc::c_int = child_main;
    let ret: libc::c_long;
    // SAFETY: the kernel starts the child after `syscall` with rax = 0 and rsp = the top of its
    // new stack, every other register as the parent's: it calls `entry(arg)` (kept in r12/r13,
    // which the syscall preserves) on that aligned stack and exits with its result, never
    // returning into this frame. The parent gets the pid or -errno in rax; `syscall` clobbers
    // rcx and r11.
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
            inlateout("rax") number => ret,
            in("rdi") a,
            in("rsi") b,
            in("rdx") c,
            in("r10") d,
            in("r8") e,
            in("r12") arg,
            in("r13") entry,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret
}

#[cfg(not(target_arch = "x86_64"))]
pub unsafe fn clone_vm(_: *mut u8, _: &mut libc::c_int, _: *mut libc::c_void) -> libc::c_long {
    -(libc::ENOSYS as libc::c_long)
}

#[cfg(not(target_arch = "x86_64"))]
pub unsafe fn clone3_vm(_: *mut u8, _: Option<libc::c_int>, _: &mut libc::c_int, _: *mut libc::c_void) -> libc::c_long {
    -(libc::ENOSYS as libc::c_long)
}
