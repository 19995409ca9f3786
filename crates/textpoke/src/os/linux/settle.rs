//! Bringing every other thread to a known point before code several instructions long is
//! overwritten.
//!
//! A detour writes `jmp replacement` over a function's first instructions. Once the breakpoint
//! is on the first byte and every core is serialized, no thread can newly enter those bytes, but
//! a thread may already be inside them, at one of their later instruction boundaries. Before the
//! rest is written, each such thread is moved to the same instruction in the relocated copy (the
//! trampoline), as Detours does for the threads it suspends. Linux has no "suspend a thread and
//! edit its registers" for a process's own threads, so the thread does it itself: a real-time
//! signal whose handler edits the saved instruction pointer of the interrupted context.
//!
//! **Who is signalled.** A thread blocked in a system call whose return address is outside
//! every region is at a known point already: it can only come back to code outside the regions,
//! and it can reach a region only through its first byte, where the breakpoint is. It is left
//! alone, so it sees no `EINTR`. Every other thread (running, waiting for a CPU, stopped outside a
//! system call, or blocked with its return address inside a region) is signalled with
//! `rt_tgsigqueueinfo`, whose `si_value` carries a per-call sequence number; its handler answers
//! only the current call, so the late delivery of a signal from a call that timed out is
//! ignored.
//!
//! **What the handler reads.** The current request (the moves, the regions, the answer slots)
//! lives in the caller's frame and is published through one [`AtomicPtr`], so a handler never
//! sees the moves of one call with the length of another. A handler counts itself in
//! [`INSIDE`] before it looks at the request; the caller withdraws the pointer and then waits
//! until that count is zero, so no handler still reads the request when the caller's frame goes
//! away, whether every thread answered or the call timed out.
//!
//! **Limits.** A thread that was at a `from` when another signal's handler started, and is still
//! in that handler, is seen at the handler's instruction pointer, not at the `from` it will
//! return to: it is not moved. The saved context it will return to is on its stack, where this
//! module does not look. Likewise a return address that points into a region is the caller's
//! business (such functions are refused before anything is written).

use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustix::thread::futex;

use crate::{Error, Result};

/// A range of code that threads must leave before it is overwritten: a thread whose instruction
/// pointer is at `from` (one of the region's instruction boundaries after its first byte) is moved to `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Move {
    /// An instruction boundary inside a region that is about to be overwritten.
    pub from: usize,
    /// The same instruction in the relocated copy.
    pub to: usize,
}

/// What settling did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// Other threads found.
    pub threads: usize,
    /// Of those, threads signalled (running, or blocked with their pc in a region).
    pub signalled: usize,
    /// Threads whose instruction pointer was moved.
    pub moved: usize,
}

/// The signal used (a real-time signal, `SIGRTMAX - 2`), for docs and tests.
///
/// Real-time signals are queued rather than merged, so one sent while a stale one from an
/// earlier call is still pending is delivered too; the top of the range is left to the C
/// library and to tools (valgrind, for one, takes the highest).
pub fn settle_signal() -> i32 {
    libc::SIGRTMAX() - 2
}

/// CPU time a thread may spend with the signal blocked before it counts as blocking it (bounded
/// by the caller's timeout). Threads block it for a moment in any handler whose mask blocks every
/// signal (textpoke's SIGTRAP handler, hit by busy threads while a batch has its breakpoints in
/// place), and in `pthread_create`, around the `clone`, in the creating and the new thread. A
/// thread preempted there may stay so for many milliseconds on a loaded machine, but it spends
/// no CPU time meanwhile: so CPU time, not wall time, tells a thread that runs with the signal
/// blocked from one caught in such a moment.
const BLOCK_CPU: Duration = Duration::from_millis(5);
/// Where no CPU time can be read for a thread: the wall time it may be seen blocking.
const BLOCK_WALL: Duration = Duration::from_millis(20);
/// How long after leaving textpoke's SIGTRAP handler a thread may still block every signal:
/// until its `rt_sigreturn`, and it may be preempted in between.
const TRAP_EDGE_NS: u64 = 2_000_000;
/// How often the wait looks for threads that exited before answering.
const EXIT_CHECK_EVERY: Duration = Duration::from_millis(1);
/// Longest sleep between looks at the answers (each answer wakes the caller sooner).
const NAP: Duration = Duration::from_micros(200);

/// One call's request, as the handler sees it. Lives in [`settle_threads`]'s frame.
struct Request<'a> {
    /// The call's sequence number, carried in each signal's `si_value`.
    seq: usize,
    /// Sorted by `from`, no two alike.
    moves: &'a [Move],
    regions: &'a [(usize, usize)],
    /// Thread ids of the handlers that answered, one slot per thread that may be signalled.
    answered_by: &'a [AtomicI32],
    /// Slots handed out in `answered_by`.
    claimed: AtomicUsize,
    /// Handlers done (after writing their slot).
    /// A futex word: the waiting caller sleeps on it, so that its CPU is free for the threads
    /// it waits for (a preempted one may be pulled there), and each answer wakes it.
    answered: AtomicU32,
    moved: AtomicUsize,
    /// The first thread found inside a region but not at a `from`, and where.
    stray_tid: AtomicI32,
    stray_pc: AtomicUsize,
}

/// The published request, or null. Only set while a call of [`settle_threads`] runs.
static REQUEST: AtomicPtr<Request<'static>> = AtomicPtr::new(std::ptr::null_mut());
/// Handlers that may be reading [`REQUEST`]'s target now.
static INSIDE: AtomicUsize = AtomicUsize::new(0);
/// The last sequence number handed out.
static SEQ: AtomicUsize = AtomicUsize::new(0);
/// Held by the one call that owns [`REQUEST`]. A flag, not a mutex, so that a child forked
/// while another thread held it can clear it (see [`forget_after_fork`]).
static BUSY: AtomicBool = AtomicBool::new(false);

/// `siginfo_t` as the kernel lays it out for `SI_QUEUE` (`_rt`: pid, uid, value), in full size.
#[repr(C)]
struct QueuedInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    pid: libc::pid_t,
    uid: libc::uid_t,
    value: usize,
    _rest: [u64; 12],
}

const _: () = assert!(std::mem::size_of::<QueuedInfo>() == std::mem::size_of::<libc::siginfo_t>());

fn our_handler() -> usize {
    handler as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize
}

/// The settle signal's handler. Async-signal-safe: atomics, `getpid`/`gettid` and stores into
/// the interrupted context only; nothing on its path can panic or allocate.
extern "C" fn handler(_sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel hands an SA_SIGINFO handler a full `siginfo_t`, which `QueuedInfo`
    // matches in size and, for the fields read, in layout.
    let (code, pid, value) = unsafe {
        let info = &*info.cast::<QueuedInfo>();
        (info.code, info.pid, info.value)
    };
    // Only `rt_tgsigqueueinfo` from this process carries a sequence number; anything else sent
    // on this signal is not ours to answer.
    if code != libc::SI_QUEUE || pid != rustix::process::getpid().as_raw_nonzero().get() {
        return;
    }
    // Counted before looking, so that the caller, which withdraws the request before it waits for
    // this count to fall to zero, never frees a request a handler has seen (both SeqCst: if the
    // caller read zero before this increment, the load below comes after its withdrawal).
    INSIDE.fetch_add(1, Ordering::SeqCst);
    let request = REQUEST.load(Ordering::SeqCst);
    if !request.is_null() {
        // SAFETY: a published request stays alive until INSIDE is zero after its withdrawal,
        // and this handler is counted in INSIDE.
        let request = unsafe { &*request };
        if request.seq == value {
            // SAFETY: the kernel passes the interrupted thread's ucontext as `ctx`.
            unsafe { serve(request, ctx.cast()) };
        }
    }
    INSIDE.fetch_sub(1, Ordering::SeqCst);
}

/// Moves the interrupted thread if it is at a `from`, and answers.
///
/// # Safety
///
/// `uc` must be the interrupted thread's ucontext, as given to a signal handler.
unsafe fn serve(request: &Request<'_>, uc: *mut libc::ucontext_t) {
    // SAFETY: the caller passes the interrupted context, which the handler may edit: the kernel
    // restores the thread from it on `rt_sigreturn`.
    let gregs = unsafe { &mut (*uc).uc_mcontext.gregs };
    let pc = gregs[libc::REG_RIP as usize] as usize;
    let tid = rustix::thread::gettid().as_raw_nonzero().get();
    match request.moves.binary_search_by_key(&pc, |m| m.from) {
        Ok(i) => {
            if let Some(m) = request.moves.get(i) {
                // The copy holds the same instruction with the same registers and flags, so
                // nothing but the instruction pointer changes.
                gregs[libc::REG_RIP as usize] = m.to as i64;
                request.moved.fetch_add(1, Ordering::SeqCst);
            }
        }
        Err(_) => {
            // At a region's first byte the thread meets the breakpoint: that is a known point.
            if inside(request.regions, pc)
                && request
                    .stray_tid
                    .compare_exchange(0, tid, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                request.stray_pc.store(pc, Ordering::SeqCst);
            }
        }
    }
    let slot = request.claimed.fetch_add(1, Ordering::SeqCst);
    if let Some(slot) = request.answered_by.get(slot) {
        slot.store(tid, Ordering::SeqCst);
    }
    request.answered.fetch_add(1, Ordering::SeqCst);
    // A raw system call, async-signal-safe; a failure only means the caller looks later.
    let _ = futex::wake(&request.answered, futex::Flags::PRIVATE, 1);
}

/// Clears the settle state in a forked child, whose only thread is the one that forked.
///
/// A request is published only by a call that holds textpoke's patch lock when it comes from
/// the engine, and that lock is held across `fork()`, so a child normally starts with none. But
/// a handler running a stale signal in another thread at the moment of the fork (or a call made
/// without the lock, as tests do) would leave its count in [`INSIDE`] or the flag in [`BUSY`]
/// forever in the child, whose threads are gone: the child's first call would then wait for
/// them. Only atomic stores, as the child side of `pthread_atfork` requires.
extern "C" fn forget_after_fork() {
    REQUEST.store(std::ptr::null_mut(), Ordering::SeqCst);
    INSIDE.store(0, Ordering::SeqCst);
    BUSY.store(false, Ordering::SeqCst);
}

fn failed(why: String) -> Error {
    Error::SettleFailed { why }
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Installs the handler on the settle signal unless it is there already. Refuses when anything
/// else has the signal: that handler would get our requests, and we would time out on its
/// threads or, worse, it would take a signal meant for us as its own.
fn ensure_handler(sig: i32) -> Result<()> {
    // SAFETY: a zeroed `sigaction` is a valid out-parameter.
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: querying with a null new action changes nothing.
    if unsafe { libc::sigaction(sig, std::ptr::null(), &mut current) } != 0 {
        return Err(failed(format!(
            "sigaction({sig}) query: {}",
            std::io::Error::from_raw_os_error(last_errno())
        )));
    }
    if current.sa_sigaction == our_handler() {
        return Ok(());
    }
    if current.sa_sigaction != libc::SIG_DFL {
        return Err(failed(foreign(sig, current.sa_sigaction)));
    }
    // SAFETY: a zeroed `sigaction` is a valid value to fill in.
    let mut ours: libc::sigaction = unsafe { std::mem::zeroed() };
    ours.sa_sigaction = our_handler();
    // SA_RESTART: a thread signalled just as it enters a restartable system call sees no EINTR.
    // SA_ONSTACK: a thread close to the end of its stack still has room for the handler.
    ours.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
    // Nothing but the signal itself is blocked in the handler: it is short, and leaving SIGTRAP
    // unblocked keeps threads in it out of `threads_blocking_sigtrap`'s list.
    // SAFETY: `sa_mask` is a valid sigset to fill.
    unsafe { libc::sigemptyset(&mut ours.sa_mask) };
    // SAFETY: a zeroed `sigaction` is a valid out-parameter.
    let mut replaced: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: installs a valid SA_SIGINFO handler; `replaced` receives what was there.
    if unsafe { libc::sigaction(sig, &ours, &mut replaced) } != 0 {
        return Err(failed(format!(
            "sigaction({sig}) install: {}",
            std::io::Error::from_raw_os_error(last_errno())
        )));
    }
    if replaced.sa_sigaction != libc::SIG_DFL && replaced.sa_sigaction != our_handler() {
        // Someone installed theirs between our query and our install: give it back.
        // SAFETY: restores the disposition `sigaction` just returned.
        unsafe { libc::sigaction(sig, &replaced, std::ptr::null_mut()) };
        return Err(failed(foreign(sig, replaced.sa_sigaction)));
    }
    Ok(())
}

fn foreign(sig: i32, action: libc::sighandler_t) -> String {
    let what = if action == libc::SIG_IGN {
        "is ignored".to_string()
    } else {
        format!("already has a handler that is not textpoke's ({action:#x})")
    };
    format!("signal {sig} (SIGRTMAX-2, textpoke's settle signal) {what}")
}

/// Makes `request` visible to handlers; withdraws it on drop (on every path, panics included)
/// and waits until no handler reads it, so the request may then go away.
struct Published<'r> {
    _request: PhantomData<&'r Request<'r>>,
}

impl<'r> Published<'r> {
    fn new(request: &'r Request<'r>) -> Self {
        REQUEST.store(
            (request as *const Request<'r>)
                .cast::<Request<'static>>()
                .cast_mut(),
            Ordering::SeqCst,
        );
        Published {
            _request: PhantomData,
        }
    }
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        REQUEST.store(std::ptr::null_mut(), Ordering::SeqCst);
        // A handler counted here may have loaded the pointer just before it was withdrawn. It
        // has answered already, so it is a few instructions from leaving: spin a little, then
        // sleep, not yield, so that a handler preempted on this CPU gets it (a yield may hand
        // the CPU straight back, and the handler waits for a scheduler tick).
        let mut spins = 0u32;
        while INSIDE.load(Ordering::SeqCst) != 0 {
            spins += 1;
            if spins < 256 {
                std::hint::spin_loop();
            } else {
                std::thread::sleep(Duration::from_micros(20));
            }
        }
    }
}

/// Ownership of the one request slot, for one call.
struct Busy;

impl Busy {
    fn take() -> Busy {
        while BUSY
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::thread::sleep(NAP);
        }
        Busy
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        BUSY.store(false, Ordering::Release);
    }
}

/// What `/proc/self/task/TID/syscall` says.
#[derive(Debug, PartialEq, Eq)]
enum SyscallState {
    /// On a CPU or waiting for one ("running"), or unreadable.
    Running,
    /// Not running, not in a system call ("-1 SP PC"): stopped, or sleeping in a page fault.
    Stopped,
    /// Blocked in system call `nr`, returning to `pc` ("NR A1..A6 SP PC").
    InSyscall { nr: i64, pc: usize },
}

fn parse_syscall(text: &str) -> SyscallState {
    let mut fields = text.split_whitespace();
    let Some(Ok(nr)) = fields.next().map(str::parse::<i64>) else {
        return SyscallState::Running;
    };
    let pc = fields
        .next_back()
        .and_then(|pc| usize::from_str_radix(pc.trim_start_matches("0x"), 16).ok());
    match pc {
        Some(pc) if nr >= 0 => SyscallState::InSyscall { nr, pc },
        _ => SyscallState::Stopped,
    }
}

/// What `/proc/self/task/TID/status` says that matters here.
#[derive(Debug, PartialEq, Eq)]
struct Status {
    /// Zombie or dead: it will never run code again (a main thread that called
    /// `pthread_exit` stays a zombie until the process ends, and never takes a signal).
    dead: bool,
    /// Its mask blocks the settle signal.
    blocks: bool,
}

fn parse_status(text: &str, sig: i32) -> Status {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let dead = field("State:").is_some_and(|s| s.starts_with('Z') || s.starts_with('X'));
    let blocks = field("SigBlk:")
        .and_then(|m| u64::from_str_radix(m, 16).ok())
        .is_some_and(|m| (1..=64).contains(&sig) && m & (1 << (sig - 1)) != 0);
    Status { dead, blocks }
}

fn task_path(tid: i32, file: &str) -> String {
    format!("/proc/self/task/{tid}/{file}")
}

fn read_status(tid: i32, sig: i32) -> Option<Status> {
    std::fs::read_to_string(task_path(tid, "status"))
        .ok()
        .map(|s| parse_status(&s, sig))
}

/// CPU time thread `tid` has used: from the scheduler's own count where the kernel shows it
/// (`sched`, to the nanosecond), else from `stat` (user and system time, in clock ticks).
fn cpu_time(tid: i32) -> Option<Duration> {
    if let Ok(sched) = std::fs::read_to_string(task_path(tid, "sched"))
        && let Some(runtime) = parse_sched_runtime(&sched)
    {
        return Some(runtime);
    }
    let stat = std::fs::read_to_string(task_path(tid, "stat")).ok()?;
    let ticks = parse_stat_ticks(&stat)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        Duration::try_from_secs_f64(ticks as f64 / hz as f64).ok()
    } else {
        None
    }
}

/// `se.sum_exec_runtime` of a `sched` file: milliseconds with a fractional part.
fn parse_sched_runtime(text: &str) -> Option<Duration> {
    let line = text
        .lines()
        .find(|l| l.starts_with("se.sum_exec_runtime"))?;
    let ms: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    Duration::try_from_secs_f64(ms / 1000.0).ok()
}

/// utime + stime of a `stat` line, in clock ticks. The name, in parentheses, may hold spaces.
fn parse_stat_ticks(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    // After the name: state is field 3 of the line, utime and stime are fields 14 and 15.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A thread seen blocking the signal, waited for until it unblocks it.
struct Blocked {
    tid: i32,
    /// When it was first seen blocking it, and its CPU time then.
    since: Instant,
    cpu: Option<Duration>,
}

impl Blocked {
    fn new(tid: i32) -> Blocked {
        Blocked {
            tid,
            since: Instant::now(),
            cpu: cpu_time(tid),
        }
    }

    /// Whether it blocks the signal only because of textpoke's SIGTRAP handler, whose mask
    /// blocks every signal: it is in it, or has been through it since it was first seen
    /// blocking. A thread that calls a function being detoured meets its breakpoint on every
    /// call while the batch is in flight, and may spend most of its time on the trap path; but it
    /// unblocks the signal at each return from the handler, so a signal sent now is taken then,
    /// with the context the handler left.
    ///
    /// "Since first seen", not "now": the looks at it are not random. The caller gets a CPU
    /// when a busy thread is preempted, and such a thread is preempted most often on its way
    /// back to user space with a signal frame just set up (mask blocked, handler not yet
    /// begun), so look after look may find it there although it runs the handler thousands of
    /// times in between.
    fn in_trap_handler(&self, now: Instant) -> bool {
        let since = now.duration_since(self.since).as_nanos();
        let within = u64::try_from(since)
            .unwrap_or(u64::MAX)
            .saturating_add(TRAP_EDGE_NS);
        super::in_trap_handler(self.tid, within)
    }

    /// Whether it has used enough CPU time since it was first seen blocking the signal (and has
    /// been seen blocking it at every look since, never going through the trap handler) to
    /// count as blocking it.
    fn for_good(&self, now: Instant, limit: Duration) -> bool {
        match (self.cpu, cpu_time(self.tid)) {
            (Some(then), Some(cpu)) => cpu.saturating_sub(then) >= BLOCK_CPU.min(limit),
            _ => now.duration_since(self.since) >= BLOCK_WALL.min(limit),
        }
    }
}

/// A thread's name and id, for errors.
fn name(tid: i32) -> String {
    let comm = std::fs::read_to_string(task_path(tid, "comm")).unwrap_or_default();
    format!("thread {tid} ({})", comm.trim())
}

/// Whether `pc` is strictly after the first byte of some region: a thread returning there
/// would run bytes about to change.
fn inside(regions: &[(usize, usize)], pc: usize) -> bool {
    regions.iter().any(|&(s, e)| s < pc && pc < e)
}

/// What to do with one thread.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Exited (its task is gone) or will never run again.
    Gone,
    /// Blocked in a system call, returning outside every region: already at a known point.
    Known,
    /// Signal it.
    Signal,
}

fn judge(tid: i32, regions: &[(usize, usize)]) -> Verdict {
    match read_small(&task_path(tid, "syscall")) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Verdict::Gone,
        Ok(text) => match parse_syscall(&text) {
            SyscallState::InSyscall { pc, .. } if !inside(regions, pc) => Verdict::Known,
            _ => Verdict::Signal,
        },
        // Unreadable (an LSM, say): assume the worst, that it runs.
        Err(_) => Verdict::Signal,
    }
}

/// A small `/proc` file's text, read with one `read` into a buffer on the stack: the file is
/// read once per thread on every detour's enable, and `read_to_string` would add a `statx` and
/// a heap buffer to each.
fn read_small(path: &str) -> std::io::Result<String> {
    use std::io::Read;
    let mut buf = [0u8; 256];
    let n = std::fs::File::open(path)?.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Sends the settle signal to `tid` with `seq` as its value.
fn send(tid: i32, seq: usize, sig: i32) -> std::result::Result<(), i32> {
    let info = QueuedInfo {
        signo: sig,
        errno: 0,
        code: libc::SI_QUEUE,
        _pad: 0,
        pid: rustix::process::getpid().as_raw_nonzero().get(),
        uid: rustix::process::getuid().as_raw(),
        value: seq,
        _rest: [0; 12],
    };
    // SAFETY: `info` is a full, initialized `siginfo_t` that outlives the call; SI_QUEUE is a
    // code user space may send to its own threads.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_tgsigqueueinfo,
            libc::c_long::from(info.pid),
            libc::c_long::from(tid),
            libc::c_long::from(sig),
            &info as *const QueuedInfo,
        )
    };
    if r == 0 { Ok(()) } else { Err(last_errno()) }
}

/// Brings every thread of the process but the caller to a known point with respect to `moves`
/// (sorted by `from`, at most a few hundred): each thread whose instruction pointer equals some
/// `from` is moved to its `to`. `regions` are the [start, end) ranges the moves cover, so that a
/// thread found anywhere inside a region but not at a `from` is an error (cannot happen for
/// correct input; report it).
///
/// Threads blocked in a system call whose pc (from /proc/self/task/TID/syscall) is outside every
/// region are left alone: they are at a known point and are not interrupted (no EINTR for them).
/// Every other thread is sent the settle signal with rt_tgsigqueueinfo (si_code SI_QUEUE, si_value
/// carrying a per-call sequence number), and its handler moves the pc if it equals a `from` and
/// acknowledges. Waits at most `timeout` for every acknowledgement. A thread that has exited
/// (ESRCH, or gone from /proc/self/task while waited for) is skipped. A thread that blocks the
/// signal (SigBlk in its /proc/self/task/TID/status, checked before sending: the signal would
/// wait in its queue, and a `sigwait` there would take it for its own), or that does not answer
/// in time, makes this return Err naming the thread (tid and comm): the caller then rolls back
/// its batch. On Err, no thread has been moved into an inconsistent place (a move is only ever to
/// the equivalent instruction, so a partial set of moves is fine).
///
/// A thread exactly at a region's first byte is not an error: it meets the breakpoint there. A
/// thread seen blocking the signal is not signalled but watched: it is signalled as soon as it
/// unblocks it, and fails the call once it has used 5 ms of CPU time with it still blocked (or,
/// where CPU time cannot be read, after 20 ms), or at `timeout`: threads block every signal for
/// a moment in `pthread_create` and in other handlers, and may be preempted there. A thread
/// blocking it because it is in textpoke's own SIGTRAP handler, or has been through it since it
/// was first seen blocking (as threads calling a function being detoured are, much of the time,
/// while the breakpoint is there), is signalled at once: it unblocks the signal when the handler
/// returns. `moves` need not be sorted (a sorted copy is used); two moves from one
/// address are an error.
///
/// Call it from the process's patcher only (the copy of textpoke whose object is never
/// unloaded): the handler installed on [`settle_signal`] is this copy's code, and another copy's
/// call is refused because that signal's handler is then not its own. Calls are serialized.
pub fn settle_threads(
    moves: &[Move],
    regions: &[(usize, usize)],
    timeout: Duration,
) -> Result<Settled> {
    let _busy = Busy::take();
    static FORK: std::sync::Once = std::sync::Once::new();
    FORK.call_once(|| super::at_fork_child(forget_after_fork));
    let sig = settle_signal();
    ensure_handler(sig)?;
    let start = Instant::now();

    let mut sorted = moves.to_vec();
    sorted.sort_unstable_by_key(|m| m.from);
    if let Some(pair) = sorted.windows(2).find(|p| p[0].from == p[1].from) {
        return Err(failed(format!(
            "two moves from {:#x} (to {:#x} and {:#x})",
            pair[0].from, pair[0].to, pair[1].to
        )));
    }

    let me = rustix::thread::gettid().as_raw_nonzero().get();
    let tasks: Vec<i32> = std::fs::read_dir("/proc/self/task")
        .map_err(|e| failed(format!("cannot list /proc/self/task: {e}")))?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&tid| tid != me)
        .collect();

    let answered_by: Vec<AtomicI32> = tasks.iter().map(|_| AtomicI32::new(0)).collect();
    // Zero is never handed out, so that a zeroed `si_value` from elsewhere never matches.
    let mut seq = SEQ.fetch_add(1, Ordering::SeqCst).wrapping_add(1);
    if seq == 0 {
        seq = SEQ.fetch_add(1, Ordering::SeqCst).wrapping_add(1);
    }
    let request = Request {
        seq,
        moves: &sorted,
        regions,
        answered_by: &answered_by,
        claimed: AtomicUsize::new(0),
        answered: AtomicU32::new(0),
        moved: AtomicUsize::new(0),
        stray_tid: AtomicI32::new(0),
        stray_pc: AtomicUsize::new(0),
    };
    let published = Published::new(&request);

    let mut settled = Settled::default();
    let mut sent: Vec<i32> = Vec::with_capacity(tasks.len());
    for &tid in &tasks {
        match judge(tid, regions) {
            Verdict::Gone => continue,
            Verdict::Known => {}
            // Sent even to a thread whose mask blocks it now: a queued real-time signal waits
            // until it is unblocked (a thread on textpoke's own trap path unblocks it within
            // microseconds), and the wait below tells such a moment from a thread that blocks
            // it for good.
            Verdict::Signal => match send(tid, seq, sig) {
                Ok(()) => {
                    sent.push(tid);
                    settled.signalled += 1;
                }
                Err(libc::ESRCH) => continue,
                Err(e) => {
                    return Err(failed(format!(
                        "cannot signal {}: rt_tgsigqueueinfo: {}",
                        name(tid),
                        std::io::Error::from_raw_os_error(e)
                    )));
                }
            },
        }
        settled.threads += 1;
    }

    let deadline = start + timeout;
    let mut next_check = Instant::now() + EXIT_CHECK_EVERY;
    // Threads seen blocking the signal while they owed an answer, since when.
    let mut blocked: Vec<Blocked> = Vec::new();
    loop {
        let answers = request.answered.load(Ordering::SeqCst);
        if answers as usize >= sent.len() {
            break;
        }
        let now = Instant::now();
        if now >= next_check || now >= deadline {
            next_check = now + EXIT_CHECK_EVERY;
            let answered: Vec<i32> = answered_by
                .iter()
                .map(|a| a.load(Ordering::SeqCst))
                .collect();
            let mut owed = 0;
            for &tid in sent.iter().filter(|t| !answered.contains(t)) {
                let Some(status) = read_status(tid, sig).filter(|s| !s.dead) else {
                    // Exited (or a zombie): it runs nothing any more, and owes nothing.
                    continue;
                };
                owed += 1;
                let seen = blocked.iter().position(|b| b.tid == tid);
                match (status.blocks, seen) {
                    (true, None) => blocked.push(Blocked::new(tid)),
                    (true, Some(i))
                        if blocked[i].for_good(now, timeout)
                            && !blocked[i].in_trap_handler(now) =>
                    {
                        return Err(failed(format!(
                            "{} blocks signal {sig} (textpoke's settle signal)",
                            name(tid)
                        )));
                    }
                    (false, Some(i)) => {
                        blocked.swap_remove(i);
                    }
                    _ => {}
                }
                if now >= deadline {
                    return Err(failed(format!(
                        "{} did not answer signal {sig} within {timeout:?}",
                        name(tid)
                    )));
                }
            }
            if owed == 0 {
                break;
            }
        }
        // Asleep, not yielding: a yield keeps this thread runnable, while a sleep lets its CPU
        // go idle, and an idle CPU pulls a waiting thread from a busy one at once. Woken by each
        // answer (or its value already changed: EAGAIN), or after a while to look again.
        let nap = rustix::thread::Timespec {
            tv_sec: 0,
            tv_nsec: NAP.as_nanos() as _,
        };
        let _ = futex::wait(
            &request.answered,
            futex::Flags::PRIVATE,
            answers,
            Some(&nap),
        );
    }
    // Every handler is out once this returns, so what they wrote is final.
    drop(published);
    let stray = request.stray_tid.load(Ordering::SeqCst);
    if stray != 0 {
        return Err(failed(format!(
            "{} is at {:#x}, inside code about to be overwritten but not at an instruction \
             boundary that has a place to go",
            name(stray),
            request.stray_pc.load(Ordering::SeqCst)
        )));
    }
    settled.moved = request.moved.load(Ordering::SeqCst);
    Ok(settled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_syscall_file() {
        assert_eq!(parse_syscall("running\n"), SyscallState::Running);
        assert_eq!(
            parse_syscall("-1 0x7ffd1234 0x401000\n"),
            SyscallState::Stopped
        );
        assert_eq!(
            parse_syscall("0 0x3 0x7f00 0x10 0x0 0x0 0x0 0x7ffd1234 0x7f1234567890\n"),
            SyscallState::InSyscall {
                nr: 0,
                pc: 0x7f12_3456_7890
            }
        );
        assert_eq!(parse_syscall(""), SyscallState::Running);
    }

    #[test]
    fn reads_the_status_file() {
        let sig = 62;
        let bit = 1u64 << (sig - 1);
        let status =
            |state: &str, blk: u64| format!("Name:\tx\nState:\t{state}\nSigBlk:\t{blk:016x}\n");
        assert_eq!(
            parse_status(&status("R (running)", 0), sig),
            Status {
                dead: false,
                blocks: false
            }
        );
        assert!(parse_status(&status("S (sleeping)", bit), sig).blocks);
        assert!(!parse_status(&status("S (sleeping)", !bit), sig).blocks);
        assert!(parse_status(&status("Z (zombie)", 0), sig).dead);
        assert!(parse_status(&status("X (dead)", 0), sig).dead);
    }

    #[test]
    fn reads_cpu_time() {
        let sched = "x (1, #threads: 2)\n----\nse.exec_start  :  1.5\n\
                     se.sum_exec_runtime                          :          12.345678\n";
        assert_eq!(
            parse_sched_runtime(sched),
            Some(Duration::from_nanos(12_345_678))
        );
        let stat = "123 (a (b) c) R 1 2 3 4 5 6 7 8 9 10 17 4 0 0 20 0 1 0 100";
        assert_eq!(parse_stat_ticks(stat), Some(21));
        let me = rustix::thread::gettid().as_raw_nonzero().get();
        assert!(cpu_time(me).is_some());
    }

    #[test]
    fn regions_exclude_their_first_byte() {
        let regions = [(0x1000, 0x1010)];
        assert!(!inside(&regions, 0x1000));
        assert!(inside(&regions, 0x1001));
        assert!(inside(&regions, 0x100f));
        assert!(!inside(&regions, 0x1010));
    }

    #[test]
    fn the_signal_is_a_real_time_one() {
        let sig = settle_signal();
        assert!(sig >= libc::SIGRTMIN() && sig <= libc::SIGRTMAX());
    }
}
