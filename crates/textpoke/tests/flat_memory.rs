//! Memory stays flat over many batches by the executable and a plugin in turn, with a user
//! handler installed over textpoke's now and then.

mod support;

use textpoke::StaticKey;
use textpoke_fixture::Plugin;

static KEY: StaticKey = StaticKey::new();

/// The key's site: without one, the executable's toggles would be empty batches.
#[inline(never)]
fn site() -> bool {
    textpoke::static_branch_unlikely!(KEY)
}

extern "C" fn user(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

#[test]
fn rss_is_flat_over_100k_alternating_batches() {
    support::fresh("rss_is_flat_over_100k_alternating_batches", || {
        let plugin = Plugin::load(0).unwrap();
        let batch = |i: usize| {
            if i.is_multiple_of(2) {
                KEY.enable().unwrap();
                assert!(site());
                KEY.disable().unwrap();
            } else {
                plugin.set(0, i % 4 == 1).unwrap();
            }
            if i.is_multiple_of(100) {
                // Over textpoke's handler; the next batch installs textpoke's again on top.
                support::install_sigtrap(user);
            }
        };
        for i in 0..10_000 {
            batch(i);
        }
        let before = support::rss_kib();
        for i in 0..100_000 {
            batch(i);
        }
        let after = support::rss_kib();
        eprintln!("RSS {before} KiB -> {after} KiB");
        assert!(
            after <= before + 1024,
            "RSS grew from {before} KiB to {after} KiB over 100k batches"
        );
    });
}
