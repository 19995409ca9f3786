//! What the trap handler reads, lock-free: the batch in flight and the registry of every site
//! address textpoke may ever patch.
//!
//! A thread may execute a breakpoint while a batch is in flight, yet run the handler only after
//! the batch is done (signal delivery is not atomic with the patcher's last core sync). Such a
//! late handler finds no batch, sees that the address is a registered site, and rewinds the
//! thread to re-execute the site, which by then holds its final bytes. The registry is what
//! makes this safe: an `int3` at any other address is never ours and is passed on.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use super::Poke;
use crate::arch::{self, Insn, Regs};
use crate::os::PatchGuard;
use crate::{Error, Result};

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

static FLIGHT: AtomicPtr<Flight> = AtomicPtr::new(std::ptr::null_mut());
/// Handlers currently reading `FLIGHT`.
static READERS: AtomicUsize = AtomicUsize::new(0);

const REGISTRY_SLOTS: usize = 64;
/// Sorted, leaked address arrays; a slot is written once (length first, then pointer).
static REGISTRY_PTR: [AtomicPtr<usize>; REGISTRY_SLOTS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; REGISTRY_SLOTS];
static REGISTRY_LEN: [AtomicUsize; REGISTRY_SLOTS] =
    [const { AtomicUsize::new(0) }; REGISTRY_SLOTS];

/// A withdrawn flight kept for reuse, so a batch does not allocate its trap table afresh.
static SPARE: AtomicPtr<Flight> = AtomicPtr::new(std::ptr::null_mut());

/// Publishes a batch (sorted by address) before its first breakpoint is written.
pub(super) fn publish(pokes: &[Poke]) -> *mut Flight {
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
    for (addr, insn) in pokes.iter().filter_map(|p| Some((p.addr, p.insn?))) {
        flight.addrs.push(addr);
        flight.insns.push(insn);
    }
    let flight = Box::into_raw(flight);
    FLIGHT.store(flight, Ordering::SeqCst);
    flight
}

/// Withdraws a batch after its last core sync, and keeps it for reuse once no handler reads it.
pub(super) fn withdraw(flight: *mut Flight) {
    FLIGHT.store(std::ptr::null_mut(), Ordering::SeqCst);
    let mut spins = 0u32;
    while READERS.load(Ordering::SeqCst) != 0 {
        spins += 1;
        if spins < 64 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    // `flight` is no longer reachable through FLIGHT, and every handler that loaded it has
    // finished (READERS was zero after the store above): it is ours again.
    let old = SPARE.swap(flight, Ordering::Release);
    if !old.is_null() {
        // SAFETY: a spare is owned by SPARE alone; we just took it out.
        drop(unsafe { Box::from_raw(old) });
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

/// Registers `addrs` (sorted) as sites textpoke may patch, for the lifetime of the process.
pub fn register_sites(_lock: &PatchGuard, addrs: &'static [usize]) -> Result<()> {
    debug_assert!(addrs.is_sorted());
    for (ptr, len) in REGISTRY_PTR.iter().zip(&REGISTRY_LEN) {
        if ptr.load(Ordering::Relaxed).is_null() {
            len.store(addrs.len(), Ordering::Relaxed);
            ptr.store(addrs.as_ptr().cast_mut(), Ordering::Release);
            return Ok(());
        }
    }
    Err(Error::BadTable {
        table: "(engine)",
        why: format!("more than {REGISTRY_SLOTS} site tables registered"),
    })
}

fn registered(addr: usize) -> bool {
    for (ptr, len) in REGISTRY_PTR.iter().zip(&REGISTRY_LEN) {
        let p = ptr.load(Ordering::Acquire);
        if p.is_null() {
            return false;
        }
        // SAFETY: a non-null slot points to a leaked array of the stored length, published
        // with Release after the length.
        let addrs = unsafe { std::slice::from_raw_parts(p, len.load(Ordering::Relaxed)) };
        if addrs.binary_search(&addr).is_ok() {
            return true;
        }
    }
    false
}

/// Called by the OS trap handler for every `int3`. Returns whether it was textpoke's; if so,
/// `regs` now describe the thread after the site's new instruction (or rewound to re-execute
/// the site). Async-signal-safe.
///
/// # Safety
///
/// `regs` must be the saved state of the trapped thread (see [`arch::emulate`]).
pub unsafe fn on_breakpoint(regs: &mut Regs) -> bool {
    let addr = arch::trap_address(regs.pc);
    READERS.fetch_add(1, Ordering::SeqCst);
    let flight = FLIGHT.load(Ordering::SeqCst);
    // SAFETY: a published flight is freed only after READERS drops to zero, and we counted
    // ourselves in before loading it.
    let insn = (!flight.is_null())
        .then(|| unsafe { (*flight).find(addr) })
        .flatten();
    READERS.fetch_sub(1, Ordering::SeqCst);
    if let Some(insn) = insn {
        // SAFETY: the caller's guarantee, and `insn` is what the site is becoming.
        unsafe { arch::emulate(insn, addr, regs) };
        EMULATED.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    if registered(addr) {
        regs.pc = addr;
        REWOUND.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    false
}

/// In a forked child: handlers that were running in other parent threads do not exist here.
pub(crate) fn forget_after_fork() {
    READERS.store(0, Ordering::SeqCst);
}

/// (emulated, rewound) trap counts since the process started.
pub fn trap_counts() -> (usize, usize) {
    (
        EMULATED.load(Ordering::Relaxed),
        REWOUND.load(Ordering::Relaxed),
    )
}
