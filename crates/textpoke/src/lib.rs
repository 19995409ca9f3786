//! # textpoke
//!
//! The Linux kernel's runtime code patching, for user-space Rust: **static keys** (jump labels),
//! **static calls** ([`static_call!`]) and **alternatives** chosen by CPU feature
//! ([`alternative!`], [`multiversion!`], [`alternatives`]), on a batched text-patching engine
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
//! ## How a change is made safe
//!
//! Every site of every key in a batch is checked against the bytes its key's state implies and
//! against the executable segments of the object that declared it; any mismatch refuses the
//! whole batch. The change is then written with the kernel's breakpoint-first protocol:
//! `int3` over every site, serialize all cores, the tails, serialize, the new first bytes,
//! serialize. A thread that meets an `int3` meanwhile is given the new instruction by a
//! SIGTRAP handler; other traps go to the handler installed before textpoke's. Writes go
//! through `/proc/self/mem`, so no mapping is ever writable and executable, and cores are
//! serialized with `membarrier(PRIVATE_EXPEDITED_SYNC_CORE)`. Batches are serialized by one
//! process-wide lock, shared even between semver-incompatible copies of this crate.
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
//! Platform: x86-64 Linux.

#![warn(missing_docs)]

/// Instruction-level alternatives chosen by CPU feature.
pub mod alternatives {
    #[doc(hidden)]
    pub use crate::alt::first_use;
    #[doc(hidden)]
    pub use crate::alt::{SELECT_OWNER, Selector};
    pub use crate::alt::{applied, apply, apply_on_first_use, choices, first_use_error};
}
mod alt;
mod arch;
mod batch;
mod call;
mod engine;
mod error;
pub mod features;
mod key;
mod location;
mod os;
mod table;

pub use batch::Batch;
pub use call::{NoopCall, StaticCall};
pub use engine::PatchStats;
pub use error::{CodeBytes, Error, Result};
pub use key::StaticKey;
pub use location::Location;
pub use os::{ThreadInfo, threads_blocking_sigtrap};
pub use table::jump::{JUMP_ENTRY_SIZE, JUMP_SECTION, JumpSite, jump_sites};

/// Instruction knowledge shared by every part of textpoke and its tools.
pub mod insn {
    pub use crate::arch::{disassemble, fill_padding, is_nop, nop_len};
}

/// Low-level access for textpoke's own tools and tests. Not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::alt::planned_code as planned_alt_code;
    pub use crate::arch::{Insn, Regs, condition_holds, disassemble, emulate};
    pub use crate::call::{CArg, CRet, CallCore, inline_sites_of, trampoline_of};
    pub use crate::engine::{
        MERGE_GAP, PatchGuard, lock as patch_lock, patcher_id, read_code, trap_counts,
    };
    pub use crate::os::{loaded_objects, running_on_valgrind};
    pub use crate::table::jump::jump_table_bytes;

    /// The compile-time initial state of a key, for the site macros.
    pub const fn initial_state<const I: bool>(_key: &crate::StaticKey<I>) -> bool {
        I
    }
}

/// Frees this copy's heap state: its object is being unloaded.
///
/// # Safety
///
/// None of this copy's code runs again (its object is being unloaded).
pub(crate) unsafe fn release_on_unload() {
    call::release_held();
    // SAFETY: the caller's guarantee.
    unsafe { table::release_all() };
    batch::release();
    engine::release();
    os::release();
}

/// `true` when `key` is enabled; compiled as one 5-byte NOP (disabled) or JMP (enabled), with
/// the disabled path straight-line. Takes the path of a `static` [`StaticKey`].
#[macro_export]
macro_rules! static_branch_unlikely {
    ($key:path) => {
        $crate::__arch_static_branch!($key, false)
    };
}

/// `true` when `key` is enabled; compiled as one 5-byte NOP (enabled) or JMP (disabled), with
/// the enabled path straight-line. Takes the path of a `static` [`StaticKey`].
#[macro_export]
macro_rules! static_branch_likely {
    ($key:path) => {
        $crate::__arch_static_branch!($key, true)
    };
}
