//! The immediate-value site table and its lazy index.
//!
//! Format `v1`: each entry is 12 bytes: two self-relative 32-bit offsets (the site, a `mov` of
//! an immediate into a register; the immediate, an `ImmCore` with signature `tpi1`), then the
//! register's number (0 `rax` to 15 `r15`, as the instruction encodes it) and three reserved
//! zero bytes. Whether the site is `mov r32, imm32` or `movabs r64, imm64` is the immediate's
//! width, so a site's bytes follow from the entry and the value alone.

use super::ImmCore;
use crate::arch::{GPRS, mov_imm_len};
use crate::engine::{self, PatchGuard};
use crate::table::{IndexCell, Table};
use crate::{Error, Result};

/// Name of the section holding immediate-value entries.
pub const IMM_SECTION: &str = "textpoke_imm_v1";
/// Bytes per entry.
pub const IMM_ENTRY_SIZE: usize = 12;

// Guarantees the section exists (and with it the start/stop symbols) even with no sites.
core::arch::global_asm!(
    ".pushsection textpoke_imm_v1,\"aR\",@progbits",
    ".popsection"
);

unsafe extern "C" {
    #[link_name = "__start_textpoke_imm_v1"]
    static IMM_START: [u8; 0];
    #[link_name = "__stop_textpoke_imm_v1"]
    static IMM_STOP: [u8; 0];
}

/// One read site of an immediate value, as validated from the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImmSite {
    /// Address of the `mov`.
    pub addr: usize,
    /// Address of the immediate it reads.
    pub imm: usize,
    /// The destination register's number (0 `rax` to 15 `r15`).
    pub reg: u8,
    /// `movabs r64, imm64` (10 bytes) rather than `mov r32, imm32` (5 bytes, 6 for `r8d`-`r15d`).
    pub wide: bool,
}

impl ImmSite {
    /// Length of the site's `mov`.
    pub fn insn_len(&self) -> usize {
        mov_imm_len(self.reg, self.wide)
    }
}

/// Every validated site, sorted by (immediate, address).
pub(crate) struct ImmIndex {
    sites: Vec<ImmSite>,
}

impl ImmIndex {
    pub(crate) fn sites_of(&self, imm: usize) -> &[ImmSite] {
        let lo = self.sites.partition_point(|s| s.imm < imm);
        let hi = self.sites.partition_point(|s| s.imm <= imm);
        &self.sites[lo..hi]
    }

    pub(crate) fn all(&self) -> &[ImmSite] {
        &self.sites
    }

    /// The immediate whose site is at `addr`.
    pub(crate) fn owner(&self, addr: usize) -> Option<usize> {
        self.sites.iter().find(|s| s.addr == addr).map(|s| s.imm)
    }
}

pub(crate) static INDEX: IndexCell<Result<ImmIndex>> = IndexCell::new();

/// The index, built and validated on first use. A table that fails validation fails every
/// later call the same way.
pub(crate) fn imm_index(lock: &PatchGuard) -> Result<&'static ImmIndex> {
    INDEX
        .get_or_init(lock, || build(lock, table_bounds()))
        .as_ref()
        .map_err(Clone::clone)
}

fn table_bounds() -> (usize, usize) {
    // Only the addresses of the linker-defined symbols are taken; nothing is read.
    (
        (&raw const IMM_START) as usize,
        (&raw const IMM_STOP) as usize,
    )
}

fn build(lock: &PatchGuard, (start, stop): (usize, usize)) -> Result<ImmIndex> {
    let table = Table {
        name: IMM_SECTION,
        entry_size: IMM_ENTRY_SIZE,
        start,
        stop,
    };
    let entries = table.entries()?;
    let Some(object) = &entries.object else {
        return Ok(ImmIndex { sites: Vec::new() });
    };
    let mut sites = Vec::with_capacity(entries.count);
    for index in 0..entries.count {
        let (addr, imm) = (entries.field(index, 0), entries.field(index, 1));
        let (low, high) = (entries.half(index, 8), entries.half(index, 10));
        let reserved = u32::from(low >> 8) | u32::from(high) << 8;
        if reserved != 0 {
            return Err(Error::UnknownFlags {
                table: IMM_SECTION,
                index,
                flags: reserved,
            });
        }
        let reg = low as u8;
        if usize::from(reg) >= GPRS {
            return Err(Error::BadTable {
                table: IMM_SECTION,
                why: format!("entry {index}: register number {reg} (r15 is 15)"),
            });
        }
        // Never written: the linker may put it in read-only data.
        table.check_target(
            object,
            index,
            imm,
            size_of::<ImmCore>(),
            ImmCore::SIGNATURE,
            false,
        )?;
        // SAFETY: just checked: `imm` is an aligned `ImmCore` (its signature) in a readable
        // segment of the object, and immediates are statics, never written.
        let core = unsafe { &*(imm as *const ImmCore) };
        let wide = core.wide().ok_or_else(|| Error::BadTable {
            table: IMM_SECTION,
            why: format!("entry {index}: the immediate's width is {}", core.width),
        })?;
        let site = ImmSite {
            addr,
            imm,
            reg,
            wide,
        };
        table.check_text(object, "site", addr, site.insn_len())?;
        sites.push(site);
    }
    sites.sort_unstable_by_key(|s| s.addr);
    let extents: Vec<(usize, usize)> = sites.iter().map(|s| (s.addr, s.insn_len())).collect();
    table.check_overlaps(&extents)?;
    engine::register_sites(lock, sites.iter().map(|s| s.addr).collect())?;
    sites.sort_unstable_by_key(|s| (s.imm, s.addr));
    Ok(ImmIndex { sites })
}

/// Validates the table and lists every immediate-value site.
pub fn imm_sites() -> Result<Vec<ImmSite>> {
    let lock = engine::lock()?;
    let mut sites = imm_index(&lock)?.all().to_vec();
    sites.sort_unstable_by_key(|s| s.addr);
    Ok(sites)
}
