//! Control requests: one line of words, parsed here and carried out on this copy's own items
//! as one batch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::functions::glob::matches;
use crate::functions::{Profile, Tracer};
use crate::{Batch, Result};

use super::json::{self, Obj};
use super::registry::{self, Filter, Handle, Kind, Row};

/// What a request asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verb {
    /// `list [PATTERN]`: every entry whose name matches.
    List,
    /// `alternatives [PATTERN]`: alternative sites and the candidate chosen for each.
    Alternatives,
    /// `enable PATTERN`: keys.
    Enable,
    /// `disable PATTERN`: keys.
    Disable,
    /// `set PATTERN VALUE`: keys (`on`/`off`) and immediates (a value of their type).
    Set,
    /// `trace PATTERN`: counts calls of the patchable functions that match.
    Trace,
    /// `untrace PATTERN`: stops the tracers and profiles whose pattern it matches.
    Untrace,
    /// `profile-start PATTERN`: calls and time of the functions that match.
    ProfileStart,
    /// `profile-stop PATTERN`: stops those profiles and reports them.
    ProfileStop,
    /// `replace-noop PATTERN`: makes the matching functions that return `()` no-ops.
    ReplaceNoop,
    /// `revert PATTERN`: removes replacements (no-ops included).
    Revert,
}

impl Verb {
    /// Whether the request changes something (and so must match something).
    pub(crate) fn changes(self) -> bool {
        !matches!(self, Verb::List | Verb::Alternatives)
    }
}

/// A parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) verb: Verb,
    pub(crate) pattern: String,
    pub(crate) value: Option<String>,
}

/// The verbs and their arguments, for messages.
pub(crate) const USAGE: &str = "list [PATTERN] | alternatives [PATTERN] | enable PATTERN | \
     disable PATTERN | set PATTERN VALUE | trace PATTERN | untrace PATTERN | profile-start \
     PATTERN | profile-stop PATTERN | replace-noop PATTERN | revert PATTERN";

/// Parses one request line.
pub(crate) fn parse(line: &str) -> std::result::Result<Request, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some((&verb_word, args)) = words.split_first() else {
        return Err(format!("empty request; expected {USAGE}"));
    };
    let verb = match verb_word {
        "list" => Verb::List,
        "alternatives" => Verb::Alternatives,
        "enable" => Verb::Enable,
        "disable" => Verb::Disable,
        "set" => Verb::Set,
        "trace" => Verb::Trace,
        "untrace" => Verb::Untrace,
        "profile-start" => Verb::ProfileStart,
        "profile-stop" => Verb::ProfileStop,
        "replace-noop" => Verb::ReplaceNoop,
        "revert" => Verb::Revert,
        other => return Err(format!("unknown verb `{other}`; expected {USAGE}")),
    };
    let wanted = match verb {
        Verb::List | Verb::Alternatives => 0..=1,
        Verb::Set => 2..=2,
        _ => 1..=1,
    };
    if !wanted.contains(&args.len()) {
        return Err(format!(
            "`{verb_word}` takes {} argument(s), not {}; expected {USAGE}",
            if wanted.start() == wanted.end() {
                wanted.start().to_string()
            } else {
                format!("{} to {}", wanted.start(), wanted.end())
            },
            args.len()
        ));
    }
    Ok(Request {
        verb,
        pattern: args.first().copied().unwrap_or("*").to_owned(),
        value: args.get(1).map(|v| (*v).to_owned()),
    })
}

/// A tracer or profile started by a request, kept until a request stops it.
enum Held {
    Trace {
        pattern: String,
        /// Calls per function: (name's address, count), sorted.
        counts: Arc<Vec<(usize, AtomicU64)>>,
        _tracer: Tracer,
    },
    Profile {
        pattern: String,
        profile: Profile,
    },
}

impl Held {
    fn pattern(&self) -> &str {
        match self {
            Held::Trace { pattern, .. } | Held::Profile { pattern, .. } => pattern,
        }
    }
}

/// A tracer that counts calls per function, for `trace` requests and `TEXTPOKE`'s `trace=`.
pub(crate) struct CountingTracer {
    pattern: String,
    counts: Arc<Vec<(usize, AtomicU64)>>,
    pub(crate) tracer: Tracer,
}

impl CountingTracer {
    /// A tracer of the functions matching `pattern`, not started.
    pub(crate) fn new(pattern: &str) -> Result<Self> {
        let mut ids: Vec<usize> = crate::functions::list(pattern)?
            .iter()
            .map(|f| f.name.as_ptr() as usize)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let counts: Arc<Vec<(usize, AtomicU64)>> =
            Arc::new(ids.into_iter().map(|id| (id, AtomicU64::new(0))).collect());
        let shared = counts.clone();
        let tracer = Tracer::new(pattern, move |entry| {
            let id = entry.name().as_ptr() as usize;
            if let Ok(i) = shared.binary_search_by_key(&id, |c| c.0) {
                shared[i].1.fetch_add(1, Ordering::Relaxed);
            }
        })?;
        Ok(CountingTracer {
            pattern: pattern.to_owned(),
            counts,
            tracer,
        })
    }

    /// Keeps it until an `untrace` request stops it.
    pub(crate) fn keep(self) {
        held().push(Held::Trace {
            pattern: self.pattern,
            counts: self.counts,
            _tracer: self.tracer,
        });
    }
}

/// Only taken by control requests (never by a program's own calls), briefly.
static HELD: Mutex<Vec<Held>> = Mutex::new(Vec::new());

fn held() -> std::sync::MutexGuard<'static, Vec<Held>> {
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

/// Calls counted so far by the tracers of requests, for the function named `name`.
fn traced_calls(held: &[Held], name: &str) -> Option<u64> {
    let id = name.as_ptr() as usize;
    let mut total = None;
    for h in held {
        if let Held::Trace { counts, .. } = h
            && let Ok(i) = counts.binary_search_by_key(&id, |c| c.0)
        {
            *total.get_or_insert(0) += counts[i].1.load(Ordering::Relaxed);
        }
    }
    total
}

/// The rows of this copy that `filter` wants, with the calls its request tracers counted.
pub(crate) fn rows(filter: &Filter<'_>) -> Result<Vec<Row>> {
    let guard = held();
    registry::rows(filter, |name| traced_calls(&guard, name))
}

/// The outcome of a request in this copy: how many items it matched, and JSON fields.
pub(crate) struct Outcome {
    pub(crate) matched: usize,
    /// The entries it matched or changed, as JSON objects.
    pub(crate) items: Vec<String>,
    /// Profile rows, as JSON objects.
    pub(crate) profile: Vec<String>,
}

/// Carries out `request` on this copy's items.
pub(crate) fn execute(request: &Request) -> std::result::Result<Outcome, String> {
    let pattern = request.pattern.as_str();
    let selected = |kinds: &[Kind]| -> std::result::Result<Vec<Row>, String> {
        rows(&Filter { pattern, kinds }).map_err(|e| e.to_string())
    };
    let listed = |rows: Vec<Row>| Outcome {
        matched: rows.len(),
        items: rows.iter().map(row_json).collect(),
        profile: Vec::new(),
    };
    match request.verb {
        Verb::List => Ok(listed(selected(&[])?)),
        Verb::Alternatives => Ok(listed(selected(&[Kind::Alternative])?)),
        Verb::Enable | Verb::Disable => {
            let on = request.verb == Verb::Enable;
            let rows = selected(&[Kind::Key])?;
            let batch = rows.iter().fold(Batch::new(), |b, r| match r.handle {
                Handle::Key(k) => b.set_key(k, on),
                _ => b,
            });
            commit_and_relist(batch, rows, pattern, &[Kind::Key])
        }
        Verb::Set => {
            let value = request.value.as_deref().unwrap_or_default();
            let rows = selected(&[Kind::Key, Kind::Immediate])?;
            let mut batch = Batch::new();
            for row in &rows {
                batch = match row.handle {
                    Handle::Key(k) => batch.set_key(
                        k,
                        registry::parse_on_off(value)
                            .map_err(|why| format!("{}: {why}", row.entry.name))?,
                    ),
                    Handle::Immediate(imm, kind, size) => {
                        let bits = registry::parse_value(value, kind, size)
                            .map_err(|why| format!("{}: {why}", row.entry.name))?;
                        batch.set_imm(imm, bits)
                    }
                    Handle::None => batch,
                };
            }
            commit_and_relist(batch, rows, pattern, &[Kind::Key, Kind::Immediate])
        }
        Verb::Trace => {
            let rows = selected(&[Kind::Function])?;
            if rows.is_empty() {
                return Ok(listed(rows));
            }
            let trace = CountingTracer::new(pattern).map_err(|e| e.to_string())?;
            trace.tracer.enable().map_err(|e| e.to_string())?;
            trace.keep();
            relist(rows, pattern, &[Kind::Function])
        }
        Verb::ProfileStart => {
            let rows = selected(&[Kind::Function])?;
            if rows.is_empty() {
                return Ok(listed(rows));
            }
            let profile = crate::functions::profile(pattern).map_err(|e| e.to_string())?;
            held().push(Held::Profile {
                pattern: pattern.to_owned(),
                profile,
            });
            relist(rows, pattern, &[Kind::Function])
        }
        Verb::Untrace | Verb::ProfileStop => {
            let profiles_only = request.verb == Verb::ProfileStop;
            let stopped: Vec<Held> = {
                let mut all = held();
                let (stop, keep) = std::mem::take(&mut *all).into_iter().partition(|h| {
                    matches(pattern, h.pattern())
                        && (!profiles_only || matches!(h, Held::Profile { .. }))
                });
                *all = keep;
                stop
            };
            // Dropped outside HELD: stopping a tracer is a batch.
            let mut profile = Vec::new();
            for h in &stopped {
                if let Held::Profile { profile: p, .. } = h {
                    profile.extend(p.report().iter().map(profile_json));
                }
            }
            let patterns: Vec<String> = stopped.iter().map(|h| h.pattern().to_owned()).collect();
            drop(stopped);
            Ok(Outcome {
                matched: patterns.len(),
                items: patterns
                    .iter()
                    .map(|p| {
                        let mut out = String::new();
                        Obj::new(&mut out).str("stopped", p).end();
                        out
                    })
                    .collect(),
                profile,
            })
        }
        Verb::ReplaceNoop => {
            let names = crate::functions::replace_noop(pattern).map_err(|e| e.to_string())?;
            let rows: Vec<Row> = selected(&[Kind::Function])?
                .into_iter()
                .filter(|r| names.contains(&r.entry.name.as_str()))
                .collect();
            Ok(listed(rows))
        }
        Verb::Revert => {
            let rows = selected(&[Kind::Function])?;
            let reverted = crate::functions::revert(pattern).map_err(|e| e.to_string())?;
            let mut out = relist(rows, pattern, &[Kind::Function])?;
            out.matched = reverted;
            Ok(out)
        }
    }
}

/// Commits `batch` (which changed `rows`), then lists those rows as they are now.
fn commit_and_relist(
    batch: Batch<'_>,
    rows: Vec<Row>,
    pattern: &str,
    kinds: &[Kind],
) -> std::result::Result<Outcome, String> {
    if !rows.is_empty() {
        batch.commit().map_err(|e| e.to_string())?;
    }
    relist(rows, pattern, kinds)
}

/// The current rows of the entries in `rows` (which `pattern` and `kinds` selected).
fn relist(rows: Vec<Row>, pattern: &str, kinds: &[Kind]) -> std::result::Result<Outcome, String> {
    let names: Vec<(Kind, String)> = rows
        .into_iter()
        .map(|r| (r.entry.kind, r.entry.name))
        .collect();
    let now: Vec<Row> = self::rows(&Filter { pattern, kinds })
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|r| {
            names
                .iter()
                .any(|(k, n)| *k == r.entry.kind && *n == r.entry.name)
        })
        .collect();
    Ok(Outcome {
        matched: names.len(),
        items: now.iter().map(row_json).collect(),
        profile: Vec::new(),
    })
}

fn row_json(row: &Row) -> String {
    let mut out = String::new();
    row.json(&mut out);
    out
}

fn profile_json(row: &crate::functions::ProfileRow) -> String {
    let mut out = String::new();
    Obj::new(&mut out)
        .str("name", row.name)
        .num("calls", row.calls)
        .num("total_ns", row.total.as_nanos())
        .num("max_ns", row.max.as_nanos())
        .end();
    out
}

/// This copy's reply: `{"object", "matched", "error", "items", "profile"}`.
pub(crate) fn copy_reply(object: &str, result: std::result::Result<&Outcome, &str>) -> String {
    let mut out = String::new();
    let mut obj = Obj::new(&mut out);
    obj.str("object", object);
    match result {
        Ok(o) => {
            obj.num("matched", o.matched)
                .raw("error", "null")
                .raw("items", &json::array(o.items.iter().map(String::as_str)))
                .raw(
                    "profile",
                    &json::array(o.profile.iter().map(String::as_str)),
                );
        }
        Err(why) => {
            obj.num("matched", 0)
                .str("error", why)
                .raw("items", "[]")
                .raw("profile", "[]");
        }
    }
    obj.end();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_or_say_why_not() {
        assert_eq!(
            parse("list").unwrap(),
            Request {
                verb: Verb::List,
                pattern: "*".into(),
                value: None
            }
        );
        assert_eq!(parse("set a::B 4").unwrap().value.as_deref(), Some("4"));
        assert!(parse("").unwrap_err().contains("empty"));
        assert!(parse("frobnicate x").unwrap_err().contains("unknown verb"));
        assert!(parse("enable").unwrap_err().contains("takes 1"));
        assert!(parse("set a").unwrap_err().contains("takes 2"));
        assert!(parse("list a b").unwrap_err().contains("0 to 1"));
    }
}
