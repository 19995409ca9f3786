//! What the trap handler reads, lock-free: the batch in flight and the registry of every site
//! address textpoke may ever patch.
//!
//! A thread may execute a breakpoint while a batch is in flight, yet run the handler only after
//! the batch is done (signal delivery is not atomic with the patcher's last core sync). Such a
//! late handler finds no batch, sees that the address is a registered site whose breakpoint is
//! gone, and rewinds the thread to re-execute the site, which by then holds its final bytes.
//! The registry is what makes this safe: an `int3` at any other address is never ours and is
//! passed on, and so is one at a registered site while no batch is in flight (someone else's).

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use super::Poke;
use crate::arch::{self, Insn, Regs};

/// The batch in flight, sorted by address.
pub(super) struct Flight {
    addrs: Vec<usize>,
    insns: Vec<Insn>,
}

impl Flight {
    fn find(&self, addr: usize) -> Option<Insn> {
        self.addrs.binary_search(&addr).ok().map(|i| self.insns[i])
    }
}

/// Traps handled by emulating a site's new instruction.
static EMULATED: AtomicUsize = AtomicUsize::new(0);
/// Late traps handled by rewinding to re-execute a finished site.
static REWOUND: AtomicUsize = AtomicUsize::new(0);

/// Odd while a batch is published; bumped at every publish and withdrawal.
static GENERATION: AtomicUsize = AtomicUsize::new(0);

static FLIGHT: AtomicPtr<Flight> = AtomicPtr::new(std::ptr::null_mut());
/// Handlers currently reading `FLIGHT`.
static READERS: AtomicUsize = AtomicUsize::new(0);

/// Site arrays the registry can hold: a few per loaded object that uses textpoke.
pub(super) const REGISTRY_SLOTS: usize = 256;
/// Sorted address arrays, each valid until unregistered; a slot is filled length first, then
/// pointer, and emptied pointer first.
static REGISTRY_PTR: [AtomicPtr<usize>; REGISTRY_SLOTS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; REGISTRY_SLOTS];
static REGISTRY_LEN: [AtomicUsize; REGISTRY_SLOTS] =
    [const { AtomicUsize::new(0) }; REGISTRY_SLOTS];

/// Sites where the address alone does not say a trap was ours: a detour's first instruction
/// may be one byte long, so a thread can be at the site's second byte without having met our
/// breakpoint (and a SIGTRAP sent to it there must not be emulated). A trap at one of these is
/// textpoke's only if its `si_code` is an `int3`'s. Also the registry of these sites, for late
/// traps. 0 is a free slot.
static STRICT: [AtomicUsize; STRICT_SLOTS] = [const { AtomicUsize::new(0) }; STRICT_SLOTS];
/// Detour sites that may exist at once.
pub const STRICT_SLOTS: usize = 256;

/// Registers a site whose traps must come from an `int3` (see [`STRICT`]), for good: a late
/// trap may meet it whenever, and the same function's next detour reuses the entry. The caller
/// holds the patch lock. False when full.
pub(super) fn add_strict(addr: usize) -> bool {
    is_strict(addr)
        || STRICT.iter().any(|s| {
            s.compare_exchange(0, addr, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
        })
}

/// The registered detour sites. Slots are filled in order and never emptied, so they are the
/// filled prefix: every trap scans only as many as there are detoured functions, none in a
/// process without detours.
fn strict_sites() -> impl Iterator<Item = usize> {
    STRICT
        .iter()
        .map(|s| s.load(Ordering::Relaxed))
        .take_while(|&a| a != 0)
}

fn is_strict(addr: usize) -> bool {
    addr != 0 && strict_sites().any(|a| a == addr)
}

/// A withdrawn flight kept for reuse, so a batch does not allocate its trap table afresh.
static SPARE: AtomicPtr<Flight> = AtomicPtr::new(std::ptr::null_mut());

/// Publishes a batch (sorted by address) before its first breakpoint is written; `insn` says
/// what a trapped thread is given at each poke.
pub(super) fn publish(pokes: &[Poke], insn: fn(&Poke) -> Option<Insn>) -> *mut Flight {
    let flight = build(pokes, insn);
    GENERATION.fetch_add(1, Ordering::SeqCst);
    FLIGHT.store(flight, Ordering::SeqCst);
    flight
}

/// Replaces the published batch by one that gives trapped threads `insn` instead (a rollback
/// must hand out the old instructions), and frees the old one once no handler reads it.
pub(super) fn republish(
    old: *mut Flight,
    pokes: &[Poke],
    insn: fn(&Poke) -> Option<Insn>,
) -> *mut Flight {
    let flight = build(pokes, insn);
    FLIGHT.store(flight, Ordering::SeqCst);
    wait_for_readers();
    // SAFETY: `old` came from `publish`, is no longer reachable through FLIGHT, and every
    // handler that loaded it has finished.
    drop(unsafe { Box::from_raw(old) });
    flight
}

fn build(pokes: &[Poke], insn: fn(&Poke) -> Option<Insn>) -> *mut Flight {
    let spare = SPARE.swap(std::ptr::null_mut(), Ordering::Acquire);
    let mut flight = if spare.is_null() {
        Box::new(Flight {
            addrs: Vec::new(),
            insns: Vec::new(),
        })
    } else {
        // SAFETY: SPARE only holds flights that `withdraw` took back from every reader.
        unsafe { Box::from_raw(spare) }
    };
    flight.addrs.clear();
    flight.insns.clear();
    for (addr, insn) in pokes.iter().filter_map(|p| Some((p.addr, insn(p)?))) {
        flight.addrs.push(addr);
        flight.insns.push(insn);
    }
    Box::into_raw(flight)
}

/// Withdraws a batch after its last core sync, and keeps it for reuse once no handler reads it.
pub(super) fn withdraw(flight: *mut Flight) {
    FLIGHT.store(std::ptr::null_mut(), Ordering::SeqCst);
    GENERATION.fetch_add(1, Ordering::SeqCst);
    wait_for_readers();
    // `flight` is no longer reachable through FLIGHT, and every handler that loaded it has
    // finished (READERS was zero after the store above): it is ours again.
    let old = SPARE.swap(flight, Ordering::Release);
    if !old.is_null() {
        // SAFETY: a spare is owned by SPARE alone; we just took it out.
        drop(unsafe { Box::from_raw(old) });
    }
}

/// Waits until no handler reads a flight it loaded before the caller's last FLIGHT store. A
/// reader holds it for a few hundred nanoseconds, unless preempted: then sleeping (not just
/// yielding) lets it run even if the patcher has a real-time priority.
fn wait_for_readers() {
    let mut spins = 0u32;
    while READERS.load(Ordering::SeqCst) != 0 {
        spins += 1;
        if spins < 64 {
            std::hint::spin_loop();
        } else if spins < 128 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(std::time::Duration::from_micros(20));
        }
    }
}

static POISONED: AtomicBool = AtomicBool::new(false);

/// Leaves a batch published for good (some breakpoint may never be removed) and refuses every
/// later batch, which would otherwise replace it.
pub(super) fn abandon(_flight: *mut Flight) {
    POISONED.store(true, Ordering::SeqCst);
}

/// Whether an earlier batch was abandoned.
pub(super) fn poisoned() -> bool {
    POISONED.load(Ordering::SeqCst)
}

/// Registers `n` sorted addresses at `addrs` as sites textpoke may patch. The caller holds
/// the patch lock and keeps the array valid until [`unregister`] returns. False when full.
pub(super) fn register(addrs: *const usize, n: usize) -> bool {
    for (ptr, len) in REGISTRY_PTR.iter().zip(&REGISTRY_LEN) {
        if ptr.load(Ordering::Relaxed).is_null() {
            len.store(n, Ordering::SeqCst);
            ptr.store(addrs.cast_mut(), Ordering::SeqCst);
            return true;
        }
    }
    false
}

/// Forgets the array registered at `addrs`; when this returns no trap handler reads it. The
/// caller holds the patch lock.
pub(super) fn unregister(addrs: *const usize) {
    for ptr in &REGISTRY_PTR {
        if std::ptr::eq(ptr.load(Ordering::Relaxed), addrs) {
            ptr.store(std::ptr::null_mut(), Ordering::SeqCst);
        }
    }
    wait_for_readers();
}

fn registered(addr: usize) -> bool {
    for (ptr, len) in REGISTRY_PTR.iter().zip(&REGISTRY_LEN) {
        let p = ptr.load(Ordering::SeqCst);
        if p.is_null() {
            continue;
        }
        // SAFETY: a non-null slot points to an array of the stored length (stored before the
        // pointer), which stays valid until `unregister`, and that waits for this handler,
        // counted in READERS.
        let addrs = unsafe { std::slice::from_raw_parts(p, len.load(Ordering::SeqCst)) };
        if addrs.binary_search(&addr).is_ok() {
            return true;
        }
    }
    false
}

/// Whether any registered site lies in `[start, end)`: a table's anywhere, a detour's after
/// `start` (a detour's own site stays registered after the detour is dropped, for the next
/// detour of the same function).
pub(super) fn any_site_in(start: usize, end: usize) -> bool {
    READERS.fetch_add(1, Ordering::SeqCst);
    let mut found = strict_sites().any(|a| a > start && a < end);
    for (ptr, len) in REGISTRY_PTR.iter().zip(&REGISTRY_LEN) {
        let p = ptr.load(Ordering::SeqCst);
        if found || p.is_null() {
            continue;
        }
        // SAFETY: as in `registered`: the array stays valid while we are counted in READERS.
        let addrs = unsafe { std::slice::from_raw_parts(p, len.load(Ordering::SeqCst)) };
        let i = addrs.partition_point(|&a| a < start);
        found = addrs.get(i).is_some_and(|&a| a < end);
    }
    READERS.fetch_sub(1, Ordering::SeqCst);
    found
}

/// Called by the OS trap handler for every SIGTRAP; `from_int3` says whether its `si_code` is
/// an `int3`'s. Returns whether it was textpoke's; if so, `regs` now describe the thread after
/// the site's new instruction (or rewound to re-execute the site). Async-signal-safe.
///
/// # Safety
///
/// `regs` must be the saved state of the trapped thread (see [`arch::emulate`]).
pub unsafe fn on_breakpoint(regs: &mut Regs, from_int3: bool) -> bool {
    // Counted in for the whole lookup: the flight and the registered arrays are freed only
    // once READERS is zero.
    READERS.fetch_add(1, Ordering::SeqCst);
    let strict = is_strict(arch::trap_address(regs.pc));
    // SAFETY: the caller's guarantee.
    let ours = (from_int3 || !strict) && unsafe { lookup(regs, strict) };
    READERS.fetch_sub(1, Ordering::SeqCst);
    ours
}

/// # Safety
///
/// As [`on_breakpoint`], with the caller counted in READERS; `strict` says the site is in
/// [`STRICT`], and so registered.
unsafe fn lookup(regs: &mut Regs, strict: bool) -> bool {
    let addr = arch::trap_address(regs.pc);
    let generation = GENERATION.load(Ordering::SeqCst);
    let flight = FLIGHT.load(Ordering::SeqCst);
    // SAFETY: a published flight is freed only after READERS drops to zero, and we are counted
    // in.
    let insn = (!flight.is_null())
        .then(|| unsafe { (*flight).find(addr) })
        .flatten();
    if let Some(insn) = insn {
        // SAFETY: the caller's guarantee, and `insn` is what the site is becoming.
        unsafe { arch::emulate(insn, addr, regs) };
        EMULATED.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    if !strict && !registered(addr) {
        return false;
    }
    // The site's first byte, read now: between the two generation loads, not when compared
    // (a borrowed slice would be read after the second load, and a batch could have begun and
    // written its breakpoint in between, which would then look like someone else's).
    // SAFETY: a registered site lies in an executable segment of a loaded object (its object
    // unregisters it, waiting for us, before it is unmapped), which is mapped readable; the
    // byte is read as plain data.
    let now = unsafe { std::ptr::read_volatile(addr as *const u8) };
    let settled = generation.is_multiple_of(2) && GENERATION.load(Ordering::SeqCst) == generation;
    crate::os::trap_timing_point();
    if now == arch::BREAKPOINT[0] && settled {
        // A breakpoint at our site with no batch in flight, before or since we looked: not
        // ours (a probe or a debugger's). Rewinding would trap forever.
        return false;
    }
    // Our breakpoint, from a batch that has finished (or one that has just begun and will be
    // found when the site traps again): re-execute the site.
    regs.pc = addr;
    REWOUND.fetch_add(1, Ordering::Relaxed);
    true
}

/// In a forked child: handlers that were running in other parent threads do not exist here.
pub(crate) extern "C" fn forget_after_fork() {
    READERS.store(0, Ordering::SeqCst);
}

/// (emulated, rewound) trap counts since the process started.
pub fn trap_counts() -> (usize, usize) {
    (
        EMULATED.load(Ordering::Relaxed),
        REWOUND.load(Ordering::Relaxed),
    )
}
