//! Two copies of the crate in one binary share one patch lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use textpoke::{StaticKey, static_branch_unlikely};

static KEY: StaticKey = StaticKey::new();

#[inline(never)]
fn site() -> bool {
    static_branch_unlikely!(KEY)
}

#[test]
fn the_other_copys_lock_blocks_our_batches() {
    assert_eq!(
        textpoke::__private::lock_shared_state_addr(),
        textpoke_second_copy::lock_shared_state_addr(),
        "both copies must resolve to the one COMDAT lock word"
    );
    let done = AtomicBool::new(false);
    let held = textpoke_second_copy::patch_lock();
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
}
