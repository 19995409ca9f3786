//! What a patchable function runs when its site jumps: the hooks of every tracer whose filter
//! matched it, then its replacement or its own body. No lock and no allocation, so a traced
//! function may run in a signal handler.
//!
//! Tracers live in a fixed array of slots. A function's state holds a bit mask of the slots
//! whose filter matched it. A slot is emptied, then its hooks freed once no thread reads it
//! (each slot counts its readers, as the trap handler's batch does).

use std::cell::Cell;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::FnMeta;

/// Tracers that can be active at once.
pub(crate) const SLOTS: usize = 64;

/// An entry hook.
pub(crate) type OnEntry = Box<dyn Fn(&Entry) + Send + Sync>;
/// An exit hook.
pub(crate) type OnExit = Box<dyn Fn(&Exit) + Send + Sync>;

/// A tracer's hooks.
pub(crate) struct Hooks {
    pub(crate) entry: Option<OnEntry>,
    pub(crate) exit: Option<OnExit>,
}

static HOOKS: [AtomicPtr<Hooks>; SLOTS] = [const { AtomicPtr::new(std::ptr::null_mut()) }; SLOTS];
static READERS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
/// Slots whose tracer wants exits too.
static EXITS: AtomicU64 = AtomicU64::new(0);
/// Slots in use (taken under the functions' state lock).
static TAKEN: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The function this thread is about to re-enter through its own site, to run its body
    /// (set by [`Divert::run`]): that site must not divert again.
    static REENTER: Cell<usize> = const { Cell::new(0) };
    /// Whether this thread runs a tracer's hook: a traced function called from it runs
    /// untraced (ftrace's recursion guard).
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

/// A call of a traced function, as its entry hooks see it.
pub struct Entry<'a> {
    meta: &'a FnMeta,
}

impl Entry<'_> {
    /// The function's Rust path.
    pub fn name(&self) -> &'static str {
        self.meta.name
    }

    /// Its source file.
    pub fn file(&self) -> &'static str {
        self.meta.file
    }

    /// Its line.
    pub fn line(&self) -> u32 {
        self.meta.line
    }
}

/// The end of a call of a traced function, as exit hooks see it: on every path out, returns
/// and unwinding alike.
pub struct Exit<'a> {
    meta: &'a FnMeta,
    elapsed: Duration,
    unwinding: bool,
}

impl Exit<'_> {
    /// The function's Rust path.
    pub fn name(&self) -> &'static str {
        self.meta.name
    }

    /// Time from entry to exit, hooks excluded.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Whether the call ends by unwinding (a panic) rather than by returning.
    pub fn unwinding(&self) -> bool {
        self.unwinding
    }

    pub(crate) fn meta(&self) -> &FnMeta {
        self.meta
    }
}

/// Takes a free slot for `hooks`; `None` if all are taken. The caller holds the state lock.
pub(crate) fn install(hooks: Hooks) -> Option<usize> {
    let taken = TAKEN.load(Ordering::Relaxed);
    let slot = (!taken).trailing_zeros() as usize;
    if slot >= SLOTS {
        return None;
    }
    TAKEN.store(taken | 1 << slot, Ordering::Relaxed);
    if hooks.exit.is_some() {
        EXITS.fetch_or(1 << slot, Ordering::SeqCst);
    }
    HOOKS[slot].store(Box::into_raw(Box::new(hooks)), Ordering::SeqCst);
    Some(slot)
}

/// Empties `slot` and frees its hooks once no thread runs them. The caller holds the state
/// lock, and has cleared the slot's bit from every function.
pub(crate) fn uninstall(slot: usize) {
    let hooks = HOOKS[slot].swap(std::ptr::null_mut(), Ordering::SeqCst);
    EXITS.fetch_and(!(1 << slot), Ordering::SeqCst);
    let mut spins = 0u32;
    while READERS[slot].load(Ordering::SeqCst) != 0 {
        spins += 1;
        if spins < 128 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    if !hooks.is_null() {
        // SAFETY: the box was leaked by `install`, is no longer reachable through HOOKS, and
        // no thread that loaded it is still counted in.
        drop(unsafe { Box::from_raw(hooks) });
    }
    TAKEN.fetch_and(!(1 << slot), Ordering::Relaxed);
}

/// Runs `f` on the hooks in each slot of `mask` that still traces `meta`, with this thread
/// marked as inside a hook.
fn each_hook(meta: &FnMeta, mask: u64, f: impl Fn(&Hooks)) {
    let was = IN_HOOK.replace(true);
    let mut rest = mask;
    while rest != 0 {
        let slot = rest.trailing_zeros() as usize;
        rest &= rest - 1;
        READERS[slot].fetch_add(1, Ordering::SeqCst);
        // `mask` was read before this thread was counted in: since then the slot's tracer may
        // have been stopped, freed, and the slot given to another tracer, whose hooks must not
        // run unless it traces `meta` too. Once counted in, the bit tells: a tracer clears its
        // bits before its slot is emptied and waited for, and a new one sets them only once
        // started.
        if meta.tracers.load(Ordering::SeqCst) & 1 << slot == 0 {
            READERS[slot].fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let hooks = HOOKS[slot].load(Ordering::SeqCst);
        if !hooks.is_null() {
            // SAFETY: a published box is freed only after READERS of its slot is zero once it
            // is unreachable, and this thread is counted in.
            f(unsafe { &*hooks });
        }
        READERS[slot].fetch_sub(1, Ordering::SeqCst);
    }
    IN_HOOK.set(was);
}

/// A call diverted from a patchable function's site. Used by `#[patchable]` only.
#[doc(hidden)]
pub struct Divert {
    meta: &'static FnMeta,
}

/// Called by a patchable function whose site jumped. `None` when the function is being
/// re-entered to run its own body. Used by `#[patchable]` only.
#[doc(hidden)]
#[inline(never)]
pub fn __divert(meta: &'static FnMeta) -> Option<Divert> {
    let me = meta as *const FnMeta as usize;
    if REENTER.get() == me {
        REENTER.set(0);
        return None;
    }
    Some(Divert { meta })
}

/// Clears a pending re-entry however the call ends (its site may have been disabled since,
/// so nothing else would).
struct ClearReenter;

impl Drop for ClearReenter {
    fn drop(&mut self) {
        REENTER.set(0);
    }
}

/// Runs the exit hooks when the call ends, returning or unwinding.
struct ExitHooks {
    meta: &'static FnMeta,
    mask: u64,
    start: Instant,
}

impl Drop for ExitHooks {
    fn drop(&mut self) {
        let exit = Exit {
            meta: self.meta,
            elapsed: self.start.elapsed(),
            unwinding: std::thread::panicking(),
        };
        each_hook(self.meta, self.mask, |h| {
            if let Some(f) = &h.exit {
                f(&exit);
            }
        });
    }
}

impl Divert {
    /// Runs the entry hooks, then `body` with the replacement installed for the function
    /// whose code is at `code` (`Some`), or to re-enter the function (`None`), then the exit
    /// hooks. Hooks are skipped inside a hook.
    #[inline(never)]
    pub fn run<R>(self, code: usize, body: impl FnOnce(Option<usize>) -> R) -> R {
        let meta = self.meta;
        let mask = if IN_HOOK.get() {
            0
        } else {
            meta.tracers.load(Ordering::Acquire)
        };
        if mask != 0 {
            let entry = Entry { meta };
            each_hook(meta, mask, |h| {
                if let Some(f) = &h.entry {
                    f(&entry);
                }
            });
        }
        let exits = mask & EXITS.load(Ordering::Acquire);
        let _exit = (exits != 0).then(|| ExitHooks {
            meta,
            mask: exits,
            start: Instant::now(),
        });
        match meta.replacement_for(code) {
            Some(target) => body(Some(target)),
            None => {
                REENTER.set(meta as *const FnMeta as usize);
                let _clear = ClearReenter;
                body(None)
            }
        }
    }
}
