//! Every example runs to success, so none can rot. `cargo test` builds the examples next to
//! the test binaries (`target/<profile>/examples/`).

use std::path::PathBuf;
use std::process::Command;

fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/examples/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary in target/<profile>/deps")
        .join("examples");
    dir.join(name)
}

fn run(name: &str, env: &[(&str, &str)]) -> String {
    run_args(name, &[], env)
}

fn run_args(name: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let path = example(name);
    assert!(
        path.exists(),
        "{} was not built (cargo test builds examples)",
        path.display()
    );
    let out = Command::new(&path)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn static_keys_example() {
    let out = run("static_keys", &[]);
    assert!(out.contains("traced, tracing switched"), "{out}");
}

#[test]
fn static_calls_example() {
    let out = run("static_calls", &[]);
    assert!(out.contains("FAST(20) = 40"), "{out}");
}

#[test]
fn alternatives_example_both_ways() {
    let out = run("alternatives", &[]);
    assert!(out.contains("SUM(1..=1000) = 500500"), "{out}");
    let masked = run("alternatives", &[("TEXTPOKE_NO_FEATURES", "popcnt,avx2")]);
    assert!(masked.contains(": the default"), "{masked}");
}

#[test]
fn functions_example() {
    let out = run("functions", &[]);
    assert!(out.contains("functions::net::parse"), "{out}");
    assert!(out.contains("\"5:abc\" is refused now"), "{out}");
}

#[test]
fn immediates_example() {
    let out = run("immediates", &[]);
    assert!(out.contains("SAMPLE_SHIFT = 10 (3 read sites)"), "{out}");
}

#[test]
fn control_example_takes_named_changes_at_start_up() {
    let quiet = run_args("control", &["0.05"], &[]);
    assert!(quiet.contains("serves textpoke ctl on"), "{quiet}");
    assert!(
        !quiet.contains("request 0") && !quiet.contains("audited 0,"),
        "{quiet}"
    );
    let out = run_args(
        "control",
        &["0.05"],
        &[(
            "TEXTPOKE",
            "control::VERBOSE=on,control::SAMPLE_EVERY=1,noop=control::audit",
        )],
    );
    assert!(out.contains("request 0\nrequest 1\n"), "{out}");
    assert!(out.contains("audited 0,"), "{out}");
}
