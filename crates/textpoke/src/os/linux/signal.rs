//! The SIGTRAP handler that makes the breakpoint protocol safe for other threads.
//!
//! A thread that executes a site while a batch has a breakpoint there traps; the handler hands
//! the saved registers to the engine, which emulates the site's new instruction. Every trap
//! that is not textpoke's goes to the handler that was installed before, so debuggers' and the
//! user's own SIGTRAP handling keep working. Async-signal-safe: no allocation, no locks, no
//! panics on the handler path.

use std::sync::atomic::{AtomicPtr, Ordering};

use crate::arch::Regs;
use crate::{Error, Result};

/// The disposition that was in place before ours, for chaining. Replaced (and the old one
/// leaked, a few dozen bytes) only when someone installed a handler over ours.
static PREVIOUS: AtomicPtr<libc::sigaction> = AtomicPtr::new(std::ptr::null_mut());

fn our_handler() -> usize {
    handler as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize
}

/// Installs the handler if it is not the current SIGTRAP disposition. Checked before every
/// batch, so a handler installed over ours later is chained rather than left to meet our
/// breakpoints.
pub fn ensure_trap_handler() -> Result<()> {
    // SAFETY: a zeroed `sigaction` is a valid out-parameter.
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: querying with a null new action changes nothing.
    if unsafe { libc::sigaction(libc::SIGTRAP, std::ptr::null(), &mut current) } != 0 {
        return Err(Error::syscall(
            "sigaction(SIGTRAP) query",
            rustix::io::Errno::from_raw_os_error(errno()),
        ));
    }
    if current.sa_sigaction == our_handler() {
        return Ok(());
    }
    // Publish the previous disposition before ours can run.
    PREVIOUS.store(Box::into_raw(Box::new(current)), Ordering::Release);
    // SAFETY: as above.
    let mut ours: libc::sigaction = unsafe { std::mem::zeroed() };
    ours.sa_sigaction = our_handler();
    ours.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
    // SAFETY: `sa_mask` is a valid sigset to clear.
    unsafe { libc::sigemptyset(&mut ours.sa_mask) };
    // SAFETY: a zeroed `sigaction` is a valid out-parameter.
    let mut replaced: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: installs a valid handler; `replaced` receives what was there.
    if unsafe { libc::sigaction(libc::SIGTRAP, &ours, &mut replaced) } != 0 {
        return Err(Error::syscall(
            "sigaction(SIGTRAP) install",
            rustix::io::Errno::from_raw_os_error(errno()),
        ));
    }
    if replaced.sa_sigaction != current.sa_sigaction {
        // Someone changed the disposition between our query and install: chain to theirs.
        PREVIOUS.store(Box::into_raw(Box::new(replaced)), Ordering::Release);
    }
    Ok(())
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo and ucontext to an SA_SIGINFO handler.
    let handled = unsafe { (*info).si_code == libc::SI_KERNEL && breakpoint(ctx.cast()) };
    if !handled {
        // SAFETY: forwarding the kernel's own arguments.
        unsafe { chain(sig, info, ctx) };
    }
}

/// Gives an `int3` trap to the engine. Returns whether it was one of textpoke's.
///
/// # Safety
///
/// `uc` must be the ucontext of the trapped thread.
unsafe fn breakpoint(uc: *mut libc::ucontext_t) -> bool {
    // SAFETY: the caller passes the trapped thread's ucontext, whose gregs we may edit.
    let gregs = unsafe { &mut (*uc).uc_mcontext.gregs };
    let mut regs = Regs {
        pc: gregs[libc::REG_RIP as usize] as usize,
        sp: gregs[libc::REG_RSP as usize] as usize,
        flags: gregs[libc::REG_EFL as usize] as u64,
    };
    // SAFETY: `regs` is this trapped thread's state, as `on_breakpoint` requires.
    if !unsafe { crate::engine::on_breakpoint(&mut regs) } {
        return false;
    }
    gregs[libc::REG_RIP as usize] = regs.pc as i64;
    gregs[libc::REG_RSP as usize] = regs.sp as i64;
    true
}

/// Passes a trap that is not ours to the previous disposition.
///
/// # Safety
///
/// Arguments must be the kernel's, as received by `handler`.
unsafe fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let prev = PREVIOUS.load(Ordering::Acquire);
    // SAFETY: `PREVIOUS` only ever holds leaked, never-freed boxes.
    let action = if prev.is_null() {
        libc::SIG_DFL
    } else {
        unsafe { (*prev).sa_sigaction }
    };
    let flags = if prev.is_null() {
        0
    } else {
        unsafe { (*prev).sa_flags }
    };
    // SAFETY: `info` is valid (see `handler`).
    let from_kernel = unsafe { (*info).si_code } == libc::SI_KERNEL;
    if action == libc::SIG_IGN && !from_kernel {
        return;
    }
    if action == libc::SIG_DFL || action == libc::SIG_IGN {
        // A trap the kernel raised cannot be ignored; the default action ends the process.
        // Restore it and re-raise: the signal is blocked in this handler, so it is delivered,
        // with a core dump, as soon as we return.
        // SAFETY: `signal` and `raise` are async-signal-safe.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
        return;
    }
    if flags & libc::SA_SIGINFO != 0 {
        // SAFETY: an SA_SIGINFO handler has this signature.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(action) };
        f(sig, info, ctx);
    } else {
        // SAFETY: a plain handler has this signature.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(action) };
        f(sig);
    }
}
