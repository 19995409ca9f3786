//! A short version of the demo: toggling while worker threads run the sites.

use std::process::Command;
use std::time::Duration;

use textpoke_cli::demo::{self, detours, functions, sites};

#[test]
fn toggling_under_load_is_consistent() {
    let report = demo::run(&demo::Config {
        duration: Duration::from_millis(1500),
        threads: 2,
        sites: 1200,
        progress: demo::Progress::Off,
        plugins: 0,
        plugin_reload: Duration::from_millis(10),
        serve: false,
    })
    .unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.keys, 3);
    assert_eq!(report.sites_per_key, sites::PER_KEY);
    assert!(report.calls > 10_000, "{report:?}");
    assert!(report.toggles > 10, "{report:?}");
    // Both paths were taken: the toggling really reached the workers.
    assert!(report.calls_enabled > 0 && report.calls_enabled < report.calls);
    assert!(report.static_call_calls > 1000, "{report:?}");
    assert!(report.static_call_updates > 10, "{report:?}");
    assert!(report.plugins.is_none());
    assert_functions_checked(&report);
    assert_detours_checked(&report);
}

/// The patchable functions were called, traced, replaced and changed in every way the demo
/// has, and every check passed.
fn assert_functions_checked(report: &demo::Report) {
    let f = &report.functions;
    assert_eq!(f.functions, functions::FUNCTIONS);
    assert_eq!(f.function_inconsistencies, 0, "{report:?}");
    assert!(f.function_calls > 1000, "{report:?}");
    // Both codes ran: the replacements really reached the workers.
    assert!(
        f.function_calls_replaced > 0 && f.function_calls_replaced < f.function_calls,
        "{report:?}"
    );
    assert!(f.function_hook_calls > 0, "{report:?}");
    assert!(
        f.function_batches > 0
            && f.function_tracer_rebuilds > 0
            && f.function_replacement_flips > 10
            && f.function_tracer_flips > 10
            && f.function_changes > f.function_batches,
        "{report:?}"
    );
    assert_eq!(f.function_tracer_stats.len(), functions::TRACERS);
    for t in &f.function_tracer_stats {
        assert!(t.starts > 0 && t.hook_calls > 0, "{report:?}");
    }
    let hooks: u64 = f.function_tracer_stats.iter().map(|t| t.hook_calls).sum();
    assert_eq!(hooks, f.function_hook_calls);
}

/// The detoured functions (libc's `labs` among them) were called, and their originals too, while
/// the detours were turned on and off alone and in batches, and every check passed.
fn assert_detours_checked(report: &demo::Report) {
    let d = &report.detours;
    assert_eq!(d.detours, detours::DETOURS);
    assert_eq!(d.detour_inconsistencies, 0, "{report:?}");
    assert!(
        d.detour_calls > 1000 && d.detour_original_calls > 0,
        "{report:?}"
    );
    // Both codes ran: the detours really reached the workers.
    assert!(
        d.detour_calls_replaced > 0 && d.detour_calls_replaced < d.detour_calls,
        "{report:?}"
    );
    // Loose: with plugins a round can take tens of milliseconds here, and a detour changes
    // alone every fourth round and in the batch of keys every eighth.
    assert!(
        d.detour_changes_batched > 0 && d.detour_changes > d.detour_changes_batched,
        "{report:?}"
    );
}

#[test]
fn plugins_loaded_toggled_and_unloaded_under_load_are_consistent() {
    let report = demo::run(&demo::Config {
        duration: Duration::from_millis(1500),
        threads: 2,
        sites: 1200,
        progress: demo::Progress::Off,
        plugins: 2,
        plugin_reload: Duration::from_millis(10),
        serve: false,
    })
    .unwrap();
    assert!(report.ok(), "{report:?}");
    let p = report.plugins.as_ref().expect("a plugin report");
    assert_eq!(p.plugins, 2);
    assert_eq!(p.plugin_inconsistencies, 0, "{report:?}");
    // Reloaded while the workers ran, and every copy unloaded at the end.
    assert!(p.plugin_loads > 2, "{report:?}");
    assert!(p.plugin_unloads >= p.plugin_loads - 2, "{report:?}");
    assert!(
        p.plugin_calls > 1000 && p.plugin_static_call_calls > 100,
        "{report:?}"
    );
    assert!(p.plugin_calls_enabled > 0 && p.plugin_calls_enabled < p.plugin_calls);
    assert!(
        p.plugin_toggles > 10 && p.plugin_static_call_updates > 0,
        "{report:?}"
    );
    // The executable's own sites, calls and functions ran and were checked too.
    assert!(report.calls > 10_000 && report.toggles > 10, "{report:?}");
    assert_functions_checked(&report);
    assert_detours_checked(&report);
}

/// Runs `textpoke demo ARGS --json`, which must succeed, and parses its output.
fn demo_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_textpoke"))
        .arg("demo")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn json_output_and_exit_status() {
    let v = demo_json(&["--seconds", "0.5", "--threads", "1", "--sites", "1000"]);
    for key in [
        "calls",
        "toggles",
        "sites",
        "threads",
        "inconsistencies",
        "toggle_us_median",
        "function_calls",
        "function_changes",
        "function_hook_calls",
        "function_tracer_stats",
        "detours",
        "detour_calls",
        "detour_calls_replaced",
        "detour_changes",
        "detour_changes_batched",
        "detour_change_us_median",
        "detour_threads_moved",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    assert_eq!(v["sites"], 1000);
    assert_eq!(v["threads"], 1);
    assert_eq!(v["inconsistencies"], 0);
    assert_eq!(v["function_inconsistencies"], 0, "{v}");
    assert_eq!(v["functions"], functions::FUNCTIONS, "{v}");
    assert_eq!(v["detour_inconsistencies"], 0, "{v}");
    assert_eq!(v["detours"], detours::DETOURS, "{v}");
    let tail = &v["tail"];
    let (slow, preempted) = (tail["changes"].as_u64(), tail["preempted"].as_u64());
    assert!(
        slow.is_some() && preempted.is_some() && preempted <= slow,
        "the long tail's causes: {v}"
    );
    assert!(tail["mean_traps_all"].as_f64().is_some(), "{v}");
    assert!(
        v.get("plugin_loads").is_none(),
        "no plugin fields without --plugins: {v}"
    );
}

#[test]
fn json_output_with_plugins() {
    let v = demo_json(&["--seconds", "1", "--plugins", "2"]);
    assert_eq!(v["inconsistencies"], 0, "{v}");
    assert_eq!(v["plugin_inconsistencies"], 0, "{v}");
    assert_eq!(v["detour_inconsistencies"], 0, "{v}");
    assert_eq!(v["plugins"], 2, "{v}");
    assert!(v["plugin_loads"].as_u64().is_some_and(|n| n > 0), "{v}");
    for key in [
        "plugin_unloads",
        "plugin_calls",
        "plugin_static_call_calls",
        "plugin_toggles",
        "plugin_toggle_us_median",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
}

#[test]
fn bad_arguments_are_refused_clearly() {
    let too_many = (sites::MAX_SITES + 1).to_string();
    for args in [
        vec!["demo", "--sites", too_many.as_str()],
        vec!["demo", "--threads", "0"],
        vec!["demo", "--plugins", "33"],
        vec!["demo", "--seconds=-1"],
        vec!["demo", "--seconds", "nan"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_textpoke"))
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("textpoke demo:"), "{args:?}: {err}");
    }
}

#[test]
fn every_demo_site_is_distinct_and_tabled() {
    for key in sites::KEY_LIST {
        assert_eq!(key.sites().unwrap(), sites::PER_KEY);
    }
}

#[test]
fn numbers_have_separators() {
    assert_eq!(demo::thousands(0), "0");
    assert_eq!(demo::thousands(999), "999");
    assert_eq!(demo::thousands(1_000), "1,000");
    assert_eq!(demo::thousands(1_234_567), "1,234,567");
}

#[test]
fn progress_shows_on_stderr_when_it_is_not_a_terminal() {
    let out = Command::new(env!("CARGO_BIN_EXE_textpoke"))
        .args(["demo", "--seconds", "2.5", "--threads", "1", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("textpoke demo: 1 s of 2 s,") && stderr.contains("changes so far"),
        "{stderr}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["inconsistencies"], 0,
        "stdout still carries only the JSON report"
    );
}
