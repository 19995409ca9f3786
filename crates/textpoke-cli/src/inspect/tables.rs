//! textpoke's table sections and their entries, decoded as the library's own sources define
//! them (`crates/textpoke/src/*/table.rs` and the `__arch_*` macros that emit entries).
//!
//! Every section is named `textpoke_<kind>_v<N>`: the kind and format version. Entries are
//! made of 32-bit offsets, each relative to its own field's address, so they read the same in
//! the file as in memory: no relocation touches them.

use super::elf::{Image, Section};
use super::error::InspectError;

/// The kinds of table textpoke emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `textpoke_jump_v2`: static-branch sites (12 bytes: site, jump target, key | flags).
    Jump,
    /// `textpoke_call_v2`: static calls (12 bytes: trampoline, state, initial target).
    Call,
    /// `textpoke_callsite_v2`: inline call sites (8 bytes: site, state).
    CallSite,
    /// `textpoke_alt_v1`: alternatives' candidates (20 bytes: site, default, code, feature
    /// name, then the default's and the candidate's lengths as `u16`).
    Alt,
    /// `textpoke_fn_v1`, `textpoke_fn_v2`: patchable functions (8 bytes: state, code or 0).
    Fn,
    /// `textpoke_imm_v1`: immediate-value sites (12 bytes: site, immediate, register number,
    /// three reserved zero bytes).
    Imm,
    /// `textpoke_select_v1`: `multiversion!` selectors (8 bytes: selector, owner).
    Select,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 7] = [
        Kind::Jump,
        Kind::Call,
        Kind::CallSite,
        Kind::Alt,
        Kind::Fn,
        Kind::Imm,
        Kind::Select,
    ];

    /// The kind's part of the section name.
    pub fn tag(self) -> &'static str {
        match self {
            Kind::Jump => "jump",
            Kind::Call => "call",
            Kind::CallSite => "callsite",
            Kind::Alt => "alt",
            Kind::Fn => "fn",
            Kind::Imm => "imm",
            Kind::Select => "select",
        }
    }

    /// The format versions this tool reads. `fn` v2 changed only what its entries point at
    /// (`FnMeta` grew a field and signs `tpf2`), so both versions read alike.
    pub fn versions(self) -> &'static [u32] {
        match self {
            Kind::Jump | Kind::Call | Kind::CallSite => &[2],
            Kind::Fn => &[1, 2],
            Kind::Alt | Kind::Imm | Kind::Select => &[1],
        }
    }

    /// Bytes per entry.
    pub fn entry_size(self) -> u64 {
        match self {
            Kind::Jump | Kind::Call | Kind::Imm => 12,
            Kind::CallSite | Kind::Fn | Kind::Select => 8,
            Kind::Alt => 20,
        }
    }
}

/// One `textpoke_*` section of the file.
#[derive(Clone, Debug)]
pub struct TableSection {
    /// The section's name.
    pub name: String,
    /// Its kind, if this tool knows it.
    pub kind: Option<Kind>,
    /// The format version its name carries.
    pub version: u32,
    /// Whether this tool reads this kind at this version.
    pub known: bool,
    /// The section's address.
    pub addr: u64,
    /// Its size in bytes.
    pub size: u64,
    /// Whole entries in it (0 for an unknown format).
    pub count: usize,
    /// Bytes past the last whole entry: a truncated table when not 0.
    pub spare: u64,
    /// `[__start_, __stop_)` of the section, as the linker defined them for the runtime.
    pub linker_span: Option<(u64, u64)>,
}

impl TableSection {
    /// The entry size of a known kind.
    pub fn entry_size(&self) -> Option<u64> {
        self.kind.map(Kind::entry_size)
    }

    /// The address of entry `index`.
    pub fn entry_addr(&self, index: usize) -> u64 {
        self.entry_size().map_or(self.addr, |size| {
            self.addr.wrapping_add(size.wrapping_mul(index as u64))
        })
    }
}

/// A `textpoke_jump_v2` entry.
#[derive(Clone, Debug)]
pub struct JumpEntry {
    /// Its table: an index into [`Tables::sections`].
    pub table: usize,
    /// Its index in the table.
    pub index: usize,
    /// The site: a 5-byte NOP or `jmp rel32`.
    pub site: u64,
    /// Where the JMP goes.
    pub target: u64,
    /// The key (flags masked off).
    pub key: u64,
    /// The low three bits of the key field: bit 0 `likely`, bits 1-2 reserved (zero).
    pub flags: u8,
}

impl JumpEntry {
    /// A `static_branch_likely!` site (JMP while the key is disabled).
    pub fn likely(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// A `textpoke_call_v2` entry.
#[derive(Clone, Debug)]
pub struct CallEntry {
    /// Its table: an index into [`Tables::sections`].
    pub table: usize,
    /// Its index in the table.
    pub index: usize,
    /// The trampoline every caller calls.
    pub trampoline: u64,
    /// The call's state (`CallCore`).
    pub state: u64,
    /// The compiled-in target.
    pub initial: u64,
}

/// A `textpoke_callsite_v2` entry.
#[derive(Clone, Debug)]
pub struct CallSiteEntry {
    /// Its table: an index into [`Tables::sections`].
    pub table: usize,
    /// Its index in the table.
    pub index: usize,
    /// The site: a `call rel32`.
    pub site: u64,
    /// The call's state.
    pub state: u64,
}

/// A `textpoke_alt_v1` entry: one candidate of one site.
#[derive(Clone, Debug)]
pub struct AltEntry {
    /// Its table: an index into [`Tables::sections`].
    pub table: usize,
    /// Its index in the table.
    pub index: usize,
    /// The site: initially a jump to the out-of-line default's first-use entry.
    pub site: u64,
    /// The out-of-line default.
    pub default: u64,
    /// The candidate's code.
    pub code: u64,
    /// Where the candidate's feature name lies.
    pub name_addr: u64,
    /// Its feature name (empty for the default), if it reads as a short string.
    pub feature: Option<String>,
    /// The default's length.
    pub default_len: u64,
    /// The candidate's length.
    pub len: u64,
}

impl AltEntry {
    /// The site's length: the default's, and at least a jump's.
    pub fn site_len(&self) -> u64 {
        self.default_len.max(5)
    }
}

/// A `textpoke_fn_v1`/`v2` entry.
#[derive(Clone, Debug)]
pub struct FnEntry {
    /// Its table: an index into [`Tables::sections`].
    pub table: usize,
    /// Its index in the table.
    pub index: usize,
    /// The format version of its table.
    pub version: u32,
    /// The function's state (`FnMeta`).
    pub state: u64,
    /// The function's code, where it could be named.
    pub code: Option<u64>,
}

/// A `textpoke_imm_v1` entry.
#[derive(Clone, Debug)]
pub struct ImmEntry {
    /// Its table: an index into [`Tables::sections`].
    pub table: usize,
    /// Its index in the table.
    pub index: usize,
    /// The site: `mov r32, imm32` or `movabs r64, imm64`.
    pub site: u64,
    /// The immediate (`ImmCore`).
    pub imm: u64,
    /// The destination register's number.
    pub reg: u8,
    /// The three reserved bytes (zero).
    pub reserved: [u8; 3],
}

/// A `textpoke_select_v1` entry.
#[derive(Clone, Debug)]
pub struct SelectEntry {
    /// Its table: an index into [`Tables::sections`].
    pub table: usize,
    /// Its index in the table.
    pub index: usize,
    /// The selector function.
    pub selector: u64,
    /// The owning copy of textpoke's marker (`SELECT_OWNER`).
    pub owner: u64,
}

/// Every table of the file, decoded.
#[derive(Default)]
pub struct Tables {
    /// Every `textpoke_*_vN` section, known or not.
    pub sections: Vec<TableSection>,
    /// Static-branch sites.
    pub jumps: Vec<JumpEntry>,
    /// Static calls.
    pub calls: Vec<CallEntry>,
    /// Inline call sites.
    pub callsites: Vec<CallSiteEntry>,
    /// Alternatives' candidates, in table order.
    pub alts: Vec<AltEntry>,
    /// Patchable functions' entries.
    pub fns: Vec<FnEntry>,
    /// Immediate-value sites.
    pub imms: Vec<ImmEntry>,
    /// `multiversion!` selectors.
    pub selects: Vec<SelectEntry>,
}

/// Longest feature name the runtime reads (it stops at 63 bytes).
const FEATURE_MAX: u64 = 63;

impl Tables {
    /// Finds and decodes every table section of `image`.
    pub fn read(image: &Image) -> Result<Tables, InspectError> {
        let mut tables = Tables::default();
        for section in image.sections() {
            let Some(table) = table_section(image, section) else {
                continue;
            };
            if let Some(kind) = table.kind.filter(|_| table.known) {
                let data = image.section_data(section)?;
                if data.len() as u64 != section.size {
                    return Err(InspectError::Section {
                        file: image.file.clone(),
                        section: section.name.clone(),
                        why: format!(
                            "its header says {} bytes, the file holds {}",
                            section.size,
                            data.len()
                        ),
                    });
                }
                let entries = Entries {
                    image,
                    table: &table,
                    table_index: tables.sections.len(),
                    data,
                };
                tables.decode(kind, &entries)?;
            }
            tables.sections.push(table);
        }
        Ok(tables)
    }

    /// Whether the file has any textpoke table section.
    pub fn is_empty(&self) -> bool {
        self.sections.is_empty()
    }

    fn decode(&mut self, kind: Kind, e: &Entries<'_>) -> Result<(), InspectError> {
        let table = e.table_index;
        for index in 0..e.table.count {
            match kind {
                Kind::Jump => {
                    let key_and_flags = e.field(index, 2)?;
                    self.jumps.push(JumpEntry {
                        table,
                        index,
                        site: e.field(index, 0)?,
                        target: e.field(index, 1)?,
                        key: key_and_flags & !7,
                        flags: (key_and_flags & 7) as u8,
                    });
                }
                Kind::Call => self.calls.push(CallEntry {
                    table,
                    index,
                    trampoline: e.field(index, 0)?,
                    state: e.field(index, 1)?,
                    initial: e.field(index, 2)?,
                }),
                Kind::CallSite => self.callsites.push(CallSiteEntry {
                    table,
                    index,
                    site: e.field(index, 0)?,
                    state: e.field(index, 1)?,
                }),
                Kind::Alt => {
                    let name_addr = e.field(index, 3)?;
                    self.alts.push(AltEntry {
                        table,
                        index,
                        site: e.field(index, 0)?,
                        default: e.field(index, 1)?,
                        code: e.field(index, 2)?,
                        name_addr,
                        feature: e.image.c_str(name_addr, FEATURE_MAX).map(str::to_owned),
                        default_len: e.u16(index, 16)?.into(),
                        len: e.u16(index, 18)?.into(),
                    });
                }
                Kind::Fn => {
                    // An offset of 0 resolves to the field itself: no code was recorded.
                    let code = e.field(index, 1)?;
                    self.fns.push(FnEntry {
                        table,
                        index,
                        version: e.table.version,
                        state: e.field(index, 0)?,
                        code: (code != e.table.entry_addr(index).wrapping_add(4)).then_some(code),
                    });
                }
                Kind::Imm => {
                    let [reg, r0, r1, r2] = e.array(index, 8)?;
                    self.imms.push(ImmEntry {
                        table,
                        index,
                        site: e.field(index, 0)?,
                        imm: e.field(index, 1)?,
                        reg,
                        reserved: [r0, r1, r2],
                    });
                }
                Kind::Select => self.selects.push(SelectEntry {
                    table,
                    index,
                    selector: e.field(index, 0)?,
                    owner: e.field(index, 1)?,
                }),
            }
        }
        Ok(())
    }

    /// The alternatives' sites: runs of candidates of one site and default, in table order.
    pub fn alt_sites(&self) -> Vec<&[AltEntry]> {
        self.alts
            .chunk_by(|a, b| a.site == b.site && a.default == b.default)
            .collect()
    }
}

/// `section` as a table, if its name is `textpoke_<kind>_v<N>`.
fn table_section(image: &Image, section: &Section) -> Option<TableSection> {
    let (tag, version) = section.name.strip_prefix("textpoke_")?.rsplit_once("_v")?;
    if tag.is_empty() || version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let version: u32 = version.parse().ok()?;
    let kind = Kind::ALL.into_iter().find(|k| k.tag() == tag);
    let known = kind.is_some_and(|k| k.versions().contains(&version));
    let (count, spare) = match kind.filter(|_| known) {
        Some(k) => (
            usize::try_from(section.size / k.entry_size()).ok()?,
            section.size % k.entry_size(),
        ),
        None => (0, 0),
    };
    let bound = |which| {
        image
            .symbols
            .linker_symbol(&format!("__{which}_{}", section.name))
    };
    Some(TableSection {
        name: section.name.clone(),
        kind,
        version,
        known,
        addr: section.addr,
        size: section.size,
        count,
        spare,
        linker_span: bound("start").zip(bound("stop")),
    })
}

/// A known table's bytes, read entry by entry.
struct Entries<'a> {
    image: &'a Image,
    table: &'a TableSection,
    table_index: usize,
    data: &'a [u8],
}

impl Entries<'_> {
    /// The `N` bytes at `offset` of entry `index`.
    fn array<const N: usize>(&self, index: usize, offset: u64) -> Result<[u8; N], InspectError> {
        let size = self.table.entry_size().unwrap_or(0);
        let at = index as u64 * size + offset;
        usize::try_from(at)
            .ok()
            .and_then(|at| self.data.get(at..at.checked_add(N)?))
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| InspectError::Section {
                file: self.image.file.clone(),
                section: self.table.name.clone(),
                why: format!("entry {index} lies past the section's end"),
            })
    }

    /// Field `n` of entry `index`: a 32-bit offset from the field's own address, resolved.
    fn field(&self, index: usize, n: u64) -> Result<u64, InspectError> {
        let offset = i32::from_le_bytes(self.array(index, 4 * n)?);
        let at = self.table.entry_addr(index).wrapping_add(4 * n);
        Ok(at.wrapping_add_signed(offset.into()))
    }

    /// The `u16` at byte `offset` of entry `index`.
    fn u16(&self, index: usize, offset: u64) -> Result<u16, InspectError> {
        Ok(u16::from_le_bytes(self.array(index, offset)?))
    }
}
