//! The static-branch site table: its format, validation, and the lazy index.
//!
//! Format `v1` (the version is in the section name, so a binary never mixes formats): each
//! entry is 12 bytes, three signed 32-bit offsets, each relative to its own field's address:
//! the site, the jump target, and the key plus flags (bit 0: `likely` site; bits 1-2 reserved
//! and zero). The section is read-only, and never written: position-relative entries need no
//! dynamic relocation, and the index built from them lives on the heap.

use std::sync::OnceLock;

use crate::arch::JUMP_LABEL_LEN;
use crate::key::{KEY_MAGIC, KeyCore};
use crate::os::{self, PatchGuard};
use crate::{Error, Location, Result};

/// Name of the section holding static-branch entries.
pub const JUMP_SECTION: &str = "textpoke_jump_v1";
/// Bytes per entry.
pub const JUMP_ENTRY_SIZE: usize = 12;
const FLAG_LIKELY: usize = 1;
const FLAG_MASK: usize = 7;

// Guarantees the section exists (and with it the start/stop symbols) even with no sites.
core::arch::global_asm!(
    ".pushsection textpoke_jump_v1,\"aR\",@progbits",
    ".popsection"
);

unsafe extern "C" {
    #[link_name = "__start_textpoke_jump_v1"]
    static JUMP_START: [u8; 0];
    #[link_name = "__stop_textpoke_jump_v1"]
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

static INDEX: OnceLock<Result<JumpIndex>> = OnceLock::new();

/// The index, built and validated on first use. A table that fails validation fails every
/// later call the same way.
pub(crate) fn jump_index(lock: &PatchGuard) -> Result<&'static JumpIndex> {
    INDEX
        .get_or_init(|| build(lock, table_bounds()))
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
    let bad = |why: String| Error::BadTable {
        table: JUMP_SECTION,
        why,
    };
    let len = stop
        .checked_sub(start)
        .ok_or_else(|| bad("end before start".into()))?;
    if len % JUMP_ENTRY_SIZE != 0 {
        return Err(bad(format!(
            "size {len} is not a multiple of {JUMP_ENTRY_SIZE}"
        )));
    }
    if len == 0 {
        return Ok(JumpIndex { sites: Vec::new() });
    }
    let object = os::object_containing(start, len)
        .ok_or_else(|| bad(format!("{start:#x} is not inside any loaded object")))?;
    let mut sites = Vec::with_capacity(len / JUMP_ENTRY_SIZE);
    for index in 0..len / JUMP_ENTRY_SIZE {
        let entry = start + index * JUMP_ENTRY_SIZE;
        let field = |n: usize| {
            let at = entry + 4 * n;
            // SAFETY: `at` is a 4-aligned field inside the table section, which the linker
            // bounded by the start/stop symbols.
            let off = unsafe { (at as *const i32).read() };
            at.wrapping_add_signed(off as isize)
        };
        let (addr, target, key_and_flags) = (field(0), field(1), field(2));
        let flags = key_and_flags & FLAG_MASK;
        let key = key_and_flags & !FLAG_MASK;
        if flags & !FLAG_LIKELY != 0 {
            return Err(Error::UnknownFlags {
                table: JUMP_SECTION,
                index,
                flags: flags as u32,
            });
        }
        for (what, at, len) in [("site", addr, JUMP_LABEL_LEN), ("jump target", target, 1)] {
            if object.text_segment(at, len).is_none() {
                return Err(Error::OutsideText {
                    what,
                    addr: Location::of(at),
                    table: JUMP_SECTION,
                    object: object.name.clone(),
                });
            }
        }
        check_key(&object, index, key)?;
        sites.push(JumpSite {
            addr,
            target,
            key,
            likely: flags & FLAG_LIKELY != 0,
        });
    }
    sites.sort_unstable_by_key(|s| s.addr);
    for pair in sites.windows(2) {
        if pair[0].addr + JUMP_LABEL_LEN > pair[1].addr {
            return Err(Error::Overlap {
                first: Location::of(pair[0].addr),
                second: Location::of(pair[1].addr),
                table: JUMP_SECTION,
            });
        }
    }
    let addrs: &'static [usize] = Vec::leak(sites.iter().map(|s| s.addr).collect());
    crate::engine::register_sites(lock, addrs)?;
    sites.sort_unstable_by_key(|s| (s.key, s.addr));
    Ok(JumpIndex { sites })
}

fn check_key(object: &os::Object, index: usize, key: usize) -> Result<()> {
    let size = std::mem::size_of::<KeyCore>();
    let reject = |why| Error::UnknownKey {
        table: JUMP_SECTION,
        index,
        addr: Location::of(key),
        why,
    };
    let Some(seg) = object.segments.iter().find(|s| s.contains(key, size)) else {
        return Err(reject("outside the declaring object's segments"));
    };
    if !seg.write {
        return Err(reject("in a read-only segment"));
    }
    // SAFETY: `key` is 8-aligned (low bits masked) and `size` bytes of it lie in a mapped,
    // writable (hence readable) segment of the object.
    let magic = unsafe { KeyCore::magic_at(key) };
    if magic != KEY_MAGIC {
        return Err(reject("no key signature there (stale or foreign table?)"));
    }
    Ok(())
}

/// Size in bytes of this binary's static-branch table section.
pub fn jump_table_bytes() -> usize {
    let (start, stop) = table_bounds();
    stop - start
}

/// Validates the table and lists every site.
pub fn jump_sites() -> Result<Vec<JumpSite>> {
    let lock = os::patch_lock();
    let mut sites = jump_index(&lock)?.all().to_vec();
    sites.sort_unstable_by_key(|s| s.addr);
    Ok(sites)
}
