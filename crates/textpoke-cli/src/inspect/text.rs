//! `textpoke inspect` for people: a heading per kind, one aligned line per item.

use std::fmt::Write as _;

use super::listing::Listing;
use super::statics::Source;

/// The listing as text.
pub fn render(l: &Listing) -> String {
    let mut out = format!("{}: {}\n", l.file, l.kind);
    if l.tables.is_empty() {
        out.push_str("no textpoke tables\n");
        return out;
    }
    let tables: Vec<String> = l
        .tables
        .iter()
        .map(|t| match (t.known, t.entry_size) {
            (true, Some(_)) => format!("{} ({})", t.name, plural(t.entries, "entry", "entries")),
            _ => format!("{} (unknown format, {} bytes)", t.name, t.size),
        })
        .collect();
    let _ = writeln!(out, "tables: {}", tables.join(", "));
    if l.is_empty() {
        out.push_str("no entries in any table\n");
    }
    section(
        &mut out,
        "Static keys",
        l.keys.iter().map(|k| {
            let state = match k.initially_enabled {
                Some(true) => "initially enabled",
                Some(false) => "initially disabled",
                None => "not a key",
            };
            vec![
                name(&k.name, k.addr),
                source(&k.declared),
                state.to_owned(),
                format!(
                    "{} ({} likely, {} unlikely)",
                    plural(k.sites, "site", "sites"),
                    k.likely,
                    k.unlikely
                ),
            ]
        }),
    );
    section(
        &mut out,
        "Static calls",
        l.static_calls.iter().map(|c| {
            vec![
                name(&c.name, c.addr),
                source(&c.declared),
                format!(
                    "initial target {} ({:#x})",
                    c.initial_target, c.initial_target_addr
                ),
                format!("trampoline {:#x}", c.trampoline),
                plural(c.sites, "inline site", "inline sites"),
            ]
        }),
    );
    section(
        &mut out,
        "Alternatives",
        l.alternatives.iter().map(|a| {
            let candidates: Vec<String> = a
                .candidates
                .iter()
                .map(|c| {
                    let feature = c.feature.as_deref().unwrap_or("default");
                    format!("{feature} ({} bytes)", c.len)
                })
                .collect();
            vec![
                format!("{:#x}", a.addr),
                format!("in {}", a.function),
                source(&a.source),
                format!("{} bytes: {}", a.len, candidates.join(", ")),
            ]
        }),
    );
    section(
        &mut out,
        "Function-level alternatives (multiversion!)",
        l.multiversion.iter().map(|s| {
            vec![
                name(&s.name, s.selector),
                format!("selector {:#x}", s.selector),
            ]
        }),
    );
    section(
        &mut out,
        "Patchable functions",
        l.functions.iter().map(|f| {
            vec![
                name(&f.name, f.addr),
                source(&f.declared),
                plural(f.sites, "site", "sites"),
            ]
        }),
    );
    section(
        &mut out,
        "Immediate values",
        l.immediates.iter().map(|i| {
            vec![
                name(&i.name, i.addr),
                source(&i.declared),
                i.type_name.clone().unwrap_or_else(|| "type ?".into()),
                match (&i.value, i.initial) {
                    (Some(value), Some(bits)) => format!("initial {value} ({bits:#x})"),
                    _ => "initial ?".into(),
                },
                plural(i.sites, "site", "sites"),
            ]
        }),
    );
    out
}

/// A heading with the count, then the rows, their columns aligned; nothing when empty.
fn section(out: &mut String, heading: &str, rows: impl Iterator<Item = Vec<String>>) {
    let rows: Vec<Vec<String>> = rows.collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n{heading} ({}):", rows.len());
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in &rows {
        let mut line = String::from(" ");
        for (c, cell) in row.iter().enumerate() {
            line.push(' ');
            line.push_str(cell);
            if c + 1 < row.len() {
                let pad = widths[c].saturating_sub(cell.chars().count()) + 1;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

fn name(name: &Option<String>, addr: u64) -> String {
    name.clone().unwrap_or_else(|| format!("{addr:#x}"))
}

fn source(source: &Option<Source>) -> String {
    source
        .as_ref()
        .map_or_else(|| "(no source line)".into(), Source::to_string)
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
