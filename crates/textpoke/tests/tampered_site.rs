//! A site whose bytes were changed behind textpoke's back refuses the whole batch, and no byte
//! anywhere changes.

mod support;

use textpoke::{Batch, Error, StaticKey, static_branch_unlikely};

static TAMPERED: StaticKey = StaticKey::new();
static INNOCENT: StaticKey = StaticKey::new();

#[inline(never)]
fn first() -> bool {
    static_branch_unlikely!(TAMPERED)
}
#[inline(never)]
fn second() -> bool {
    static_branch_unlikely!(TAMPERED)
}
#[inline(never)]
fn innocent() -> bool {
    static_branch_unlikely!(INNOCENT)
}

#[test]
fn mismatch_refuses_the_batch_and_writes_nothing() {
    let sites = TAMPERED.sites().unwrap();
    assert_eq!(sites.len(), 2);
    let victim = sites[1];
    // Another valid 5-byte NOP: behaviour is unchanged, but it is not what textpoke wrote.
    support::poke_behind_back(victim, &[0x66, 0x0f, 0x1f, 0x40, 0x00]);
    assert!(!first() && !second());

    let before = support::snapshot_sites();
    let err = Batch::new()
        .enable(&INNOCENT)
        .enable(&TAMPERED)
        .commit()
        .unwrap_err();
    match &err {
        Error::SiteMismatch {
            site,
            expected,
            found,
        } => {
            assert_eq!(site.addr, victim);
            let item = site.item().expect("the site's key is named");
            assert_eq!(item.kind, "key");
            assert_eq!(item.name(), Some("tampered_site::TAMPERED"));
            assert_eq!(item.declared.file(), file!());
            assert_eq!(item.declared.line(), 8, "where TAMPERED is declared");
            assert_eq!(expected.bytes, [0x0f, 0x1f, 0x44, 0x00, 0x00]);
            assert_eq!(found.bytes, [0x66, 0x0f, 0x1f, 0x40, 0x00]);
        }
        other => panic!("expected SiteMismatch, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains(&format!("{victim:#x}")), "{message}");
    assert!(message.contains("nothing written"), "{message}");
    // Named as a user reads them: the function the site is in, and its key's path and line.
    assert!(message.contains("<tampered_site::second+0x"), "{message}");
    assert!(
        message.contains(
            "(key tampered_site::TAMPERED, declared at crates/textpoke/tests/tampered_site.rs:8:"
        ),
        "{message}"
    );

    assert_eq!(support::snapshot_sites(), before, "no site may change");
    assert!(!TAMPERED.is_enabled() && !INNOCENT.is_enabled());
    assert!(!first() && !second() && !innocent());

    // The same error from the single-key API, and the untouched key still works alone.
    assert!(matches!(TAMPERED.enable(), Err(Error::SiteMismatch { .. })));
    INNOCENT.enable().unwrap();
    assert!(innocent());
}
