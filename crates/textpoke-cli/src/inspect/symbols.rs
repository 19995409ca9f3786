//! Names and function bounds: the symbol table, and the unwind table (`.eh_frame`) where a
//! piece of code has no sized symbol (hand-written assembly, a stripped file).

use std::collections::HashMap;
use std::sync::OnceLock;

use gimli::{BaseAddresses, CieOrFde, EhFrame, UnwindSection as _};

/// One defined symbol.
#[derive(Clone, Debug)]
pub struct Symbol {
    /// Its address.
    pub addr: u64,
    /// Its size (0 when the assembler was not told).
    pub size: u64,
    /// Its name as the symbol table has it (mangled).
    raw: String,
    /// A function (`STT_FUNC`) rather than data.
    pub function: bool,
}

impl Symbol {
    /// A symbol named `raw`.
    pub fn new(addr: u64, size: u64, raw: &str, function: bool) -> Symbol {
        Symbol {
            addr,
            size,
            raw: raw.to_owned(),
            function,
        }
    }

    /// Its name, demangled without the hash. Only names shown are demangled: a debug build
    /// has hundreds of thousands of symbols.
    pub fn name(&self) -> String {
        format!("{:#}", rustc_demangle::demangle(&self.raw))
    }
}

/// Where a function's bounds came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoundsSource {
    /// A sized function symbol.
    SymbolTable,
    /// An `.eh_frame` FDE.
    UnwindTable,
}

impl BoundsSource {
    /// For messages.
    pub fn describe(self) -> &'static str {
        match self {
            BoundsSource::SymbolTable => "the symbol table",
            BoundsSource::UnwindTable => "the unwind table",
        }
    }
}

/// A function's extent, `[start, end)`.
#[derive(Clone, Debug)]
pub struct Bounds {
    /// Its first byte.
    pub start: u64,
    /// Past its last byte.
    pub end: u64,
    /// Its symbol's name, if it has one.
    pub name: Option<String>,
    /// Symbol table or unwind table.
    pub source: BoundsSource,
}

/// The file's symbols and unwind ranges, sorted for lookup by address.
pub struct Symbols {
    /// Function symbols, by address.
    functions: Vec<Symbol>,
    /// Data symbols, by address.
    objects: Vec<Symbol>,
    /// `.eh_frame`'s bytes and address.
    eh_frame: Option<(Vec<u8>, u64)>,
    /// Every FDE's `[start, end)`, by start, read on first use: most files have symbols.
    unwind: OnceLock<Vec<(u64, u64)>>,
    /// `__start_SECTION` and `__stop_SECTION`, by raw name.
    linker: HashMap<String, u64>,
}

/// How far back from an address the lookup looks for a function symbol that contains it:
/// symbols do not nest, so the first few below it are the only candidates (aliases share an
/// address).
const LOOK_BACK: usize = 16;

impl Symbols {
    /// Sorts `symbols` and reads the FDEs of `eh_frame` (its bytes and address).
    pub fn new(
        symbols: Vec<Symbol>,
        linker: HashMap<String, u64>,
        eh_frame: Option<(Vec<u8>, u64)>,
    ) -> Symbols {
        let (mut functions, mut objects): (Vec<Symbol>, Vec<Symbol>) =
            symbols.into_iter().partition(|s| s.function);
        functions.sort_by_key(|s| (s.addr, std::cmp::Reverse(s.size)));
        objects.sort_by_key(|s| (s.addr, std::cmp::Reverse(s.size)));
        Symbols {
            functions,
            objects,
            eh_frame,
            unwind: OnceLock::new(),
            linker,
        }
    }

    /// The function that contains `addr`: the innermost sized function symbol, or else the
    /// FDE that covers it.
    pub fn function_containing(&self, addr: u64) -> Option<Bounds> {
        let k = self.functions.partition_point(|s| s.addr <= addr);
        let by_symbol = self.functions[..k]
            .iter()
            .rev()
            .take(LOOK_BACK)
            .find(|s| s.size > 0 && addr - s.addr < s.size);
        if let Some(s) = by_symbol {
            return Some(Bounds {
                start: s.addr,
                end: s.addr.saturating_add(s.size),
                name: Some(s.name()),
                source: BoundsSource::SymbolTable,
            });
        }
        let unwind = self.unwind.get_or_init(|| {
            let mut ranges = self
                .eh_frame
                .as_ref()
                .map(|(data, addr)| fde_ranges(data, *addr))
                .unwrap_or_default();
            ranges.sort_unstable();
            ranges
        });
        let k = unwind.partition_point(|&(start, _)| start <= addr);
        let &(start, end) = unwind[..k]
            .iter()
            .rev()
            .take(LOOK_BACK)
            .find(|&&(_, end)| addr < end)?;
        Some(Bounds {
            start,
            end,
            name: self.function_at(start),
            source: BoundsSource::UnwindTable,
        })
    }

    /// The name of the function that starts at `addr`.
    pub fn function_at(&self, addr: u64) -> Option<String> {
        exact(&self.functions, addr)
    }

    /// The name of the data object that starts at `addr`.
    pub fn object_at(&self, addr: u64) -> Option<String> {
        exact(&self.objects, addr)
    }

    /// `addr` for people: `name`, `name+0x12`, or the bare address.
    pub fn describe(&self, addr: u64) -> String {
        if let Some(name) = self.function_at(addr).or_else(|| self.object_at(addr)) {
            return name;
        }
        match self.function_containing(addr) {
            Some(Bounds {
                start,
                name: Some(name),
                ..
            }) => format!("{name}+{:#x}", addr - start),
            _ => format!("{addr:#x}"),
        }
    }

    /// The address of the linker-defined symbol `name` (`__start_textpoke_jump_v2`).
    pub fn linker_symbol(&self, name: &str) -> Option<u64> {
        self.linker.get(name).copied()
    }
}

/// The name of the first of `sorted` that starts at `addr`.
fn exact(sorted: &[Symbol], addr: u64) -> Option<String> {
    let k = sorted.partition_point(|s| s.addr < addr);
    sorted.get(k).filter(|s| s.addr == addr).map(Symbol::name)
}

/// The `[start, end)` of every FDE of `.eh_frame`; a damaged entry ends the walk (what came
/// before it stands).
fn fde_ranges(data: &[u8], addr: u64) -> Vec<(u64, u64)> {
    let eh_frame = EhFrame::new(data, gimli::LittleEndian);
    let bases = BaseAddresses::default().set_eh_frame(addr);
    let mut entries = eh_frame.entries(&bases);
    let mut ranges = Vec::new();
    while let Ok(Some(entry)) = entries.next() {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let Ok(fde) = partial.parse(EhFrame::cie_from_offset) else {
            continue;
        };
        let start = fde.initial_address();
        if fde.len() > 0 {
            ranges.push((start, start.saturating_add(fde.len())));
        }
    }
    ranges
}
