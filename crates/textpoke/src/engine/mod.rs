//! The text-patching engine: validated, batched, breakpoint-first writes of live code.
//!
//! Knows nothing of keys or calls. A caller hands it a batch of [`Poke`]s, each naming the
//! bytes expected at an address, the bytes to put there and the instruction a trapped thread
//! should be given meanwhile. The engine
//!
//! 1. refuses the whole batch if any two pokes overlap, any poke lies outside an executable
//!    segment, or any site does not hold its expected bytes (nothing is written);
//! 2. publishes the batch for the trap handler, then writes a breakpoint over the head of every
//!    site, serializes all cores, writes every tail, serializes, and writes every new head: two
//!    core syncs per batch, however many sites (see below for why not three);
//! 3. withdraws the batch and waits until no trap handler still reads it.
//!
//! # Why the last write is not followed by a core sync
//!
//! The kernel's `text_poke_bp` serializes every core a third time, after the new first bytes
//! are written, so that no CPU can still execute the breakpoint once the batch's descriptors
//! are freed. textpoke does not need that sync, for these reasons:
//!
//! 1. *No stale mix of bytes can run.* After the second sync every tail holds its new bytes on
//!    every core, and the first byte is a single byte: an instruction fetch sees either the
//!    breakpoint or the new first byte, never a mix. So a thread executes either the complete
//!    new instruction or the breakpoint. It cannot see the old instruction either: the first
//!    sync removed that from every core.
//! 2. *A stale breakpoint is handled whenever it runs.* A core that fetched the breakpoint
//!    before the new first byte reached it may execute it after [`patch`] has returned. Its
//!    handler then finds no batch in flight, sees that the address is a registered site (see
//!    [`trap`]) and that the byte there is no longer a breakpoint, and rewinds the thread to
//!    re-execute the site. Nothing the handler reads has been freed: the flight is only
//!    reused once no handler reads it, and the registry lives as long as the site's object.
//!    The byte it reads is the new one: the patcher writes it before it bumps the generation,
//!    and the handler reads it after loading the generation (x86 keeps stores in order and
//!    loads in order). If that load still sees the batch in flight, the handler emulates the
//!    new instruction instead, which is as correct.
//! 3. *The rewound thread runs the new bytes.* Taking the trap and returning from the signal
//!    discards the thread's fetched instructions, and instruction fetch is coherent with the
//!    store that wrote the byte (on x86). If it met the breakpoint again it would be rewound
//!    again: the loop ends as soon as the store is visible to that core, which the rewind's own
//!    data read has just shown it is.
//! 4. *A later batch over the same site* writes its breakpoint first: a stale breakpoint met
//!    then is found in that batch, and emulating that batch's new instruction is as correct as
//!    anything a thread may execute while the site is changing.
//!
//! The conditions, all of which textpoke keeps: textpoke's SIGTRAP handler stays installed
//! (it is never removed, and re-checked before every batch); a site stays registered as long
//! as its object is loaded (a thread cannot be executing an object's code while it is
//! unloaded, or it would crash with or without textpoke); and the only architecture is x86-64,
//! whose fetch is coherent with stores. An architecture whose instruction caches are not
//! coherent (aarch64) needs its cache maintenance after the last write, which its
//! [`crate::arch`] module will do.
//!
//! What changes for a user: after `commit` returns, a thread may still take one late trap at
//! a site it had already fetched (a few microseconds' cost, and under a debugger one more
//! stop), but it never executes anything but the new instruction. A batch that is rolled back
//! keeps all three syncs: it is rare, and its cost does not matter.

mod code;
pub(crate) mod patcher;
mod runs;
mod trap;

pub use code::{Code, MAX_CODE};
pub(crate) use patcher::unload_copy;
pub use patcher::{Answer, ControlFns, control_each, serve_in_patcher, set_control};
pub use patcher::{
    PatchGuard, lock, patcher_id, register_sites, threads_blocking_sigtrap, trap_counts, try_lock,
};
pub use runs::MERGE_GAP;
use runs::Run;
pub use trap::{STRICT_SLOTS, on_breakpoint};

pub(crate) use trap::forget_after_fork;

use crate::arch::{BREAKPOINT, Insn, WireInsn};
use std::sync::Mutex;

use crate::os;
use crate::{CodeBytes, Error, Location, Result};

/// One site's change. Its layout is part of the `v1` rendezvous: a copy of textpoke that is
/// not the process's patcher hands its batches, as arrays of these, to the one that is (see
/// [`patcher`]). Frozen: never change a field.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Poke {
    /// Site address.
    pub addr: usize,
    /// Bytes that must be there now.
    pub old: Code,
    /// Bytes to write; same length as `old`.
    pub new: Code,
    /// What a thread that hits the site mid-batch is made to execute: `new`, decoded. None for
    /// data in a text segment that no thread executes or reads while the batch runs (a far-jump
    /// slot not yet in use): it is written without a breakpoint, in the first phase.
    insn: WireInsn,
    /// `old`, decoded: what trapped threads are given while a failed batch is rolled back.
    undo: WireInsn,
}

impl Poke {
    /// A change of code that threads may be executing: `insn` is `new` decoded, `undo` is `old`
    /// decoded.
    pub fn code(addr: usize, old: Code, new: Code, insn: Insn, undo: Insn) -> Self {
        Poke {
            addr,
            old,
            new,
            insn: WireInsn::of(Some(insn)),
            undo: WireInsn::of(Some(undo)),
        }
    }

    /// A change of code at `addr` from state `from` to state `to`: `code` gives a state's
    /// bytes (or why it has none), `insn` the instruction they are.
    pub fn between<S: Copy>(
        addr: usize,
        from: S,
        to: S,
        code: impl Fn(S) -> Result<Code>,
        insn: impl Fn(S) -> Insn,
    ) -> Result<Self> {
        Ok(Poke::code(
            addr,
            code(from)?,
            code(to)?,
            insn(to),
            insn(from),
        ))
    }

    /// A change of data in a text segment that no thread reads while the batch runs.
    pub fn data(addr: usize, old: Code, new: Code) -> Self {
        Poke {
            addr,
            old,
            new,
            insn: WireInsn::NONE,
            undo: WireInsn::NONE,
        }
    }

    /// Whether the poke changes code (written with the breakpoint protocol).
    pub fn is_code(&self) -> bool {
        self.insn.is_some()
    }

    /// What a trapped thread is given while the batch is written.
    fn insn(&self) -> Option<Insn> {
        self.insn.get().ok().flatten()
    }

    /// What a trapped thread is given while a failed batch is rolled back.
    fn undo(&self) -> Option<Insn> {
        self.undo.get().ok().flatten()
    }

    /// The first instruction kind neither this version nor the poke's maker should have used.
    fn unknown_kind(&self) -> Option<u8> {
        self.insn.get().err().or(self.undo.get().err())
    }
}

/// What a committed batch cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PatchStats {
    /// Sites whose bytes changed.
    pub sites: usize,
    /// `pwrite` calls made.
    pub writes: usize,
    /// Core serializations made.
    pub syncs: usize,
}

static SCRATCH: Mutex<Option<Scratch>> = Mutex::new(None);

/// Frees the scratch buffers (this copy's object is being unloaded).
pub(crate) fn release() {
    drop(SCRATCH.lock().unwrap_or_else(|e| e.into_inner()).take());
}

/// Applies `pokes` as one transaction, through the process's one patcher (this copy of
/// textpoke or another: see [`patcher`]). See the module docs for the protocol. `pokes` may be
/// reordered; callers may reuse its allocation.
pub fn patch(lock: &PatchGuard, pokes: &mut [Poke]) -> Result<PatchStats> {
    patcher::patch(lock, pokes)
}

/// Threads that must leave code a batch overwrites: a thread at a move's `from` goes to its
/// `to`, once every site's breakpoint is in place and before any tail is written (see
/// [`os::settle_threads`]). `regions` are the ranges the moves cover.
#[derive(Clone, Copy, Default)]
pub struct Settle<'s> {
    /// Where each instruction boundary goes.
    pub moves: &'s [os::Move],
    /// The ranges the moves cover.
    pub regions: &'s [(usize, usize)],
}

/// Threads moved out of overwritten code since the process started.
static MOVED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Threads moved out of overwritten code (into a detour's trampoline) since the process
/// started.
pub fn threads_moved() -> usize {
    MOVED.load(std::sync::atomic::Ordering::Relaxed)
}

/// How long every other thread has to reach a known point.
const SETTLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// [`patch`], moving threads out of the overwritten code first (see [`Settle`]). Only the
/// process's patcher can move threads: in any other copy of textpoke a batch with moves is
/// refused, and nothing is written.
pub fn patch_settling(
    lock: &PatchGuard,
    pokes: &mut [Poke],
    settle: Settle<'_>,
) -> Result<PatchStats> {
    if settle.moves.is_empty() {
        return patch(lock, pokes);
    }
    if !patcher::is_here(lock) {
        return Err(Error::Rendezvous {
            object: patcher::patcher_object(lock),
            why: "this change moves threads out of overwritten code, which only the process's \
                  patcher can do, and it is another copy of textpoke"
                .into(),
        });
    }
    patch_here_settling(lock, pokes, settle)
}

/// Registers a detour site: a trap there is textpoke's only if it came from an `int3` (see
/// [`trap`]). False when the table is full.
pub fn add_strict_site(_lock: &PatchGuard, addr: usize) -> bool {
    trap::add_strict(addr)
}

/// Whether a site any copy of textpoke may patch lies in `[start, end)`.
pub fn sites_within(_lock: &PatchGuard, start: usize, end: usize) -> bool {
    trap::any_site_in(start, end)
}

/// [`patch`], by this copy's own engine: this copy is the process's patcher.
fn patch_here(lock: &PatchGuard, pokes: &mut [Poke]) -> Result<PatchStats> {
    patch_here_settling(lock, pokes, Settle::default())
}

fn patch_here_settling(
    _lock: &PatchGuard,
    pokes: &mut [Poke],
    settle: Settle<'_>,
) -> Result<PatchStats> {
    if trap::poisoned() {
        return Err(Error::Inconsistent {
            site: Location::of(pokes.first().map_or(0, |p| p.addr)),
            why: "an earlier batch could not be completed or rolled back; patching is disabled"
                .into(),
        });
    }
    // Drop the pokes that change nothing, keeping the rest at the front.
    let mut kept = 0;
    for i in 0..pokes.len() {
        if pokes[i].old != pokes[i].new {
            pokes.swap(kept, i);
            kept += 1;
        }
    }
    let pokes = &mut pokes[..kept];
    if pokes.is_empty() {
        return Ok(PatchStats::default());
    }
    pokes.sort_unstable_by_key(|p| p.addr);
    let mut scratch = SCRATCH.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = scratch.get_or_insert_with(Scratch::default);
    validate(pokes, &mut scratch.segments)?;
    runs::plan(pokes, &scratch.segments, &mut scratch.runs);
    os::prepare_for_patching()?;

    let flight = trap::publish(pokes, Poke::insn);
    let mut stats = PatchStats {
        sites: pokes.len(),
        ..PatchStats::default()
    };
    match run_phases(pokes, scratch, settle, &mut stats) {
        Ok(()) => {
            trap::withdraw(flight);
            Ok(stats)
        }
        Err(e) => {
            let flight = trap::republish(flight, pokes, Poke::undo);
            match roll_back(pokes, scratch, &mut stats) {
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
            }
        }
    }
}

/// Checks the whole batch before anything is written. Fills `segments` with the start of each
/// poke's executable segment.
fn validate(pokes: &[Poke], segments: &mut Vec<usize>) -> Result<()> {
    for pair in pokes.windows(2) {
        if pair[0].addr + pair[0].old.len() > pair[1].addr {
            return Err(Error::OverlappingPatches {
                first: Location::of(pair[0].addr),
                second: Location::of(pair[1].addr),
            });
        }
    }
    segments.clear();
    let text = os::TextMap::new();
    let mut last: Option<os::Segment> = None;
    for p in pokes {
        if let Some(kind) = p.unknown_kind() {
            return Err(Error::BadTable {
                table: "(engine)",
                why: format!(
                    "patch at {:#x} asks for emulation of an unknown instruction kind {kind}",
                    p.addr
                ),
            });
        }
        let min = if p.is_code() { BREAKPOINT.len() } else { 1 };
        if p.old.len() != p.new.len() || p.old.len() < min {
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
        // Sorted pokes mostly share the previous one's segment.
        let seg = match last {
            Some(seg) if seg.contains(p.addr, p.old.len()) => seg,
            _ => text
                .find(p.addr, p.old.len())
                .ok_or_else(|| Error::OutsideText {
                    what: "site",
                    addr: Location::of(p.addr),
                    table: "(engine)",
                    object: "any loaded object".into(),
                })?,
        };
        last = Some(seg);
        segments.push(seg.start);
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
    Ok(())
}

/// Reads `len` bytes at `addr`, if they lie in one segment of a loaded object.
pub fn read_code(addr: usize, len: usize) -> Option<Vec<u8>> {
    let _lock = lock().ok()?;
    let object = os::object_containing(addr, len)?;
    if !object
        .segments
        .iter()
        .any(|s| s.read && s.contains(addr, len))
    {
        return None;
    }
    let mut out = vec![0u8; len];
    // SAFETY: the range lies inside a readable segment of a loaded object (checked above); the
    // bytes are plain data to us.
    unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, out.as_mut_ptr(), len) };
    Some(out)
}

/// Buffers reused across batches (only touched under the patch lock): fresh ones per batch
/// would fault in fresh pages every time.
#[derive(Default)]
struct Scratch {
    segments: Vec<usize>,
    runs: Vec<Run>,
    buf: Vec<u8>,
}

/// Writes one phase, run by run, then serializes all cores. `bytes(p)` is what the phase writes
/// for poke `p`, as (offset into the site, bytes), or `None` to leave it alone.
fn write_phase(
    pokes: &[Poke],
    scratch: &mut Scratch,
    bytes: impl Fn(&Poke) -> Option<(usize, &[u8])> + Copy,
    sync: bool,
    stats: &mut PatchStats,
) -> Result<()> {
    for run in &scratch.runs {
        if pokes[run.first..run.last]
            .iter()
            .all(|p| bytes(p).is_none())
        {
            continue;
        }
        runs::image(run, pokes, bytes, &mut scratch.buf);
        os::write_code(run.start, &scratch.buf)?;
        stats.writes += 1;
    }
    if sync {
        os::serialize_all_cores()?;
        stats.syncs += 1;
    }
    Ok(())
}

/// How [`protocol`] runs its phases.
struct Phases<'s> {
    /// Write every tail, even where none changes.
    all_tails: bool,
    /// Follow the new heads with a core sync (see the module docs for why a batch need not).
    last_sync: bool,
    /// Threads to move once the breakpoints are in place.
    settle: Settle<'s>,
}

/// The breakpoint-first protocol, writing `to(p)` over every site. Data pokes are written whole
/// in the first phase. Unless `all_tails`, the tail phase is skipped when no site's tail
/// changes, and the last two phases when there are only data pokes.
fn protocol(
    pokes: &[Poke],
    scratch: &mut Scratch,
    to: fn(&Poke) -> &Code,
    from: fn(&Poke) -> &Code,
    phases: Phases<'_>,
    stats: &mut PatchStats,
) -> Result<()> {
    let Phases {
        all_tails,
        last_sync,
        settle,
    } = phases;
    let head = BREAKPOINT.len();
    let code = |p: &Poke| p.is_code();
    write_phase(
        pokes,
        scratch,
        |p| {
            Some(if code(p) {
                (0, BREAKPOINT)
            } else {
                (0, to(p).as_slice())
            })
        },
        true,
        stats,
    )?;
    if !pokes.iter().any(code) {
        return Ok(());
    }
    // Breakpoints are in place: a SIGTRAP handler installed over ours since the batch began
    // would be handed them. Look again after each phase that leaves them (not only before the
    // batch), so such a window lasts one phase at most.
    os::ensure_trap_handler()?;
    if !settle.moves.is_empty() {
        // No thread can enter the overwritten code any more (every entry meets a breakpoint):
        // move those already inside before their bytes change.
        let settled = os::settle_threads(settle.moves, settle.regions, SETTLE_TIMEOUT)?;
        MOVED.fetch_add(settled.moved, std::sync::atomic::Ordering::Relaxed);
    }
    if all_tails
        || pokes
            .iter()
            .any(|p| code(p) && to(p).as_slice()[head..] != from(p).as_slice()[head..])
    {
        write_phase(
            pokes,
            scratch,
            |p| code(p).then(|| (head, &to(p).as_slice()[head..])),
            true,
            stats,
        )?;
        os::ensure_trap_handler()?;
    }
    write_phase(
        pokes,
        scratch,
        |p| code(p).then(|| (0, &to(p).as_slice()[..head])),
        last_sync,
        stats,
    )
}

fn run_phases(
    pokes: &[Poke],
    scratch: &mut Scratch,
    settle: Settle<'_>,
    stats: &mut PatchStats,
) -> Result<()> {
    let phases = Phases {
        all_tails: false,
        last_sync: false,
        settle,
    };
    protocol(pokes, scratch, |p| &p.new, |p| &p.old, phases, stats)
}

/// Restores every site's old bytes after a failed batch, breakpoint still first. Tails may have
/// been partly written, so all of them are rewritten.
fn roll_back(pokes: &[Poke], scratch: &mut Scratch, stats: &mut PatchStats) -> Result<()> {
    let phases = Phases {
        all_tails: true,
        last_sync: true,
        // Threads were only ever moved to equivalent code, and none can be inside the
        // overwritten bytes now: every entry meets a breakpoint.
        settle: Settle::default(),
    };
    protocol(pokes, scratch, |p| &p.old, |p| &p.new, phases, stats)
}
