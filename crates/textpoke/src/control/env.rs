//! `TEXTPOKE` and `TEXTPOKE_CONTROL`, read when this copy's object is loaded: before `main`
//! for the executable's copy, at `dlopen` for a plugin's.

use std::io::Write;

use crate::Batch;
use crate::functions::Replacement;
use crate::functions::glob::Glob;

use super::command::CountingTracer;
use super::registry::{self, Handle, Kind, Row};

/// One entry of `TEXTPOKE`.
#[derive(Debug, PartialEq, Eq)]
enum Spec<'a> {
    /// `PATTERN`, `PATTERN=VALUE`: keys and immediates.
    Set(&'a str, &'a str),
    /// `trace=PATTERN`.
    Trace(&'a str),
    /// `noop=PATTERN`.
    Noop(&'a str),
}

/// Parses the variable: the entries, and one message per entry that is not one.
fn parse(text: &str) -> (Vec<(&str, Spec<'_>)>, Vec<String>) {
    let mut specs = Vec::new();
    let mut bad = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let spec = match entry.split_once('=') {
            None => Spec::Set(entry, "on"),
            Some(("trace", p)) => Spec::Trace(p),
            Some(("noop", p)) => Spec::Noop(p),
            Some((p, v)) => Spec::Set(p, v),
        };
        let (Spec::Set(p, _) | Spec::Trace(p) | Spec::Noop(p)) = &spec;
        let bad_value = matches!(spec, Spec::Set(_, v) if v.is_empty() || v.contains('='));
        if p.is_empty() || p.chars().any(char::is_whitespace) || p.contains('=') || bad_value {
            bad.push(format!(
                "`{entry}` is not `PATTERN`, `PATTERN=VALUE`, `trace=PATTERN` or `noop=PATTERN`"
            ));
            continue;
        }
        specs.push((entry, spec));
    }
    (specs, bad)
}

/// One line on standard error; never fails (the program runs on whatever happens here).
fn say(object: &str, what: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "textpoke: TEXTPOKE ({object}): {what}; skipped"
    );
}

/// Applies `TEXTPOKE` to this copy's items as one batch, and starts the control server if
/// `TEXTPOKE_CONTROL=1`. Problems are printed, one line each, never raised.
pub(crate) fn apply_at_load() {
    let spec = std::env::var("TEXTPOKE").ok();
    let serve = std::env::var_os("TEXTPOKE_CONTROL").is_some_and(|v| v == "1");
    if spec.is_none() && !serve {
        return;
    }
    // Entries name items anywhere in the process: only the executable's copy reports what
    // is wrong with the text itself, or what matches nothing it has.
    let main = crate::os::in_main_program(apply_at_load as *const () as usize);
    let object = registry::this_object();
    if let Some(spec) = spec {
        let (specs, bad) = parse(&spec);
        if main {
            for why in bad {
                say(&object, &why);
            }
        }
        apply(&specs, main, &object);
    }
    if serve && let Err(why) = crate::engine::serve_in_patcher() {
        let _ = writeln!(std::io::stderr(), "textpoke: TEXTPOKE_CONTROL: {why}");
    }
}

fn apply(specs: &[(&str, Spec<'_>)], main: bool, object: &str) {
    let everything = registry::Filter {
        pattern: "*",
        kinds: &[],
    };
    let rows = match super::command::rows(&everything) {
        Ok(rows) => rows,
        Err(e) => return say(object, &e.to_string()),
    };
    let mut tracers = Vec::new();
    let mut noops: Vec<Replacement> = Vec::new();
    let mut sets: Vec<(&Row, u64)> = Vec::new();
    for (entry, spec) in specs {
        let found = match *spec {
            Spec::Set(pattern, value) => {
                let mut n = 0;
                let glob = Glob::new(pattern);
                for row in rows.iter().filter(|r| glob.matches(&r.entry.name)) {
                    let bits = match (row.handle, row.entry.kind) {
                        (Handle::Key(_), Kind::Key) => registry::parse_on_off(value).map(u64::from),
                        (Handle::Immediate(_, kind, size), _) => {
                            registry::parse_value(value, kind, size)
                        }
                        _ => continue,
                    };
                    n += 1;
                    match bits {
                        Ok(bits) => sets.push((row, bits)),
                        Err(why) => say(object, &format!("{}: {why}", row.entry.name)),
                    }
                }
                n
            }
            Spec::Trace(pattern) => match CountingTracer::new(pattern) {
                Ok(t) if !t.tracer.functions().is_empty() => {
                    tracers.push(t);
                    1
                }
                Ok(_) => 0,
                Err(e) => {
                    say(object, &format!("trace={pattern}: {e}"));
                    continue;
                }
            },
            Spec::Noop(pattern) => match crate::functions::noop_replacements(pattern) {
                Ok(found) => {
                    let n = found.len();
                    noops.extend(found);
                    n
                }
                Err(e) => {
                    say(object, &format!("noop={pattern}: {e}"));
                    continue;
                }
            },
        };
        if found == 0 && main {
            say(
                object,
                &format!("`{entry}` matches nothing here (a plugin loaded later may match it)"),
            );
        }
    }
    let mut batch = Batch::new();
    for &(row, bits) in &sets {
        batch = match row.handle {
            Handle::Key(k) => batch.set_key(k, bits != 0),
            Handle::Immediate(imm, _, _) => batch.set_imm(imm, bits),
            Handle::None => batch,
        };
    }
    for t in &tracers {
        batch = batch.start_tracer(&t.tracer);
    }
    for r in &noops {
        batch = batch.replace(r);
    }
    match batch.commit() {
        Ok(_) => tracers.into_iter().for_each(CountingTracer::keep),
        Err(e) => say(object, &format!("the batch failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_and_bad_ones_are_named() {
        let (specs, bad) = parse("a::*=on, b::N=4,trace=c::*,noop=d::f,e::K,,=x,f g=1,x=y=z");
        assert_eq!(
            specs.into_iter().map(|(_, s)| s).collect::<Vec<_>>(),
            vec![
                Spec::Set("a::*", "on"),
                Spec::Set("b::N", "4"),
                Spec::Trace("c::*"),
                Spec::Noop("d::f"),
                Spec::Set("e::K", "on"),
            ]
        );
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert!(bad[0].contains("`=x`"));
    }
}
