//! # textpoke
//!
//! The Linux kernel's runtime code patching, for user-space Rust: **static keys** (jump labels),
//! **static calls** ([`static_call!`]), **alternatives** chosen by CPU feature
//! ([`alternative!`], [`multiversion!`], [`alternatives`]) and **immediate values**
//! ([`imm!`]), on a batched text-patching engine
//! that stays correct while other threads run the code it changes.
//!
//! ```
//! use textpoke::{StaticKey, static_branch_unlikely};
//!
//! static TRACE: StaticKey = StaticKey::new(); // initial state fixed at compile time
//!
//! fn hot_path() -> bool {
//!     // One 5-byte NOP while TRACE is off.
//!     static_branch_unlikely!(TRACE)
//! }
//!
//! assert!(!hot_path());
//! TRACE.enable()?; // safe while other threads run hot_path()
//! assert!(hot_path());
//! TRACE.inc()?; // reference counted, like static_branch_inc/dec
//! TRACE.dec()?;
//! assert!(TRACE.is_enabled());
//! textpoke::Batch::new().disable(&TRACE).commit()?; // many keys, one transaction
//! assert!(!hot_path());
//! # Ok::<(), textpoke::Error>(())
//! ```
//!
//! ## A tour
//!
//! - **Static keys**: [`StaticKey`], [`static_branch_unlikely!`], [`static_branch_likely!`];
//!   many keys (and calls) in one transaction with [`Batch`]. Example: `examples/static_keys.rs`
//!   (`cargo run --example static_keys`).
//! - **Static calls**: [`static_call!`] declares them; `update`, `update_noop`, `update_unsafe`;
//!   C-ABI calls may have inline call sites. Example: `examples/static_calls.rs`.
//! - **Alternatives**: [`alternative!`] (instructions by CPU feature) and [`multiversion!`]
//!   (functions bound once to the best implementation), applied by [`alternatives::apply`] or
//!   at first use; [`features`] names the CPU features. Example: `examples/alternatives.rs`.
//! - **Patchable functions**: [`#[patchable]`](patchable) puts one NOP at a function's start;
//!   [`functions`] traces (ftrace's function tracer), profiles and replaces (livepatch) them
//!   by name while threads call them. Example: `examples/functions.rs`.
//! - **Immediate values**: [`Immediate`] and [`imm!`]: constants compiled into the code as the
//!   immediate of a `mov` at every read site, rewritten live by [`Immediate::set`] or in a
//!   [`Batch`] ([`Batch::set`]). Example: `examples/immediates.rs`.
//! - **Detours**: [`Detour`] redirects any function, patchable or not, to a replacement of its
//!   type, moving threads out of the bytes it overwrites.
//! - **Control by name**: [`control`] lists everything textpoke controls in every loaded object
//!   and changes it by name: at start-up from the `TEXTPOKE` environment variable, and from
//!   outside the process with `textpoke ctl PID ...` once the program calls
//!   [`control::serve`] (or runs with `TEXTPOKE_CONTROL=1`).
//! - **Errors**: every refusal is an [`Error`] naming the site, key, table or system call. A
//!   site is shown with the function it is in, and with the key or static call it belongs to
//!   ([`Location::item`], an [`Item`]: its Rust path and where it was declared).
//! - **Tools**: [`insn`] (the NOP classifier, disassembly) and [`tables`] (the table formats).
//!
//! ## How a change is made safe
//!
//! Every site of every key in a batch is checked against the bytes its key's state implies and
//! against the executable segments of the object that declared it; any mismatch refuses the
//! whole batch. The change is then written with the kernel's breakpoint-first protocol:
//! `int3` over every site, serialize all cores, the tails, serialize, the new first bytes. A
//! thread that meets an `int3` meanwhile is given the new instruction by a SIGTRAP handler,
//! and one that meets it after the batch is rewound to the finished site (which is why no
//! third serialization is needed); other traps go to the handler installed before textpoke's. Writes go
//! through `/proc/self/mem`, so no mapping is ever writable and executable, and cores are
//! serialized with `membarrier(PRIVATE_EXPEDITED_SYNC_CORE)`.
//!
//! ## One patcher per process
//!
//! A process may hold many copies of textpoke: the executable's, one in each plugin (a `cdylib`
//! loaded with `dlopen`, usually `RTLD_LOCAL`), several semver-incompatible versions in one
//! object. They behave as one. Every object that carries a copy has an ELF note
//! (`.note.textpoke`) in a `PT_NOTE` segment pointing at that copy's versioned table of C
//! functions; program headers are what `dl_iterate_phdr` lists for every loaded object, so no
//! symbol lookup is involved. The copy whose note comes first in load order (the executable's,
//! or else the earliest-loaded plugin's) is the **process's patcher**: it owns the one lock that
//! serializes every batch, the one SIGTRAP handler, the batch in flight and the registry of
//! every site. The other copies plan their batches from their own tables and hand them over.
//! The patcher's object is made permanent before anyone calls into it (a plugin that is the
//! patcher stays loaded after `dlclose`), so the handler never lives in code that can go. A
//! plugin that is not the patcher unregisters its sites when it is unloaded (waiting for a
//! batch in flight), and frees its indexes. The map of loaded objects follows `dlopen` and
//! `dlclose`, and a static call that points into another shared object keeps that object
//! loaded until it is pointed elsewhere. The note and the table carry a rendezvous version; a
//! copy that cannot speak the patcher's refuses with [`Error::Rendezvous`].
//!
//! What works across objects: each object's own keys, static calls and alternatives, as in the
//! executable, correct from the object's first instruction. What does not: a key used from an
//! object other than the one that declares it and its sites.
//!
//! ## Signals and debuggers
//!
//! textpoke's SIGTRAP handler runs with every signal blocked, so no other handler lands on top
//! of it and meets a site with SIGTRAP blocked, and a flood of SIGTRAPs sent to a thread waits
//! rather than nests; it records the threads on its path, so [`threads_blocking_sigtrap`] does
//! not report them. Every trap that is not its own goes to the handler installed before it,
//! once, with the mask the kernel would have given that handler. A thread that blocks SIGTRAP and meets a site mid-batch is killed by the
//! kernel: [`threads_blocking_sigtrap`] finds such threads, and sites do not belong in signal
//! handlers whose mask blocks SIGTRAP. A SIGTRAP handler installed over textpoke's while a
//! batch is in flight is handed textpoke's breakpoints until textpoke looks again, after the
//! current phase: chain to the handler you replace. Under gdb, a thread that meets a site
//! mid-batch stops with SIGTRAP; pass it on (`signal SIGTRAP`) and textpoke's handler emulates
//! the site.
//!
//! ## Under valgrind
//!
//! Valgrind runs cached translations of the program's code and does not see writes made
//! through `/proc/self/mem`, so after every write textpoke asks it, with the client request
//! `VALGRIND_DISCARD_TRANSLATIONS`, to drop the translations of the written range: every
//! change then reaches every thread, with valgrind's default options. Its `SIGTRAP` for an
//! `int3` (reported as `TRAP_BRKPT`, not the kernel's `SI_KERNEL`) is emulated like the
//! kernel's. Where valgrind does not offer `membarrier` SYNC_CORE, core sync is skipped there,
//! and only there: valgrind runs one thread at a time and switches only between translated
//! blocks, so the discard alone brings every thread to the new code. Natively the cost is one
//! cached flag check per write.
//!
//! ## Limits
//!
//! - x86-64 Linux only.
//! - Without `membarrier(PRIVATE_EXPEDITED_SYNC_CORE)` (kernel < 4.16, or a seccomp filter)
//!   textpoke refuses to patch with [`Error::CoreSyncUnavailable`]; there is no unsafe fallback.
//! - Writing needs `/proc/self/mem` to accept forced writes (the default); otherwise
//!   [`Error::Syscall`].
//! - A thread that blocks SIGTRAP and meets a site mid-batch is killed by the kernel; see
//!   [`threads_blocking_sigtrap`].
//! - A key and its sites live in one object (executable or shared library); so do a static
//!   call and its trampoline (its targets may be anywhere in loaded code).
//! - `static_call!` and `multiversion!` are used at module level; alternatives' sites are at
//!   most 32 bytes.
//! - A SIGTRAP handler installed over textpoke's while a batch is in flight is handed
//!   textpoke's breakpoints until the batch's next phase; chain to the handler you replace.
//!
//! Platform: x86-64 Linux.

#![warn(missing_docs)]

// Every Rust block of the README is compiled and run as a doc test, so none can go stale.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
mod readme {}

pub mod alternatives;
mod arch;
mod batch;
mod calls;
pub mod control;
pub mod detours;
mod engine;
mod error;
pub mod features;
pub mod functions;
mod immediates;
mod keys;
mod location;
mod os;
mod table;

pub use batch::{Batch, Settable};
pub use calls::{NoopCall, StaticCall};
pub use detours::Detour;
pub use engine::PatchStats;
pub use engine::threads_blocking_sigtrap;
pub use error::{CodeBytes, Error, Result};
pub use immediates::{ImmValue, Immediate};
pub use keys::StaticKey;
pub use location::{Item, Location};
pub use os::ThreadInfo;
/// Makes a function patchable: see [`functions`].
pub use textpoke_macros::patchable;

/// The site tables textpoke's macros emit, for tools and tests that read them: section names,
/// entry sizes, and the validated sites.
pub mod tables {
    pub use crate::immediates::table::{IMM_ENTRY_SIZE, IMM_SECTION, ImmSite, imm_sites};
    pub use crate::keys::table::{JUMP_ENTRY_SIZE, JUMP_SECTION, JumpSite, jump_sites};
}

/// Instruction knowledge shared by every part of textpoke and its tools.
pub mod insn {
    pub use crate::arch::{disassemble, fill_padding, is_nop, nop_len};

    /// The bytes a static-branch site at `site` holds: `jmp target` when `jump`, else the
    /// 5-byte NOP. `None` when `target` is out of `rel32` reach.
    pub fn jump_label(site: usize, target: usize, jump: bool) -> Option<Vec<u8>> {
        crate::arch::jump_label_code(site, target, jump).map(|c| c.as_slice().to_vec())
    }

    /// `call target` at `site`; `None` when `target` is out of `rel32` reach.
    pub fn call_rel32(site: usize, target: usize) -> Option<Vec<u8>> {
        crate::arch::call_code(site, target).map(|c| c.as_slice().to_vec())
    }

    /// The `mov` an immediate-value site holds: `mov r32, imm32` (`wide` false) or `movabs
    /// r64, imm64` into register `reg` (0 to 15), in the one encoding the assembler emits.
    /// `None` for a register beyond `r15` or a value too wide for `r32`.
    pub fn mov_imm(reg: u8, value: u64, wide: bool) -> Option<Vec<u8>> {
        crate::arch::mov_imm_code(reg, value, wide).map(|c| c.as_slice().to_vec())
    }
}

/// Low-level access for textpoke's own tools and tests. Not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::alternatives::planned_code as planned_alt_code;
    pub use crate::arch::{Insn, Regs, condition_holds, disassemble, emulate};
    pub use crate::calls::{CArg, CRet, CallCore, inline_sites_of, trampoline_of};
    pub use crate::control::imm_text;
    pub use crate::engine::{
        MERGE_GAP, PatchGuard, lock as patch_lock, patcher_id, read_code, threads_moved,
        trap_counts,
    };
    pub use crate::immediates::{
        from_bits as imm_from_bits, initial_bits as imm_initial_bits, is_wide as imm_is_wide,
    };
    pub use crate::keys::table::jump_table_bytes;
    pub use crate::os::{BoundsSource, FunctionBounds, function_containing};
    pub use crate::os::{Move, Settled, settle_signal, settle_threads};
    pub use crate::os::{
        NearCode, alloc_near, chunk_count as near_chunk_count, free_near, is_near_code, write_near,
    };
    pub use crate::os::{loaded_objects, running_on_valgrind, set_trap_delay};
    /// `global_asm!` under a name that says what went wrong when a `static_call!` is written
    /// inside a function: the compiler's error names the macro it could not expand there.
    pub use core::arch::global_asm as static_call_must_be_declared_outside_functions;

    /// The compile-time initial state of a key, for the site macros.
    pub const fn initial_state<const I: bool>(_key: &crate::StaticKey<I>) -> bool {
        I
    }
}

/// Runs when this copy's object is unloaded (a `.fini_array` entry; also at exit, when it does
/// nothing): the engine gives this copy's sites back to the process's patcher, then every
/// capability frees what it built.
extern "C" fn on_unload() {
    if engine::unload_copy() {
        // SAFETY: the object is being unloaded: none of its code, which alone uses these, runs
        // again.
        unsafe { release_on_unload() };
    }
}

#[used]
#[unsafe(link_section = ".fini_array")]
static ON_UNLOAD: extern "C" fn() = on_unload;

/// Runs when this copy's object is loaded (an `.init_array` entry: before `main` for the
/// executable's copy, in `dlopen` for a plugin's): applies `TEXTPOKE` and starts the control
/// server if `TEXTPOKE_CONTROL=1`, after telling the engine what answers control requests
/// (the engine knows no capability). Touches no table when neither variable is set.
extern "C" fn on_load() {
    engine::set_control(engine::ControlFns {
        request: control::handle_request,
        serve: control::start_serving,
    });
    // A panic must not unwind out of the loader, nor abort the program before `main`.
    let _ = std::panic::catch_unwind(control::apply_at_load);
}

#[used]
#[unsafe(link_section = ".init_array")]
static ON_LOAD: extern "C" fn() = on_load;

/// Frees this copy's heap state: its object is being unloaded.
///
/// # Safety
///
/// None of this copy's code runs again (its object is being unloaded).
unsafe fn release_on_unload() {
    calls::release_held();
    control::release();
    // SAFETY: the caller's guarantee.
    unsafe {
        keys::table::INDEX.release();
        calls::table::INDEX.release();
        alternatives::table::INDEX.release();
        functions::table::INDEX.release();
        immediates::table::INDEX.release();
        immediates::release();
    }
    batch::release();
    engine::release();
    os::release();
}

/// `true` when `key` is enabled; compiled as one 5-byte NOP (disabled) or JMP (enabled), with
/// the disabled path straight-line. Takes the path of a `static` [`StaticKey`].
///
/// ```
/// use textpoke::{StaticKey, static_branch_unlikely};
///
/// static TRACE: StaticKey = StaticKey::new();
///
/// fn handle(request: u32) -> u32 {
///     if static_branch_unlikely!(TRACE) {
///         eprintln!("request {request}"); // out of line; a NOP skips it while TRACE is off
///     }
///     request * 2
/// }
///
/// assert_eq!(handle(2), 4);
/// TRACE.enable()?;
/// assert_eq!(handle(2), 4);
/// # Ok::<(), textpoke::Error>(())
/// ```
///
/// The key must be a `static`: its sites name its address. A `const` fails to build with
/// ``invalid `sym` operand``, "`sym` operands must refer to either a function or a static":
///
/// ```compile_fail
/// const TRACE: textpoke::StaticKey = textpoke::StaticKey::new();
/// fn main() {
///     if textpoke::static_branch_unlikely!(TRACE) {}
/// }
/// ```
#[macro_export]
macro_rules! static_branch_unlikely {
    ($key:path) => {
        $crate::__arch_static_branch!($key, false)
    };
}

/// `true` when `key` is enabled; compiled as one 5-byte NOP (enabled) or JMP (disabled), with
/// the enabled path straight-line. Takes the path of a `static` [`StaticKey`].
///
/// ```
/// use textpoke::{StaticKey, static_branch_likely};
///
/// static FAST_PATH: StaticKey<true> = StaticKey::new(); // starts enabled
///
/// fn sum(v: &[u32]) -> u32 {
///     if static_branch_likely!(FAST_PATH) {
///         v.iter().sum() // straight-line while enabled
///     } else {
///         v.iter().fold(0, |a, b| a.wrapping_add(*b))
///     }
/// }
///
/// assert_eq!(sum(&[1, 2]), 3);
/// FAST_PATH.disable()?;
/// assert_eq!(sum(&[1, 2]), 3);
/// # Ok::<(), textpoke::Error>(())
/// ```
#[macro_export]
macro_rules! static_branch_likely {
    ($key:path) => {
        $crate::__arch_static_branch!($key, true)
    };
}
