//! This copy's patch lock word: a futex. It is the process's patch lock when this copy is the
//! process's patcher (see `engine::patcher`); other copies take that copy's instead.

use std::sync::atomic::{AtomicU32, Ordering};

use rustix::thread::futex;

/// 0 = free, 1 = held, 2 = held with waiters.
static WORD: AtomicU32 = AtomicU32::new(0);

/// Takes the lock, waiting as long as needed.
pub fn lock() {
    if try_lock() {
        return;
    }
    while WORD.swap(2, Ordering::Acquire) != 0 {
        // EAGAIN (the word changed) and EINTR both mean: look again.
        let _ = futex::wait(&WORD, futex::Flags::PRIVATE, 2, None);
    }
}

/// Takes the lock if it is free: free (0) to held (1).
pub fn try_lock() -> bool {
    WORD.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
}

/// Releases the lock.
pub fn unlock() {
    if WORD.swap(0, Ordering::Release) == 2 {
        let _ = futex::wake(&WORD, futex::Flags::PRIVATE, 1);
    }
}

/// Holds the lock across `fork()`, so that a child never starts with a half-done batch.
pub fn register_fork_handlers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    extern "C" fn prepare() {
        lock();
    }
    extern "C" fn parent() {
        unlock();
    }
    extern "C" fn child() {
        // The child's only thread is the one that forked, which holds the lock.
        WORD.store(0, Ordering::Release);
    }
    // SAFETY: the handlers only operate on the atomic word, with futex calls that are
    // async-signal-safe.
    ONCE.call_once(|| unsafe {
        libc::pthread_atfork(Some(prepare), Some(parent), Some(child));
    });
}
