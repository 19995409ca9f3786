//! The static-branch site table and its lazy index.
//!
//! Format `v2`: each entry is 12 bytes, three self-relative 32-bit offsets: the site, the jump
//! target, and the key plus flags (bit 0: `likely` site; bits 1-2 reserved and zero; keys are
//! 8-aligned). The format covers what the entries point at: a key (`KeyCore`, signature
//! `tpk2`) holds its count, its signature and where it was declared (`v1` keys had no
//! declaration), so a copy of textpoke of another format reads its own section.

use super::KeyCore;
use crate::arch::JUMP_LABEL_LEN;
use crate::engine::{self, PatchGuard};
use crate::table::{IndexCell, Table};
use crate::{Error, Result};

/// Name of the section holding static-branch entries.
pub const JUMP_SECTION: &str = "textpoke_jump_v2";
/// Bytes per entry.
pub const JUMP_ENTRY_SIZE: usize = 12;
const FLAG_LIKELY: usize = 1;
const FLAG_MASK: usize = 7;

// Guarantees the section exists (and with it the start/stop symbols) even with no sites.
core::arch::global_asm!(
    ".pushsection textpoke_jump_v2,\"aR\",@progbits",
    ".popsection"
);

unsafe extern "C" {
    #[link_name = "__start_textpoke_jump_v2"]
    static JUMP_START: [u8; 0];
    #[link_name = "__stop_textpoke_jump_v2"]
    static JUMP_STOP: [u8; 0];
}

/// One static-branch site, as validated from the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JumpSite {
    /// Address of the 5-byte NOP or JMP.
    pub addr: usize,
    /// Where the JMP goes.
    pub target: usize,
    /// Address of the key that controls it.
    pub key: usize,
    /// `static_branch_likely!` (JMP when disabled) rather than `unlikely` (JMP when enabled).
    pub likely: bool,
}

impl JumpSite {
    /// Whether the site holds a JMP when its key is `enabled`.
    pub fn jumps_when(&self, enabled: bool) -> bool {
        enabled != self.likely
    }
}

/// Every validated site, sorted by (key, address).
pub(crate) struct JumpIndex {
    sites: Vec<JumpSite>,
}

impl JumpIndex {
    pub(crate) fn sites_of(&self, key: usize) -> &[JumpSite] {
        let lo = self.sites.partition_point(|s| s.key < key);
        let hi = self.sites.partition_point(|s| s.key <= key);
        &self.sites[lo..hi]
    }

    pub(crate) fn all(&self) -> &[JumpSite] {
        &self.sites
    }
}

pub(crate) static INDEX: IndexCell<Result<JumpIndex>> = IndexCell::new();

/// The index, built and validated on first use. A table that fails validation fails every
/// later call the same way.
pub(crate) fn jump_index(lock: &PatchGuard) -> Result<&'static JumpIndex> {
    INDEX
        .get_or_init(lock, || build(lock, table_bounds()))
        .as_ref()
        .map_err(Clone::clone)
}

fn table_bounds() -> (usize, usize) {
    // Only the addresses of the linker-defined symbols are taken; nothing is read.
    (
        (&raw const JUMP_START) as usize,
        (&raw const JUMP_STOP) as usize,
    )
}

fn build(lock: &PatchGuard, (start, stop): (usize, usize)) -> Result<JumpIndex> {
    let table = Table {
        name: JUMP_SECTION,
        entry_size: JUMP_ENTRY_SIZE,
        start,
        stop,
    };
    let entries = table.entries()?;
    let Some(object) = &entries.object else {
        return Ok(JumpIndex { sites: Vec::new() });
    };
    let mut sites = Vec::with_capacity(entries.count);
    for index in 0..entries.count {
        let (addr, target) = (entries.field(index, 0), entries.field(index, 1));
        let key_and_flags = entries.field(index, 2);
        let flags = key_and_flags & FLAG_MASK;
        let key = key_and_flags & !FLAG_MASK;
        if flags & !FLAG_LIKELY != 0 {
            return Err(Error::UnknownFlags {
                table: JUMP_SECTION,
                index,
                flags: flags as u32,
            });
        }
        table.check_text(object, "site", addr, JUMP_LABEL_LEN)?;
        table.check_text(object, "jump target", target, 1)?;
        // Written: the key's count changes.
        table.check_target(
            object,
            index,
            key,
            size_of::<KeyCore>(),
            KeyCore::SIGNATURE,
            true,
        )?;
        sites.push(JumpSite {
            addr,
            target,
            key,
            likely: flags & FLAG_LIKELY != 0,
        });
    }
    sites.sort_unstable_by_key(|s| s.addr);
    let extents: Vec<(usize, usize)> = sites.iter().map(|s| (s.addr, JUMP_LABEL_LEN)).collect();
    table.check_overlaps(&extents)?;
    engine::register_sites(lock, sites.iter().map(|s| s.addr).collect())?;
    sites.sort_unstable_by_key(|s| (s.key, s.addr));
    Ok(JumpIndex { sites })
}

/// Size in bytes of this binary's static-branch table section.
pub fn jump_table_bytes() -> usize {
    let (start, stop) = table_bounds();
    stop - start
}

/// Validates the table and lists every site.
pub fn jump_sites() -> Result<Vec<JumpSite>> {
    let lock = engine::lock()?;
    let mut sites = jump_index(&lock)?.all().to_vec();
    sites.sort_unstable_by_key(|s| s.addr);
    Ok(sites)
}
