//! Detours: hook or replace any function of any loaded object, live, while threads run it.
//!
//! A [`Detour`] overwrites the first instructions of a function that was not built for it with
//! a `jmp` to a replacement, and keeps those instructions, relocated, in a trampoline that ends
//! with a jump back ([`Detour::original`] calls it). What reference 004 says makes this unsafe
//! is handled, not ignored:
//!
//! - *a branch into the overwritten bytes, a call or system call returning into them, a
//!   foreign `int3` there, a function too short*: the whole function is decoded from its start
//!   (its bounds come from the object's `.eh_frame_hdr` or symbol table) and such functions are
//!   refused with [`Error::Detour`], naming the instruction;
//! - *threads already inside those bytes*: the change is a batch of the breakpoint-first
//!   protocol; once the breakpoint is in place (no thread can enter any more), every other
//!   thread is brought to a known point (a real-time signal whose handler moves a thread found
//!   inside to the same instruction of the trampoline; threads blocked in a system call
//!   elsewhere are left alone, so they see no `EINTR`), and only then are the other bytes
//!   written. A thread that cannot be reached in time (it blocks the signal) makes the batch
//!   fail, rolled back, with nothing left written;
//! - *teardown*: trampolines and stubs are never freed while a thread might run them: they are
//!   kept for the function and reused by the next detour of it, so memory is bounded by the
//!   number of distinct functions ever detoured, however many times detours are enabled,
//!   disabled, made and dropped.
//!
//! Trampolines live in pages that are never writable (written through `/proc/self/mem`), named
//! `textpoke-code` in `/proc/self/maps`.

use std::marker::PhantomData;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::arch::{self, Insn, Prologue};
use crate::engine::{self, Code, PatchGuard, PatchStats, Poke, Settle};
use crate::os::{self, Move, NearCode};
use crate::{Error, Result};

/// A function pointer type a detour can hook: `fn(..) -> R`, `unsafe fn`, and their
/// `extern "C"` and `extern "system"` forms, with up to 10 arguments.
///
/// # Safety
///
/// Implemented only for function pointer types, which are one `usize` wide.
pub unsafe trait Function: Copy + Send + Sync + 'static {
    #[doc(hidden)]
    fn __addr(self) -> usize;
    #[doc(hidden)]
    /// # Safety
    ///
    /// `addr` must be the entry of a function of this type.
    unsafe fn __from_addr(addr: usize) -> Self;
}

macro_rules! impl_function {
    ($($arg:ident),*) => {
        impl_function!(@abi "Rust" [$($arg),*]);
        impl_function!(@abi "C" [$($arg),*]);
        impl_function!(@abi "system" [$($arg),*]);
    };
    (@abi $abi:literal [$($arg:ident),*]) => {
        impl_function!(@one [$($arg),*] extern $abi fn($($arg),*) -> R);
        impl_function!(@one [$($arg),*] unsafe extern $abi fn($($arg),*) -> R);
    };
    (@one [$($arg:ident),*] $ty:ty) => {
        // SAFETY: a function pointer type, one `usize` wide.
        unsafe impl<R: 'static, $($arg: 'static),*> Function for $ty {
            fn __addr(self) -> usize {
                self as usize
            }
            unsafe fn __from_addr(addr: usize) -> Self {
                // SAFETY: the caller's guarantee: `addr` is such a function's entry, and a
                // function pointer has the layout of a non-null `usize`.
                unsafe { std::mem::transmute_copy::<usize, Self>(&addr) }
            }
        }
    };
}

impl_function!();
impl_function!(A);
impl_function!(A, B);
impl_function!(A, B, C);
impl_function!(A, B, C, D);
impl_function!(A, B, C, D, E);
impl_function!(A, B, C, D, E, G);
impl_function!(A, B, C, D, E, G, H);
impl_function!(A, B, C, D, E, G, H, I);
impl_function!(A, B, C, D, E, G, H, I, J);
impl_function!(A, B, C, D, E, G, H, I, J, K);

/// Functions textpoke calls while it patches, from the C library: a detour on one of them could
/// run the user's replacement inside a batch, with the patch lock held.
const NEEDED: &[&str] = &[
    "malloc",
    "free",
    "calloc",
    "realloc",
    "posix_memalign",
    "aligned_alloc",
    "memalign",
    "memcpy",
    "memmove",
    "memset",
    "memcmp",
    "bcmp",
    "pwrite",
    "pwrite64",
    "read",
    "open",
    "open64",
    "openat",
    "openat64",
    "close",
    "mmap",
    "mmap64",
    "munmap",
    "mprotect",
    "syscall",
    "sigaction",
    "__sigaction",
    "__libc_sigaction",
    "sigprocmask",
    "pthread_sigmask",
    "raise",
    "pthread_mutex_lock",
    "pthread_mutex_unlock",
    "pthread_mutex_trylock",
    "dl_iterate_phdr",
    "dlopen",
    "dladdr",
    "dlclose",
    "getpid",
    "gettid",
    "sched_yield",
    "nanosleep",
    "clock_nanosleep",
    "clock_gettime",
    "__clock_gettime",
    "opendir",
    "readdir",
    "readdir64",
    "closedir",
    "sigqueue",
    "prctl",
];

/// A function's name as its object gives it, and its address, for messages.
fn describe_function(addr: usize) -> (Option<String>, String) {
    let (object, symbol) = os::describe(addr);
    let name = symbol.filter(|(_, off)| *off == 0).map(|(n, _)| n);
    let text = match (&name, object) {
        (Some(n), _) => format!("{n} ({addr:#x})"),
        (None, Some((o, off))) => format!("{o}+{off:#x} ({addr:#x})"),
        (None, None) => format!("{addr:#x}"),
    };
    (name, text)
}

/// What a detour of one function keeps for good: its trampoline, and a stub per far
/// replacement (see the module docs on teardown).
struct Kept {
    target: usize,
    /// The prologue the trampoline was made from.
    bytes: Vec<u8>,
    trampoline: NearCode,
    /// The trampoline's address of each instruction boundary of the prologue.
    moves: Vec<Move>,
    /// (replacement, stub) for replacements out of `jmp rel32` reach.
    stubs: Vec<(usize, NearCode)>,
    /// Whether a live [`Detour`] uses it.
    live: bool,
    /// Whether that detour is enabled (kept for the registry; the detour's own flag rules).
    enabled: bool,
}

static KEPT: Mutex<Vec<Kept>> = Mutex::new(Vec::new());

/// Most bytes a relocated prologue may take: rel8 branches widened, and the jump back.
const TRAMPOLINE_MAX: usize = 64;

/// The state of one detour, independent of the function's type.
pub(crate) struct DetourCore {
    target: usize,
    name: String,
    site: usize,
    trampoline: usize,
    jump_to: usize,
    off: Code,
    on: Code,
    moves: Vec<Move>,
    region: (usize, usize),
    enabled: AtomicBool,
}

/// A detour of one function to a replacement of the same type (see the [module docs](self)).
/// Dropping it disables it.
pub struct Detour<F: Function> {
    core: DetourCore,
    _f: PhantomData<F>,
}

impl<F: Function> Detour<F> {
    /// Validates a detour of `target` to `replacement`; nothing is written until
    /// [`enable`](Self::enable).
    ///
    /// # Errors
    ///
    /// [`Error::Detour`] when `target` is not a function start known to its object, its first
    /// instructions cannot be overwritten safely (naming the instruction), it is already
    /// detoured, it is textpoke's own code or a function textpoke calls while patching;
    /// [`Error::NoCodeSpace`] or [`Error::Syscall`] when the trampoline cannot be placed.
    ///
    /// # Safety
    ///
    /// `replacement` runs in place of `target` for every caller, on every thread, with the
    /// target's arguments: it must keep every promise the target makes (including whatever it
    /// may be called from: signal handlers, other languages).
    pub unsafe fn new(target: F, replacement: F) -> Result<Self> {
        let (target, replacement) = (target.__addr(), replacement.__addr());
        let (symbol, name) = describe_function(target);
        let refuse = |why: String| Error::Detour {
            function: name.clone(),
            why,
        };
        if let Some(s) = &symbol {
            // glibc exports its functions under internal aliases too (`__libc_malloc`).
            let bare = s.split('@').next().unwrap_or(s);
            let bare = bare
                .strip_prefix("__libc_")
                .unwrap_or(bare)
                .trim_start_matches('_');
            if NEEDED.contains(&bare) {
                return Err(refuse(
                    "textpoke calls it while it patches, so a replacement of it could run with \
                     the patch lock held"
                        .into(),
                ));
            }
            if s.starts_with("textpoke::") || s.starts_with("<textpoke::") {
                return Err(refuse("it is textpoke's own code".into()));
            }
        }
        if os::is_near_code(target) {
            return Err(refuse("it is textpoke's own trampoline or stub".into()));
        }
        let bounds = os::function_containing(target).ok_or_else(|| {
            refuse("no loaded object's unwind table or symbol table knows a function there".into())
        })?;
        if bounds.start != target {
            return Err(refuse(format!(
                "it is not a function start: the function there begins at {:#x}",
                bounds.start
            )));
        }
        let code = engine::read_code(target, bounds.end - bounds.start)
            .ok_or_else(|| refuse("its code cannot be read".into()))?;
        let prologue = arch::analyze_prologue(&code, target).map_err(|e| refuse(e.to_string()))?;
        let lock = engine::lock()?;
        let end = prologue.site + prologue.bytes.len();
        if engine::sites_within(&lock, prologue.site, end) {
            return Err(refuse(
                "a textpoke site (a key's, a static call's, a patchable function's or another \
                 detour's) lies in the bytes the jump overwrites"
                    .into(),
            ));
        }
        let (trampoline, moves, jump_to) =
            keep(&lock, target, &prologue, replacement).map_err(|e| match e {
                Error::Detour { why, .. } => refuse(why),
                other => other,
            })?;
        if !engine::add_strict_site(&lock, prologue.site) {
            release(target);
            return Err(refuse(format!(
                "{} functions are detoured already, the most at once",
                engine::STRICT_SLOTS
            )));
        }
        let site = prologue.site;
        let off = Code::new(&prologue.bytes[..arch::JUMP_LABEL_LEN])
            .ok_or_else(|| refuse("its prologue is shorter than the jump".into()))?;
        let on = arch::jump_label_code(site, jump_to, true)
            .ok_or_else(|| refuse("its replacement stub is out of reach".into()))?;
        drop(lock);
        Ok(Detour {
            core: DetourCore {
                target,
                name,
                site,
                trampoline,
                jump_to,
                off,
                on,
                moves,
                region: (site + 1, end),
                enabled: AtomicBool::new(false),
            },
            _f: PhantomData,
        })
    }

    /// Turns the detour on: every later call of the target runs the replacement. Threads
    /// already inside the overwritten instructions finish them in the trampoline.
    pub fn enable(&self) -> Result<PatchStats> {
        self.set(true)
    }

    /// Turns the detour off: every later call runs the original. A thread already in the
    /// replacement finishes there.
    pub fn disable(&self) -> Result<PatchStats> {
        self.set(false)
    }

    /// Whether the detour is on.
    pub fn is_enabled(&self) -> bool {
        self.core.enabled.load(Ordering::Acquire)
    }

    /// The original function: its first instructions, relocated, then a jump to the rest.
    /// Valid for the life of the process (trampolines are never freed).
    pub fn original(&self) -> F {
        // SAFETY: the trampoline runs the target's own instructions, so it is a function of the
        // target's type.
        unsafe { F::__from_addr(self.core.trampoline) }
    }

    /// The target's address.
    pub fn target(&self) -> usize {
        self.core.target
    }

    /// The target as its object names it, with its address.
    pub fn name(&self) -> &str {
        &self.core.name
    }

    pub(crate) fn core(&self) -> &DetourCore {
        &self.core
    }

    fn set(&self, on: bool) -> Result<PatchStats> {
        let lock = engine::lock()?;
        self.core.set_locked(&lock, on)
    }
}

impl DetourCore {
    /// The poke that moves the site from state `from` to `!from`.
    fn poke(&self, on: bool) -> Poke {
        let original = Insn::Jmp {
            target: self.trampoline,
        };
        let detoured = Insn::Jmp {
            target: self.jump_to,
        };
        if on {
            Poke::code(self.site, self.off, self.on, detoured, original)
        } else {
            Poke::code(self.site, self.on, self.off, original, detoured)
        }
    }

    fn set_locked(&self, lock: &PatchGuard, on: bool) -> Result<PatchStats> {
        let changes = [(self, on)];
        let mut plan = DetourPlan::default();
        let mut pokes = Vec::new();
        plan.add(&changes, &mut pokes);
        let stats = engine::patch_settling(lock, &mut pokes, plan.settle())?;
        DetourPlan::commit(&changes);
        Ok(stats)
    }
}

/// The detours' part of a batch: their pokes, and the threads to move out of the instructions
/// they overwrite.
#[derive(Default)]
pub(crate) struct DetourPlan {
    moves: Vec<Move>,
    regions: Vec<(usize, usize)>,
}

impl DetourPlan {
    /// Adds the pokes of `changes` (each detour to be turned on or off) that change anything.
    pub(crate) fn add(&mut self, changes: &[(&DetourCore, bool)], pokes: &mut Vec<Poke>) {
        for (i, &(d, on)) in changes.iter().enumerate() {
            let named_later = changes[i + 1..].iter().any(|(e, _)| std::ptr::eq(d, *e));
            if named_later || d.enabled.load(Ordering::Acquire) == on {
                continue;
            }
            pokes.push(d.poke(on));
            // Only turning one on overwrites several instructions; the jump is one.
            if on {
                self.moves.extend_from_slice(&d.moves);
                self.regions.push(d.region);
            }
        }
        self.moves.sort_unstable_by_key(|m| m.from);
    }

    /// What the engine must do with threads.
    pub(crate) fn settle(&self) -> Settle<'_> {
        Settle {
            moves: &self.moves,
            regions: &self.regions,
        }
    }

    /// The batch was written.
    pub(crate) fn commit(changes: &[(&DetourCore, bool)]) {
        // In order: the last change named wins, as it did in `add`.
        let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
        for &(d, on) in changes {
            d.enabled.store(on, Ordering::Release);
            if let Some(k) = kept.iter_mut().find(|k| k.target == d.target) {
                k.enabled = on;
            }
        }
    }
}

impl<F: Function> Drop for Detour<F> {
    fn drop(&mut self) {
        if let Ok(lock) = engine::lock() {
            let _ = self.core.set_locked(&lock, false);
        }
        release(self.core.target);
    }
}

impl<F: Function> std::fmt::Debug for Detour<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detour")
            .field("target", &self.core.name)
            .field("trampoline", &format_args!("{:#x}", self.core.trampoline))
            .field("enabled", &self.is_enabled())
            .finish()
    }
}

/// Marks the kept trampoline of `target` free for the next detour of it.
fn release(target: usize) {
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(k) = kept.iter_mut().find(|k| k.target == target) {
        k.live = false;
        k.enabled = false;
    }
}

/// Every function a live [`Detour`] of this copy holds: (its address, whether enabled).
pub(crate) fn rows() -> Vec<(usize, bool)> {
    let kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    kept.iter()
        .filter(|k| k.live)
        .map(|k| (k.target, k.enabled))
        .collect()
}

/// The trampoline of `target` (made, or reused if its prologue is unchanged), its thread moves
/// and what the jump at the site goes to for `replacement` (it, or a stub near the site).
fn keep(
    _lock: &PatchGuard,
    target: usize,
    prologue: &Prologue,
    replacement: usize,
) -> Result<(usize, Vec<Move>, usize)> {
    let detour_error = |why: String| Error::Detour {
        function: String::new(),
        why,
    };
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    let index = match kept.iter().position(|k| k.target == target) {
        Some(i) if kept[i].live => {
            return Err(detour_error(
                "it is detoured already (drop that detour first)".into(),
            ));
        }
        Some(i) if kept[i].bytes == prologue.bytes => i,
        Some(_) => {
            // The function changed under us (another patcher): an old trampoline would run
            // stale code, and one of ours may still be running it.
            return Err(detour_error(
                "its first bytes changed since textpoke last detoured it".into(),
            ));
        }
        None => {
            let (trampoline, moves) = make_trampoline(prologue)?;
            kept.push(Kept {
                target,
                bytes: prologue.bytes.clone(),
                trampoline,
                moves,
                stubs: Vec::new(),
                live: false,
                enabled: false,
            });
            kept.len() - 1
        }
    };
    let k = &mut kept[index];
    let jump_to = if arch::jump_label_code(prologue.site, replacement, true).is_some() {
        replacement
    } else if let Some((_, stub)) = k.stubs.iter().find(|(r, _)| *r == replacement) {
        stub.addr
    } else {
        let stub = os::alloc_near(prologue.site, STUB_LEN, &stub_code(replacement))?;
        k.stubs.push((replacement, stub));
        stub.addr
    };
    k.live = true;
    Ok((k.trampoline.addr, k.moves.clone(), jump_to))
}

/// `jmp [rip + 0]` and the 8-byte address it reads.
const STUB_LEN: usize = 14;

fn stub_code(to: usize) -> Vec<u8> {
    let mut code = vec![0xff, 0x25, 0, 0, 0, 0];
    code.extend_from_slice(&(to as u64).to_le_bytes());
    code
}

/// Relocates the prologue into a new trampoline near the site, ending with a jump back to the
/// instruction after it; also where each of its instructions went.
fn make_trampoline(prologue: &Prologue) -> Result<(NearCode, Vec<Move>)> {
    let block = os::alloc_near(prologue.site, TRAMPOLINE_MAX, &[])?;
    let built = (|| {
        let (mut code, map) = arch::relocate_mapped(&prologue.bytes, prologue.site, block.addr)
            .map_err(|e| Error::Detour {
                function: String::new(),
                why: e.to_string(),
            })?;
        let back = prologue.site + prologue.bytes.len();
        let jump = arch::jump_label_code(block.addr + code.len(), back, true).ok_or_else(|| {
            Error::Detour {
                function: String::new(),
                why: "its trampoline cannot reach the function with a jmp rel32".into(),
            }
        })?;
        code.extend_from_slice(jump.as_slice());
        if code.len() > TRAMPOLINE_MAX {
            return Err(Error::Detour {
                function: String::new(),
                why: format!("its relocated prologue takes {} bytes", code.len()),
            });
        }
        os::write_near(block.addr, &code)?;
        let moves = map
            .iter()
            .filter(|&&(from, _)| from > 0 && from < prologue.bytes.len())
            .map(|&(from, to)| Move {
                from: prologue.site + from,
                to: block.addr + to,
            })
            .collect();
        Ok(moves)
    })();
    match built {
        Ok(moves) => Ok((block, moves)),
        Err(e) => {
            // Never reached by any thread: nothing jumps there yet.
            let _ = os::free_near(block);
            Err(e)
        }
    }
}
