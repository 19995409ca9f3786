//! The text-patching engine: validated, batched, breakpoint-first writes of live code.
//!
//! Knows nothing of keys or calls. A caller hands it a batch of [`Poke`]s, each naming the
//! bytes expected at an address, the bytes to put there and the instruction a trapped thread
//! should be given meanwhile. The engine
//!
//! 1. refuses the whole batch if any two pokes overlap, any poke lies outside an executable
//!    segment, or any site does not hold its expected bytes (nothing is written);
//! 2. publishes the batch for the trap handler, then writes a breakpoint over the head of every
//!    site, serializes all cores, writes every tail, serializes, writes every new head and
//!    serializes again: three core syncs per batch, however many sites;
//! 3. withdraws the batch and waits until no trap handler still reads it.

mod code;
mod trap;

pub use code::Code;
pub use trap::{on_breakpoint, register_sites, trap_counts};

pub(crate) use trap::forget_after_fork;

use crate::arch::{BREAKPOINT, Insn};
use crate::os::{self, Edit, PatchGuard, Segment};
use crate::{CodeBytes, Error, Location, Result};

/// One site's change.
#[derive(Clone, Copy, Debug)]
pub struct Poke {
    /// Site address.
    pub addr: usize,
    /// Bytes that must be there now.
    pub old: Code,
    /// Bytes to write; same length as `old`.
    pub new: Code,
    /// What a thread that hits the site mid-batch is made to execute: `new`, decoded.
    pub insn: Insn,
}

/// What a committed batch cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PatchStats {
    /// Sites whose bytes changed.
    pub sites: usize,
    /// `pwrite` calls made.
    pub writes: usize,
    /// Core serializations made.
    pub syncs: usize,
}

/// Applies `pokes` as one transaction. See the module docs for the protocol.
pub fn patch(_lock: &PatchGuard, mut pokes: Vec<Poke>) -> Result<PatchStats> {
    if trap::poisoned() {
        return Err(Error::Inconsistent {
            site: Location::of(pokes.first().map_or(0, |p| p.addr)),
            why: "an earlier batch could not be completed or rolled back; patching is disabled"
                .into(),
        });
    }
    pokes.retain(|p| p.old != p.new);
    if pokes.is_empty() {
        return Ok(PatchStats::default());
    }
    pokes.sort_unstable_by_key(|p| p.addr);
    let segments = validate(&pokes)?;
    os::prepare_for_patching()?;

    let flight = trap::publish(&pokes);
    let mut stats = PatchStats {
        sites: pokes.len(),
        ..PatchStats::default()
    };
    match run_phases(&pokes, &segments, &mut stats) {
        Ok(()) => {
            trap::withdraw(flight);
            Ok(stats)
        }
        Err(e) => match roll_back(&pokes, &segments, &mut stats) {
            Ok(()) => {
                trap::withdraw(flight);
                Err(e)
            }
            Err(why) => {
                // Breakpoints may remain: keep the batch published forever so that every thread
                // that meets one is still emulated correctly.
                trap::abandon(flight);
                Err(Error::Inconsistent {
                    site: Location::of(pokes[0].addr),
                    why: format!("{e}; rollback: {why}"),
                })
            }
        },
    }
}

/// Checks the whole batch before anything is written. Returns each poke's segment.
fn validate(pokes: &[Poke]) -> Result<Vec<Segment>> {
    for pair in pokes.windows(2) {
        if pair[0].addr + pair[0].old.len() > pair[1].addr {
            return Err(Error::OverlappingPatches {
                first: Location::of(pair[0].addr),
                second: Location::of(pair[1].addr),
            });
        }
    }
    let mut segments = Vec::with_capacity(pokes.len());
    let mut text = os::TextMap::new();
    for p in pokes {
        if p.old.len() != p.new.len() || p.old.len() < BREAKPOINT.len() {
            return Err(Error::BadTable {
                table: "(engine)",
                why: format!(
                    "patch at {:#x} replaces {} bytes with {}",
                    p.addr,
                    p.old.len(),
                    p.new.len()
                ),
            });
        }
        let seg = text
            .find(p.addr, p.old.len())
            .ok_or_else(|| Error::OutsideText {
                what: "site",
                addr: Location::of(p.addr),
                table: "(engine)",
                object: "any loaded object".into(),
            })?;
        segments.push(seg);
        // SAFETY: the site lies in an executable, readable segment (checked just above).
        let found = unsafe { std::slice::from_raw_parts(p.addr as *const u8, p.old.len()) };
        if found != p.old.as_slice() {
            return Err(Error::SiteMismatch {
                site: Location::of(p.addr),
                expected: CodeBytes {
                    addr: p.addr,
                    bytes: p.old.as_slice().to_vec(),
                },
                found: CodeBytes {
                    addr: p.addr,
                    bytes: found.to_vec(),
                },
            });
        }
    }
    Ok(segments)
}

/// Reads `len` bytes of code at `addr`.
pub fn read_code(addr: usize, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    // SAFETY: callers pass addresses inside an executable (hence readable) segment of a
    // loaded object; the bytes are plain data to us.
    unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, out.as_mut_ptr(), len) };
    out
}

fn write_phase(edits: &[Edit<'_>], stats: &mut PatchStats) -> Result<()> {
    if edits.is_empty() {
        return Ok(());
    }
    stats.writes += os::write_edits(edits)?;
    os::serialize_all_cores()?;
    stats.syncs += 1;
    Ok(())
}

/// The breakpoint-first protocol, writing `to(p)` over every site. With `all_tails` false,
/// tails that `to` and `from` agree on are not written (and that phase may vanish).
fn protocol(
    pokes: &[Poke],
    segs: &[Segment],
    to: fn(&Poke) -> &Code,
    from: fn(&Poke) -> &Code,
    all_tails: bool,
    stats: &mut PatchStats,
) -> Result<()> {
    let head = BREAKPOINT.len();
    let edit = |i: usize, off: usize, bytes| Edit {
        addr: pokes[i].addr + off,
        bytes,
        segment: segs[i].start,
    };
    let breakpoints: Vec<Edit<'_>> = (0..pokes.len()).map(|i| edit(i, 0, BREAKPOINT)).collect();
    write_phase(&breakpoints, stats)?;
    let tails: Vec<Edit<'_>> = (0..pokes.len())
        .filter(|&i| {
            all_tails || to(&pokes[i]).as_slice()[head..] != from(&pokes[i]).as_slice()[head..]
        })
        .map(|i| edit(i, head, &to(&pokes[i]).as_slice()[head..]))
        .collect();
    write_phase(&tails, stats)?;
    let heads: Vec<Edit<'_>> = (0..pokes.len())
        .map(|i| edit(i, 0, &to(&pokes[i]).as_slice()[..head]))
        .collect();
    write_phase(&heads, stats)
}

fn run_phases(pokes: &[Poke], segs: &[Segment], stats: &mut PatchStats) -> Result<()> {
    protocol(pokes, segs, |p| &p.new, |p| &p.old, false, stats)
}

/// Restores every site's old bytes after a failed batch, breakpoint still first. Tails may have
/// been partly written, so all of them are rewritten.
fn roll_back(pokes: &[Poke], segs: &[Segment], stats: &mut PatchStats) -> Result<()> {
    protocol(pokes, segs, |p| &p.old, |p| &p.new, true, stats)
}
