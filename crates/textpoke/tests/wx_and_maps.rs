//! After a batch no mapping is writable and executable, and the patched text still names the
//! executable file in /proc/self/maps.

mod support;

use textpoke::{StaticKey, static_branch_likely};

static KEY: StaticKey<true> = StaticKey::new();

#[inline(never)]
fn site() -> bool {
    static_branch_likely!(KEY)
}

#[test]
fn text_stays_file_backed_and_never_writable_and_executable() {
    let addr = KEY.sites().unwrap()[0];
    KEY.disable().unwrap();
    assert!(!site());
    KEY.enable().unwrap();
    assert!(site());

    let maps = support::maps();
    for (start, end, perms, path) in &maps {
        assert!(
            !(perms.contains('w') && perms.contains('x')),
            "W+X mapping {start:#x}-{end:#x} {perms} {path}"
        );
    }
    let exe = std::fs::canonicalize("/proc/self/exe").unwrap();
    let (_, _, perms, path) = maps
        .iter()
        .find(|(s, e, _, _)| (*s..*e).contains(&addr))
        .expect("site is mapped");
    assert_eq!(
        std::path::Path::new(path),
        exe,
        "text mapping still names the executable"
    );
    assert!(perms.starts_with("r-x"), "text mapping is {perms}");
}
