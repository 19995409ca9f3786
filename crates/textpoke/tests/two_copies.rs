//! Two copies of the crate in one binary (here: textpoke's source compiled a second time as
//! `textpoke_second_copy`, as a semver-incompatible version would be) share one patcher: one
//! lock, one handler, one registry.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use textpoke::{StaticKey, static_branch_unlikely};

static KEY: StaticKey = StaticKey::new();
static BUSY: StaticKey = StaticKey::new();
static OTHER: textpoke_second_copy::StaticKey = textpoke_second_copy::StaticKey::new();

#[inline(never)]
fn site() -> bool {
    static_branch_unlikely!(KEY)
}

#[inline(never)]
fn busy_site() -> bool {
    static_branch_unlikely!(BUSY)
}

#[inline(never)]
fn other_site() -> bool {
    textpoke_second_copy::static_branch_unlikely!(OTHER)
}

#[test]
fn both_copies_use_one_patcher() {
    let (ours, ours_is_self) = textpoke::__private::patcher_id().unwrap();
    let (theirs, theirs_is_self) = textpoke_second_copy::__private::patcher_id().unwrap();
    assert_eq!(ours, theirs, "both copies must find the same patcher");
    assert!(
        ours_is_self != theirs_is_self,
        "exactly one copy is the patcher"
    );
}

#[test]
fn the_other_copys_lock_blocks_our_batches() {
    let done = AtomicBool::new(false);
    let held = textpoke_second_copy::__private::patch_lock().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            KEY.enable().unwrap();
            done.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !done.load(Ordering::SeqCst),
            "a batch ran while the other copy held the lock"
        );
        assert!(!site());
        drop(held);
    });
    assert!(done.load(Ordering::SeqCst) && site());
    KEY.disable().unwrap();
}

#[test]
fn both_copies_patch_while_threads_run_both_sites() {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::black_box((busy_site(), other_site()));
                }
            });
        }
        let a = s.spawn(|| {
            for _ in 0..500 {
                BUSY.enable().unwrap();
                BUSY.disable().unwrap();
            }
        });
        for _ in 0..500 {
            OTHER.enable().unwrap();
            assert!(other_site());
            OTHER.disable().unwrap();
            assert!(!other_site());
        }
        a.join().unwrap();
        stop.store(true, Ordering::Relaxed);
    });
}
