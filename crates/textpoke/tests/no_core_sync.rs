//! Without membarrier SYNC_CORE (an old kernel, or a seccomp filter), textpoke refuses to patch
//! with a clear error and writes nothing.

mod support;

use textpoke::{Error, StaticKey, static_branch_unlikely};

static KEY: StaticKey = StaticKey::new();

#[inline(never)]
fn site() -> bool {
    static_branch_unlikely!(KEY)
}

#[test]
fn refuses_without_core_serialization() {
    // In a child, so the filter does not reach the other tests.
    let status = support::in_child(|| {
        support::forbid_membarrier();
        let before = textpoke::__private::read_code(KEY.sites().unwrap()[0], 5).unwrap();
        match KEY.enable() {
            Err(Error::CoreSyncUnavailable { why }) if why.contains("membarrier") => {
                let after = textpoke::__private::read_code(KEY.sites().unwrap()[0], 5).unwrap();
                if after == before && !site() && !KEY.is_enabled() {
                    0
                } else {
                    2
                }
            }
            Err(_) => 3,
            Ok(()) => 4,
        }
    });
    assert_eq!(
        status, 0,
        "child status (2: bytes changed, 3: other error, 4: patched anyway)"
    );
    // The parent is unaffected.
    KEY.enable().unwrap();
    assert!(site());
}
