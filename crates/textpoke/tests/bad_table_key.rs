//! Table entries naming something that is not a key, or carrying unknown flags, are refused.

use textpoke::{Error, StaticKey, static_branch_unlikely};

static KEY: StaticKey = StaticKey::new();
static NOT_A_KEY: [u64; 2] = [0; 2];

#[inline(never)]
fn site() -> bool {
    static_branch_unlikely!(KEY)
}

// A hand-made entry whose key field points at a plain array: the stale-table case, where an
// entry's key offset no longer lands on a key.
core::arch::global_asm!(
    ".pushsection textpoke_jump_v2,\"aR\",@progbits",
    ".balign 4",
    "2:",
    ".long {code} - .",
    ".long {code} - .",
    ".long {fake} - .",
    ".popsection",
    code = sym site,
    fake = sym NOT_A_KEY,
);

#[test]
fn unknown_key_is_an_error_and_nothing_is_written() {
    let before = textpoke::__private::read_code(site as *const () as usize, 16).unwrap();
    let err = KEY.enable().unwrap_err();
    match &err {
        Error::UnknownKey { addr, .. } => assert_eq!(addr.addr, NOT_A_KEY.as_ptr() as usize),
        other => panic!("expected UnknownKey, got {other:?}"),
    }
    assert_eq!(
        textpoke::__private::read_code(site as *const () as usize, 16).unwrap(),
        before
    );
    assert!(!site());
}
