//! A table entry whose site lies outside the object's executable segments is refused before
//! anything is written.

use textpoke::{Error, StaticKey};

static KEY: StaticKey = StaticKey::new();
/// Data that a bad entry points at. It must never be written.
static mut NOT_CODE: [u8; 16] = [0x5a; 16];

// A hand-made entry: site and target point into .data, the key is real.
core::arch::global_asm!(
    ".pushsection textpoke_jump_v2,\"aR\",@progbits",
    ".balign 4",
    ".long {data} - .",
    ".long {data} - .",
    ".long {key} - .",
    ".popsection",
    data = sym NOT_CODE,
    key = sym KEY,
);

#[test]
fn site_outside_text_is_an_error_and_nothing_is_written() {
    let err = KEY.enable().unwrap_err();
    match &err {
        Error::OutsideText { what, addr, .. } => {
            assert_eq!(*what, "site");
            assert_eq!(addr.addr, (&raw const NOT_CODE) as usize);
        }
        other => panic!("expected OutsideText, got {other:?}"),
    }
    assert!(err.to_string().contains("textpoke_jump_v2"), "{err}");
    // SAFETY: nothing else touches NOT_CODE; we only read it.
    let data = unsafe { (&raw const NOT_CODE).read() };
    assert_eq!(data, [0x5a; 16]);
    assert!(!KEY.is_enabled());
    // Validation failures are sticky: the table is not trusted later either.
    assert!(matches!(
        textpoke::tables::jump_sites(),
        Err(Error::OutsideText { .. })
    ));
}
