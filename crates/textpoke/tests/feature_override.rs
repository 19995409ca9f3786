//! `TEXTPOKE_NO_FEATURES` makes textpoke act as if features were absent.

use std::process::Command;

use textpoke::Error;
use textpoke::features::{OVERRIDE_VAR, has};

/// Runs this test binary's `test` in a child with the override set to `list`.
fn child(test: &str, list: &str) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture"])
        .env(OVERRIDE_VAR, list)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("1 passed"),
        "the child ran the test: {stdout}"
    );
    stdout
}

#[test]
fn masked_features_read_as_absent() {
    match std::env::var(OVERRIDE_VAR).as_deref() {
        Ok("sse2, popcnt") => {
            assert!(!has("sse2").unwrap());
            assert!(!has("popcnt").unwrap());
            assert!(has("sse").unwrap(), "unmasked features are unaffected");
        }
        Ok(other) => panic!("unexpected override {other:?}"),
        Err(_) => {
            assert!(has("sse2").unwrap() && has("popcnt").unwrap());
            child("masked_features_read_as_absent", "sse2, popcnt");
        }
    }
}

#[test]
fn a_bad_override_is_an_error_naming_the_variable() {
    match std::env::var(OVERRIDE_VAR).as_deref() {
        Ok("avx2,no-such-feature") => match has("avx2") {
            Err(Error::BadOverride { var, why }) => {
                assert_eq!(var, OVERRIDE_VAR);
                assert!(why.contains("no-such-feature"), "{why}");
            }
            other => panic!("expected BadOverride, got {other:?}"),
        },
        Ok(other) => panic!("unexpected override {other:?}"),
        Err(_) => {
            child(
                "a_bad_override_is_an_error_naming_the_variable",
                "avx2,no-such-feature",
            );
        }
    }
}
