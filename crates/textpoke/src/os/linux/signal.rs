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

/// Signal frames (ucontext pointers) this handler is currently chaining from. A handler we
/// chain to may chain back to us (we re-install over handlers that were installed over ours,
/// and those often chain to what they replaced): meeting the same frame again ends the loop.
const CHAIN_SLOTS: usize = 32;
static CHAINING: [AtomicPtr<libc::c_void>; CHAIN_SLOTS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; CHAIN_SLOTS];

fn our_handler() -> usize {
    handler as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize
}

fn last_errno() -> rustix::io::Errno {
    rustix::io::Errno::from_raw_os_error(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

/// Installs the handler if it is not the current SIGTRAP disposition. Checked before every
/// batch, so a handler installed over ours later is chained rather than left to meet our
/// breakpoints.
pub fn ensure_trap_handler() -> Result<()> {
    // SAFETY: a zeroed `sigaction` is a valid out-parameter.
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: querying with a null new action changes nothing.
    if unsafe { libc::sigaction(libc::SIGTRAP, std::ptr::null(), &mut current) } != 0 {
        return Err(Error::syscall("sigaction(SIGTRAP) query", last_errno()));
    }
    if current.sa_sigaction == our_handler() {
        return Ok(());
    }
    // Publish the previous disposition before ours can run.
    PREVIOUS.store(Box::into_raw(Box::new(current)), Ordering::Release);
    // SAFETY: a zeroed `sigaction` is a valid value to fill in.
    let mut ours: libc::sigaction = unsafe { std::mem::zeroed() };
    ours.sa_sigaction = our_handler();
    // Run on the alternate stack only if the handler we chain to asked for it.
    ours.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | (current.sa_flags & libc::SA_ONSTACK);
    // SAFETY: `sa_mask` is a valid sigset to clear.
    unsafe { libc::sigemptyset(&mut ours.sa_mask) };
    // SAFETY: a zeroed `sigaction` is a valid out-parameter.
    let mut replaced: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: installs a valid handler; `replaced` receives what was there.
    if unsafe { libc::sigaction(libc::SIGTRAP, &ours, &mut replaced) } != 0 {
        return Err(Error::syscall("sigaction(SIGTRAP) install", last_errno()));
    }
    if replaced.sa_sigaction != current.sa_sigaction {
        // Someone changed the disposition between our query and install: chain to theirs.
        PREVIOUS.store(Box::into_raw(Box::new(replaced)), Ordering::Release);
    }
    Ok(())
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // Decide by address, not by `si_code`: SIGTRAP does not queue, so if another SIGTRAP was
    // already pending (a `tgkill`, a perf event) when the thread hit our breakpoint, the
    // kernel delivers only that one. A thread is never at a site's second byte except after
    // our breakpoint, so the address alone says the trap was ours.
    // SAFETY: the kernel passes the trapped thread's ucontext to an SA_SIGINFO handler.
    let ours = unsafe { breakpoint(ctx.cast()) };
    // SAFETY: as above, `info` is valid.
    let from_int3 = from_breakpoint(unsafe { (*info).si_code });
    if !ours || !from_int3 {
        // SAFETY: forwarding the kernel's own arguments.
        unsafe { chain(sig, info, ctx) };
    }
}

/// Whether a SIGTRAP's `si_code` says the kernel raised it for an `int3`.
///
/// The kernel reports an `int3` as SI_KERNEL. Valgrind raises its own SIGTRAP for an `int3` it
/// translated, with TRAP_BRKPT, and for nothing else (a `tgkill` from the program shows as
/// SI_TKILL, and valgrind delivers it as a signal of its own, never merged with this one).
/// Natively TRAP_BRKPT means a hardware breakpoint, someone else's: so it counts only under
/// valgrind, checked only once the common case has failed.
fn from_breakpoint(code: libc::c_int) -> bool {
    code == libc::SI_KERNEL || (code == libc::TRAP_BRKPT && super::valgrind::running())
}

/// Gives a trap to the engine. Returns whether it was one of textpoke's breakpoints.
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

/// Passes a trap that is not (only) ours to the previous disposition, with its signal mask.
///
/// # Safety
///
/// Arguments must be the kernel's, as received by `handler`.
unsafe fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    if CHAINING.iter().any(|s| s.load(Ordering::Acquire) == ctx) {
        // The chain came back to us for the same signal: every handler has had it.
        return;
    }
    let slot = CHAINING.iter().find(|s| {
        s.compare_exchange(
            std::ptr::null_mut(),
            ctx,
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .is_ok()
    });
    // SAFETY: forwarding the caller's arguments.
    unsafe { call_previous(sig, info, ctx) };
    if let Some(slot) = slot {
        slot.store(std::ptr::null_mut(), Ordering::Release);
    }
}

/// # Safety
///
/// Arguments must be the kernel's, as received by `handler`.
unsafe fn call_previous(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let prev = PREVIOUS.load(Ordering::Acquire);
    // SAFETY: `PREVIOUS` only ever holds leaked, never-freed boxes.
    let prev = (!prev.is_null()).then(|| unsafe { &*prev });
    let action = prev.map_or(libc::SIG_DFL, |p| p.sa_sigaction);
    // SAFETY: `info` is valid (see `handler`).
    let from_kernel = from_breakpoint(unsafe { (*info).si_code });
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
    let Some(prev) = prev else { return };
    // Run it with the mask it was installed with, as the kernel would have.
    // SAFETY: a zeroed sigset is valid to fill; `pthread_sigmask` is async-signal-safe.
    let mut saved: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: blocks the previous handler's mask for this thread, saving the current one.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &prev.sa_mask, &mut saved) };
    if prev.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: an SA_SIGINFO handler has this signature.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(action) };
        f(sig, info, ctx);
    } else {
        // SAFETY: a plain handler has this signature.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(action) };
        f(sig);
    }
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &saved, std::ptr::null_mut()) };
}
