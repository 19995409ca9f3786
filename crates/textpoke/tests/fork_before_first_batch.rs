//! A child forked while another thread holds the patch lock, before any batch has run, does
//! not inherit a held lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use textpoke::{StaticKey, static_branch_unlikely};

static KEY: StaticKey = StaticKey::new();

#[inline(never)]
fn site() -> bool {
    static_branch_unlikely!(KEY)
}

#[test]
fn children_forked_during_lookups_can_use_textpoke() {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(KEY.sites().unwrap().len(), 1);
            }
        });
        for _ in 0..50 {
            // SAFETY: the child only calls textpoke and `_exit`.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                let ok = KEY.sites().is_ok() && KEY.enable().is_ok() && site();
                // SAFETY: leaving the child without running the parent's destructors.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) };
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut status = 0;
            loop {
                // SAFETY: polling our own child.
                let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
                if r == pid {
                    break;
                }
                if Instant::now() > deadline {
                    // SAFETY: killing our own stuck child.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    stop.store(true, Ordering::Relaxed);
                    panic!("a child forked during a lookup deadlocked");
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "{status:#x}"
            );
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(!site());
}
