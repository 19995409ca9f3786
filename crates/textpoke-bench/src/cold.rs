//! `call`'s cold dispatch: 4,096 distinct targets called in rotation, too many for the branch
//! predictor's target buffers and the L1 caches to hold, as in a program whose calls are spread
//! over much code.
//!
//! Three loops, the same but for how they dispatch. Each makes `rounds` passes over an unrolled
//! body of 4,096 steps (one `seq!` body; a loop over an array could not reach the static calls
//! without an indirect call of its own); step `k` of round `r` calls [`target`]`::<k>` on
//! `x = 4096 r + k`, passed through `black_box`, and XORs the result into a checksum:
//!
//! - direct: `target::<k>(x)`, a plain `call`;
//! - static call: `C<k>.call(x)`, a call to static call `C<k>`'s own trampoline, whose
//!   `jmp rel32` goes to `target::<k>` (rustc reaches a Rust-ABI trampoline through its GOT slot
//!   in a position-independent executable, so the call is a load and an indirect `call`);
//! - function pointer: a `Relaxed` load of `PTRS[k]` (a static array of `AtomicPtr`, stored to
//!   at run time) and an indirect `call`.
//!
//! The loops are timed `reps` times each, interleaved, and checked against the expected
//! checksum; then three of the static calls are retargeted, the static-call loop is checked to
//! follow them, and they are put back. Each loop's machine code is read back and summarised
//! (see [`ColdCode`]).

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::time::Instant;

use seq_macro::seq;
use serde::Serialize;
use textpoke::{Batch, StaticCall};

use crate::branch::align_loop;
use crate::call::{annotate, disassemble_function, read_mapped};
use crate::dispatch::mix;
use crate::{BenchError, Result, stats};

/// Distinct targets (and static calls, and pointer slots) in the rotation. The `seq!` ranges
/// below must match it, which the arrays' types and the loops' checksums enforce.
pub const TARGETS: usize = 4096;

/// Target `I` of the rotation: the same work as `call`'s `work`, one multiply and one XOR, with
/// a constant of its own, so that every target is a function of its own (LLVM's
/// `MergeFunctions` folds only identical ones) and every result tells which target made it.
#[inline(never)]
fn target<const I: u64>(x: u64) -> u64 {
    mix(x, I)
}

/// Every target, in rotation order.
static TARGET_FNS: [fn(u64) -> u64; TARGETS] = seq!(N in 0..4096 { [#(target::<N>,)*] });

/// The slots of the function-pointer loop: slot `k` always holds `target::<k>`, stored again at
/// run time (see [`fill_slots`]) so that the compiler cannot treat them as constants.
static PTRS: [AtomicPtr<()>; TARGETS] =
    seq!(N in 0..4096 { [#(AtomicPtr::new(target::<N> as *mut ()),)*] });

seq!(N in 0..4096 {
    textpoke::static_call! {
        /// One static call of the rotation, bound to the target of its own number.
        static C~N: fn(u64) -> u64 = target::<N>;
    }
});

/// A static call of the rotation, reachable through [`CALLS`].
trait RotationCall: Sync {
    /// Adds "point it at `f`" to `batch`.
    fn retarget<'a>(&'a self, batch: Batch<'a>, f: fn(u64) -> u64) -> Batch<'a>;
    /// The address of its trampoline.
    fn trampoline(&self) -> Result<usize>;
}

impl<C: StaticCall<Fn = fn(u64) -> u64> + Sync> RotationCall for C {
    fn retarget<'a>(&'a self, batch: Batch<'a>, f: fn(u64) -> u64) -> Batch<'a> {
        batch.update(self, f)
    }
    fn trampoline(&self) -> Result<usize> {
        Ok(textpoke::__private::trampoline_of(self)?)
    }
}

/// Every static call of the rotation, in order.
static CALLS: [&dyn RotationCall; TARGETS] = seq!(N in 0..4096 { [#(&C~N,)*] });

/// The static calls the liveness check retargets, each with its temporary target. The targets'
/// constants differ from their own in distinct bits (1, 2 and 8), so the checksum tells whether
/// each retarget took effect on its own.
const RETARGETED: [(usize, usize); 3] = [(0, 1), (2048, 2050), (4095, 4087)];

/// Defines a cold loop: an aligned `#[inline(never)] fn(rounds) -> u64` that makes `rounds`
/// passes over 4,096 unrolled steps; in step `N`, `$x` is `4096 * round + N` through
/// `black_box`, and `$call` (in which `N` stands for the step's number) is XOR-ed into the
/// result.
macro_rules! cold_loop {
    ($name:ident, |$x:ident| $($call:tt)*) => {
        #[inline(never)]
        fn $name(rounds: u64) -> u64 {
            let mut acc = 0u64;
            align_loop!();
            for round in 0..rounds {
                let base = round.wrapping_mul(TARGETS as u64);
                // A block per step: 4,096 `let`s in one block would nest 4,096 debug-info
                // scopes, whose depth overflows LLVM's stack.
                seq!(N in 0..4096 {{
                    let $x = black_box(base.wrapping_add(N));
                    acc = opaque(acc ^ $($call)*);
                }});
            }
            acc
        }
    };
}

/// `x`, hidden from the optimizer, at no cost. Without it LLVM reassociates a round's 4,096
/// XORs: it spills every result to the stack and XORs them at the end of the round, 32 KiB of
/// stack traffic per round that has nothing to do with dispatch.
#[inline(always)]
fn opaque(mut x: u64) -> u64 {
    // SAFETY: the template is only a comment naming `x`'s register: no instruction is emitted,
    // `x` keeps its value, and no memory, stack or flag is touched.
    unsafe {
        std::arch::asm!("/* {x} */", x = inout(reg) x, options(pure, nomem, nostack, preserves_flags));
    }
    x
}

cold_loop!(direct_loop, |x| target::<N>(x));

cold_loop!(static_call_loop, |x| C~N.call(x));

cold_loop!(fn_pointer_loop, |x| slot_fn(&PTRS[N])(x));

/// The function in `slot`, loaded `Relaxed`.
#[inline(always)]
fn slot_fn(slot: &AtomicPtr<()>) -> fn(u64) -> u64 {
    let p = slot.load(Ordering::Relaxed);
    // SAFETY: every slot of `PTRS` only ever holds the address of a `target::<k>` (its
    // initializer and `fill_slots`), a `fn(u64) -> u64`: a non-null code pointer of that exact
    // type.
    unsafe { std::mem::transmute::<*mut (), fn(u64) -> u64>(p) }
}

/// Stores every target into its slot again, through `black_box`.
fn fill_slots() {
    for (slot, f) in PTRS.iter().zip(&TARGET_FNS) {
        slot.store(black_box(*f as *mut ()), Ordering::Relaxed);
    }
}

/// A cold loop.
type ColdLoop = fn(u64) -> u64;

/// The loops, in the order their results are reported.
const LOOPS: [(&str, ColdLoop); 3] = [
    ("cold direct", direct_loop),
    ("cold static call", static_call_loop),
    ("cold fn pointer", fn_pointer_loop),
];

/// The checksum of `rounds` rounds when step `k` reaches the target `bound(k)`.
fn checksum(rounds: u64, bound: impl Fn(usize) -> usize) -> u64 {
    (0..rounds * TARGETS as u64).fold(0, |acc, x| {
        acc ^ mix(x, bound((x % TARGETS as u64) as usize) as u64)
    })
}

/// Runs `f` for `rounds` rounds and errors out unless it returns `want`.
fn run_checked(name: &str, f: ColdLoop, rounds: u64, want: u64) -> Result<f64> {
    let start = Instant::now();
    let got = f(black_box(rounds));
    let elapsed = start.elapsed();
    if got != want {
        return Err(BenchError::new(format!(
            "the {name} loop returned checksum {got:#x} for {rounds} rounds, expected {want:#x}: \
             some step did not reach its own target"
        )));
    }
    Ok(elapsed.as_secs_f64() * 1e9 / (rounds * TARGETS as u64) as f64)
}

/// Points the [`RETARGETED`] static calls at their temporary targets (`swapped`) or back at
/// their own, in one batch.
fn retarget(swapped: bool) -> Result<()> {
    let batch = RETARGETED.iter().fold(Batch::new(), |b, &(k, to)| {
        CALLS[k].retarget(b, TARGET_FNS[if swapped { to } else { k }])
    });
    batch.commit()?;
    Ok(())
}

/// Checks that the static-call loop follows a retarget of the [`RETARGETED`] calls, and
/// returns to its own targets when they are put back.
fn check_live() -> Result<()> {
    let own = |k: usize| k;
    let swapped = |k: usize| {
        RETARGETED
            .iter()
            .find(|&&(c, _)| c == k)
            .map_or(k, |&(_, to)| to)
    };
    retarget(true)?;
    let moved = run_checked(
        "cold static call (3 calls retargeted)",
        static_call_loop,
        1,
        checksum(1, swapped),
    );
    retarget(false)?;
    moved?;
    run_checked("cold static call", static_call_loop, 1, checksum(1, own))?;
    Ok(())
}

/// The medians, in ns per call, of `reps` interleaved timings of `rounds` rounds of each loop,
/// each checked.
fn measure(rounds: u64, reps: usize) -> Result<[f64; 3]> {
    let want = checksum(rounds, |k| k);
    let mut ns: [Vec<f64>; 3] = std::array::from_fn(|_| Vec::with_capacity(reps));
    for rep in 0..reps {
        // Each repetition starts with the next loop, so drift hits every loop alike.
        for which in (0..LOOPS.len()).map(|k| (rep + k) % LOOPS.len()) {
            let (name, f) = LOOPS[which];
            ns[which].push(run_checked(name, f, rounds, want)?);
        }
    }
    Ok(ns.map(|v| stats::median(&v)))
}

/// What one cold loop's machine code does, read back from this process's text (up to its
/// first `ret`).
#[derive(Clone, Debug, Serialize)]
pub struct ColdCode {
    /// Calls that dispatch step `k` of the rotation as the loop means to, `k` in order: a call
    /// to `target::<k>`, or to `C<k>`'s trampoline (either directly or through a pointer slot
    /// holding it), or an indirect call through `PTRS[k]` (naming it, or of a register after
    /// an instruction that names it).
    pub rotation_calls: usize,
    /// Those of them that are a direct `call rel32`.
    pub rotation_direct: usize,
    /// Every indirect call in the function, through a register or a memory slot (rotation
    /// calls included).
    pub indirect_calls: usize,
    /// Every call in the function (rotation calls included; the rest are helpers of a debug
    /// build).
    pub calls: usize,
    /// The instructions of one step, from after step 1's rotation call through step 2's, with
    /// the rotation's addresses named.
    pub step: String,
}

/// The cold loops' [`ColdCode`].
#[derive(Clone, Debug, Serialize)]
pub struct ColdLoopCode {
    /// The direct loop.
    pub direct: ColdCode,
    /// The static-call loop.
    pub static_call: ColdCode,
    /// The function-pointer loop.
    pub fn_pointer: ColdCode,
}

/// What an address of the rotation is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Named {
    Target(usize),
    Trampoline(usize),
    Slot(usize),
}

/// The rotation's addresses, with their names.
type Names = HashMap<usize, (Named, String)>;

/// An address of the rotation that an instruction names.
struct Found<'a> {
    /// The number written in the instruction.
    written: usize,
    /// The named address: `written`, or the word in the slot at `written`.
    addr: usize,
    named: Named,
    name: &'a str,
}

/// Most bytes of a cold loop that are disassembled (4,096 steps take about 100 KiB in a release
/// build; the function ends before, at its `ret`).
const MAX_COLD_LOOP_BYTES: usize = 1 << 20;

/// Which step of the rotation a call instruction dispatches, if it is a rotation call: from
/// what it names (`found`) and the slot last named before it.
type Rotation = fn(&str, Option<&Found>, Option<usize>) -> Option<usize>;

/// Reads back the code of the loop at `addr`.
fn summarise(addr: usize, names: &Names, rotation: Rotation) -> Result<ColdCode> {
    let text = disassemble_function(addr, MAX_COLD_LOOP_BYTES)?;
    let mut code = ColdCode {
        rotation_calls: 0,
        rotation_direct: 0,
        indirect_calls: 0,
        calls: 0,
        step: String::new(),
    };
    let mut step = Vec::new();
    let mut last_slot = None;
    for insn in text.split("; ") {
        if insn.starts_with("ret") || insn == "(bad)" {
            break;
        }
        let found = resolve(insn, names);
        if code.rotation_calls == 2 {
            let list: Vec<_> = found.iter().map(|f| (f.addr, f.name)).collect();
            step.push(annotate(insn, &list).0);
        }
        let first = found.first();
        if let Some(&Found {
            named: Named::Slot(k),
            written,
            addr,
            ..
        }) = first
            && written == addr
        {
            last_slot = Some(k);
        }
        if !insn.starts_with("call") {
            continue;
        }
        code.calls += 1;
        let direct = insn.ends_with('h');
        code.indirect_calls += usize::from(!direct);
        if rotation(insn, first, last_slot) == Some(code.rotation_calls) {
            code.rotation_calls += 1;
            code.rotation_direct += usize::from(direct);
            last_slot = None;
            if code.rotation_calls == 3 {
                code.step = step.join("; ");
            }
        }
    }
    Ok(code)
}

/// The rotation's addresses that `insn` names, directly or (a `[number]` operand) through the
/// word in that slot.
fn resolve<'a>(insn: &str, names: &'a Names) -> Vec<Found<'a>> {
    let word_at = |a: usize| {
        let word = read_mapped(a, 8)?;
        Some(usize::from_le_bytes(word.try_into().ok()?))
    };
    insn.split(|c: char| !c.is_ascii_alphanumeric())
        .filter_map(|w| Some((w, usize::from_str_radix(w.strip_suffix('h')?, 16).ok()?)))
        .filter_map(|(w, written)| {
            let addr = if names.contains_key(&written) {
                written
            } else if insn.contains(&format!("[{w}]")) {
                word_at(written).filter(|a| names.contains_key(a))?
            } else {
                return None;
            };
            let (named, name) = &names[&addr];
            Some(Found {
                written,
                addr,
                named: *named,
                name,
            })
        })
        .collect()
}

/// The names of every target, trampoline and slot of the rotation.
fn names() -> Result<Names> {
    let mut names = HashMap::with_capacity(3 * TARGETS);
    for k in 0..TARGETS {
        let t = TARGET_FNS[k] as usize;
        names.insert(t, (Named::Target(k), format!("target::<{k}>")));
        let tramp = CALLS[k].trampoline()?;
        names.insert(tramp, (Named::Trampoline(k), format!("C{k}'s trampoline")));
        let slot = &PTRS[k] as *const AtomicPtr<()> as usize;
        names.insert(slot, (Named::Slot(k), format!("PTRS[{k}]")));
    }
    Ok(names)
}

/// The cold loops' machine code.
fn loop_code() -> Result<ColdLoopCode> {
    let names = names()?;
    let direct: Rotation = |_, found, _| match found?.named {
        Named::Target(k) => Some(k),
        _ => None,
    };
    let static_call: Rotation = |_, found, _| match found?.named {
        Named::Trampoline(k) => Some(k),
        _ => None,
    };
    let fn_pointer: Rotation = |insn, found, last_slot| match found {
        Some(&Found {
            named: Named::Slot(k),
            written,
            addr,
            ..
        }) if written == addr => Some(k),
        None if !insn.ends_with('h') && !insn.contains("[") => last_slot,
        _ => None,
    };
    Ok(ColdLoopCode {
        direct: summarise(direct_loop as *const () as usize, &names, direct)?,
        static_call: summarise(static_call_loop as *const () as usize, &names, static_call)?,
        fn_pointer: summarise(fn_pointer_loop as *const () as usize, &names, fn_pointer)?,
    })
}

/// What the cold measurement found.
pub struct Cold {
    /// Medians, ns per call: direct, static call, function pointer.
    pub ns: [f64; 3],
    /// The loops' machine code.
    pub code: ColdLoopCode,
    /// Static calls retargeted (and put back) by the liveness check.
    pub retargeted: usize,
}

/// Checks that the targets are distinct functions, measures the loops, and checks that the
/// static calls are live.
pub fn run(rounds: u64, reps: usize) -> Result<Cold> {
    let distinct: std::collections::HashSet<usize> =
        TARGET_FNS.iter().map(|&f| f as usize).collect();
    if distinct.len() != TARGETS {
        return Err(BenchError::new(format!(
            "only {} of the {TARGETS} cold targets are distinct functions: some were merged",
            distinct.len()
        )));
    }
    fill_slots();
    let code = loop_code()?;
    let ns = measure(rounds, reps)?;
    check_live()?;
    Ok(Cold {
        ns,
        code,
        retargeted: RETARGETED.len(),
    })
}

/// The part of the `call` note that tells how the cold loops were measured and what their code
/// does.
pub fn note(cold: &Cold, rounds: u64, reps: usize) -> String {
    let code = &cold.code;
    let mut note = format!(
        "; cold: median of {reps} interleaved repetitions of {rounds} rounds per loop; a round is \
         an unrolled body of {TARGETS} steps, step k calling target::<k>, one of {TARGETS} \
         distinct #[inline(never)] fns (x*31 ^ k; their addresses checked distinct), on \
         x = {TARGETS}*round + k through black_box, and XOR-ing the result into a checksum \
         checked against the expected one (an empty asm! keeps the XORs in order and in a \
         register); cold direct: a plain call target::<k>; cold static call: C<k>.call(x), C<k> \
         being one of {TARGETS} static calls, each bound to its own target::<k>, its trampoline \
         `jmp rel32`-ing to it; cold fn pointer: a Relaxed load of PTRS[k], one of {TARGETS} \
         static AtomicPtr slots (stored to at run time), then an indirect call; read back from \
         this process's text, one step of each is: direct `{}`, static call `{}`, fn pointer \
         `{}`; calls per loop that dispatch the rotation in order / all calls / indirect calls: \
         direct {}, static call {}, fn pointer {}; after the timing, {} static calls (C0, C2048, \
         C4095) were retargeted in one batch, the static-call loop's checksum followed them, and \
         it was checked again once they were put back",
        code.direct.step,
        code.static_call.step,
        code.fn_pointer.step,
        counts(&code.direct),
        counts(&code.static_call),
        counts(&code.fn_pointer),
        cold.retargeted,
    );
    if code.static_call.rotation_direct < TARGETS {
        note.push_str(
            "; NOTE: the cold static-call loop reaches its trampolines through pointer slots (the \
             GOT, as the static-call loop above does), not with direct calls: each step is a load \
             and an indirect call, then the trampoline's jmp",
        );
    }
    note
}

/// A loop's rotation calls, all calls and indirect calls, as `a/b/c`.
fn counts(c: &ColdCode) -> String {
    format!("{}/{}/{}", c.rotation_calls, c.calls, c.indirect_calls)
}
