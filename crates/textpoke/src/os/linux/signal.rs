//! The SIGTRAP handler that makes the breakpoint protocol safe for other threads.
//!
//! A thread that executes a site while a batch has a breakpoint there traps; the handler hands
//! the saved registers to the engine, which emulates the site's new instruction. Every trap
//! that is not textpoke's goes to the handler that was installed before, so debuggers' and the
//! user's own SIGTRAP handling keep working. Async-signal-safe: no allocation, no locks, no
//! panics on the handler path.
//!
//! Only the process's one patcher installs this handler (see `engine::patcher`), so there is
//! one handler whatever the number of copies of textpoke, and it lives in an object that is
//! never unloaded.
//!
//! **Masks.** The handler runs with every signal blocked, SIGTRAP included: no other handler
//! can land on top of it and meet a site with SIGTRAP blocked (the kernel would kill the
//! thread), and a flood of SIGTRAPs sent with `tgkill` waits instead of nesting without bound.
//! A thread inside it therefore shows SIGTRAP as blocked in `/proc`, so the handler records the
//! threads that run it, and [`threads_blocking_sigtrap`](super::threads_blocking_sigtrap) leaves
//! them out. A handler it chains to runs with the mask the kernel would have given it.
//!
//! **Chaining.** The disposition found when textpoke first installs its handler is the bottom of
//! a short stack. When a later handler is found installed over textpoke's (checked before every
//! batch), textpoke installs its own again and pushes the later one: a trap that is not
//! textpoke's goes to the newest, and if that one chains back to textpoke's handler (as handlers
//! that save what they replace do), to the next older one, down to the first. Each is called at
//! most once per trap.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::arch::Regs;
use crate::{Error, Result};

/// Dispositions textpoke chains to, oldest first; `DEPTH` of them are live. Each entry is an
/// interned, never-freed copy (see [`intern`]), so a handler may read a stale entry but never a
/// torn or freed one.
const STACK_SLOTS: usize = 8;
static STACK: [AtomicPtr<libc::sigaction>; STACK_SLOTS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; STACK_SLOTS];
static DEPTH: AtomicUsize = AtomicUsize::new(0);

/// Every disposition ever pushed, leaked once each: the same handlers seen again reuse their
/// copy, so memory stays flat however often someone installs over textpoke's handler. Only
/// touched under the patch lock.
static INTERNED: Mutex<Vec<usize>> = Mutex::new(Vec::new());

/// Signal frames (ucontext pointers) this handler is chaining from, with the stack entry each
/// was last given to. A handler we chain to may chain back to us for the same frame: we then
/// go on with the next older entry.
const CHAIN_SLOTS: usize = 32;
static CHAINING: [AtomicPtr<libc::c_void>; CHAIN_SLOTS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; CHAIN_SLOTS];
static CHAIN_AT: [AtomicUsize; CHAIN_SLOTS] = [const { AtomicUsize::new(0) }; CHAIN_SLOTS];

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

/// The first 64 signals of a set: all the kernel keeps (glibc's `sigaction` fills only these
/// bytes of a returned `sa_mask`; the rest of the 128-byte `sigset_t` is left as it was).
fn kernel_bits(set: &libc::sigset_t) -> u64 {
    // SAFETY: a sigset_t is a plain bit array of at least 8 bytes on Linux.
    unsafe {
        (set as *const libc::sigset_t)
            .cast::<u64>()
            .read_unaligned()
    }
}

/// The signals in either set.
fn union(a: &libc::sigset_t, b: &libc::sigset_t) -> libc::sigset_t {
    let mut out = *a;
    // SAFETY: as in `kernel_bits`.
    unsafe {
        (&mut out as *mut libc::sigset_t)
            .cast::<u64>()
            .write_unaligned(kernel_bits(a) | kernel_bits(b))
    };
    out
}

fn same(a: &libc::sigaction, b: &libc::sigaction) -> bool {
    a.sa_sigaction == b.sa_sigaction
        && a.sa_flags == b.sa_flags
        && kernel_bits(&a.sa_mask) == kernel_bits(&b.sa_mask)
}

/// A never-freed copy of `action`, shared with every earlier identical one.
fn intern(action: &libc::sigaction) -> *mut libc::sigaction {
    let mut interned = INTERNED.lock().unwrap_or_else(|e| e.into_inner());
    for &p in interned.iter() {
        // SAFETY: INTERNED only holds leaked, never-freed boxes.
        if same(unsafe { &*(p as *const libc::sigaction) }, action) {
            return p as *mut libc::sigaction;
        }
    }
    let p = Box::into_raw(Box::new(*action));
    interned.push(p as usize);
    p
}

/// Records `found`, the disposition that is current instead of ours, in the chain stack.
fn push_previous(found: &libc::sigaction) {
    let depth = DEPTH.load(Ordering::Acquire);
    // A disposition already in the stack was restored by whoever replaced it: forget the newer
    // ones above it.
    for (i, entry) in STACK.iter().enumerate().take(depth) {
        // SAFETY: live stack entries are interned, never-freed copies.
        if same(unsafe { &*entry.load(Ordering::Acquire) }, found) {
            DEPTH.store(i + 1, Ordering::Release);
            return;
        }
    }
    let slot = depth.min(STACK_SLOTS - 1);
    STACK[slot].store(intern(found), Ordering::Release);
    DEPTH.store(slot + 1, Ordering::Release);
}

/// Installs the handler if it is not the current SIGTRAP disposition. Checked before every
/// batch, so a handler installed over ours later is chained rather than left to meet our
/// breakpoints. Called under the patch lock.
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
    push_previous(&current);
    // SAFETY: a zeroed `sigaction` is a valid value to fill in.
    let mut ours: libc::sigaction = unsafe { std::mem::zeroed() };
    ours.sa_sigaction = our_handler();
    // Run on the alternate stack only if the handler we chain to asked for it.
    ours.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | (current.sa_flags & libc::SA_ONSTACK);
    // SAFETY: `sa_mask` is a valid sigset to fill.
    unsafe { libc::sigfillset(&mut ours.sa_mask) };
    // SAFETY: a zeroed `sigaction` is a valid out-parameter.
    let mut replaced: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: installs a valid handler; `replaced` receives what was there.
    if unsafe { libc::sigaction(libc::SIGTRAP, &ours, &mut replaced) } != 0 {
        return Err(Error::syscall("sigaction(SIGTRAP) install", last_errno()));
    }
    if !same(&replaced, &current) {
        // Someone changed the disposition between our query and install: chain to theirs.
        push_previous(&replaced);
    }
    Ok(())
}

/// Threads (ids) running the handler now. A thread that finds no free slot is not recorded.
const INSIDE_SLOTS: usize = 64;
static INSIDE: [AtomicI32; INSIDE_SLOTS] = [const { AtomicI32::new(0) }; INSIDE_SLOTS];
/// Threads that left the handler lately, with when (monotonic nanoseconds), in a ring.
const LEFT_SLOTS: usize = 8192;
static LEFT: [AtomicI32; LEFT_SLOTS] = [const { AtomicI32::new(0) }; LEFT_SLOTS];
static LEFT_AT: [AtomicU64; LEFT_SLOTS] = [const { AtomicU64::new(0) }; LEFT_SLOTS];
static EXITS: AtomicUsize = AtomicUsize::new(0);

/// Monotonic nanoseconds, from libc's `clock_gettime` (async-signal-safe by POSIX; rustix's
/// parses the auxiliary vector on first use, which is not, and which fails under valgrind).
pub fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid out-parameter; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    (t.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(t.tv_nsec as u64)
}

/// Whether thread `tid` is running the handler now, or left it within the last `within_ns`
/// nanoseconds (as far as the ring of recent exits remembers).
pub fn in_trap_handler(tid: i32, within_ns: u64) -> bool {
    if tid == 0 {
        return false;
    }
    if INSIDE.iter().any(|s| s.load(Ordering::SeqCst) == tid) {
        return true;
    }
    let since = monotonic_ns().saturating_sub(within_ns);
    LEFT.iter()
        .zip(&LEFT_AT)
        .any(|(t, at)| t.load(Ordering::SeqCst) == tid && at.load(Ordering::SeqCst) >= since)
}

/// The handler's first instruction: a thread whose signal frame is set up but which has not
/// run it yet (preempted on its way back to user space) is there.
pub fn trap_handler_entry() -> usize {
    our_handler()
}

/// Spins the handler makes at the points where timing matters (before it looks at the trap,
/// and between its looks at the batch): zero, except in tests that widen those windows (see
/// `__private::set_trap_delay`).
static DELAY_SPINS: AtomicU32 = AtomicU32::new(0);

/// Makes every trap wait `spins` spin-loop hints at each timing point. For tests only.
pub fn set_trap_delay(spins: u32) {
    DELAY_SPINS.store(spins, Ordering::Relaxed);
}

/// A timing point of the trap path (see [`set_trap_delay`]): nothing unless a test asked.
pub fn trap_timing_point() {
    for _ in 0..DELAY_SPINS.load(Ordering::Relaxed) {
        std::hint::spin_loop();
    }
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    trap_timing_point();
    let tid = rustix::thread::gettid().as_raw_nonzero().get();
    let slot = INSIDE.iter().find(|s| {
        s.compare_exchange(0, tid, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
    });
    // SAFETY: the kernel's own arguments.
    unsafe { handle(sig, info, ctx) };
    if let Some(slot) = slot {
        slot.store(0, Ordering::SeqCst);
    }
    let i = EXITS.fetch_add(1, Ordering::Relaxed) % LEFT_SLOTS;
    LEFT_AT[i].store(monotonic_ns(), Ordering::SeqCst);
    LEFT[i].store(tid, Ordering::SeqCst);
}

/// # Safety
///
/// Arguments must be the kernel's, as received by `handler`.
unsafe fn handle(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // Decide by address, not by `si_code`: SIGTRAP does not queue, so if another SIGTRAP was
    // already pending (a `tgkill`, a perf event) when the thread hit our breakpoint, the
    // kernel delivers only that one. A thread is never at a site's second byte except after
    // our breakpoint, so the address alone says the trap was ours.
    // SAFETY: the kernel passes a valid `info` to an SA_SIGINFO handler.
    let from_int3 = from_breakpoint(unsafe { (*info).si_code });
    // SAFETY: the kernel passes the trapped thread's ucontext to an SA_SIGINFO handler.
    let ours = unsafe { breakpoint(ctx.cast(), from_int3) };
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
/// `uc` must be the ucontext of the trapped thread; `from_int3` says whether the signal's
/// `si_code` is an `int3`'s.
unsafe fn breakpoint(uc: *mut libc::ucontext_t, from_int3: bool) -> bool {
    // SAFETY: the caller passes the trapped thread's ucontext, whose gregs we may edit.
    let gregs = unsafe { &mut (*uc).uc_mcontext.gregs };
    let mut regs = Regs {
        pc: gregs[libc::REG_RIP as usize] as usize,
        flags: gregs[libc::REG_EFL as usize] as u64,
        gpr: GREGS.map(|g| gregs[g as usize] as u64),
    };
    // SAFETY: `regs` is this trapped thread's state, as `on_breakpoint` requires.
    if !unsafe { crate::engine::on_breakpoint(&mut regs, from_int3) } {
        return false;
    }
    gregs[libc::REG_RIP as usize] = regs.pc as i64;
    for (g, value) in GREGS.iter().zip(regs.gpr) {
        gregs[*g as usize] = value as i64;
    }
    true
}

/// Where the ucontext keeps each register of [`Regs::gpr`] (whose order is the instruction
/// encoding's; the kernel's is its own).
const GREGS: [libc::c_int; crate::arch::GPRS] = [
    libc::REG_RAX,
    libc::REG_RCX,
    libc::REG_RDX,
    libc::REG_RBX,
    libc::REG_RSP,
    libc::REG_RBP,
    libc::REG_RSI,
    libc::REG_RDI,
    libc::REG_R8,
    libc::REG_R9,
    libc::REG_R10,
    libc::REG_R11,
    libc::REG_R12,
    libc::REG_R13,
    libc::REG_R14,
    libc::REG_R15,
];

/// Passes a trap that is not (only) ours down the chain stack: to the newest entry the first
/// time we see this frame, to the next older one each time the chain comes back to us.
///
/// # Safety
///
/// Arguments must be the kernel's, as received by `handler`.
unsafe fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    if let Some(i) = CHAINING
        .iter()
        .position(|s| s.load(Ordering::Acquire) == ctx)
    {
        // The chain came back to us for the same signal: go on with the next older handler.
        // A default or ignoring disposition below is skipped: the handler that chained back
        // has handled the trap (as it would had it replaced that disposition itself).
        let mut at = CHAIN_AT[i].load(Ordering::Acquire);
        while at > 0 {
            at -= 1;
            if is_handler(at) {
                CHAIN_AT[i].store(at, Ordering::Release);
                // SAFETY: forwarding the caller's arguments.
                unsafe { call_previous(at, sig, info, ctx) };
                return;
            }
        }
        CHAIN_AT[i].store(0, Ordering::Release);
        return; // every handler has had it
    }
    let top = DEPTH.load(Ordering::Acquire).saturating_sub(1);
    let slot = CHAINING.iter().position(|s| {
        s.compare_exchange(
            std::ptr::null_mut(),
            ctx,
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .is_ok()
    });
    if let Some(i) = slot {
        CHAIN_AT[i].store(top, Ordering::Release);
    }
    // SAFETY: forwarding the caller's arguments.
    unsafe { call_previous(top, sig, info, ctx) };
    if let Some(i) = slot {
        CHAINING[i].store(std::ptr::null_mut(), Ordering::Release);
    }
}

/// Whether chain stack entry `at` is a function (not the default action or "ignore").
fn is_handler(at: usize) -> bool {
    let p = STACK[at].load(Ordering::Acquire);
    // SAFETY: stack entries are interned, never-freed copies.
    !p.is_null() && {
        let action = unsafe { (*p).sa_sigaction };
        action != libc::SIG_DFL && action != libc::SIG_IGN
    }
}

/// Runs chain stack entry `at` (the disposition before textpoke's when the stack is empty) for
/// this signal, with the mask the kernel would have given it.
///
/// # Safety
///
/// Arguments must be the kernel's, as received by `handler`.
unsafe fn call_previous(
    at: usize,
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
) {
    let prev = if at < DEPTH.load(Ordering::Acquire) {
        STACK[at].load(Ordering::Acquire)
    } else {
        std::ptr::null_mut()
    };
    // SAFETY: stack entries are interned, never-freed copies.
    let prev = (!prev.is_null()).then(|| unsafe { &*prev });
    let action = prev.map_or(libc::SIG_DFL, |p| p.sa_sigaction);
    // SAFETY: `info` is valid (see `handler`).
    let from_kernel = from_breakpoint(unsafe { (*info).si_code });
    if action == libc::SIG_IGN && !from_kernel {
        return;
    }
    if action == libc::SIG_DFL || action == libc::SIG_IGN {
        // A trap the kernel raised cannot be ignored; the default action ends the process.
        // Restore it and re-raise, with a core dump (at once, or as soon as this handler
        // returns if a sent SIGTRAP blocked it).
        // SAFETY: `signal` and `raise` are async-signal-safe.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
        return;
    }
    let Some(prev) = prev else { return };
    // The mask the kernel gives a handler: the interrupted mask, the handler's own, and the
    // signal itself unless it asked for SA_NODEFER.
    // SAFETY: `ctx` is the interrupted thread's ucontext (see `handler`); sigset operations and
    // `pthread_sigmask` are async-signal-safe.
    let mut saved: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe {
        let mut mask = union(&(*ctx.cast::<libc::ucontext_t>()).uc_sigmask, &prev.sa_mask);
        if prev.sa_flags & libc::SA_NODEFER == 0 {
            libc::sigaddset(&mut mask, sig);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &mask, &mut saved);
    }
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
