//! The statics that table entries point at, read from the file: keys (`KeyCore`), static
//! calls' states (`CallCore`), patchable functions' states (`FnMeta`) and immediates
//! (`ImmCore`), with the `core::panic::Location`s they record.
//!
//! Their layouts are the library's `#[repr(C)]` structs (see `keys/mod.rs`,
//! `calls/mod.rs`, `functions/mod.rs`, `immediates/mod.rs`); each carries a 4-byte signature
//! that names its format, checked before anything else is read. `Location` is not
//! `#[repr(C)]`: what is read of it is checked to make sense, and a location that does not is
//! left out rather than guessed.

use std::fmt;

use serde::Serialize;

use super::elf::Image;

/// Where a textpoke static lies and what marks it.
pub struct Layout {
    /// Bytes read from it.
    size: u64,
    /// Where its signature lies.
    magic_offset: u64,
    /// Its signature.
    pub magic: &'static [u8; 4],
    /// Whether the runtime writes it (so it must lie in writable data).
    writable: bool,
}

/// `KeyCore`: count `i32`, signature, `declared: &Location`.
pub const KEY: Layout = Layout {
    size: 16,
    magic_offset: 4,
    magic: b"tpk2",
    writable: true,
};

/// `CallCore`: target, signature, slot, held, `name: &str` (at 24), `declared` (at 40).
pub const CALL: Layout = Layout {
    size: 48,
    magic_offset: 8,
    magic: b"tpc2",
    writable: true,
};

/// `FnMeta` as `textpoke_fn_v1` points at it: signature, line, key, `name: &str`,
/// `file: &str`, then state this tool does not read.
pub const FN_V1: Layout = Layout {
    size: 48,
    magic_offset: 0,
    magic: b"tpf1",
    writable: true,
};

/// `FnMeta` as `textpoke_fn_v2` points at it: the `v1` fields, then one more.
pub const FN_V2: Layout = Layout {
    magic: b"tpf2",
    ..FN_V1
};

/// `ImmCore`: signature, width `u8`, kind `u8` and size `u8` of the value's type (zero before
/// they were recorded), a reserved byte, initial `u64`, `declared`.
/// Never written, so it may lie in read-only data.
pub const IMM: Layout = Layout {
    size: 24,
    magic_offset: 0,
    magic: b"tpi1",
    writable: false,
};

/// Why an entry's pointer does not name the static it should.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not 8-aligned.
    Misaligned,
    /// Not inside one loaded section with file contents.
    Outside,
    /// In read-only data, but the runtime writes it.
    ReadOnly,
    /// Something else is there.
    Signature {
        /// The signature expected.
        expected: &'static [u8; 4],
        /// The bytes found.
        found: [u8; 4],
    },
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Misaligned => f.write_str("misaligned (not a multiple of 8)"),
            Refused::Outside => f.write_str("outside the file's loaded sections"),
            Refused::ReadOnly => f.write_str("in read-only data, but the runtime writes it"),
            Refused::Signature { expected, found } => write!(
                f,
                "no `{}` signature there (found {}: stale or foreign table?)",
                String::from_utf8_lossy(*expected),
                super::code::hex(found)
            ),
        }
    }
}

impl Layout {
    /// Whether `addr` holds a static of this layout.
    pub fn check(&self, image: &Image, addr: u64) -> Result<(), Refused> {
        if !addr.is_multiple_of(8) {
            return Err(Refused::Misaligned);
        }
        let section = image.section_at(addr, self.size).ok_or(Refused::Outside)?;
        if self.writable && !section.write {
            return Err(Refused::ReadOnly);
        }
        let found: [u8; 4] = image
            .array(addr + self.magic_offset)
            .ok_or(Refused::Outside)?;
        if &found != self.magic {
            return Err(Refused::Signature {
                expected: self.magic,
                found,
            });
        }
        Ok(())
    }
}

/// A place in the source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Source {
    /// The file, as the compiler named it.
    pub file: String,
    /// Its line.
    pub line: u32,
    /// Its column, where known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// Longest source path believed.
const PATH_MAX: u64 = 4096;

/// The `core::panic::Location` that the pointer at `field` points at: `file: &str`, then
/// `line` and `col` as `u32`.
fn location(image: &Image, field: u64) -> Option<Source> {
    let at = image.ptr(field)?;
    let file = image.str_at(at, PATH_MAX)?;
    // Some compilers keep the path NUL-terminated, the NUL outside or inside its length.
    let file = file.strip_suffix('\0').unwrap_or(file);
    let line = image.u32(at.checked_add(16)?)?;
    let column = image.u32(at.checked_add(20)?)?;
    if file.is_empty() || line == 0 {
        return None;
    }
    Some(Source {
        file: file.to_owned(),
        line,
        column: (column > 0).then_some(column),
    })
}

/// A static key.
#[derive(Clone, Debug)]
pub struct Key {
    /// Its address.
    pub addr: u64,
    /// Its Rust path, from the symbol table.
    pub name: Option<String>,
    /// Its compiled-in state: its sites are built for it.
    pub enabled: bool,
    /// Where it was declared.
    pub declared: Option<Source>,
}

/// Reads the key at `addr`.
pub fn key(image: &Image, addr: u64) -> Result<Key, Refused> {
    KEY.check(image, addr)?;
    let count = image.u32(addr).ok_or(Refused::Outside)? as i32;
    Ok(Key {
        addr,
        name: image.symbols.object_at(addr),
        enabled: count > 0,
        declared: location(image, addr + 8),
    })
}

/// A static call's state.
#[derive(Clone, Debug)]
pub struct Call {
    /// Its Rust path, as `static_call!` recorded it, else its symbol.
    pub name: Option<String>,
    /// Where it was declared.
    pub declared: Option<Source>,
}

/// Reads the static call state at `addr`.
pub fn call(image: &Image, addr: u64) -> Result<Call, Refused> {
    CALL.check(image, addr)?;
    let name = image
        .str_at(addr + 24, PATH_MAX)
        .map(str::to_owned)
        .or_else(|| image.symbols.object_at(addr));
    Ok(Call {
        name,
        declared: location(image, addr + 40),
    })
}

/// A patchable function's state.
#[derive(Clone, Debug)]
pub struct Function {
    /// The function's Rust path, as `#[patchable]` recorded it.
    pub name: Option<String>,
    /// Where the function is defined.
    pub declared: Option<Source>,
    /// Its key, whose sites are the function's.
    pub key: Option<u64>,
}

/// Reads the patchable function state at `addr`, as a `textpoke_fn_v{version}` entry points
/// at it.
pub fn function(image: &Image, addr: u64, version: u32) -> Result<Function, Refused> {
    let layout = if version == 1 { &FN_V1 } else { &FN_V2 };
    layout.check(image, addr)?;
    let file = image.str_at(addr + 32, PATH_MAX);
    let line = image.u32(addr + 4).filter(|&l| l > 0);
    Ok(Function {
        name: image.str_at(addr + 16, PATH_MAX).map(str::to_owned),
        declared: file.zip(line).map(|(file, line)| Source {
            file: file.to_owned(),
            line,
            column: None,
        }),
        key: image.ptr(addr + 8),
    })
}

/// An immediate value.
#[derive(Clone, Debug)]
pub struct Imm {
    /// Its address.
    pub addr: u64,
    /// Its Rust path, from the symbol table.
    pub name: Option<String>,
    /// Bytes of the immediate at every site: 4 or 8 (others are refused).
    pub width: u8,
    /// The value its sites are built with, zero-extended.
    pub initial: u64,
    /// Its type's kind (1 unsigned, 2 signed, 3 bool; 0 not recorded) and size in bytes.
    pub kind: [u8; 2],
    /// Where it was declared.
    pub declared: Option<Source>,
}

impl Imm {
    /// Its type's name and its initial value as that type reads it (`("i8", "-100")`).
    pub fn typed_initial(&self) -> (String, String) {
        textpoke::__private::imm_text(self.initial, self.kind[0], self.kind[1])
    }

    /// Whether sites hold a `movabs r64, imm64`; `None` for a width no version writes.
    pub fn wide(&self) -> Option<bool> {
        match self.width {
            4 => Some(false),
            8 => Some(true),
            _ => None,
        }
    }
}

/// Reads the immediate at `addr`.
pub fn imm(image: &Image, addr: u64) -> Result<Imm, Refused> {
    IMM.check(image, addr)?;
    let [width, kind, size] = image.array(addr + 4).ok_or(Refused::Outside)?;
    Ok(Imm {
        addr,
        name: image.symbols.object_at(addr),
        width,
        kind: [kind, size],
        initial: image.u64(addr + 8).ok_or(Refused::Outside)?,
        declared: location(image, addr + 16),
    })
}
