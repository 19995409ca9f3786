//! `threads_blocking_sigtrap()` does not list a thread for being inside textpoke's own SIGTRAP
//! handler (it runs with SIGTRAP unblocked), and still lists a thread that really blocks it.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};

use textpoke::{StaticKey, static_branch_unlikely};

static KEY: StaticKey = StaticKey::new();

#[inline(never)]
fn site() -> bool {
    static_branch_unlikely!(KEY)
}

#[test]
fn no_false_positives_while_sites_trap() {
    support::fresh("no_false_positives_while_sites_trap", || {
        let stop = AtomicBool::new(false);
        let mut listed = 0;
        let mut polls = 0;
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    eprintln!("runner {}", rustix::thread::gettid().as_raw_nonzero());
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::black_box(site());
                    }
                });
            }
            s.spawn(|| {
                eprintln!("toggler {}", rustix::thread::gettid().as_raw_nonzero());
                while !stop.load(Ordering::Relaxed) {
                    KEY.enable().unwrap();
                    KEY.disable().unwrap();
                }
            });
            let start = std::time::Instant::now();
            while start.elapsed() < std::time::Duration::from_secs(2) {
                let found = textpoke::threads_blocking_sigtrap().unwrap();
                listed += usize::from(!found.is_empty());
                if !found.is_empty() && listed < 5 {
                    eprintln!("listed {found:?}");
                }
                polls += 1;
            }
            stop.store(true, Ordering::Relaxed);
        });
        let (emulated, _) = textpoke::__private::trap_counts();
        eprintln!("{polls} polls, {listed} listed a thread, {emulated} traps emulated");
        assert!(emulated > 0, "threads met breakpoints meanwhile");
        assert_eq!(listed, 0, "threads inside textpoke's handler were listed");
    });
}
