//! Every site must start an instruction of its function (design invariant 3), checked once, when
//! a table is indexed, by decoding from the function's first byte.
//!
//! Holding the expected bytes is not enough: a stale entry can land on an identical 5-byte NOP
//! inside another instruction's immediate, and patching it would change what that instruction
//! computes. Function bounds come from the object's unwind table or symbol table
//! ([`os::function_containing`]); where neither knows the site's function, or decoding stops
//! being evidence before the site (see [`arch::instruction_starts`]), the site keeps only the
//! byte check of every batch: refusing a working program on a guess would be worse. Copies of
//! textpoke that may be unloaded (plugins that are not the process's patcher) do not decode at
//! all (see [`never_unloaded`]).
//!
//! A lookup costs microseconds and tables hold thousands of sites, most in small functions laid
//! out one after another. So the walk goes on decoding from where it stands (the end of the
//! function it decoded, or the last site it reached) to the next site nearby, through the
//! padding between functions, which compilers and linkers make of whole instructions (`int3`
//! or NOPs), and so through the next function's start: landing on the site is then the same
//! evidence as decoding that function from its start. Missing it is never a refusal by itself:
//! the site's function is then looked up and decoded from its own start, and only that decides.
//! (Bytes between functions that are not whole instructions, data in text, could put the walk
//! out of step and let it land, by chance, on a misplaced site: a stale entry would then keep
//! only the byte check, as before.)

use crate::os::{self, BoundsSource};
use crate::{Error, Result, arch, engine};

use super::Table;

/// A site that its function's instructions, decoded from its first byte, step over.
#[derive(Debug, PartialEq, Eq)]
struct Misplaced {
    site: usize,
    /// The function, `[start, end)`.
    function: (usize, usize),
    /// The instruction the site lies inside: its address and length.
    insn: (usize, usize),
}

/// Refuses the first of `sorted` (site, extent) pairs of `table` that is not on an instruction
/// boundary of its function.
pub(super) fn check(table: &Table, sorted: &[(usize, usize)]) -> Result<()> {
    let Some(&(first, _)) = sorted.first() else {
        return Ok(());
    };
    // Every site was checked to lie in the text of the table's object, which holds this copy of
    // textpoke and so stays loaded while it runs; bytes read must lie in that text too.
    let Some(object) = os::object_containing(first, 1) else {
        return Ok(());
    };
    if !never_unloaded(&object) {
        return Ok(());
    }
    let sites: Vec<usize> = sorted.iter().map(|&(site, _)| site).collect();
    let bounds = |site| os::function_containing(site).map(|b| (b.start, b.end));
    let read = |start: usize, len: usize| {
        object.text_segment(start, len).map(|_| {
            // SAFETY: `[start, start + len)` lies in a readable, executable segment of the
            // object holding this copy of textpoke (see above), mapped for as long as it runs;
            // no batch writes while the patch lock, held while indexing, is ours, and the bytes
            // are plain data here.
            unsafe { std::slice::from_raw_parts(start as *const u8, len) }
        })
    };
    match first_misplaced(&sites, bounds, read) {
        None => Ok(()),
        Some(m) => Err(Error::BadTable {
            table: table.name,
            why: explain(&m, read(m.insn.0, m.insn.1).unwrap_or_default()),
        }),
    }
}

/// Whether this copy of textpoke, in `object`, stays loaded until the process ends: it is the
/// process's patcher (whose object is made permanent), or its object is the main program.
///
/// Only such a copy decodes: iced-x86 builds its decoder's tables (about 450 KiB) on a copy's
/// first decode and never frees them, so a plugin loaded and unloaded over and over would leak
/// them each time.
fn never_unloaded(object: &os::Object) -> bool {
    engine::patcher_id().is_ok_and(|(_, here)| here)
        || os::loaded_objects()
            .first()
            .is_some_and(|main| main.base == object.base && main.name == object.name)
}

/// How far past a known instruction boundary the walk decodes on to reach the next site rather
/// than looking its function up: about what one lookup costs in decoding.
const REACH: usize = 4096;

/// The first of `sites` (ascending) that is not an instruction start of its function, with
/// functions' bounds from `bounds` and code from `read`. Each function looked up is decoded
/// once, for all of its sites; sites reached by decoding on (see the [module docs](self)) need
/// no lookup.
fn first_misplaced<'a>(
    sites: &[usize],
    mut bounds: impl FnMut(usize) -> Option<(usize, usize)>,
    read: impl Fn(usize, usize) -> Option<&'a [u8]>,
) -> Option<Misplaced> {
    // An instruction boundary at or below the next site: a decoded function's end or a site.
    let mut cursor: Option<usize> = None;
    let mut i = 0;
    while let Some(&site) = sites.get(i) {
        let reached = cursor.is_some_and(|at| {
            site - at <= REACH && read(at, site - at).is_some_and(|c| arch::lands_on_end(c, at))
        });
        if reached {
            cursor = Some(site);
            i += 1;
            continue;
        }
        let Some((start, end)) = bounds(site).filter(|&(s, e)| s <= site && site < e) else {
            i += 1;
            continue;
        };
        // Sorted, so the function's sites are the next ones below its end.
        let group = &sites[i..i + sites[i..].partition_point(|&s| s < end)];
        i += group.len();
        let Some(code) = read(start, end - start) else {
            cursor = None;
            continue;
        };
        cursor = Some(end);
        // Where decoding stops being evidence, a site after it is not judged: an instruction
        // start there could be wrong as well as right.
        let (starts, known_end) = match arch::instruction_starts(code, start) {
            Ok(starts) => (starts, end),
            Err(at) => (
                arch::instruction_starts(&code[..at - start], start).unwrap_or_default(),
                at,
            ),
        };
        for &site in group.iter().take_while(|&&s| s < known_end) {
            let k = starts.partition_point(|&s| s <= site);
            if k > 0 && starts[k - 1] != site {
                let insn = starts[k - 1];
                let next = starts.get(k).copied().unwrap_or(known_end);
                return Some(Misplaced {
                    site,
                    function: (start, end),
                    insn: (insn, next - insn),
                });
            }
        }
    }
    None
}

/// The refusal's text: the site, the function and the instruction, as a user reads them.
fn explain(m: &Misplaced, insn_bytes: &[u8]) -> String {
    let (start, end) = m.function;
    let function = function_name(start);
    let source = match os::function_containing(start).map(|b| b.source) {
        Some(BoundsSource::EhFrame) => "its unwind table",
        Some(BoundsSource::SymbolTable) => "its symbol table",
        None => "a lookup that no longer finds them",
    };
    format!(
        "site {:#x} <{function}+{:#x}> is not on an instruction boundary of {function} \
         ({start:#x}..{end:#x}, bounds from {source}): decoded from its start, the function \
         has `{}` at {:#x} <{function}+{:#x}> over it; the table is stale or damaged",
        m.site,
        m.site - start,
        arch::disassemble(m.insn.0, insn_bytes),
        m.insn.0,
        m.insn.0 - start,
    )
}

/// The function at `start`, named by its symbol where its object has one.
fn function_name(start: usize) -> String {
    match os::describe(start) {
        (_, Some((symbol, 0))) => symbol,
        (_, Some((symbol, off))) => format!("{symbol}+{off:#x}"),
        (Some((object, off)), None) => format!("{object}+{off:#x}"),
        (None, None) => format!("{start:#x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: usize = 0x40_0000;

    /// push rbp; movabs rax, 0x441f0f909090 (its immediate holds a 5-byte NOP at +5);
    /// nop5 (+11); pop rbp; ret.
    const CODE: [u8; 18] = [
        0x55, 0x48, 0xb8, 0x90, 0x90, 0x90, 0x0f, 0x1f, 0x44, 0x00, 0x00, 0x0f, 0x1f, 0x44, 0x00,
        0x00, 0x5d, 0xc3,
    ];

    fn one_function(code: &[u8]) -> (impl FnMut(usize) -> Option<(usize, usize)>, usize) {
        let end = AT + code.len();
        (move |a| (AT..end).contains(&a).then_some((AT, end)), end)
    }

    fn reader<'a>(code: &'a [u8]) -> impl Fn(usize, usize) -> Option<&'a [u8]> {
        move |a, len| code.get(a.checked_sub(AT)?..a - AT + len)
    }

    #[test]
    fn boundary_sites_on_instruction_starts_pass() {
        let (bounds, _) = one_function(&CODE);
        assert_eq!(
            first_misplaced(&[AT, AT + 11, AT + 17], bounds, reader(&CODE)),
            None
        );
    }

    #[test]
    fn boundary_site_inside_an_instruction_is_found() {
        let (bounds, end) = one_function(&CODE);
        let found = first_misplaced(&[AT + 1, AT + 5, AT + 11], bounds, reader(&CODE));
        assert_eq!(
            found,
            Some(Misplaced {
                site: AT + 5,
                function: (AT, end),
                insn: (AT + 1, 10),
            })
        );
        let text = explain(&found.unwrap(), &CODE[1..11]);
        // iced names `movabs` `mov`.
        assert!(text.contains("`mov rax,441F0F909090h`"), "{text}");
        assert!(text.contains(&format!("site {:#x}", AT + 5)), "{text}");
    }

    #[test]
    fn boundary_unknown_functions_and_unreadable_code_are_skipped() {
        let none = |_| None;
        assert_eq!(first_misplaced(&[AT + 5], none, reader(&CODE)), None);
        let (bounds, _) = one_function(&CODE);
        assert_eq!(first_misplaced(&[AT + 5], bounds, |_, _| None), None);
        // Bounds that do not hold the site are not believed.
        let elsewhere = |_| Some((AT + 100, AT + 200));
        assert_eq!(first_misplaced(&[AT + 5], elsewhere, reader(&CODE)), None);
    }

    #[test]
    fn boundary_sites_after_undecodable_bytes_or_a_breakpoint_are_skipped() {
        // movabs as above, then bytes that do not decode, then the same movabs.
        let mut code = CODE[1..11].to_vec();
        code.push(0x06);
        code.extend_from_slice(&CODE[1..11]);
        let (bounds, _) = one_function(&code);
        assert_eq!(first_misplaced(&[AT + 15], bounds, reader(&code)), None);
        // Before the bad byte, the site is still judged.
        let (bounds, _) = one_function(&code);
        assert!(first_misplaced(&[AT + 4, AT + 15], bounds, reader(&code)).is_some());
        // An `int3` (someone's breakpoint?) before the site: not judged either.
        code[10] = 0xcc;
        let (bounds, _) = one_function(&code);
        assert_eq!(first_misplaced(&[AT + 15], bounds, reader(&code)), None);
    }

    #[test]
    fn boundary_each_function_is_judged_by_its_own_start() {
        // Two functions: [AT, AT + 11) is `push rbp; movabs`, [AT + 11, AT + 18) starts at the
        // NOP. A site at AT + 11 is a boundary of the second.
        let bounds = |a: usize| match a - AT {
            0..11 => Some((AT, AT + 11)),
            11..18 => Some((AT + 11, AT + 18)),
            _ => None,
        };
        let mut looked_up = 0;
        let counting = |a| {
            looked_up += 1;
            bounds(a)
        };
        assert_eq!(
            first_misplaced(&[AT, AT + 1, AT + 11, AT + 16], counting, reader(&CODE)),
            None
        );
        assert_eq!(
            looked_up, 1,
            "the second function is reached by decoding on"
        );
        let found = first_misplaced(&[AT + 11, AT + 12], bounds, reader(&CODE)).unwrap();
        assert_eq!((found.site, found.insn), (AT + 12, (AT + 11, 5)));
    }

    #[test]
    fn boundary_decoding_on_through_padding_needs_no_lookup() {
        // Three copies of CODE, 32 bytes apart, `int3` padding between them.
        let mut code = vec![0xcc; 96];
        for f in 0..3 {
            code[32 * f..32 * f + CODE.len()].copy_from_slice(&CODE);
        }
        let functions = |a: usize| {
            let f = (a - AT) / 32;
            (a - AT - 32 * f < CODE.len()).then_some((AT + 32 * f, AT + 32 * f + CODE.len()))
        };
        let mut looked_up = 0;
        let counting = |a| {
            looked_up += 1;
            functions(a)
        };
        let sites = [AT + 11, AT + 32, AT + 43, AT + 64 + 11, AT + 64 + 17];
        assert_eq!(first_misplaced(&sites, counting, reader(&code)), None);
        assert_eq!(looked_up, 1);
    }

    #[test]
    fn boundary_a_site_decoding_on_misses_is_judged_from_its_functions_start() {
        let mut code = vec![0xcc; 64];
        code[..CODE.len()].copy_from_slice(&CODE);
        code[32..32 + CODE.len()].copy_from_slice(&CODE);
        let functions = |a: usize| match a - AT {
            0..18 => Some((AT, AT + 18)),
            32..50 => Some((AT + 32, AT + 50)),
            _ => None,
        };
        let found = first_misplaced(&[AT + 11, AT + 32 + 5], functions, reader(&code));
        assert_eq!(
            found,
            Some(Misplaced {
                site: AT + 37,
                function: (AT + 32, AT + 50),
                insn: (AT + 33, 10),
            })
        );
        // Bytes between functions that throw decoding on out of step (here: `0f` then the
        // function's `push rbp` read as part of one instruction) refuse nothing by themselves.
        code[31] = 0x0f;
        let sites = [AT + 11, AT + 32, AT + 33];
        assert_eq!(first_misplaced(&sites, functions, reader(&code)), None);
    }
}
