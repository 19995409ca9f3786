//! Keys modified from many threads at once while other threads run their sites.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use textpoke::{Batch, StaticKey, static_branch_likely, static_branch_unlikely};

static COUNTED: StaticKey = StaticKey::new();
static A: StaticKey = StaticKey::new();
static B: StaticKey<true> = StaticKey::new();

#[inline(never)]
fn counted() -> bool {
    static_branch_unlikely!(COUNTED)
}
#[inline(never)]
fn counted_likely() -> bool {
    static_branch_likely!(COUNTED)
}
#[inline(never)]
fn a() -> bool {
    static_branch_unlikely!(A)
}
#[inline(never)]
fn b() -> bool {
    static_branch_likely!(B)
}

#[test]
fn refcounts_stay_right_and_holders_always_see_the_key_enabled() {
    const THREADS: usize = 4;
    const ROUNDS: usize = 1500;
    let stop = AtomicBool::new(false);
    let violations = AtomicUsize::new(0);
    std::thread::scope(|s| {
        // Readers racing through the sites while they are patched.
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                std::hint::black_box((counted(), counted_likely(), a(), b()));
            }
        });
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..ROUNDS {
                        COUNTED.inc().unwrap();
                        // While we hold a reference, the code must say enabled.
                        if !counted() || !counted_likely() {
                            violations.fetch_add(1, Ordering::Relaxed);
                        }
                        COUNTED.dec().unwrap();
                    }
                })
            })
            .collect();
        // Meanwhile another thread batches two other keys.
        s.spawn(|| {
            for i in 0..300 {
                let on = i % 2 == 0;
                Batch::new().set(&A, on).set(&B, !on).commit().unwrap();
                if a() != on || b() == on {
                    violations.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        for w in workers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(violations.load(Ordering::Relaxed), 0);
    assert_eq!(COUNTED.count(), 0);
    assert!(!counted() && !counted_likely());
    assert!(COUNTED.dec().is_err(), "underflow after balanced inc/dec");
}
