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

/// A replacement longer than its site, as a stale table would hold it: `alternative!` refuses
/// it at build time (a `compile_fail` doc test on the macro shows it).
#[inline(never)]
fn too_long() -> u64 {
    let n: u64;
    // SAFETY: every sequence only writes `n`.
    unsafe {
        textpoke::__arch_alternative!(
            ["mov {n:e}, 1"] ["sse2": "mov {n}, 2", "add {n}, 3"];
            n = out(reg) n,
        );
    }
    n
}

/// A site that can be applied, beside the two that cannot.
#[inline(never)]
fn good() -> u64 {
    let n: u64;
    // SAFETY: every sequence only writes `n`.
    unsafe {
        textpoke::alternative!(
            default: ["mov {n}, 1"],
            "sse2" => ["mov {n}, 2"]; // architectural on x86-64
            n = out(reg) n,
        );
    }
    n
}

#[test]
fn bad_sites_are_refused_alone_and_the_others_applied() {
    let before = (unknown_feature(), too_long());
    // The first run applied what it could and recorded the first refusal.
    let first = textpoke::alternatives::first_use_error().expect("the first use refused sites");
    assert!(matches!(first, Error::BadAlternative { .. }), "{first:?}");
    assert!(textpoke::alternatives::applied());
    let refused = textpoke::alternatives::refused();
    assert_eq!(refused.len(), 2, "{refused:?}");
    let whys: Vec<String> = refused.iter().map(ToString::to_string).collect();
    assert!(
        whys.iter().any(|w| w.contains("no-such-feature"))
            && whys.iter().any(|w| w.contains("longer than")),
        "{whys:?}"
    );
    for e in refused {
        let Error::BadAlternative { site, .. } = e else {
            panic!("expected BadAlternative, got {e:?}");
        };
        assert_ne!(site.addr, 0);
    }
    assert_eq!(
        (unknown_feature(), too_long()),
        before,
        "refused sites keep running their defaults"
    );
    assert_eq!(before, (1, 1));
    assert_eq!(good(), 2, "the good site was applied");
    let again = textpoke::alternatives::apply().unwrap_err();
    assert_eq!(
        again.to_string(),
        first.to_string(),
        "apply keeps its outcome"
    );
}
