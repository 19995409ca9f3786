//! A forked child toggles keys on its own, without touching its parent's code.

mod support;

use textpoke::{StaticKey, static_branch_unlikely};

static KEY: StaticKey = StaticKey::new();

#[inline(never)]
fn site() -> bool {
    static_branch_unlikely!(KEY)
}

#[test]
fn child_toggles_its_own_copy() {
    // Set up everything (handler, membarrier, /proc/self/mem) in the parent first.
    KEY.enable().unwrap();
    assert!(site());

    let status = support::in_child(|| {
        let ok = KEY.disable().is_ok()
            && !site()
            && KEY.enable().is_ok()
            && site()
            && KEY.disable().is_ok()
            && !site();
        if ok { 0 } else { 1 }
    });
    assert_eq!(status, 0, "child could not toggle its key");
    assert!(KEY.is_enabled());
    assert!(site(), "the child's patches must not reach the parent");
    KEY.disable().unwrap();
    assert!(!site());
}
