//! Keeping per-process state right across `fork()`.
//!
//! The child has a new address space: the `/proc/self/mem` handle and the membarrier
//! registration belong to the parent. Each layer above registers its own child handler for its
//! own state (see [`at_fork_child`]), so this module knows none of them.

use std::sync::Once;

/// Registers this module's fork handler once.
pub fn register_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| at_fork_child(child));
}

/// Runs `child` in the child after every `fork()`. It must be async-signal-safe (only stores
/// to atomics, say), as the child side of `pthread_atfork` requires.
pub fn at_fork_child(child: extern "C" fn()) {
    // SAFETY: registers a handler; the caller's contract makes it safe to run in the child.
    unsafe { libc::pthread_atfork(None, None, Some(child)) };
}

extern "C" fn child() {
    super::mem::forget_after_fork();
    super::sync::forget_after_fork();
}
