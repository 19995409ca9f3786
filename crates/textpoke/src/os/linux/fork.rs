//! Keeping per-process state right across `fork()`.
//!
//! The child has a new address space: the `/proc/self/mem` handle, the membarrier registration
//! and any in-progress trap bookkeeping belong to the parent.

use std::sync::Once;

/// Registers this copy's fork handler once.
pub fn register_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: `child` only stores to atomics, which is async-signal-safe, as the child side
        // of `pthread_atfork` requires.
        unsafe { libc::pthread_atfork(None, None, Some(child)) };
    });
}

extern "C" fn child() {
    super::mem::forget_after_fork();
    super::sync::forget_after_fork();
    crate::engine::forget_after_fork();
    crate::alternatives::forget_after_fork();
}
