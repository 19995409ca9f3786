//! Once a change has returned, every thread runs the new instruction, though the engine does
//! not serialize the cores after the last write of a batch (see the engine's docs): a core that
//! still meets the withdrawn breakpoint is rewound to re-execute the finished site.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};

use textpoke::{StaticKey, static_branch_unlikely};

static KEY: StaticKey = StaticKey::new();

/// Bumped at every change of phase; `PHASE % 4` is 0 (off), 1 (enabling), 2 (on), 3 (disabling).
static PHASE: AtomicUsize = AtomicUsize::new(0);

#[inline(never)]
fn site() -> bool {
    static_branch_unlikely!(KEY)
}

/// Calls the site and counts, for calls made entirely within a settled phase, those that saw
/// the key's state and those that did not.
fn check_calls(stop: &std::sync::atomic::AtomicBool, seen: &[AtomicUsize; 3]) {
    while !stop.load(Ordering::Relaxed) {
        let before = PHASE.load(Ordering::SeqCst);
        let on = site();
        if PHASE.load(Ordering::SeqCst) != before {
            continue;
        }
        match (before % 4, on) {
            (0, false) => seen[0].fetch_add(1, Ordering::Relaxed),
            (2, true) => seen[1].fetch_add(1, Ordering::Relaxed),
            (0 | 2, _) => seen[2].fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
    }
}

#[test]
fn every_thread_runs_the_new_code_once_a_change_returns() {
    support::fresh(
        "every_thread_runs_the_new_code_once_a_change_returns",
        || {
            // Delay handlers, so that traps taken during a change are handled after it returned.
            textpoke::__private::set_trap_delay(2_000);
            let stop = std::sync::atomic::AtomicBool::new(false);
            let seen = [const { AtomicUsize::new(0) }; 3];
            let mut changes = 0;
            std::thread::scope(|s| {
                for _ in 0..3 {
                    s.spawn(|| check_calls(&stop, &seen));
                }
                let start = std::time::Instant::now();
                while start.elapsed() < std::time::Duration::from_secs(2) {
                    PHASE.fetch_add(1, Ordering::SeqCst);
                    KEY.enable().unwrap();
                    PHASE.fetch_add(1, Ordering::SeqCst);
                    std::thread::yield_now();
                    PHASE.fetch_add(1, Ordering::SeqCst);
                    KEY.disable().unwrap();
                    PHASE.fetch_add(1, Ordering::SeqCst);
                    std::thread::yield_now();
                    changes += 2;
                }
                stop.store(true, Ordering::Relaxed);
            });
            let [off, on, wrong] = seen.map(|n| n.into_inner());
            let (emulated, rewound) = textpoke::__private::trap_counts();
            eprintln!(
                "{changes} changes; settled calls: {off} off, {on} on, {wrong} wrong; \
             {emulated} traps emulated, {rewound} rewound"
            );
            assert_eq!(wrong, 0, "a call after a change returned ran the old code");
            assert!(off > 0 && on > 0, "calls were checked in both states");
            assert!(emulated + rewound > 0, "threads met breakpoints meanwhile");
        },
    );
}
