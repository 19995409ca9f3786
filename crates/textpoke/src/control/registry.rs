//! What this copy of textpoke controls in its object, by name: keys, static calls,
//! alternatives, patchable functions, immediate values and detours.
//!
//! Rows are gathered under the patch lock (the indexes are read there) and named after it is
//! released: naming reads symbol tables and may ask the loader, whose lock a `dlclose` holds
//! while it waits for the patch lock.

use crate::Result;
use crate::functions::glob::Glob;
use std::sync::{Arc, Mutex};

use crate::alternatives::AltRow;
use crate::immediates::{ImmCore, ImmKind, ImmRow};
use crate::keys::{KeyCore, KeyRow};

use super::json::Obj;

/// What kind of thing an [`Entry`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A [`StaticKey`](crate::StaticKey).
    Key,
    /// A static call.
    StaticCall,
    /// An alternative site.
    Alternative,
    /// A patchable function.
    Function,
    /// An [`Immediate`](crate::Immediate).
    Immediate,
    /// A function held by a [`Detour`](crate::Detour).
    Detour,
}

impl Kind {
    /// Its name in replies: `key`, `static_call`, `alternative`, `function`, `immediate`,
    /// `detour`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Key => "key",
            Kind::StaticCall => "static_call",
            Kind::Alternative => "alternative",
            Kind::Function => "function",
            Kind::Immediate => "immediate",
            Kind::Detour => "detour",
        }
    }
}

/// One thing textpoke controls, as [`list`](super::list) shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// What it is.
    pub kind: Kind,
    /// Its Rust path (a key's or immediate's from the symbol table; `kind@address` when the
    /// object is stripped), or for an alternative the function holding the site.
    pub name: String,
    /// Path of the object it lives in.
    pub object: String,
    /// Where it was declared (`file:line`), where recorded.
    pub declared: Option<String>,
    /// Its sites in the code.
    pub sites: usize,
    /// Its state in words: `on`/`off` (key, detour), the target (static call), the chosen
    /// candidate (alternative), `traced`/`no-op`/`replaced`/`off` (function), the value
    /// (immediate).
    pub state: String,
}

/// What a change by name needs besides the entry.
#[derive(Clone, Copy)]
pub(crate) enum Handle {
    None,
    Key(&'static KeyCore),
    Immediate(&'static ImmCore, ImmKind, usize),
}

/// One entry of this copy, with what changing it needs.
pub(crate) struct Row {
    pub(crate) entry: Entry,
    pub(crate) handle: Handle,
    /// Extra fields of its JSON form, written after the common ones.
    pub(crate) extra: Vec<(&'static str, Extra)>,
}

/// An extra field's value.
pub(crate) enum Extra {
    Bool(bool),
    Int(i64),
    Text(String),
    Texts(Vec<String>),
}

impl Row {
    fn new(kind: Kind, name: String, object: &str, sites: usize, state: String) -> Self {
        Row {
            entry: Entry {
                kind,
                name,
                object: object.to_owned(),
                declared: None,
                sites,
                state,
            },
            handle: Handle::None,
            extra: Vec::new(),
        }
    }

    fn declared(mut self, at: &std::panic::Location<'_>) -> Self {
        self.entry.declared = Some(format!("{}:{}", at.file(), at.line()));
        self
    }

    fn with(mut self, key: &'static str, value: Extra) -> Self {
        self.extra.push((key, value));
        self
    }

    /// Its JSON object.
    pub(crate) fn json(&self, out: &mut String) {
        let e = &self.entry;
        let mut obj = Obj::new(out);
        obj.str("kind", e.kind.as_str())
            .str("name", &e.name)
            .str("object", &e.object)
            .opt_str("declared", e.declared.as_deref())
            .num("sites", e.sites)
            .str("state", &e.state);
        for (key, value) in &self.extra {
            match value {
                Extra::Bool(b) => obj.bool(key, *b),
                Extra::Int(n) => obj.num(key, n),
                Extra::Text(s) => obj.str(key, s),
                Extra::Texts(v) => obj.strs(key, v.iter().map(String::as_str)),
            };
        }
        obj.end();
    }
}

/// The path of the object holding this copy of textpoke.
pub(crate) fn this_object() -> String {
    object_of(&crate::os::loaded_objects())
}

fn object_of(objects: &[crate::os::Object]) -> String {
    let here = this_object as *const () as usize;
    objects
        .iter()
        .find(|o| o.contains(here, 1))
        .map_or_else(|| "<unknown object>".into(), |o| o.name.clone())
}

/// Names addresses, with the loaded objects listed once for every name of a listing.
struct Namer(Vec<crate::os::Object>);

impl Namer {
    /// The symbol that starts exactly at `addr` (a key's or an immediate's static).
    fn exact(&self, addr: usize) -> Option<String> {
        match crate::os::describe_in(&self.0, addr).1 {
            Some((name, 0)) => Some(name),
            _ => None,
        }
    }

    /// `symbol+0xoff`, or the object and offset, or the address.
    fn symbolize(&self, addr: usize) -> String {
        match crate::os::describe_in(&self.0, addr) {
            (_, Some((sym, 0))) => sym,
            (_, Some((sym, off))) => format!("{sym}+{off:#x}"),
            (Some((obj, off)), None) => format!("{obj}+{off:#x}"),
            (None, None) => format!("{addr:#x}"),
        }
    }
}

/// Names of this copy's keys, immediates and alternative sites, by address: they never
/// change while the object is loaded, and naming thousands from the symbol table is most of
/// a listing's cost. Built on the first listing; freed when the object is unloaded.
static NAMES: Mutex<Option<Arc<Names>>> = Mutex::new(None);

/// (address, name), sorted by address.
struct Names(Vec<(usize, String)>);

impl Names {
    fn get(&self, addr: usize) -> Option<&str> {
        let i = self.0.binary_search_by_key(&addr, |n| n.0).ok()?;
        Some(&self.0[i].1)
    }
}

fn names(namer: &Namer, keys: &[KeyRow], imms: &[ImmRow], alts: &[AltRow]) -> Arc<Names> {
    let mut cached = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(names) = &*cached {
        return names.clone();
    }
    let mut all: Vec<(usize, String)> = Vec::new();
    for key in keys {
        let addr = key.core.addr();
        all.push((
            addr,
            namer
                .exact(addr)
                .unwrap_or_else(|| format!("key@{addr:#x}")),
        ));
    }
    for imm in imms {
        let addr = imm.core.addr();
        let name = namer
            .exact(addr)
            .unwrap_or_else(|| format!("immediate@{addr:#x}"));
        all.push((addr, name));
    }
    all.extend(alts.iter().map(|a| (a.addr, namer.symbolize(a.addr))));
    all.sort_unstable_by_key(|n| n.0);
    let names = Arc::new(Names(all));
    *cached = Some(names.clone());
    names
}

/// Frees the name cache (this copy's object is being unloaded).
pub(crate) fn release() {
    *NAMES.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Which rows a listing wants: kinds (all when empty) and a glob over names.
pub(crate) struct Filter<'a> {
    pub(crate) pattern: &'a str,
    pub(crate) kinds: &'a [Kind],
}

impl Filter<'_> {
    fn wants_kind(&self, kind: Kind) -> bool {
        self.kinds.is_empty() || self.kinds.contains(&kind)
    }
}

/// The rows of this copy that `filter` wants, sorted by kind and name. `calls_of` gives a
/// traced function's call count.
pub(crate) fn rows(
    filter: &Filter<'_>,
    calls_of: impl Fn(&str) -> Option<u64>,
) -> Result<Vec<Row>> {
    let namer = Namer(crate::os::loaded_objects());
    let object = object_of(&namer.0);
    let (keys, calls, alts, imms) = {
        let lock = crate::engine::lock()?;
        let skip = crate::functions::key_addrs(&lock)?;
        (
            crate::keys::rows(&lock, &skip)?,
            crate::calls::rows(&lock)?,
            crate::alternatives::rows(&lock)?,
            crate::immediates::rows(&lock)?,
        )
    };
    let names = names(&namer, &keys, &imms, &alts);
    let glob = Glob::new(filter.pattern);
    let wants = |kind: Kind, name: &str| filter.wants_kind(kind) && glob.matches(name);
    let name_of = |addr: usize| names.get(addr).unwrap_or("?");
    let mut out = Vec::new();
    for key in keys {
        let name = name_of(key.core.addr());
        if !wants(Kind::Key, name) {
            continue;
        }
        let name = name.to_owned();
        let count = key.count();
        let mut row = Row::new(
            Kind::Key,
            name,
            &object,
            key.sites,
            on_off(count > 0).into(),
        )
        .declared(key.declared())
        .with("enabled", Extra::Bool(count > 0))
        .with("count", Extra::Int(count.into()))
        .with("likely_sites", Extra::Int(key.likely() as i64));
        row.handle = Handle::Key(key.core);
        out.push(row);
    }
    for call in calls
        .into_iter()
        .filter(|c| wants(Kind::StaticCall, c.name))
    {
        let target = match call.target {
            Some(t) => namer.symbolize(t),
            None => "no-op".into(),
        };
        out.push(
            Row::new(
                Kind::StaticCall,
                call.name.to_owned(),
                &object,
                call.sites,
                target.clone(),
            )
            .declared(call.declared)
            .with("target", Extra::Text(target)),
        );
    }
    let applied = crate::alternatives::applied();
    for alt in alts {
        let name = name_of(alt.addr);
        if !wants(Kind::Alternative, name) {
            continue;
        }
        let name = name.to_owned();
        let chosen = match (&alt.chosen(), applied) {
            (Ok(f), true) => feature_name(f).to_owned(),
            (Ok(f), false) => format!("default (first use will choose {})", feature_name(f)),
            (Err(why), _) => format!("refused: {why}"),
        };
        out.push(
            Row::new(Kind::Alternative, name, &object, 1, chosen)
                .with("applied", Extra::Bool(applied))
                .with(
                    "candidates",
                    Extra::Texts(
                        alt.candidates()
                            .iter()
                            .map(|f| feature_name(f).to_owned())
                            .collect(),
                    ),
                ),
        );
    }
    let functions = if filter.wants_kind(Kind::Function) {
        crate::functions::list(filter.pattern)?
    } else {
        Vec::new()
    };
    for f in functions {
        let calls = calls_of(f.name);
        let state = match (f.noop, f.replaced, f.tracers > 0) {
            (true, _, _) => "no-op",
            (_, true, _) => "replaced",
            (_, _, true) => "traced",
            _ => "off",
        };
        let mut row = Row::new(
            Kind::Function,
            f.name.to_owned(),
            &object,
            f.sites,
            state.into(),
        )
        .with("tracers", Extra::Int(f.tracers as i64))
        .with("replaced", Extra::Bool(f.replaced))
        .with("noop", Extra::Bool(f.noop))
        .with("returns_unit", Extra::Bool(f.unit));
        row.entry.declared = Some(format!("{}:{}", f.file, f.line));
        if let Some(n) = calls {
            row = row.with("calls", Extra::Int(n as i64));
        }
        out.push(row);
    }
    for imm in imms {
        let name = name_of(imm.core.addr());
        if !wants(Kind::Immediate, name) {
            continue;
        }
        let name = name.to_owned();
        let (kind, size) = imm.kind();
        let value = format_value(imm.bits(), kind, size);
        let mut row = Row::new(Kind::Immediate, name, &object, imm.sites, value.clone())
            .declared(imm.declared())
            .with("value", Extra::Text(value))
            .with("type", Extra::Text(type_name(kind, size)))
            .with("width", Extra::Int(imm.width() as i64));
        row.handle = Handle::Immediate(imm.core, kind, size);
        out.push(row);
    }
    for (target, enabled) in crate::detours::rows() {
        let name = namer.symbolize(target);
        if wants(Kind::Detour, &name) {
            out.push(
                Row::new(Kind::Detour, name, &object, 1, on_off(enabled).into())
                    .with("enabled", Extra::Bool(enabled)),
            );
        }
    }
    out.sort_by(|a, b| (a.entry.kind, &a.entry.name).cmp(&(b.entry.kind, &b.entry.name)));
    Ok(out)
}

/// A key's state as a request or `TEXTPOKE` names it, or why the word is not one.
pub(crate) fn parse_on_off(value: &str) -> std::result::Result<bool, String> {
    match value {
        "on" | "true" | "1" | "enable" => Ok(true),
        "off" | "false" | "0" | "disable" => Ok(false),
        _ => Err(format!("a key is set `on` or `off`, not `{value}`")),
    }
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

fn feature_name(feature: &str) -> &str {
    if feature.is_empty() {
        "default"
    } else {
        feature
    }
}

/// An immediate's type name and value, from its recorded kind byte and size (for tools that
/// read immediates from a file): `("i8", "-100")`.
pub fn imm_text(bits: u64, kind: u8, size: u8) -> (String, String) {
    let kind = ImmKind::from_byte(kind);
    let size = usize::from(size);
    (type_name(kind, size), format_value(bits, kind, size))
}

/// An immediate's bits as its type reads them.
pub(crate) fn format_value(bits: u64, kind: ImmKind, size: usize) -> String {
    let bits = truncate(bits, size);
    match kind {
        ImmKind::Bool => (bits != 0).to_string(),
        ImmKind::Signed if (1..8).contains(&size) => {
            let shift = 64 - 8 * size as u32;
            (((bits << shift) as i64) >> shift).to_string()
        }
        ImmKind::Signed => (bits as i64).to_string(),
        ImmKind::Unsigned | ImmKind::Unknown => bits.to_string(),
    }
}

fn truncate(bits: u64, size: usize) -> u64 {
    if (1..8).contains(&size) {
        bits & ((1u64 << (8 * size)) - 1)
    } else {
        bits
    }
}

fn type_name(kind: ImmKind, size: usize) -> String {
    match (kind, size) {
        (ImmKind::Bool, _) => "bool".into(),
        (ImmKind::Signed, n) if n > 0 => format!("i{}", 8 * n),
        (ImmKind::Unsigned, n) if n > 0 => format!("u{}", 8 * n),
        _ => "unknown".into(),
    }
}

/// Parses `text` as a value of an immediate's type: its bits, or why not.
pub(crate) fn parse_value(
    text: &str,
    kind: ImmKind,
    size: usize,
) -> std::result::Result<u64, String> {
    let bad = || format!("`{text}` is not a valid {}", type_name(kind, size));
    if kind == ImmKind::Bool {
        return match text {
            "true" | "on" | "1" => Ok(1),
            "false" | "off" | "0" => Ok(0),
            _ => Err(bad()),
        };
    }
    let bits = if size == 0 { 8 } else { 8 * size as u32 };
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let magnitude = match digits.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => digits.parse::<u64>(),
    }
    .map_err(|_| bad())?;
    match (kind, negative) {
        (ImmKind::Signed, true) => {
            let min = 1u128 << (bits - 1);
            if u128::from(magnitude) > min {
                return Err(format!("{text} does not fit in {}", type_name(kind, size)));
            }
            Ok(truncate(magnitude.wrapping_neg(), size))
        }
        (_, true) => Err(format!(
            "{text} is negative; {} is unsigned",
            type_name(kind, size)
        )),
        (ImmKind::Signed, false) if u128::from(magnitude) >= 1u128 << (bits - 1) => {
            Err(format!("{text} does not fit in {}", type_name(kind, size)))
        }
        (_, false) if bits < 64 && magnitude >> bits != 0 => {
            Err(format!("{text} does not fit in {}", type_name(kind, size)))
        }
        _ => Ok(magnitude),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_their_types() {
        assert_eq!(parse_value("-1", ImmKind::Signed, 4), Ok(0xffff_ffff));
        assert_eq!(format_value(0xffff_ffff, ImmKind::Signed, 4), "-1");
        assert_eq!(parse_value("-128", ImmKind::Signed, 1), Ok(0x80));
        assert!(parse_value("-129", ImmKind::Signed, 1).is_err());
        assert!(parse_value("128", ImmKind::Signed, 1).is_err());
        assert_eq!(parse_value("0xff", ImmKind::Unsigned, 1), Ok(255));
        assert!(parse_value("256", ImmKind::Unsigned, 1).is_err());
        assert!(parse_value("-1", ImmKind::Unsigned, 4).is_err());
        assert_eq!(parse_value("on", ImmKind::Bool, 1), Ok(1));
        assert!(parse_value("maybe", ImmKind::Bool, 1).is_err());
        assert_eq!(format_value(1, ImmKind::Bool, 1), "true");
        assert_eq!(
            parse_value("18446744073709551615", ImmKind::Unsigned, 8),
            Ok(u64::MAX)
        );
        assert_eq!(format_value(u64::MAX, ImmKind::Signed, 8), "-1");
        assert!(parse_value("x", ImmKind::Unsigned, 4).is_err());
    }
}
