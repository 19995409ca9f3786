//! The ELF file as the loader would map it, at base address 0: its allocated sections by
//! address, with the dynamic relocations that fill pointers at load time applied.
//!
//! In a PIE or shared object a pointer in data (a key's `&'static Location`, a static call's
//! name) is 0 in the file; the loader writes it from an `R_X86_64_RELATIVE` relocation's
//! addend. Reading such a pointer from the file's bytes alone would find nothing, so every
//! pointer is read through [`Image::ptr`], which knows the relocations.

use std::collections::HashMap;
use std::path::Path;

use object::elf;
use object::read::elf::{ElfFile64, FileHeader as _, ProgramHeader as _, Rela as _};
use object::read::elf::{SectionHeader as _, Sym as _};
use object::{LittleEndian, Object as _, ObjectSection as _, ObjectSymbol as _, SectionFlags};

use super::error::InspectError;
use super::symbols::{Symbol, Symbols};

/// What kind of linked file this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// An executable linked at a fixed address.
    Executable,
    /// A position-independent executable.
    PieExecutable,
    /// A shared object (a library or plugin).
    SharedObject,
}

impl FileKind {
    /// For people: `PIE executable`, ...
    pub fn describe(self) -> &'static str {
        match self {
            FileKind::Executable => "executable",
            FileKind::PieExecutable => "PIE executable",
            FileKind::SharedObject => "shared object",
        }
    }
}

/// One section of the file.
#[derive(Clone, Debug)]
pub struct Section {
    /// Its name.
    pub name: String,
    /// Its address (0 for sections that are not loaded).
    pub addr: u64,
    /// Its size in bytes, as its header says.
    pub size: u64,
    /// Where its bytes lie in the file; `None` for sections that occupy no file space
    /// (`.bss`).
    file_range: Option<(u64, u64)>,
    /// Loaded (`SHF_ALLOC`).
    pub alloc: bool,
    /// Writable (`SHF_WRITE`).
    pub write: bool,
    /// Executable (`SHF_EXECINSTR`).
    pub exec: bool,
    /// Thread-local (`SHF_TLS`): its addresses are a template's, not the program's.
    tls: bool,
}

impl Section {
    /// Whether `[addr, addr + len)` lies inside the section.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        addr >= self.addr
            && addr
                .checked_add(len)
                .is_some_and(|end| end <= self.addr.saturating_add(self.size))
    }
}

/// The file, loaded.
pub struct Image {
    /// The file's name, for messages.
    pub file: String,
    /// Executable, PIE or shared object.
    pub kind: FileKind,
    data: Vec<u8>,
    sections: Vec<Section>,
    /// Indexes into `sections` of the loaded, non-TLS ones, by address.
    by_addr: Vec<usize>,
    /// Pointer-sized words the loader fills, with what it writes there (at base 0).
    relocated: HashMap<u64, u64>,
    /// Functions and data objects by address.
    pub symbols: Symbols,
}

impl Image {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Image, InspectError> {
        let file = path.display().to_string();
        let data = std::fs::read(path).map_err(|source| InspectError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(file, data)
    }

    fn parse(file: String, data: Vec<u8>) -> Result<Image, InspectError> {
        let not_elf = |why: String| InspectError::NotElf {
            file: file.clone(),
            why,
        };
        let unsupported = |what: &str| InspectError::Unsupported {
            file: file.clone(),
            what: what.into(),
        };
        match data.get(..6) {
            Some([0x7f, b'E', b'L', b'F', class, endian]) => {
                if *class != elf::ELFCLASS64 {
                    return Err(unsupported("a 32-bit ELF file"));
                }
                if *endian != elf::ELFDATA2LSB {
                    return Err(unsupported("a big-endian ELF file"));
                }
            }
            _ => return Err(not_elf("it does not start with the ELF signature".into())),
        }
        let elf = ElfFile64::<LittleEndian>::parse(&*data)
            .map_err(|e| not_elf(format!("damaged headers: {e}")))?;
        let endian = elf.endian();
        let header = elf.elf_header();
        if header.e_machine(endian) != elf::EM_X86_64 {
            return Err(unsupported(&format!(
                "an ELF file for machine {}",
                header.e_machine(endian)
            )));
        }
        let kind = match header.e_type(endian) {
            elf::ET_EXEC => FileKind::Executable,
            elf::ET_DYN => {
                let interp = elf
                    .elf_program_headers()
                    .iter()
                    .any(|p| p.p_type(endian) == elf::PT_INTERP);
                if interp {
                    FileKind::PieExecutable
                } else {
                    FileKind::SharedObject
                }
            }
            elf::ET_REL => return Err(unsupported("an object file, not linked yet")),
            elf::ET_CORE => return Err(unsupported("a core dump")),
            other => return Err(unsupported(&format!("an ELF file of type {other}"))),
        };
        let sections = read_sections(&elf);
        let mut by_addr: Vec<usize> = (0..sections.len())
            .filter(|&i| sections[i].alloc && !sections[i].tls && sections[i].size > 0)
            .collect();
        by_addr.sort_by_key(|&i| sections[i].addr);
        let relocated = read_relocations(&elf, &file)?;
        let (symbols, linker) = read_symbols(&elf);
        let symbols = Symbols::new(symbols, linker, eh_frame(&elf));
        drop(elf);
        Ok(Image {
            file,
            kind,
            data,
            sections,
            by_addr,
            relocated,
            symbols,
        })
    }

    /// Every section, in header order.
    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    /// The first section named `name`.
    pub fn section_named(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// The bytes of `section` in the file (zeros are not made up: a section without file
    /// space has none).
    pub fn section_data(&self, section: &Section) -> Result<&[u8], InspectError> {
        let Some((offset, len)) = section.file_range else {
            return Ok(&[]);
        };
        usize::try_from(offset)
            .ok()
            .zip(usize::try_from(len).ok())
            .and_then(|(o, l)| self.data.get(o..o.checked_add(l)?))
            .ok_or_else(|| InspectError::Section {
                file: self.file.clone(),
                section: section.name.clone(),
                why: format!(
                    "its {len} bytes at file offset {offset:#x} lie past the end of the file \
                     ({} bytes)",
                    self.data.len()
                ),
            })
    }

    /// The loaded section that holds `[addr, addr + len)`.
    pub fn section_at(&self, addr: u64, len: u64) -> Option<&Section> {
        let k = self
            .by_addr
            .partition_point(|&i| self.sections[i].addr <= addr);
        let section = &self.sections[*self.by_addr.get(k.checked_sub(1)?)?];
        section.contains(addr, len).then_some(section)
    }

    /// Whether `[addr, addr + len)` lies in an executable section.
    pub fn in_text(&self, addr: u64, len: u64) -> bool {
        self.section_at(addr, len).is_some_and(|s| s.exec)
    }

    /// The file's bytes at `[addr, addr + len)`, as loaded, before relocation. `None` where
    /// they do not lie in one section with file space.
    pub fn bytes(&self, addr: u64, len: u64) -> Option<&[u8]> {
        let section = self.section_at(addr, len)?;
        let (offset, file_len) = section.file_range?;
        let start = addr - section.addr;
        if start.checked_add(len)? > file_len {
            return None;
        }
        let from = usize::try_from(offset.checked_add(start)?).ok()?;
        self.data
            .get(from..from.checked_add(usize::try_from(len).ok()?)?)
    }

    /// The `N` bytes at `addr`.
    pub fn array<const N: usize>(&self, addr: u64) -> Option<[u8; N]> {
        self.bytes(addr, N as u64)?.try_into().ok()
    }

    /// The `u32` at `addr`.
    pub fn u32(&self, addr: u64) -> Option<u32> {
        self.array(addr).map(u32::from_le_bytes)
    }

    /// The `u64` at `addr`, as the file holds it.
    pub fn u64(&self, addr: u64) -> Option<u64> {
        self.array(addr).map(u64::from_le_bytes)
    }

    /// The pointer at `addr` as the loader leaves it (at base 0): a relocation's value where
    /// one fills it, else the file's bytes (a fixed-address executable's pointers, or implicit
    /// addends).
    pub fn ptr(&self, addr: u64) -> Option<u64> {
        match self.relocated.get(&addr) {
            Some(&value) => Some(value),
            None => self.u64(addr),
        }
    }

    /// The `&str` (pointer, length) at `addr`, if it points at at most `max` bytes of UTF-8
    /// in the file.
    pub fn str_at(&self, addr: u64, max: u64) -> Option<&str> {
        let (ptr, len) = (self.ptr(addr)?, self.u64(addr.checked_add(8)?)?);
        if len > max {
            return None;
        }
        std::str::from_utf8(self.bytes(ptr, len)?).ok()
    }

    /// The NUL-terminated string of at most `max` bytes at `addr`.
    pub fn c_str(&self, addr: u64, max: u64) -> Option<&str> {
        let section = self.section_at(addr, 1)?;
        let room = (section.addr.saturating_add(section.size) - addr).min(max + 1);
        let bytes = self.bytes(addr, room)?;
        let end = bytes.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&bytes[..end]).ok()
    }
}

fn read_sections(elf: &ElfFile64<'_, LittleEndian>) -> Vec<Section> {
    elf.sections()
        .map(|s| {
            let flags = match s.flags() {
                SectionFlags::Elf { sh_flags } => sh_flags,
                _ => 0,
            };
            let has = |f: u32| flags & u64::from(f) != 0;
            Section {
                name: s.name().unwrap_or("").to_owned(),
                addr: s.address(),
                size: s.size(),
                file_range: s.file_range(),
                alloc: has(elf::SHF_ALLOC),
                write: has(elf::SHF_WRITE),
                exec: has(elf::SHF_EXECINSTR),
                tls: has(elf::SHF_TLS),
            }
        })
        .collect()
}

/// The words that dynamic `RELA` relocations fill with a value known from the file alone:
/// `R_X86_64_RELATIVE` (base + addend) and `R_X86_64_64` against a symbol this file defines.
/// `RELR` and `REL` relocations keep their addends in place, so the file's bytes already
/// hold those values.
fn read_relocations(
    elf: &ElfFile64<'_, LittleEndian>,
    file: &str,
) -> Result<HashMap<u64, u64>, InspectError> {
    let endian = elf.endian();
    let data = elf.data();
    let dynsym = elf.elf_dynamic_symbol_table();
    let mut relocated = HashMap::new();
    for (index, header) in elf.elf_section_table().enumerate() {
        if header.sh_flags(endian) & u64::from(elf::SHF_ALLOC) == 0 {
            continue;
        }
        let relas = header
            .rela(endian, data)
            .map_err(|e| InspectError::Section {
                file: file.into(),
                section: elf
                    .elf_section_table()
                    .section_name(endian, header)
                    .map(|n| String::from_utf8_lossy(n).into_owned())
                    .unwrap_or_else(|_| format!("#{}", index.0)),
                why: e.to_string(),
            })?;
        let Some((relas, _)) = relas else {
            continue;
        };
        for rela in relas {
            let addend = rela.r_addend(endian) as u64;
            let value = match rela.r_type(endian, false) {
                elf::R_X86_64_RELATIVE => Some(addend),
                elf::R_X86_64_64 => rela
                    .symbol(endian, false)
                    .and_then(|i| dynsym.symbol(i).ok())
                    .filter(|s| s.st_shndx(endian) != elf::SHN_UNDEF)
                    .map(|s| s.st_value(endian).wrapping_add(addend)),
                _ => None,
            };
            if let Some(value) = value {
                relocated.insert(rela.r_offset(endian), value);
            }
        }
    }
    Ok(relocated)
}

/// Every defined function and data symbol, from `.symtab` and `.dynsym`, and the linker's
/// section bounds (`__start_*`, `__stop_*`) by name.
fn read_symbols(elf: &ElfFile64<'_, LittleEndian>) -> (Vec<Symbol>, HashMap<String, u64>) {
    let mut symbols = Vec::new();
    let mut linker = HashMap::new();
    for s in elf.symbols().chain(elf.dynamic_symbols()) {
        let Ok(name) = s.name() else { continue };
        if s.section_index().is_none() {
            continue;
        }
        match s.kind() {
            object::SymbolKind::Text => {
                symbols.push(Symbol::new(s.address(), s.size(), name, true))
            }
            object::SymbolKind::Data => {
                symbols.push(Symbol::new(s.address(), s.size(), name, false))
            }
            _ if name.starts_with("__start_") || name.starts_with("__stop_") => {
                linker.insert(name.to_owned(), s.address());
            }
            _ => {}
        }
    }
    (symbols, linker)
}

/// The `.eh_frame` section's bytes and address, if the file has one.
fn eh_frame(elf: &ElfFile64<'_, LittleEndian>) -> Option<(Vec<u8>, u64)> {
    let section = elf.section_by_name(".eh_frame")?;
    Some((section.data().ok()?.to_vec(), section.address()))
}
