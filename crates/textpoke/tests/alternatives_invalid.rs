//! Alternatives that cannot be applied are refused, naming the site, and nothing is written.

use textpoke::Error;

/// A table entry naming a feature this version does not know, as a build of another version
/// (or a stale object) would leave it: `alternative!` itself refuses unknown names at compile
/// time, so the entry is emitted with the macro it expands to, which does not check.
#[inline(never)]
fn unknown_feature() -> u64 {
    let n: u64;
    // SAFETY: every sequence only writes `n`.
    unsafe {
        textpoke::__arch_alternative!(
            ["mov {n}, 1"] ["no-such-feature": "mov {n}, 2"];
            n = out(reg) n,
        );
    }
    n
}

#[inline(never)]
fn too_long() -> u64 {
    let n: u64;
    // SAFETY: every sequence only writes `n`.
    unsafe {
        textpoke::alternative!(
            default: ["mov {n:e}, 1"],
            "sse2" => ["mov {n}, 2", "add {n}, 3"];
            n = out(reg) n,
        );
    }
    n
}

#[test]
fn unknown_features_and_long_replacements_are_errors() {
    let before = (unknown_feature(), too_long());
    // The first run tried to apply, failed, and left the defaults running.
    let first = textpoke::alternatives::first_use_error().expect("the first use failed");
    assert!(matches!(first, Error::BadAlternative { .. }), "{first:?}");
    let err = textpoke::alternatives::apply().unwrap_err();
    let Error::BadAlternative { site, why } = &err else {
        panic!("expected BadAlternative, got {err:?}");
    };
    assert!(
        why.contains("no-such-feature") || why.contains("longer than"),
        "{why}"
    );
    assert_ne!(site.addr, 0);
    assert!(!textpoke::alternatives::applied());
    assert_eq!(
        (unknown_feature(), too_long()),
        before,
        "nothing was written"
    );
    assert_eq!(
        err.to_string(),
        first.to_string(),
        "an explicit apply tries again"
    );
    assert_eq!(before, (1, 1));
}
