//! The static-call tables and their lazy index.
//!
//! Format `v2`: `textpoke_call_v2` has one 12-byte entry per static call, three self-relative
//! 32-bit offsets: the trampoline, the call's state (`CallCore`, signature `tpc2`, which also
//! records the call's Rust path and where it was declared), and the initial target.
//! `textpoke_callsite_v2` has one 8-byte entry per inline call site (a `call rel32` that
//! textpoke emitted itself): the site and the call's state.

use super::CallCore;
use crate::arch::{CALL_LEN, TRAMPOLINE_LEN, TRAMPOLINE_PATCH_LEN, TrampolineForm};
use crate::engine::{self, PatchGuard};
use crate::table::{IndexCell, Table};
use crate::{Error, Location, Result};

/// Name of the section holding static-call entries.
pub const CALL_SECTION: &str = "textpoke_call_v2";
/// Bytes per entry.
pub const CALL_ENTRY_SIZE: usize = 12;

/// Name of the section holding inline call sites.
pub const CALLSITE_SECTION: &str = "textpoke_callsite_v2";
/// Bytes per call-site entry.
pub const CALLSITE_ENTRY_SIZE: usize = 8;

core::arch::global_asm!(
    ".pushsection textpoke_call_v2,\"aR\",@progbits",
    ".popsection",
    ".pushsection textpoke_callsite_v2,\"aR\",@progbits",
    ".popsection",
);

unsafe extern "C" {
    #[link_name = "__start_textpoke_call_v2"]
    static CALL_START: [u8; 0];
    #[link_name = "__stop_textpoke_call_v2"]
    static CALL_STOP: [u8; 0];
    #[link_name = "__start_textpoke_callsite_v2"]
    static CALLSITE_START: [u8; 0];
    #[link_name = "__stop_textpoke_callsite_v2"]
    static CALLSITE_STOP: [u8; 0];
}

/// One static call, as validated from the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallSite {
    /// The trampoline every caller calls.
    pub trampoline: usize,
    /// The call's state.
    pub core: usize,
    /// The target the trampoline was built with.
    pub initial: usize,
}

/// Every validated static call, sorted by state address, and every inline call site, sorted
/// by (state, site).
pub(crate) struct CallIndex {
    calls: Vec<CallSite>,
    inline: Vec<(usize, usize)>,
}

impl CallIndex {
    /// The inline call sites of the call whose state is at `core`.
    pub(crate) fn inline_sites(&self, core: usize) -> impl Iterator<Item = usize> + '_ {
        let lo = self.inline.partition_point(|&(c, _)| c < core);
        let hi = self.inline.partition_point(|&(c, _)| c <= core);
        self.inline[lo..hi].iter().map(|&(_, site)| site)
    }

    /// The state of the call that `addr` belongs to: its state, its trampoline or one of its
    /// inline call sites.
    pub(crate) fn owner(&self, addr: usize) -> Option<usize> {
        let own = |c: &&CallSite| {
            c.core == addr || (c.trampoline..c.trampoline + TRAMPOLINE_LEN).contains(&addr)
        };
        let call = self.calls.iter().find(own).map(|c| c.core);
        call.or_else(|| {
            self.inline
                .iter()
                .find(|&&(_, site)| site == addr)
                .map(|&(core, _)| core)
        })
    }

    /// Every call, sorted by state address.
    pub(crate) fn calls(&self) -> &[CallSite] {
        &self.calls
    }

    pub(crate) fn find(&self, core: usize) -> Option<&CallSite> {
        self.calls
            .binary_search_by_key(&core, |c| c.core)
            .ok()
            .map(|i| &self.calls[i])
    }
}

pub(crate) static INDEX: IndexCell<Result<CallIndex>> = IndexCell::new();

/// Every static call's state address in the index, if the index was built (for teardown at
/// unload, without the lock).
pub(crate) fn cores() -> Vec<usize> {
    INDEX
        .peek()
        .and_then(|r| r.as_ref().ok())
        .map(|i| i.calls.iter().map(|c| c.core).collect())
        .unwrap_or_default()
}

/// The index, built and validated on first use.
pub(crate) fn call_index(lock: &PatchGuard) -> Result<&'static CallIndex> {
    INDEX
        .get_or_init(lock, || build(lock))
        .as_ref()
        .map_err(Clone::clone)
}

fn build(lock: &PatchGuard) -> Result<CallIndex> {
    let table = Table {
        name: CALL_SECTION,
        entry_size: CALL_ENTRY_SIZE,
        start: (&raw const CALL_START) as usize,
        stop: (&raw const CALL_STOP) as usize,
    };
    let entries = table.entries()?;
    let Some(object) = &entries.object else {
        return Ok(CallIndex {
            calls: Vec::new(),
            inline: Vec::new(),
        });
    };
    let mut calls = Vec::with_capacity(entries.count);
    for index in 0..entries.count {
        let call = CallSite {
            trampoline: entries.field(index, 0),
            core: entries.field(index, 1),
            initial: entries.field(index, 2),
        };
        table.check_text(object, "trampoline", call.trampoline, TRAMPOLINE_LEN)?;
        table.check_text(object, "call target", call.initial, 1)?;
        table.check_target(
            object,
            index,
            call.core,
            size_of::<CallCore>(),
            CallCore::SIGNATURE,
            true, // written: the call's state changes
        )?;
        if TrampolineForm::Near(call.initial)
            .code(call.trampoline)
            .is_none()
        {
            return Err(Error::OutOfRange {
                site: Location::of(call.trampoline),
                target: call.initial,
                len: TRAMPOLINE_PATCH_LEN,
            });
        }
        calls.push(call);
    }
    calls.sort_unstable_by_key(|c| c.trampoline);
    let extents: Vec<(usize, usize)> = calls
        .iter()
        .map(|c| (c.trampoline, TRAMPOLINE_LEN))
        .collect();
    table.check_overlaps(&extents)?;
    engine::register_sites(lock, calls.iter().map(|c| c.trampoline).collect())?;
    calls.sort_unstable_by_key(|c| c.core);
    if let Some(pair) = calls.windows(2).find(|p| p[0].core == p[1].core) {
        return Err(Error::BadTable {
            table: CALL_SECTION,
            why: format!(
                "two trampolines ({:#x}, {:#x}) share one static call",
                pair[0].trampoline, pair[1].trampoline
            ),
        });
    }
    let inline = build_inline(lock, &calls)?;
    Ok(CallIndex { calls, inline })
}

/// Validates the inline call sites: each a `call rel32` in the text of the object that declared
/// it, for a static call of the call table.
fn build_inline(lock: &PatchGuard, calls: &[CallSite]) -> Result<Vec<(usize, usize)>> {
    let table = Table {
        name: CALLSITE_SECTION,
        entry_size: CALLSITE_ENTRY_SIZE,
        start: (&raw const CALLSITE_START) as usize,
        stop: (&raw const CALLSITE_STOP) as usize,
    };
    let entries = table.entries()?;
    let Some(object) = &entries.object else {
        return Ok(Vec::new());
    };
    let mut sites = Vec::with_capacity(entries.count);
    for index in 0..entries.count {
        let (site, core) = (entries.field(index, 0), entries.field(index, 1));
        table.check_text(object, "call site", site, CALL_LEN)?;
        if calls.binary_search_by_key(&core, |c| c.core).is_err() {
            return Err(Error::UnknownKey {
                table: CALLSITE_SECTION,
                index,
                addr: Location::of(core),
                why: "not a static call of the call table",
            });
        }
        sites.push((core, site));
    }
    sites.sort_unstable_by_key(|&(_, site)| site);
    let extents: Vec<(usize, usize)> = sites.iter().map(|&(_, s)| (s, CALL_LEN)).collect();
    table.check_overlaps(&extents)?;
    engine::register_sites(lock, sites.iter().map(|&(_, s)| s).collect())?;
    sites.sort_unstable();
    Ok(sites)
}
