//! A short version of the demo: toggling while worker threads run the sites.

use std::process::Command;
use std::time::Duration;

use textpoke_cli::demo::{self, sites};

#[test]
fn toggling_under_load_is_consistent() {
    let report = demo::run(&demo::Config {
        duration: Duration::from_millis(1500),
        threads: 2,
        sites: 1200,
        progress: false,
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
}

#[test]
fn json_output_and_exit_status() {
    let out = Command::new(env!("CARGO_BIN_EXE_textpoke"))
        .args([
            "demo",
            "--seconds",
            "0.5",
            "--threads",
            "1",
            "--sites",
            "1000",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "calls",
        "toggles",
        "sites",
        "threads",
        "inconsistencies",
        "toggle_us_median",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    assert_eq!(v["sites"], 1000);
    assert_eq!(v["threads"], 1);
    assert_eq!(v["inconsistencies"], 0);
}

#[test]
fn bad_arguments_are_refused_clearly() {
    let too_many = (sites::MAX_SITES + 1).to_string();
    for args in [
        vec!["demo", "--sites", too_many.as_str()],
        vec!["demo", "--threads", "0"],
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
