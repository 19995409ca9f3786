//! `threads_blocking_sigtrap()` does not list a thread for being inside textpoke's own SIGTRAP
//! handler (it runs with SIGTRAP unblocked), and still lists a thread that really blocks it.

mod support;

use textpoke::{StaticKey, static_branch_unlikely};

static KEY: StaticKey = StaticKey::new();

#[inline(never)]
fn site() -> bool {
    static_branch_unlikely!(KEY)
}

fn toggle() {
    KEY.enable().unwrap();
    KEY.disable().unwrap();
}

#[test]
fn no_false_positives_while_sites_trap() {
    support::fresh("no_false_positives_while_sites_trap", || {
        let mut listed = 0;
        let mut polls = 0;
        support::while_busy(2, site, 1, toggle, || {
            let start = std::time::Instant::now();
            while start.elapsed() < std::time::Duration::from_secs(2) {
                let found = textpoke::threads_blocking_sigtrap().unwrap();
                listed += usize::from(!found.is_empty());
                polls += 1;
            }
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
    support::fresh("late_traps_are_never_taken_for_foreign_ones", || {
        // Widen the windows: between a thread's breakpoint and its handler, and between the
        // handler's looks at the batch and its use of what it saw.
        textpoke::__private::set_trap_delay(3_000);
        // More threads than CPUs (two reading /proc), so that handlers are preempted anywhere.
        fn load() {
            let _ = std::fs::read_to_string("/proc/self/status");
        }
        support::while_busy(0, site, 2, load, || {
            support::while_busy(3, site, 1, toggle, || {
                std::thread::sleep(std::time::Duration::from_secs(3));
            })
        });
        let (emulated, rewound) = textpoke::__private::trap_counts();
        eprintln!("{emulated} traps emulated, {rewound} rewound");
        assert!(rewound > 0, "some traps were handled late");
    });
}
