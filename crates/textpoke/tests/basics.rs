//! Static keys on one thread: initial states, both site shapes, refcounts, batches.

use textpoke::{Batch, Error, StaticKey, static_branch_likely, static_branch_unlikely};

static OFF: StaticKey = StaticKey::new();
static ON: StaticKey<true> = StaticKey::new();
static COUNTED: StaticKey = StaticKey::new();
static NO_SITES: StaticKey = StaticKey::new();

#[inline(never)]
fn off_unlikely() -> bool {
    static_branch_unlikely!(OFF)
}
#[inline(never)]
fn off_likely() -> bool {
    static_branch_likely!(OFF)
}
#[inline(never)]
fn on_unlikely() -> bool {
    static_branch_unlikely!(ON)
}
#[inline(never)]
fn on_likely() -> bool {
    static_branch_likely!(ON)
}
#[inline(never)]
fn counted() -> bool {
    static_branch_unlikely!(COUNTED)
}

// Keys are process-wide, so the tests that change them run in sequence in one test.
#[test]
fn keys_follow_enable_disable_inc_dec_and_batches() -> Result<(), Error> {
    // Correct before any textpoke call.
    assert!(!off_unlikely() && !off_likely());
    assert!(on_unlikely() && on_likely());
    assert!(!OFF.is_enabled() && ON.is_enabled());

    OFF.enable()?;
    assert!(off_unlikely() && off_likely() && OFF.is_enabled());
    OFF.enable()?; // idempotent
    assert_eq!(OFF.count(), 1);
    ON.disable()?;
    assert!(!on_unlikely() && !on_likely());

    let stats = Batch::new().disable(&OFF).enable(&ON).commit()?;
    assert!(!off_unlikely() && !off_likely() && on_unlikely() && on_likely());
    assert_eq!(stats.sites, 4);
    assert_eq!(stats.syncs, 2, "two core syncs per batch, not per site");

    // Last change of a repeated key wins.
    Batch::new().enable(&OFF).disable(&OFF).commit()?;
    assert!(!off_unlikely());

    // Reference counting.
    assert!(!counted());
    COUNTED.inc()?;
    COUNTED.inc()?;
    assert!(counted());
    COUNTED.dec()?;
    assert!(counted() && COUNTED.count() == 1);
    COUNTED.dec()?;
    assert!(!counted() && COUNTED.count() == 0);
    match COUNTED.dec() {
        Err(e @ Error::Underflow { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains(
                    "(key basics::COUNTED, declared at crates/textpoke/tests/basics.rs:7:"
                ),
                "the key is named: {message}"
            );
        }
        other => panic!("expected underflow, got {other:?}"),
    }
    assert_eq!(COUNTED.count(), 0);
    assert!(!counted());

    // A key without sites toggles fine and patches nothing.
    assert_eq!(Batch::new().enable(&NO_SITES).commit()?.sites, 0);
    assert!(NO_SITES.is_enabled());
    assert!(NO_SITES.sites()?.is_empty());
    assert_eq!(OFF.sites()?.len(), 2);
    Ok(())
}

#[test]
fn table_is_compact_and_validated() -> Result<(), Error> {
    let sites = textpoke::tables::jump_sites()?;
    assert!(sites.len() >= 5, "{sites:?}");
    let bytes = textpoke::__private::jump_table_bytes();
    assert_eq!(bytes, sites.len() * textpoke::tables::JUMP_ENTRY_SIZE);
    assert!(
        bytes / sites.len() <= 16,
        "{bytes} bytes for {} sites",
        sites.len()
    );
    Ok(())
}
