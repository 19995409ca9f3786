//! Alternatives applied while threads run their sites: every call sees the default or the
//! chosen sequence, never a mix.

mod alt_sites;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use alt_sites::{TARGET, expected, moved, which};

#[test]
fn applying_while_threads_run_the_sites() {
    assert!(!textpoke::alternatives::applied());
    // Applied explicitly while the threads run the defaults; `alternatives_first_use` covers
    // threads racing to apply on first use.
    textpoke::alternatives::apply_on_first_use(false);
    let stop = AtomicBool::new(false);
    let bad = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let w = which();
                    if w != 1 && w != expected() {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                    let m = moved();
                    if m != (0, 0) && m != (42, &raw const TARGET as u64) {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        textpoke::alternatives::apply().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(bad.load(Ordering::Relaxed), 0);
    assert_eq!(which(), expected());
}
