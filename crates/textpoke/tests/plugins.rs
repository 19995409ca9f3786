//! One patcher per process with plugins: `cdylib`s with their own copy of textpoke, loaded with
//! `dlopen(RTLD_LOCAL)` from distinct files, patching, and unloaded, in any order. Each test
//! runs alone in a fresh process.

mod support;

use support::{counting_trap, fresh};
use textpoke::{StaticKey, static_branch_unlikely};
use textpoke_fixture::Plugin;

static KEY: StaticKey = StaticKey::new();

#[inline(never)]
fn site() -> bool {
    static_branch_unlikely!(KEY)
}

fn toggle() {
    KEY.enable().unwrap();
    KEY.disable().unwrap();
}

textpoke::static_call! {
    static EXT: extern "C" fn(u64) -> u64 = plus_ten;
}

extern "C" fn plus_ten(x: u64) -> u64 {
    x + 10
}

fn load(n: usize) -> Plugin {
    Plugin::load(n).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether any mapping of `path` is in this process.
fn mapped(path: &std::path::Path) -> bool {
    let path = path.display().to_string();
    support::maps().iter().any(|m| m.3 == path)
}

#[test]
fn plugins_share_the_executables_patcher() {
    fresh("plugins_share_the_executables_patcher", || {
        let (exe, exe_is_self) = textpoke::__private::patcher_id().unwrap();
        assert!(
            exe_is_self,
            "the executable's copy comes first in load order"
        );
        let plugins: Vec<Plugin> = (0..3).map(load).collect();
        for p in &plugins {
            assert_eq!(p.patcher(), (exe, false), "{}", p.path().display());
        }
        for (i, p) in plugins.iter().enumerate() {
            assert_eq!(p.run(0), 0, "sites start disabled (compiled in)");
            p.set(0, true).unwrap();
            assert_eq!(p.run(0), 8);
            p.set_all(0b1010).unwrap();
            assert_eq!((p.run(0), p.run(1), p.run(3)), (0, 8, 8));
            assert_eq!(p.call(5), 6);
            p.retarget(2 + i % 2).unwrap();
            assert_eq!(p.call(5), 7 + (i % 2) as u64);
            assert_eq!(p.alt(), 1, "the first run applies, then runs the default");
            assert_eq!(p.alt(), 2, "now the SSE2 replacement runs");
            assert_eq!(p.imm(), 0x1111_1111_1111_1111, "built in");
            p.set_imm(0x2222_2222_0000_0000 + i as u64).unwrap();
            assert_eq!(p.imm(), 0x2222_2222_0000_0000 + i as u64);
        }
        // Each plugin's keys are its own.
        assert_eq!(plugins[0].run(1), 8);
        plugins[0].set(1, false).unwrap();
        assert_eq!((plugins[0].run(1), plugins[1].run(1)), (0, 8));
        // So is each plugin's immediate, and a fresh copy starts from its build.
        assert_eq!(plugins[1].imm(), 0x2222_2222_0000_0001);
        drop(plugins);
        assert_eq!(load(0).imm(), 0x1111_1111_1111_1111);
    });
}

#[test]
fn user_traps_reach_the_users_handler_once_whatever_patched() {
    fresh(
        "user_traps_reach_the_users_handler_once_whatever_patched",
        || {
            counting_trap::install();
            counting_trap::check_both_reach_it("before textpoke");
            KEY.enable().unwrap();
            counting_trap::check_both_reach_it("after the executable patched");
            let a = load(0);
            a.set(0, true).unwrap();
            counting_trap::check_both_reach_it("after plugin a patched");
            KEY.disable().unwrap();
            counting_trap::check_both_reach_it("after the executable patched again");
            let b = load(1);
            let c = load(2);
            b.retarget(3).unwrap();
            c.set_all(0xf).unwrap();
            a.set(0, false).unwrap();
            counting_trap::check_both_reach_it("with three plugins loaded");
            drop(a);
            counting_trap::check_both_reach_it("after dlclose of a plugin that patched");
            drop(b);
            drop(c);
            counting_trap::check_both_reach_it("after dlclose of every plugin");
            KEY.enable().unwrap();
            counting_trap::check_both_reach_it("after the executable patched last");
        },
    );
}

#[test]
fn executable_sites_mid_batch_with_three_plugins_loaded() {
    fresh(
        "executable_sites_mid_batch_with_three_plugins_loaded",
        || {
            let plugins: Vec<Plugin> = (0..3).map(load).collect();
            for p in &plugins {
                p.set(0, true).unwrap();
                p.retarget(2).unwrap();
            }
            // The executable toggles its key while the plugins toggle theirs from another
            // thread, and two threads run the executable's site.
            let plugins = &plugins;
            support::while_busy(2, site, 0, toggle, || {
                std::thread::scope(|s| {
                    s.spawn(|| {
                        for i in 0..3000 {
                            plugins[i % 3].set(1, i % 2 == 0).unwrap();
                        }
                    });
                    for _ in 0..3000 {
                        toggle();
                    }
                });
            });
            assert!(!site());
        },
    );
}

#[test]
fn update_to_a_function_of_an_unloaded_object_is_refused() {
    fresh(
        "update_to_a_function_of_an_unloaded_object_is_refused",
        || {
            let plugin = load(0);
            let path = plugin.path().to_path_buf();
            let double = plugin.double_fn();
            EXT.update(double).unwrap();
            assert_eq!(EXT.call(4), 8);
            // The call points into the plugin: it stays loaded though the program closes it.
            drop(plugin);
            assert!(mapped(&path), "a static call's target object stays loaded");
            assert_eq!(EXT.call(5), 10);
            // Pointing the call elsewhere lets it go.
            EXT.update(plus_ten).unwrap();
            assert!(!mapped(&path), "unloaded once no call points into it");
            let err = EXT.update(double).unwrap_err();
            assert!(
                matches!(err, textpoke::Error::BadTarget { .. }),
                "update into an unloaded object: {err}"
            );
            assert_eq!(EXT.call(1), 11, "nothing was written");
        },
    );
}

/// A dlopen / patch / dlclose cycle of one plugin copy, while this process's own sites run.
fn cycle(i: usize) {
    let p = load(i % 4);
    p.set(i % 4, true).unwrap();
    assert_eq!(p.run(i % 4), 8);
    p.retarget(1 + i % 3).unwrap();
    assert_eq!(p.call(1), 2 + (i % 3) as u64);
    p.set_all(i as u64).unwrap();
    p.set_imm(i as u64).unwrap();
    assert_eq!(p.imm(), i as u64);
    drop(p);
}

#[test]
fn thousand_plugin_cycles_while_the_executable_toggles() {
    let name = "thousand_plugin_cycles_while_the_executable_toggles";
    support::fresh_rounds(name, 3, || {
        counting_trap::install();
        support::while_busy(2, site, 1, toggle, || {
            let mut warm = 0;
            for i in 0..1000 {
                cycle(i);
                if i == 99 {
                    warm = support::rss_kib();
                }
            }
            let end = support::rss_kib();
            eprintln!("RSS after 100 cycles {warm} KiB, after 1,000 {end} KiB");
            assert!(
                end <= warm + 4096,
                "RSS grew from {warm} KiB to {end} KiB over 900 plugin cycles"
            );
        });
        counting_trap::check_both_reach_it("after 1,000 plugin cycles");
    });
}

#[test]
fn dlclose_waits_for_a_batch_in_flight() {
    fresh("dlclose_waits_for_a_batch_in_flight", || {
        let plugin = load(0);
        plugin.set(0, true).unwrap(); // its sites are registered with the patcher
        let path = plugin.path().to_path_buf();
        // Holding the patch lock stands in for a batch in flight.
        let held = textpoke::__private::patch_lock().unwrap();
        let closed = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                drop(plugin);
                closed.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            std::thread::sleep(std::time::Duration::from_millis(200));
            assert!(
                !closed.load(std::sync::atomic::Ordering::SeqCst),
                "dlclose finished while a batch was in flight"
            );
            assert!(mapped(&path), "the plugin is still mapped meanwhile");
            drop(held);
        });
        assert!(closed.load(std::sync::atomic::Ordering::SeqCst));
        assert!(!mapped(&path), "unloaded once the batch was done");
        // The patcher no longer knows its sites; the executable patches on.
        KEY.enable().unwrap();
        assert!(site());
    });
}
