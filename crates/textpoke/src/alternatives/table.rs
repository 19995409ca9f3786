//! The alternatives table and its lazy index.
//!
//! Format `v1`: one 20-byte entry per candidate: four self-relative 32-bit offsets (the site,
//! the out-of-line default, the candidate's code, its feature name as a NUL-terminated string,
//! empty for the default itself) and two `u16` lengths (default, candidate). A site's candidates
//! are contiguous and in priority order, the default last.

use crate::engine::{self, PatchGuard};
use crate::table::{IndexCell, Table};
use crate::{Error, Location, Result};
use std::ffi::CStr;

/// Name of the section holding alternatives.
pub const ALT_SECTION: &str = "textpoke_alt_v1";
/// Bytes per entry.
pub const ALT_ENTRY_SIZE: usize = 20;

core::arch::global_asm!(
    ".pushsection textpoke_alt_v1,\"aR\",@progbits",
    ".popsection"
);

unsafe extern "C" {
    #[link_name = "__start_textpoke_alt_v1"]
    static ALT_START: [u8; 0];
    #[link_name = "__stop_textpoke_alt_v1"]
    static ALT_STOP: [u8; 0];
}

/// One candidate for a site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Feature that selects it; empty for the default.
    pub feature: String,
    /// Where its code was assembled.
    pub code: usize,
    /// Its length.
    pub len: usize,
}

/// One alternative site, as validated from the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AltSite {
    /// The patchable site: initially a jump to the out-of-line default.
    pub addr: usize,
    /// The site's length: the default's, and at least a jump's.
    pub len: usize,
    /// The out-of-line default (behind its first-use entry, and followed by a jump back to the
    /// end of the site).
    pub default: usize,
    /// The default's length.
    pub default_len: usize,
    /// Candidates in priority order, the default last.
    pub candidates: Vec<Candidate>,
}

pub(crate) static INDEX: IndexCell<Result<Vec<AltSite>>> = IndexCell::new();

/// Every alternative site, sorted by address, validated on first use.
pub(crate) fn alt_index(lock: &PatchGuard) -> Result<&'static [AltSite]> {
    INDEX
        .get_or_init(lock, || build(lock))
        .as_ref()
        .map(Vec::as_slice)
        .map_err(Clone::clone)
}

fn build(lock: &PatchGuard) -> Result<Vec<AltSite>> {
    let table = Table {
        name: ALT_SECTION,
        entry_size: ALT_ENTRY_SIZE,
        start: (&raw const ALT_START) as usize,
        stop: (&raw const ALT_STOP) as usize,
    };
    let entries = table.entries()?;
    let Some(object) = &entries.object else {
        return Ok(Vec::new());
    };
    let mut sites: Vec<AltSite> = Vec::new();
    for index in 0..entries.count {
        let (addr, default, code, name) = (
            entries.field(index, 0),
            entries.field(index, 1),
            entries.field(index, 2),
            entries.field(index, 3),
        );
        let default_len = entries.half(index, 16) as usize;
        let len = entries.half(index, 18) as usize;
        let site_len = default_len.max(crate::arch::JUMP_LABEL_LEN);
        table.check_text(object, "alternative site", addr, site_len)?;
        // The default runs out of line before `apply`, behind its first-use entry, then jumps
        // back: all in text.
        let entry = default.wrapping_sub(crate::arch::FIRST_USE_LEN);
        let entry_len = crate::arch::FIRST_USE_LEN + default_len + 5;
        table.check_text(object, "alternative default", entry, entry_len)?;
        if !object.contains(code, len.max(1)) {
            return Err(Error::BadTable {
                table: ALT_SECTION,
                why: format!(
                    "entry {index}: code at {} is outside the object",
                    Location::of(code)
                ),
            });
        }
        let feature = read_name(object, name).ok_or_else(|| Error::BadTable {
            table: ALT_SECTION,
            why: format!("entry {index}: feature name at {name:#x} is not a short string"),
        })?;
        let candidate = Candidate { feature, code, len };
        match sites.last_mut() {
            Some(site) if site.addr == addr && site.default == default => {
                site.candidates.push(candidate)
            }
            _ => sites.push(AltSite {
                addr,
                len: site_len,
                default,
                default_len,
                candidates: vec![candidate],
            }),
        }
    }
    sites.sort_by_key(|s| s.addr);
    let extents: Vec<(usize, usize)> = sites.iter().map(|s| (s.addr, s.len)).collect();
    table.check_overlaps(&extents)?;
    engine::register_sites(lock, sites.iter().map(|s| s.addr).collect())?;
    Ok(sites)
}

/// Reads a NUL-terminated name of at most 63 bytes inside `object`.
fn read_name(object: &crate::os::Object, addr: usize) -> Option<String> {
    let max = (0..64)
        .take_while(|&n| object.contains(addr, n + 1))
        .last()?
        + 1;
    // SAFETY: `[addr, addr + max)` lies in a mapped segment of the object (checked above).
    let bytes = unsafe { std::slice::from_raw_parts(addr as *const u8, max) };
    let name = CStr::from_bytes_until_nul(bytes).ok()?;
    name.to_str().ok().map(str::to_owned)
}
