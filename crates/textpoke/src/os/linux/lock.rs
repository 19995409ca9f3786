//! The process-wide patch lock.
//!
//! It must be one lock even when two semver-incompatible copies of textpoke are linked into
//! one binary, so it cannot be an ordinary Rust static (each copy would get its own). The
//! lock word lives in a COMDAT group with a fixed, versioned name: the linker keeps exactly
//! one copy of the group, and every copy of textpoke refers to that one.

use std::sync::atomic::{AtomicU32, Ordering};

use rustix::thread::futex;

/// State shared by every copy of textpoke linked into one object (executable or shared
/// library). Its symbol name and layout are part of the `v1` contract, frozen for good: only
/// append fields within the 64 bytes, never reorder; a new layout needs a new name.
#[repr(C)]
pub struct SharedState {
    /// 0 = free, 1 = held, 2 = held with waiters.
    lock: AtomicU32,
    /// Set by the first copy to register the fork handlers for the lock.
    fork_handlers: AtomicU32,
}

// `.ifndef`: with fat LTO every copy's module assembly is joined into one unit, where a second
// definition would be an error; in separate units each copy defines the symbol and the COMDAT
// group keeps one.
core::arch::global_asm!(
    ".ifndef textpoke_shared_v1",
    ".pushsection .bss.textpoke_shared_v1,\"awG\",@nobits,textpoke_shared_v1,comdat",
    ".weak textpoke_shared_v1",
    ".hidden textpoke_shared_v1",
    ".type textpoke_shared_v1,@object",
    ".balign 64",
    "textpoke_shared_v1:",
    ".zero 64",
    ".size textpoke_shared_v1, 64",
    ".popsection",
    ".endif",
);

unsafe extern "C" {
    static textpoke_shared_v1: SharedState;
}

fn shared() -> &'static SharedState {
    // SAFETY: the symbol is defined above as 64 zeroed, 64-byte-aligned bytes, which is a
    // valid `SharedState` (atomics at zero); it lives for the whole process.
    unsafe { &*core::ptr::addr_of!(textpoke_shared_v1) }
}

/// Address of the shared state, so tests can show that two copies agree on it.
pub fn lock_shared_state_addr() -> usize {
    shared() as *const SharedState as usize
}

/// Proof that the caller holds the process-wide patch lock. Released on drop.
pub struct PatchGuard {
    _private: (),
}

/// Takes the process-wide patch lock, waiting as long as needed.
pub fn patch_lock() -> PatchGuard {
    // Before the first lock: a child forked while another thread holds it must not inherit it.
    register_fork_handlers();
    lock_word(&shared().lock);
    PatchGuard { _private: () }
}

/// Takes the process-wide patch lock if it is free right now.
pub fn try_patch_lock() -> Option<PatchGuard> {
    register_fork_handlers();
    try_lock_word(&shared().lock).then_some(PatchGuard { _private: () })
}

impl Drop for PatchGuard {
    fn drop(&mut self) {
        unlock_word(&shared().lock);
    }
}

/// Takes the lock word if it is free: free (0) to held (1).
fn try_lock_word(word: &AtomicU32) -> bool {
    word.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
}

fn lock_word(word: &AtomicU32) {
    if try_lock_word(word) {
        return;
    }
    while word.swap(2, Ordering::Acquire) != 0 {
        // EAGAIN (the word changed) and EINTR both mean: look again.
        let _ = futex::wait(word, futex::Flags::PRIVATE, 2, None);
    }
}

fn unlock_word(word: &AtomicU32) {
    if word.swap(0, Ordering::Release) == 2 {
        let _ = futex::wake(word, futex::Flags::PRIVATE, 1);
    }
}

/// Holds the lock across `fork()`, once per process however many copies are linked in.
pub fn register_fork_handlers() {
    if shared()
        .fork_handlers
        .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return;
    }
    extern "C" fn prepare() {
        lock_word(&shared().lock);
    }
    extern "C" fn parent() {
        unlock_word(&shared().lock);
    }
    extern "C" fn child() {
        // The child's only thread is the one that forked, which holds the lock.
        shared().lock.store(0, Ordering::Release);
    }
    // SAFETY: the handlers only operate on the shared atomic word, with futex calls that are
    // async-signal-safe.
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
}
