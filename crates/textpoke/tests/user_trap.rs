//! The user's own `int3` and SIGTRAP handler keep working once textpoke has installed its
//! handler, whether theirs was installed before textpoke's or after it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use textpoke::{StaticKey, static_branch_unlikely};

static KEY: StaticKey = StaticKey::new();
static FIRST: AtomicUsize = AtomicUsize::new(0);
static SECOND: AtomicUsize = AtomicUsize::new(0);

#[inline(never)]
fn site() -> bool {
    static_branch_unlikely!(KEY)
}

extern "C" fn first(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    FIRST.fetch_add(1, Ordering::SeqCst);
}
extern "C" fn second(_: libc::c_int) {
    SECOND.fetch_add(1, Ordering::SeqCst);
}

type Handler = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

fn install(handler: usize, siginfo: bool) {
    // SAFETY: installs a valid handler with an empty mask.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler;
        sa.sa_flags = if siginfo { libc::SA_SIGINFO } else { 0 };
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGTRAP, &sa, std::ptr::null_mut()), 0);
    }
}

fn current_handler() -> usize {
    // SAFETY: queries the disposition only.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGTRAP, std::ptr::null(), &mut sa);
        sa.sa_sigaction
    }
}

fn user_int3() {
    // SAFETY: the test has a SIGTRAP handler that returns, so execution continues after it.
    unsafe { core::arch::asm!("int3") };
}

#[test]
fn foreign_traps_reach_the_users_handlers() {
    install(first as Handler as usize, true);
    user_int3();
    assert_eq!(FIRST.load(Ordering::SeqCst), 1);

    KEY.enable().unwrap();
    assert!(site());
    assert_ne!(
        current_handler(),
        first as Handler as usize,
        "textpoke's handler is installed"
    );
    user_int3();
    assert_eq!(
        FIRST.load(Ordering::SeqCst),
        2,
        "int3 chained to the earlier handler"
    );
    // SAFETY: raising a signal with a handler installed.
    unsafe { libc::raise(libc::SIGTRAP) };
    assert_eq!(FIRST.load(Ordering::SeqCst), 3, "raise() chained too");

    // The user replaces textpoke's handler; the next batch re-installs textpoke's and chains.
    install(second as extern "C" fn(libc::c_int) as usize, false);
    KEY.disable().unwrap();
    assert!(!site());
    assert_ne!(
        current_handler(),
        second as extern "C" fn(libc::c_int) as usize
    );
    user_int3();
    assert_eq!(SECOND.load(Ordering::SeqCst), 1, "plain handler chained");

    // Textpoke's own traps still work with a thread racing through the site while the user's
    // int3 keeps going to the user's handler.
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                std::hint::black_box(site());
            }
        });
        for _ in 0..200 {
            KEY.enable().unwrap();
            KEY.disable().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    user_int3();
    assert_eq!(SECOND.load(Ordering::SeqCst), 2);
    assert_eq!(
        FIRST.load(Ordering::SeqCst),
        3,
        "the replaced handler is not called"
    );
}
