//! A handler installed over textpoke's that chains to what it replaced (as crash reporters do)
//! must not make the two handlers call each other forever once textpoke re-installs its own.

mod support;

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use textpoke::{StaticKey, static_branch_unlikely};

static KEY: StaticKey = StaticKey::new();
static CALLS: AtomicUsize = AtomicUsize::new(0);
static REPLACED: AtomicPtr<libc::sigaction> = AtomicPtr::new(std::ptr::null_mut());

#[inline(never)]
fn site() -> bool {
    static_branch_unlikely!(KEY)
}

/// Counts, then chains to whatever it replaced.
extern "C" fn chaining(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    if CALLS.fetch_add(1, Ordering::SeqCst) > 100 {
        // The loop this test is about: bail out rather than overflow the stack.
        return;
    }
    let prev = REPLACED.load(Ordering::SeqCst);
    // SAFETY: `prev` is a leaked copy of the disposition this handler replaced.
    let action = unsafe { (*prev).sa_sigaction };
    if action != libc::SIG_DFL && action != libc::SIG_IGN {
        // SAFETY: the replaced handler was installed with SA_SIGINFO (textpoke's is).
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(action) };
        f(sig, info, ctx);
    }
}

#[test]
fn handlers_that_chain_back_do_not_loop() {
    KEY.enable().unwrap(); // textpoke's handler is installed
    let old = support::install_sigtrap(chaining); // ... and replaced by one that chains to it
    REPLACED.store(Box::into_raw(Box::new(old)), Ordering::SeqCst);
    KEY.disable().unwrap(); // textpoke re-installs over `chaining`, chaining to it
    assert!(!site());
    // SAFETY: a SIGTRAP handler is installed and returns.
    unsafe { core::arch::asm!("int3") };
    assert_eq!(
        CALLS.load(Ordering::SeqCst),
        1,
        "the user's handler runs exactly once"
    );
}
