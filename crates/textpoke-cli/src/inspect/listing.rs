//! What `textpoke inspect` shows: every table's entries gathered per key, static call,
//! alternative site, patchable function and immediate value. Serialized as is for `--json`;
//! the `text` module renders it for people.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::elf::Image;
use super::lines::source_lines;
use super::statics::{self, Source};
use super::tables::{JumpEntry, Tables};

/// Everything `inspect` found in one file.
#[derive(Serialize)]
pub struct Listing {
    /// The file.
    pub file: String,
    /// `executable`, `PIE executable` or `shared object`.
    pub kind: &'static str,
    /// Every `textpoke_*` section.
    pub tables: Vec<TableItem>,
    /// Static keys (those of patchable functions are under `functions`).
    pub keys: Vec<KeyItem>,
    /// Static calls.
    pub static_calls: Vec<CallItem>,
    /// Alternative sites.
    pub alternatives: Vec<AltItem>,
    /// Function-level alternatives (`multiversion!`).
    pub multiversion: Vec<SelectItem>,
    /// Patchable functions.
    pub functions: Vec<FunctionItem>,
    /// Immediate values.
    pub immediates: Vec<ImmItem>,
}

/// One table section.
#[derive(Serialize)]
pub struct TableItem {
    /// Its section name.
    pub name: String,
    /// Its format version.
    pub version: u32,
    /// Whether this tool reads it.
    pub known: bool,
    /// Its address.
    pub addr: u64,
    /// Its size in bytes.
    pub size: u64,
    /// Bytes per entry, for a known format.
    pub entry_size: Option<u64>,
    /// Whole entries.
    pub entries: usize,
}

/// One static key.
#[derive(Serialize)]
pub struct KeyItem {
    /// Its Rust path.
    pub name: Option<String>,
    /// Its address.
    pub addr: u64,
    /// Where it was declared.
    pub declared: Option<Source>,
    /// Its compiled-in state (`None`: the entry does not point at a key).
    pub initially_enabled: Option<bool>,
    /// Its sites.
    pub sites: usize,
    /// `static_branch_likely!` sites.
    pub likely: usize,
    /// `static_branch_unlikely!` sites.
    pub unlikely: usize,
    /// Every site's address.
    pub site_addrs: Vec<u64>,
}

/// One static call.
#[derive(Serialize)]
pub struct CallItem {
    /// Its Rust path.
    pub name: Option<String>,
    /// Its state's address.
    pub addr: u64,
    /// Where it was declared.
    pub declared: Option<Source>,
    /// Its trampoline.
    pub trampoline: u64,
    /// The compiled-in target's symbol.
    pub initial_target: String,
    /// The compiled-in target's address.
    pub initial_target_addr: u64,
    /// Inline call sites (C-ABI `inline` calls); other callers call the trampoline.
    pub sites: usize,
    /// Every inline call site's address.
    pub site_addrs: Vec<u64>,
}

/// One alternative site.
#[derive(Serialize)]
pub struct AltItem {
    /// The site's address.
    pub addr: u64,
    /// Its length.
    pub len: u64,
    /// The function it lies in.
    pub function: String,
    /// Its source line, from the line tables.
    pub source: Option<Source>,
    /// Its candidates in priority order, the default last.
    pub candidates: Vec<CandidateItem>,
}

/// One candidate of an alternative site.
#[derive(Serialize)]
pub struct CandidateItem {
    /// The CPU feature that selects it; `None` for the default.
    pub feature: Option<String>,
    /// Its length.
    pub len: u64,
    /// Its code's address.
    pub code: u64,
}

/// One `multiversion!` function.
#[derive(Serialize)]
pub struct SelectItem {
    /// The static call it binds.
    pub name: Option<String>,
    /// Its selector's address.
    pub selector: u64,
}

/// One patchable function.
#[derive(Serialize)]
pub struct FunctionItem {
    /// Its Rust path.
    pub name: Option<String>,
    /// Its state's address.
    pub addr: u64,
    /// Where it is defined.
    pub declared: Option<Source>,
    /// Its key's address.
    pub key: Option<u64>,
    /// Its sites (one per inlined copy or instantiation).
    pub sites: usize,
    /// Every site's address.
    pub site_addrs: Vec<u64>,
    /// The function's code, per instantiation, where it could be named.
    pub code: Vec<String>,
}

/// One immediate value.
#[derive(Serialize)]
pub struct ImmItem {
    /// Its Rust path.
    pub name: Option<String>,
    /// Its address.
    pub addr: u64,
    /// Where it was declared.
    pub declared: Option<Source>,
    /// Bits of the immediate at each site: 32 (`mov r32, imm32`) or 64 (`movabs`).
    pub width: Option<u32>,
    /// The value its sites are built with (the value's bytes, zero-extended).
    pub initial: Option<u64>,
    /// Its type (`u32`, `i8`, `bool`; `unknown` when the build did not record it).
    #[serde(rename = "type")]
    pub type_name: Option<String>,
    /// The initial value as its type reads it (`-100` for an `i8` whose bits are `0x9c`).
    pub value: Option<String>,
    /// Its read sites.
    pub sites: usize,
    /// Every site's address.
    pub site_addrs: Vec<u64>,
}

impl Listing {
    /// Gathers `tables` of `image`.
    pub fn build(image: &Image, tables: &Tables) -> Listing {
        let functions = functions(image, tables);
        let fn_keys: BTreeSet<u64> = functions.iter().filter_map(|f| f.key).collect();
        Listing {
            file: image.file.clone(),
            kind: image.kind.describe(),
            tables: tables
                .sections
                .iter()
                .map(|t| TableItem {
                    name: t.name.clone(),
                    version: t.version,
                    known: t.known,
                    addr: t.addr,
                    size: t.size,
                    entry_size: t.entry_size(),
                    entries: t.count,
                })
                .collect(),
            keys: keys(image, tables, &fn_keys),
            static_calls: calls(image, tables),
            alternatives: alternatives(image, tables),
            multiversion: tables
                .selects
                .iter()
                .map(|s| SelectItem {
                    name: image.symbols.function_at(s.selector).map(|n| {
                        n.strip_suffix("::__textpoke_select")
                            .map_or_else(|| n.clone(), str::to_owned)
                    }),
                    selector: s.selector,
                })
                .collect(),
            functions,
            immediates: immediates(image, tables),
        }
    }

    /// Whether the tables hold no entry at all.
    pub fn is_empty(&self) -> bool {
        self.tables.iter().all(|t| t.entries == 0)
    }
}

/// The jump-table sites of each key, by key address.
fn sites_by_key(tables: &Tables) -> BTreeMap<u64, Vec<&JumpEntry>> {
    let mut by_key: BTreeMap<u64, Vec<&JumpEntry>> = BTreeMap::new();
    for j in &tables.jumps {
        by_key.entry(j.key).or_default().push(j);
    }
    by_key
}

fn keys(image: &Image, tables: &Tables, fn_keys: &BTreeSet<u64>) -> Vec<KeyItem> {
    let mut keys: Vec<KeyItem> = sites_by_key(tables)
        .into_iter()
        .filter(|(addr, _)| !fn_keys.contains(addr))
        .map(|(addr, sites)| {
            let key = statics::key(image, addr).ok();
            let likely = sites.iter().filter(|s| s.likely()).count();
            KeyItem {
                name: key
                    .as_ref()
                    .and_then(|k| k.name.clone())
                    .or_else(|| image.symbols.object_at(addr)),
                addr,
                declared: key.as_ref().and_then(|k| k.declared.clone()),
                initially_enabled: key.map(|k| k.enabled),
                sites: sites.len(),
                likely,
                unlikely: sites.len() - likely,
                site_addrs: sites.iter().map(|s| s.site).collect(),
            }
        })
        .collect();
    keys.sort_by(|a, b| {
        (a.name.is_none(), &a.name, a.addr).cmp(&(b.name.is_none(), &b.name, b.addr))
    });
    keys
}

fn functions(image: &Image, tables: &Tables) -> Vec<FunctionItem> {
    let mut states: BTreeMap<u64, (u32, BTreeSet<u64>)> = BTreeMap::new();
    for f in &tables.fns {
        let (_, codes) = states
            .entry(f.state)
            .or_insert((f.version, BTreeSet::new()));
        codes.extend(f.code);
    }
    let by_key = sites_by_key(tables);
    let mut functions: Vec<FunctionItem> = states
        .into_iter()
        .map(|(addr, (version, codes))| {
            let state = statics::function(image, addr, version).ok();
            let key = state.as_ref().and_then(|s| s.key);
            let sites: Vec<u64> = key
                .and_then(|k| by_key.get(&k))
                .map(|s| s.iter().map(|j| j.site).collect())
                .unwrap_or_default();
            FunctionItem {
                name: state.as_ref().and_then(|s| s.name.clone()),
                addr,
                declared: state.and_then(|s| s.declared),
                key,
                sites: sites.len(),
                site_addrs: sites,
                code: codes.iter().map(|&c| image.symbols.describe(c)).collect(),
            }
        })
        .collect();
    functions.sort_by(|a, b| (&a.name, a.addr).cmp(&(&b.name, b.addr)));
    functions
}

fn calls(image: &Image, tables: &Tables) -> Vec<CallItem> {
    let mut calls: Vec<CallItem> = tables
        .calls
        .iter()
        .map(|c| {
            let state = statics::call(image, c.state).ok();
            let site_addrs: Vec<u64> = tables
                .callsites
                .iter()
                .filter(|s| s.state == c.state)
                .map(|s| s.site)
                .collect();
            CallItem {
                name: state.as_ref().and_then(|s| s.name.clone()),
                addr: c.state,
                declared: state.and_then(|s| s.declared),
                trampoline: c.trampoline,
                initial_target: image.symbols.describe(c.initial),
                initial_target_addr: c.initial,
                sites: site_addrs.len(),
                site_addrs,
            }
        })
        .collect();
    calls.sort_by(|a, b| (&a.name, a.addr).cmp(&(&b.name, b.addr)));
    calls
}

fn alternatives(image: &Image, tables: &Tables) -> Vec<AltItem> {
    let sites = tables.alt_sites();
    let addrs: Vec<u64> = sites.iter().filter_map(|s| Some(s.first()?.site)).collect();
    let lines = source_lines(image, &addrs);
    sites
        .iter()
        .filter_map(|candidates| {
            let first = candidates.first()?;
            Some(AltItem {
                addr: first.site,
                len: first.site_len(),
                function: image.symbols.describe(first.site),
                source: lines.get(&first.site).cloned(),
                candidates: candidates
                    .iter()
                    .map(|c| CandidateItem {
                        feature: c.feature.clone().filter(|f| !f.is_empty()),
                        len: c.len,
                        code: c.code,
                    })
                    .collect(),
            })
        })
        .collect()
}

fn immediates(image: &Image, tables: &Tables) -> Vec<ImmItem> {
    let mut by_imm: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for i in &tables.imms {
        by_imm.entry(i.imm).or_default().push(i.site);
    }
    let mut imms: Vec<ImmItem> = by_imm
        .into_iter()
        .map(|(addr, site_addrs)| {
            let imm = statics::imm(image, addr).ok();
            ImmItem {
                name: imm
                    .as_ref()
                    .and_then(|i| i.name.clone())
                    .or_else(|| image.symbols.object_at(addr)),
                addr,
                declared: imm.as_ref().and_then(|i| i.declared.clone()),
                width: imm.as_ref().map(|i| u32::from(i.width) * 8),
                type_name: imm.as_ref().map(|i| i.typed_initial().0),
                value: imm.as_ref().map(|i| i.typed_initial().1),
                initial: imm.map(|i| i.initial),
                sites: site_addrs.len(),
                site_addrs,
            }
        })
        .collect();
    imms.sort_by(|a, b| {
        (a.name.is_none(), &a.name, a.addr).cmp(&(b.name.is_none(), &b.name, b.addr))
    });
    imms
}
