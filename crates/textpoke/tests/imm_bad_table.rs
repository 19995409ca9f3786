//! An immediate-value table entry that names something other than an immediate (a stale or
//! foreign table) is refused, and nothing is written.

use textpoke::{Error, Immediate, StaticKey, imm};

static VALUE: Immediate<u32> = Immediate::new(7);
static NOT_AN_IMMEDIATE: StaticKey = StaticKey::new();

#[inline(never)]
fn site() -> u32 {
    imm!(VALUE)
}

core::arch::global_asm!(
    ".pushsection textpoke_imm_v1,\"aR\",@progbits",
    ".balign 4",
    ".long {code} - .",
    ".long {key} - .",
    ".byte 0, 0, 0, 0",
    ".popsection",
    code = sym site,
    key = sym NOT_AN_IMMEDIATE,
);

#[test]
fn an_entry_without_the_signature_refuses_every_set() {
    for _ in 0..2 {
        let err = VALUE.set(8).unwrap_err();
        assert!(
            matches!(
                err,
                Error::UnknownKey {
                    table: "textpoke_imm_v1",
                    index: _,
                    ..
                }
            ),
            "expected UnknownKey, got {err:?}"
        );
        assert!(err.to_string().contains("no textpoke signature"), "{err}");
    }
    assert_eq!((site(), VALUE.get()), (7, 7), "nothing written");
}
