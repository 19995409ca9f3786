//! `textpoke verify`: every table entry checked as the runtime checks it when it indexes a
//! table, and more, at build time, like the kernel's objtool: sites in executable sections,
//! on instruction boundaries of their functions, holding the bytes they are built with, jumps
//! that stay in their function, no overlaps, every pointer naming a static with the right
//! signature, known table formats, whole entries.

mod entries;

use serde::Serialize;

use super::code::{self, Boundary, Functions};
use super::elf::Image;
use super::statics::{self, Key};
use super::tables::{Kind, TableSection, Tables};

/// One thing wrong.
#[derive(Debug, Serialize)]
pub struct Problem {
    /// The table's section name.
    pub table: String,
    /// The entry's index, if the problem is one entry's.
    pub entry: Option<usize>,
    /// The address concerned: the entry's site (or what it describes), or the table's.
    pub addr: Option<u64>,
    /// What is wrong.
    pub problem: String,
}

/// What was checked.
#[derive(Debug, Default, Serialize)]
pub struct Checked {
    /// Table sections of a known format.
    pub tables: usize,
    /// Static-branch sites.
    pub jump: usize,
    /// Static calls.
    pub call: usize,
    /// Inline call sites.
    pub callsite: usize,
    /// Alternatives' candidates.
    pub alt: usize,
    /// Patchable-function entries.
    #[serde(rename = "fn")]
    pub function: usize,
    /// Immediate-value sites.
    pub imm: usize,
    /// `multiversion!` selectors.
    pub select: usize,
    /// Sites found on an instruction boundary of their function.
    pub boundaries: usize,
    /// Sites whose function's bounds or bytes are unknown, so not judged.
    pub boundaries_unknown: usize,
}

/// The outcome of `verify` for one file.
#[derive(Debug, Serialize)]
pub struct Verdict {
    /// The file.
    pub file: String,
    /// What was checked.
    pub checked: Checked,
    /// Every problem found.
    pub problems: Vec<Problem>,
}

impl Verdict {
    /// One line per problem, `FILE: TABLE entry N at 0x...: WHAT`.
    pub fn problem_lines(&self) -> String {
        let mut out = String::new();
        for p in &self.problems {
            let entry = p.entry.map(|e| format!(" entry {e}")).unwrap_or_default();
            let addr = p.addr.map(|a| format!(" at {a:#x}")).unwrap_or_default();
            out.push_str(&format!(
                "{}: {}{entry}{addr}: {}\n",
                self.file, p.table, p.problem
            ));
        }
        out
    }

    /// The one-line summary of what was checked.
    pub fn summary(&self) -> String {
        let c = &self.checked;
        let unknown = if c.boundaries_unknown > 0 {
            format!(
                " ({} more not judged: no known function bounds or undecodable bytes)",
                c.boundaries_unknown
            )
        } else {
            String::new()
        };
        format!(
            "{}: {}: {} tables, {} jump sites, {} static calls, {} inline call sites, {} \
             alternative candidates, {} patchable-function entries, {} immediate sites, {} \
             multiversion selectors; {} sites on instruction boundaries{unknown}",
            self.file,
            match self.problems.len() {
                0 => "ok".to_owned(),
                1 => "1 problem".to_owned(),
                n => format!("{n} problems"),
            },
            c.tables,
            c.jump,
            c.call,
            c.callsite,
            c.alt,
            c.function,
            c.imm,
            c.select,
            c.boundaries,
        )
    }
}

/// Checks every table of `image`.
pub fn verify(image: &Image, tables: &Tables) -> Verdict {
    let mut v = Verifier {
        image,
        tables,
        functions: Functions::new(image),
        checked: Checked::default(),
        problems: Vec::new(),
        extents: Vec::new(),
    };
    v.sections();
    v.jumps();
    v.calls();
    v.callsites();
    v.alts();
    v.fns();
    v.imms();
    v.selects();
    v.overlaps();
    Verdict {
        file: image.file.clone(),
        checked: v.checked,
        problems: v.problems,
    }
}

/// A site's extent, with the entry that names it.
struct Extent {
    addr: u64,
    len: u64,
    table: usize,
    entry: usize,
}

struct Verifier<'a> {
    image: &'a Image,
    tables: &'a Tables,
    functions: Functions<'a>,
    checked: Checked,
    problems: Vec<Problem>,
    extents: Vec<Extent>,
}

impl Verifier<'_> {
    fn table(&self, table: usize) -> &TableSection {
        &self.tables.sections[table]
    }

    fn report(&mut self, table: usize, entry: Option<usize>, addr: Option<u64>, what: String) {
        self.problems.push(Problem {
            table: self.table(table).name.clone(),
            entry,
            addr,
            problem: what,
        });
    }

    /// `addr` for messages: the address and the symbol it lies in.
    fn at(&self, addr: u64) -> String {
        match self.image.symbols.describe(addr) {
            d if d.starts_with("0x") => d,
            d => format!("{addr:#x} <{d}>"),
        }
    }

    /// Where `[addr, addr + len)` lies, when it is not in an executable section.
    fn not_text(&self, addr: u64, len: u64) -> Option<String> {
        if self.image.in_text(addr, len) {
            return None;
        }
        Some(match self.image.section_at(addr, 1) {
            Some(s) => format!("is in {}, not an executable section", s.name),
            None => "is outside every loaded section".into(),
        })
    }

    /// Checks that `addr` starts an instruction of its function; returns the function's
    /// bounds when it does.
    fn boundary(&mut self, table: usize, entry: usize, addr: u64) -> Option<(u64, u64)> {
        match self.functions.boundary(addr) {
            Boundary::Start(b) => {
                self.checked.boundaries += 1;
                Some((b.start, b.end))
            }
            Boundary::Inside {
                bounds,
                insn,
                bytes,
            } => {
                let function = bounds.name.clone().unwrap_or_else(|| "its function".into());
                self.report(
                    table,
                    Some(entry),
                    Some(addr),
                    format!(
                        "not on an instruction boundary of {function} ({:#x}..{:#x}, bounds \
                         from {}): decoded from its start, the function has {} at {} over it; \
                         the table is stale or damaged",
                        bounds.start,
                        bounds.end,
                        bounds.source.describe(),
                        code::show(insn, &bytes),
                        self.at(insn),
                    ),
                );
                None
            }
            Boundary::Unknown => {
                self.checked.boundaries_unknown += 1;
                None
            }
        }
    }

    /// Checks that `addr` holds `expected`, naming what it should be in `what`.
    fn holds(&mut self, table: usize, entry: usize, addr: u64, expected: &[u8], what: &str) {
        match self.image.bytes(addr, expected.len() as u64) {
            Some(found) if found == expected => {}
            Some(found) => {
                let found = code::show(addr, found);
                let wanted = code::show(addr, expected);
                self.report(
                    table,
                    Some(entry),
                    Some(addr),
                    format!("holds {found}, not {what} {wanted}"),
                );
            }
            None => self.report(
                table,
                Some(entry),
                Some(addr),
                "its bytes are not in the file".into(),
            ),
        }
    }

    fn site(&mut self, table: usize, entry: usize, addr: u64, len: u64) {
        self.extents.push(Extent {
            addr,
            len,
            table,
            entry,
        });
    }

    /// Table-level checks: known formats, whole entries, the linker's bounds.
    fn sections(&mut self) {
        for (i, t) in self.tables.sections.iter().enumerate() {
            let Some(kind) = t.kind else {
                let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.tag()).collect();
                self.report(
                    i,
                    None,
                    Some(t.addr),
                    format!(
                        "unknown table kind (this tool reads textpoke_{{{}}}_vN)",
                        kinds.join(",")
                    ),
                );
                continue;
            };
            if !t.known {
                let known: Vec<String> = kind
                    .versions()
                    .iter()
                    .map(|v| format!("textpoke_{}_v{v}", kind.tag()))
                    .collect();
                self.report(
                    i,
                    None,
                    Some(t.addr),
                    format!(
                        "unknown format version {} (this tool reads {}): a copy of textpoke \
                         this tool does not know, or a damaged section name",
                        t.version,
                        known.join(" and ")
                    ),
                );
                continue;
            }
            self.checked.tables += 1;
            if t.spare != 0 {
                self.report(
                    i,
                    Some(t.count),
                    Some(t.entry_addr(t.count)),
                    format!(
                        "the table is truncated: its {} bytes are not a multiple of its \
                         {}-byte entries ({} bytes of a last entry)",
                        t.size,
                        kind.entry_size(),
                        t.spare
                    ),
                );
            }
            if let Some((start, stop)) = t.linker_span
                && (start != t.addr || stop.wrapping_sub(start) != t.size)
            {
                self.report(
                    i,
                    None,
                    Some(t.addr),
                    format!(
                        "the section header says {} bytes at {:#x}, but the runtime reads \
                         __start_{}..__stop_{}: {} bytes at {start:#x}",
                        t.size,
                        t.addr,
                        t.name,
                        t.name,
                        stop.wrapping_sub(start) as i64
                    ),
                );
            }
        }
    }

    /// The key at `addr`, or a problem naming why it is not one.
    fn key(&mut self, table: usize, entry: usize, at: u64, addr: u64) -> Option<Key> {
        match statics::key(self.image, addr) {
            Ok(key) => Some(key),
            Err(why) => {
                let what = format!("key {}: {why}", self.at(addr));
                self.report(table, Some(entry), Some(at), what);
                None
            }
        }
    }

    /// No byte is patched by two entries.
    fn overlaps(&mut self) {
        let mut extents = std::mem::take(&mut self.extents);
        extents.sort_by_key(|x| (x.addr, x.len));
        for pair in extents.windows(2) {
            let [a, b] = pair else { continue };
            let first = format!("{} entry {}", self.table(a.table).name, a.entry);
            let what = if a.addr == b.addr {
                format!(
                    "the site is also listed by {first}: identical code folding merged two \
                     functions with sites (link with --icf=none or --icf=safe)"
                )
            } else if a.addr.saturating_add(a.len) > b.addr {
                format!(
                    "overlaps the {}-byte site of {first} at {:#x}",
                    a.len, a.addr
                )
            } else {
                continue;
            };
            self.report(b.table, Some(b.entry), Some(b.addr), what);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Kind;

    #[test]
    fn kinds_of_the_library_are_known() {
        // The library's own current formats must read here; a bump there needs one here.
        for (name, size) in [
            (
                textpoke::tables::JUMP_SECTION,
                textpoke::tables::JUMP_ENTRY_SIZE,
            ),
            (
                textpoke::tables::IMM_SECTION,
                textpoke::tables::IMM_ENTRY_SIZE,
            ),
        ] {
            let (tag, version) = name
                .strip_prefix("textpoke_")
                .and_then(|n| n.rsplit_once("_v"))
                .unwrap();
            let kind = [Kind::Jump, Kind::Imm]
                .into_iter()
                .find(|k| k.tag() == tag)
                .unwrap();
            assert!(
                kind.versions().contains(&version.parse().unwrap()),
                "{name}"
            );
            assert_eq!(kind.entry_size(), size as u64, "{name}");
        }
    }
}
