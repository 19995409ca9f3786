//! Linux implementation of the OS services.

mod fork;
mod lock;
mod mem;
mod objects;
mod signal;
mod sync;
mod threads;
mod valgrind;

pub use lock::{PatchGuard, lock_shared_state_addr};
pub use mem::write_code;
pub use objects::{Object, Segment, TextMap, describe, loaded_objects, object_containing};
pub use signal::ensure_trap_handler;
pub use sync::{prepare_core_sync, serialize_all_cores};
pub use threads::{ThreadInfo, threads_blocking_sigtrap};
pub use valgrind::running as running_on_valgrind;

/// Takes the process-wide patch lock. The first call also registers the fork handlers, so that
/// a child never inherits a held lock or this copy's per-process state.
pub fn patch_lock() -> PatchGuard {
    fork::register_once();
    lock::patch_lock()
}

/// Registers the fork handlers (once), so that a child never inherits a held lock or this
/// copy's per-process state.
pub fn register_fork_handlers() {
    fork::register_once();
}

/// Takes the process-wide patch lock if no one holds it, without waiting.
pub fn try_patch_lock() -> Option<PatchGuard> {
    fork::register_once();
    lock::try_patch_lock()
}

/// Makes everything a batch needs ready: the trap handler, core serialization, the writer.
/// Cheap after the first call in a process (one `sigaction` query).
pub fn prepare_for_patching() -> crate::Result<()> {
    prepare_core_sync()?;
    ensure_trap_handler()
}
