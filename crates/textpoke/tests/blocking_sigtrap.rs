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
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::black_box(site());
                    }
                });
            }
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    KEY.enable().unwrap();
                    KEY.disable().unwrap();
                }
            });
            let start = std::time::Instant::now();
            while start.elapsed() < std::time::Duration::from_secs(2) {
                let found = textpoke::threads_blocking_sigtrap().unwrap();
                listed += usize::from(!found.is_empty());
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

/// A trap handled late (the thread was preempted between the breakpoint and its handler) must
/// never be taken for someone else's breakpoint, even when the next batch has already put a
/// breakpoint at the site again: the handler would pass it to the default action and the
/// process would die.
#[test]
fn late_traps_are_never_taken_for_foreign_ones() {
    // Three fresh processes: the race it guards against is a matter of chance.
    for _ in 0..3 {
        late_traps_round();
        if std::env::var_os("TEXTPOKE_FRESH_CHILD").is_some() {
            return;
        }
    }
}

fn late_traps_round() {
    support::fresh("late_traps_are_never_taken_for_foreign_ones", || {
        // Widen the window between a thread's breakpoint and its handler's look at the site.
        textpoke::__private::set_trap_delay(3_000);
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            // More threads than CPUs, so that handlers are preempted anywhere.
            for _ in 0..2 {
                s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        let _ = std::fs::read_to_string("/proc/self/status");
                    }
                });
            }
            for _ in 0..3 {
                s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::black_box(site());
                    }
                });
            }
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    KEY.enable().unwrap();
                    KEY.disable().unwrap();
                }
            });
            std::thread::sleep(std::time::Duration::from_secs(3));
            stop.store(true, Ordering::Relaxed);
        });
        let (emulated, rewound) = textpoke::__private::trap_counts();
        eprintln!("{emulated} traps emulated, {rewound} rewound");
        assert!(rewound > 0, "some traps were handled late");
    });
}
