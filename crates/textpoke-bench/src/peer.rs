//! The peer we compare against: the `static-keys` crate (0.8.2).
//!
//! Its table, section `__static_keys`, holds one entry of three `usize`s per site: the site, the
//! jump target and the key (bit 0: likely). `global_init` rewrites the entries in place from
//! relative to absolute addresses and sorts them by key. Toggling a key rewrites each site by
//! copying its page into a fresh anonymous mapping, patching the copy, making it executable and
//! `mremap`-ing it over the original: three system calls per site, and no core serialization.
//! Its docs forbid toggling while other threads run, and toggling from two threads at once.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Mutex, Once};

use crate::sites::PeerKey;
use crate::{BenchError, Result};

unsafe extern "C" {
    // Linker-defined bounds of static-keys' table. Only their addresses are taken here; the
    // entries are read through raw pointers.
    #[link_name = "__start___static_keys"]
    static PEER_TABLE_START: [usize; 0];
    #[link_name = "__stop___static_keys"]
    static PEER_TABLE_STOP: [usize; 0];
}

/// Words per static-keys table entry (site, target, key).
const ENTRY_WORDS: usize = 3;

static INIT: Once = Once::new();
/// Serializes our calls into static-keys, which must never patch from two threads at once.
static PEER_LOCK: Mutex<()> = Mutex::new(());

/// Runs static-keys' `global_init` once, before anything else touches its keys or table.
pub fn init() {
    INIT.call_once(static_keys::global_init);
}

fn table_bounds() -> (usize, usize) {
    (
        (&raw const PEER_TABLE_START) as usize,
        (&raw const PEER_TABLE_STOP) as usize,
    )
}

/// Size in bytes of static-keys' table section.
pub fn table_bytes() -> usize {
    let (start, stop) = table_bounds();
    stop - start
}

/// Table bytes per entry, measured as section size over entry count.
pub fn table_bytes_per_site() -> f64 {
    match static_keys::jump_entries_count() {
        0 => 0.0,
        n => table_bytes() as f64 / n as f64,
    }
}

/// Number of table entries that name `key`, read from static-keys' (initialized) table.
pub fn entries_of(key: &PeerKey) -> Result<usize> {
    init();
    let _lock = PEER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (start, stop) = table_bounds();
    let word = std::mem::size_of::<usize>();
    if (stop - start) % (ENTRY_WORDS * word) != 0 {
        return Err(BenchError::new(format!(
            "static-keys' table is {} bytes, not a whole number of {}-byte entries; \
             its format is not the 0.8.2 one this benchmark knows",
            stop - start,
            ENTRY_WORDS * word
        )));
    }
    let want = key as *const PeerKey as usize;
    let mut count = 0;
    for entry in (start..stop).step_by(ENTRY_WORDS * word) {
        // SAFETY: `entry + 2 * word` is the key word of an entry inside the section the linker
        // bounded; `global_init` (run above, once) finished rewriting the entries, and static-keys
        // only reads them afterwards. `PEER_LOCK` keeps our own toggles out meanwhile.
        let key_word = unsafe { std::ptr::read_volatile((entry + 2 * word) as *const usize) };
        if key_word & !1 == want {
            count += 1;
        }
    }
    Ok(count)
}

/// Sets static-keys' `key` to `on`, patching every one of its sites.
///
/// Calls are serialized with each other and happen after `global_init`. A panic inside
/// static-keys (it panics when a system call fails) is returned as an error.
///
/// # Safety
///
/// static-keys documents toggling while other threads run as unsupported. The caller either
/// ensures no other thread runs code on the pages holding `key`'s sites, or accepts the risk
/// that [`crate::toggle`] explains and reports (busy threads running the sites).
pub unsafe fn set(key: &'static PeerKey, on: bool) -> Result<()> {
    init();
    let _lock = PEER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    catch_unwind(AssertUnwindSafe(|| {
        if on {
            // SAFETY: after `global_init` (above), serialized by `PEER_LOCK`; concurrent
            // execution of the sites is the caller's contract.
            unsafe { key.enable() }
        } else {
            // SAFETY: as for `enable`.
            unsafe { key.disable() }
        }
    }))
    .map_err(|_| BenchError::new("static-keys panicked while patching (see the message above)"))
}
