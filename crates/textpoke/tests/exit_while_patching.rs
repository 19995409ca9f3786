//! A process that exits (running `atexit` handlers and every object's destructors) while other
//! threads patch and run sites exits cleanly.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};

use textpoke::{StaticKey, static_branch_unlikely};

static KEY: StaticKey = StaticKey::new();

#[inline(never)]
fn site() -> bool {
    static_branch_unlikely!(KEY)
}

#[test]
fn exit_while_other_threads_patch() {
    for round in 0..20 {
        let status = support::in_child(|| {
            static STOP: AtomicBool = AtomicBool::new(false);
            for _ in 0..2 {
                std::thread::spawn(|| {
                    while !STOP.load(Ordering::Relaxed) {
                        std::hint::black_box(site());
                    }
                });
            }
            std::thread::spawn(|| {
                loop {
                    KEY.enable().unwrap();
                    KEY.disable().unwrap();
                }
            });
            std::thread::sleep(std::time::Duration::from_millis(20));
            // SAFETY: a plain exit: atexit handlers and destructors run, other threads too.
            unsafe { libc::exit(7) }
        });
        assert_eq!(status, 7, "round {round}");
    }
}
