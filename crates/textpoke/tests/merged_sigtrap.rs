//! A SIGTRAP sent to a thread (tgkill, perf events) can be merged with the one its breakpoint
//! raises: the handler must still recognise textpoke's breakpoint, by address, and still pass
//! the user's signal on.

mod support;

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};

use textpoke::{StaticKey, static_branch_unlikely};

static KEY: StaticKey = StaticKey::new();
static RECEIVED: AtomicUsize = AtomicUsize::new(0);

#[inline(never)]
fn site() -> bool {
    static_branch_unlikely!(KEY)
}

extern "C" fn count(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    RECEIVED.fetch_add(1, Ordering::Relaxed);
}

#[test]
fn breakpoints_merged_with_sent_sigtraps_are_still_emulated() {
    support::install_sigtrap(count);
    KEY.enable().unwrap(); // installs textpoke's handler over `count`, chaining to it
    let stop = AtomicBool::new(false);
    let tid = AtomicI32::new(0);
    let sent = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            tid.store(
                rustix::thread::gettid().as_raw_nonzero().get(),
                Ordering::SeqCst,
            );
            while !stop.load(Ordering::Relaxed) {
                std::hint::black_box(site());
            }
        });
        while tid.load(Ordering::SeqCst) == 0 {
            std::hint::spin_loop();
        }
        s.spawn(|| {
            let pid = std::process::id() as libc::pid_t;
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: sends SIGTRAP to a thread of this process that has a handler.
                unsafe {
                    libc::syscall(
                        libc::SYS_tgkill,
                        pid,
                        tid.load(Ordering::SeqCst),
                        libc::SIGTRAP,
                    )
                };
                sent.fetch_add(1, Ordering::Relaxed);
            }
        });
        for _ in 0..1000 {
            KEY.disable().unwrap();
            KEY.enable().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    // Still alive, and the user's handler saw the signals sent to it.
    assert!(RECEIVED.load(Ordering::Relaxed) > 0);
    assert!(RECEIVED.load(Ordering::Relaxed) <= sent.load(Ordering::Relaxed));
    assert!(site());
}
