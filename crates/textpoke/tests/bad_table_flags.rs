//! A table entry with flags this version does not know (another format) is refused.

use textpoke::{Error, StaticKey, static_branch_unlikely};

static KEY: StaticKey = StaticKey::new();

#[inline(never)]
fn site() -> bool {
    static_branch_unlikely!(KEY)
}

core::arch::global_asm!(
    ".pushsection textpoke_jump_v2,\"aR\",@progbits",
    ".balign 4",
    ".long {code} - .",
    ".long {code} - .",
    ".long {key} + 4 - .",
    ".popsection",
    code = sym site,
    key = sym KEY,
);

#[test]
fn unknown_flags_are_an_error() {
    let err = KEY.enable().unwrap_err();
    assert!(
        matches!(err, Error::UnknownFlags { flags: 4, .. }),
        "expected UnknownFlags, got {err:?}"
    );
    assert!(!site());
}
