//! Linux implementation of the OS services.

mod fnmap;
mod fork;
mod loader;
pub(crate) mod lock;
mod mem;
mod near;
mod objects;
mod rendezvous;
mod settle;
mod signal;
mod socket;
mod symbols;
mod sync;
mod threads;
mod valgrind;

pub use fnmap::{BoundsSource, FunctionBounds, function_containing};
pub use mem::write_code;
pub use near::{NearCode, alloc_near, chunk_count, free_near, is_near_code, write_near};
pub use objects::{
    Object, Segment, TextMap, describe, describe_in, loaded_objects, object_containing,
};
pub(crate) use rendezvous::rendezvous_note;
pub use rendezvous::{
    ObjectRef, all_rendezvous, first_rendezvous, hold_object_at, hold_object_of, in_main_program,
    pin_object_of,
};
pub use settle::{Move, Settled, settle_signal, settle_threads};
pub use signal::{
    ensure_trap_handler, in_trap_handler, set_trap_delay, trap_handler_entry, trap_timing_point,
};
pub use socket::{
    bind_control_socket, block_program_signals, connect_control_socket, control_socket_name,
    may_control, peer_uid,
};
pub use sync::{prepare_core_sync, serialize_all_cores};
pub use threads::{ThreadInfo, TrapView, threads_blocking_sigtrap};
pub use valgrind::running as running_on_valgrind;

/// Registers the OS layer's fork handler (once), so that a child never keeps this copy's
/// `/proc/self/mem` handle or membarrier registration.
pub fn register_fork_handlers() {
    fork::register_once();
}

pub use fork::at_fork_child;

/// Makes everything a batch needs ready: the trap handler, core serialization, the writer.
/// Cheap after the first call in a process (one `sigaction` query).
pub fn prepare_for_patching() -> crate::Result<()> {
    prepare_core_sync()?;
    ensure_trap_handler()
}

/// Frees cached state (this copy's object is being unloaded).
pub fn release() {
    objects::release();
    symbols::release();
}

/// Registers a function to run when the process exits (`atexit`), before any object's
/// destructors. Only for functions in objects that are never unloaded.
pub fn at_exit(f: extern "C" fn()) {
    // SAFETY: `atexit` only records the function pointer.
    unsafe { libc::atexit(f) };
}
