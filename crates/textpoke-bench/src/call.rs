//! `call`: what one call costs through each way of dispatching it, and what one static-call
//! update costs while another thread is calling.
//!
//! Dispatch: four loops call the same `#[inline(never)]` function [`work`]
//! (`x.wrapping_mul(31) ^ 7`), on the loop counter passed through `black_box`, and XOR the
//! results into a checksum that every loop must agree on:
//!
//! - direct: a plain `call work`;
//! - static call: `SC.call(x)`, a `call` to the trampoline, whose `jmp rel32` goes to `work`;
//! - function pointer: a `Relaxed` load of a static `AtomicPtr` on every call, then an indirect
//!   `call`, as the `multiversion` crate dispatches. The pointer is stored to at run time (from
//!   `black_box`) and the loaded value feeds an opaque call, so it can be neither treated as a
//!   constant nor hoisted out of the loop;
//! - `&dyn Fn`: a call through the vtable of a `black_box`'d `&dyn Fn(u64) -> u64`, which cannot
//!   be devirtualized.
//!
//! Two more loops do the same with the C ABI, calling [`work_c`] (the same work as [`work`]):
//!
//! - direct C: a plain `call work_c`;
//! - inline static call: `SCI.call(x)`, where `SCI` is an `inline` C-ABI static call: the call
//!   instruction in the loop is textpoke's own `call rel32`, aimed straight at `work_c`, which
//!   every update retargets directly (no trampoline in the way).
//!
//! Every loop is preceded by 64-byte alignment (as in `branch`), and the loops run `reps` times
//! each, interleaved in a rotating order; the median ns per call of each is reported.
//!
//! Update: one thread (pinned to a CPU other than the updater's, when there is one) calls `SC`
//! continuously and checks that every return value comes from one of the two targets that the
//! updater alternates between, [`work_alt`] and [`work`]. Each `SC.update` is timed on its own,
//! and after each one the updater checks that its own next call reaches the new target. Then the
//! same is done for `SCI`, alternating between [`work_c_alt`] and [`work_c`], with a new calling
//! thread (whose call is one of `SCI`'s inline sites, retargeted by every update).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

use crate::affinity::{self, CpuMask, Placement, RestoreAffinity};
use crate::branch::{align_loop, dispatch_loop};
use crate::cold::{self, ColdLoopCode};
use crate::dispatch::{self, Loop, mix};
use crate::{BenchError, Result, stats};

textpoke::static_call! {
    /// The measured static call. Bound to [`work`] while dispatch is measured; the update
    /// measurement alternates it between [`work_alt`] and [`work`] and leaves it on [`work`].
    static SC: fn(u64) -> u64 = work;
    /// The measured inline static call. Bound to [`work_c`] while dispatch is measured; the
    /// update measurement alternates it between [`work_c_alt`] and [`work_c`] and leaves it on
    /// [`work_c`].
    inline static SCI: extern "C" fn(u64) -> u64 = work_c;
}

/// The function pointer of the `fn_pointer` loop. Always holds [`work`]; stored to at run time
/// (see [`run`]), so the compiler cannot treat it as a constant.
static FN_PTR: AtomicPtr<()> = AtomicPtr::new(work as *mut ());

/// The function every dispatch loop calls.
#[inline(never)]
fn work(x: u64) -> u64 {
    mix(x, 7)
}

/// The other update target: the same work, a different constant, so that every return value
/// tells which target produced it.
#[inline(never)]
fn work_alt(x: u64) -> u64 {
    mix(x, 5)
}

/// Keeps a C-ABI twin of a Rust-ABI function a function of its own: rustc's LLVM
/// `MergeFunctions` pass would otherwise fold `work_c` into `work` (and `work_c_alt` into
/// `work_alt`), identical in LLVM IR, making both one address. The pass compares inline
/// assembly, so this empty `asm!` keeps them apart; it emits no instruction, so the machine code
/// stays that of the twin.
macro_rules! distinct {
    () => {
        // SAFETY: an empty template: no instruction is emitted, and no register, memory, stack
        // or flag is touched.
        unsafe { std::arch::asm!("", options(nomem, nostack, preserves_flags)) }
    };
}

/// The function the C-ABI dispatch loops call: the same work (and machine code) as [`work`].
#[inline(never)]
extern "C" fn work_c(x: u64) -> u64 {
    distinct!();
    mix(x, 7)
}

/// The other update target of `SCI`: the same work (and machine code) as [`work_alt`].
#[inline(never)]
extern "C" fn work_c_alt(x: u64) -> u64 {
    distinct!();
    mix(x, 5)
}

/// Options of the `call` subcommand.
#[derive(Clone, Debug, clap::Args)]
pub struct CallArgs {
    /// Calls per repetition of each dispatch loop.
    #[arg(long, default_value_t = 20_000_000)]
    pub iters: u64,
    /// Repetitions of each dispatch loop; the median is reported.
    #[arg(long, default_value_t = 21)]
    pub reps: usize,
    /// Individually timed static-call updates; the median is reported.
    #[arg(long, default_value_t = 1001)]
    pub samples: usize,
    /// Rounds per repetition of each cold loop, each round calling all 4,096 targets once.
    #[arg(long, default_value_t = 1000)]
    pub cold_rounds: u64,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The results.
#[derive(Clone, Debug, Serialize)]
pub struct CallRow {
    /// A direct call to `work`, ns per call.
    pub direct_ns: f64,
    /// A static call bound to `work`, ns per call.
    pub static_call_ns: f64,
    /// A call through a function pointer loaded (`Relaxed`) from an `AtomicPtr` every time,
    /// ns per call.
    pub fn_pointer_ns: f64,
    /// A call through a `&dyn Fn(u64) -> u64`, ns per call.
    pub dyn_ns: f64,
    /// `static_call_ns / direct_ns`.
    pub static_call_vs_direct: f64,
    /// A direct call to the C-ABI `work_c`, ns per call.
    pub direct_c_ns: f64,
    /// An inline static call (`SCI`, C ABI) bound to `work_c`, ns per call.
    pub static_call_inline_ns: f64,
    /// `static_call_inline_ns / direct_c_ns`.
    pub static_call_inline_vs_direct: f64,
    /// Median wall time of one `SC.update` while another thread calls `SC`, in µs.
    pub update_us_median: f64,
    /// 90th percentile of those update times, in µs.
    pub update_us_p90: f64,
    /// Timed updates.
    pub update_samples: usize,
    /// Calls the calling thread made while the updates ran (the timed ones, and untimed ones
    /// added, for at most 2 s, until it had called at least once).
    pub caller_calls: u64,
    /// Return values of the calling thread that came from neither target (always 0: any other
    /// count is an error).
    pub violations: u64,
    /// Median wall time of one `SCI.update` while another thread calls `SCI`, in µs.
    pub update_inline_us_median: f64,
    /// 90th percentile of those update times, in µs.
    pub update_inline_us_p90: f64,
    /// Timed `SCI` updates.
    pub update_inline_samples: usize,
    /// Calls the calling thread made while the `SCI` updates ran (the timed ones, and untimed
    /// ones added, for at most 2 s, until it had called at least once).
    pub caller_calls_inline: u64,
    /// Return values of the thread calling `SCI` that came from neither target (always 0: any
    /// other count is an error).
    pub violations_inline: u64,
    /// Inline call sites of `SCI` in this program, each retargeted by every `SCI.update`
    /// (besides its trampoline).
    pub inline_sites: usize,
    /// Whether the static-call loop calls the trampoline with a direct `call rel32` (rather than
    /// through a pointer slot such as a GOT entry).
    pub static_call_direct: bool,
    /// Whether the inline-static-call loop calls `work_c` with a direct `call rel32` (its inline
    /// site, aimed at the current target).
    pub static_call_inline_direct: bool,
    /// What each dispatch loop does per call, read back from this process's machine code.
    pub loop_code: LoopCode,
    /// Cold dispatch: a direct call to one of 4,096 distinct targets in rotation, ns per call.
    pub cold_direct_ns: f64,
    /// Cold dispatch: a call through one of 4,096 static calls (each bound to its own target)
    /// in rotation, ns per call.
    pub cold_static_call_ns: f64,
    /// Cold dispatch: a call through one of 4,096 `AtomicPtr` slots (each holding its own
    /// target), loaded `Relaxed`, in rotation, ns per call.
    pub cold_fn_pointer_ns: f64,
    /// `cold_static_call_ns / cold_direct_ns`.
    pub cold_static_call_vs_direct: f64,
    /// Distinct targets (and static calls, and pointer slots) in the cold rotation.
    pub cold_targets: usize,
    /// Rounds (of `cold_targets` calls) per repetition of each cold loop.
    pub cold_rounds: u64,
    /// Static calls of the rotation that were retargeted, followed by the static-call loop, and
    /// put back.
    pub cold_retargeted: usize,
    /// What each cold loop's machine code does, read back from this process's text.
    pub cold_loop_code: ColdLoopCode,
    /// Calls per repetition of each dispatch loop.
    pub iters: u64,
    /// Repetitions of each dispatch loop.
    pub reps: usize,
    /// How it was measured.
    pub note: String,
}

dispatch_loop!(direct_loop, i => work(black_box(i)));

dispatch_loop!(static_call_loop, i => SC.call(black_box(i)));

dispatch_loop!(direct_c_loop, i => work_c(black_box(i)));

dispatch_loop!(static_call_inline_loop, i => SCI.call(black_box(i)));

#[inline(never)]
fn fn_pointer_loop(iters: u64) -> u64 {
    let mut acc = 0u64;
    align_loop!();
    for i in 0..iters {
        let p = FN_PTR.load(Ordering::Relaxed);
        // SAFETY: `FN_PTR` only ever holds the address of `work` (its initializer and the one
        // store in `run`), a `fn(u64) -> u64`; a non-null code pointer of that exact type.
        let f = unsafe { std::mem::transmute::<*mut (), fn(u64) -> u64>(p) };
        acc ^= f(black_box(i));
    }
    acc
}

#[inline(never)]
fn dyn_loop(iters: u64) -> u64 {
    let f: &dyn Fn(u64) -> u64 = black_box(&work);
    let mut acc = 0u64;
    align_loop!();
    for i in 0..iters {
        acc ^= f(black_box(i));
    }
    acc
}

/// The loops, in the order their results are reported.
const LOOPS: [(&str, Loop); 6] = [
    ("direct", direct_loop),
    ("static call", static_call_loop),
    ("fn pointer", fn_pointer_loop),
    ("dyn Fn", dyn_loop),
    ("direct C", direct_c_loop),
    ("inline static call", static_call_inline_loop),
];

/// What each dispatch loop's machine code does per call, read back from this process's own
/// text.
#[derive(Clone, Debug, Serialize)]
pub struct LoopCode {
    /// The direct loop.
    pub direct: String,
    /// The static-call loop.
    pub static_call: String,
    /// The function-pointer loop.
    pub fn_pointer: String,
    /// The `&dyn Fn` loop.
    pub dyn_fn: String,
    /// The direct C-ABI loop.
    pub direct_c: String,
    /// The inline-static-call loop.
    pub static_call_inline: String,
}

/// Most bytes of a loop function that are disassembled (they end well before: at their `ret`).
const MAX_LOOP_BYTES: usize = 512;

/// Copies `len` bytes at `addr` if they lie inside one readable (`PF_R`) `PT_LOAD` segment of
/// a loaded object.
pub(crate) fn read_mapped(addr: usize, len: usize) -> Option<Vec<u8>> {
    let inside = textpoke::__private::loaded_objects()
        .iter()
        .flat_map(|o| &o.segments)
        .any(|s| s.read && s.contains(addr, len));
    // SAFETY: `[addr, addr + len)` lies inside a `PF_R` `PT_LOAD` segment of a loaded object,
    // which the dynamic loader maps readable, and which stays mapped: only the program and the
    // libraries it was started with are searched, and this benchmark unloads nothing. The
    // bytes are copied as plain data.
    inside.then(|| unsafe { std::slice::from_raw_parts(addr as *const u8, len) }.to_vec())
}

/// The bytes of the function at `addr`, up to the end of its (readable) executable segment or
/// `max` bytes.
pub(crate) fn function_bytes(addr: usize, max: usize) -> Result<Vec<u8>> {
    let seg = textpoke::__private::loaded_objects()
        .iter()
        .find_map(|o| o.text_segment(addr, 1))
        .ok_or_else(|| {
            BenchError::new(format!(
                "{addr:#x} is not in any readable executable segment"
            ))
        })?;
    let len = (seg.end - addr).min(max);
    read_mapped(addr, len)
        .ok_or_else(|| BenchError::new(format!("cannot read the code at {addr:#x}")))
}

/// The code at `addr` (at most `max` bytes, to the end of its segment), disassembled by
/// textpoke: instructions separated by `"; "`.
pub(crate) fn disassemble_function(addr: usize, max: usize) -> Result<String> {
    Ok(textpoke::__private::disassemble(
        addr,
        &function_bytes(addr, max)?,
    ))
}

/// Replaces every number in `insn` (iced-x86's Intel syntax: hexadecimal with an `h` suffix,
/// as in `call 0000000000401000h` or `mov rax,[404020h]`) that is the address of one of `names`
/// with its name, and every memory operand `[number]` whose 8-byte content is one of them with
/// `[slot holding name]`. Returns the text and whether anything was named.
pub(crate) fn annotate(insn: &str, names: &[(usize, &str)]) -> (String, bool) {
    let name_of = |a: usize| names.iter().find(|&&(n, _)| n == a).map(|&(_, s)| s);
    let word_byte = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
    let bytes = insn.as_bytes();
    let (mut out, mut named, mut i) = (String::new(), false, 0);
    while i < bytes.len() {
        let digits = bytes[i..]
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        let end = i + digits;
        let number = (digits > 0
            && !word_byte(i.checked_sub(1).and_then(|p| bytes.get(p)))
            && bytes.get(end) == Some(&b'h')
            && !word_byte(bytes.get(end + 1)))
        .then(|| usize::from_str_radix(&insn[i..end], 16).ok())
        .flatten();
        let Some(addr) = number else {
            let next = insn[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&insn[i..i + next]);
            i += next;
            continue;
        };
        let bracketed = out.ends_with('[') && bytes.get(end + 1) == Some(&b']');
        let slot = || {
            let word = read_mapped(addr, 8)?;
            name_of(usize::from_le_bytes(word.try_into().ok()?))
        };
        let replacement = match (name_of(addr), bracketed.then(slot).flatten()) {
            (Some(name), _) => Some(name.to_string()),
            (None, Some(name)) => Some(format!("slot holding {name}")),
            (None, None) => None,
        };
        match replacement {
            Some(r) => {
                out.push_str(&r);
                named = true;
            }
            None => out.push_str(&insn[i..=end]),
        }
        i = end + 1;
    }
    (out, named)
}

/// The calls in the loop function at `addr` (up to its first `ret`), and every instruction
/// there that names one of `names` directly or through a slot, annotated by [`annotate`].
pub(crate) fn describe_loop(addr: usize, names: &[(usize, &str)]) -> Result<String> {
    let text = disassemble_function(addr, MAX_LOOP_BYTES)?;
    let mut kept = Vec::new();
    for insn in text.split("; ") {
        if insn.starts_with("ret") || insn == "(bad)" {
            break;
        }
        let (annotated, named) = annotate(insn, names);
        if named || insn.starts_with("call") {
            kept.push(annotated);
        }
    }
    Ok(kept.join("; "))
}

/// What each dispatch loop does per call, from its machine code.
fn loop_code() -> Result<LoopCode> {
    let names = [
        (work as *const () as usize, "work"),
        (work_alt as *const () as usize, "work_alt"),
        (textpoke::__private::trampoline_of(&SC)?, "SC's trampoline"),
        (&FN_PTR as *const AtomicPtr<()> as usize, "FN_PTR"),
        (work_c as *const () as usize, "work_c"),
        (work_c_alt as *const () as usize, "work_c_alt"),
        (
            textpoke::__private::trampoline_of(&SCI)?,
            "SCI's trampoline",
        ),
    ];
    let describe = |f: Loop| describe_loop(f as usize, &names);
    Ok(LoopCode {
        direct: describe(direct_loop)?,
        static_call: describe(static_call_loop)?,
        fn_pointer: describe(fn_pointer_loop)?,
        dyn_fn: describe(dyn_loop)?,
        direct_c: describe(direct_c_loop)?,
        static_call_inline: describe(static_call_inline_loop)?,
    })
}

/// A static call whose updates are measured, between a main target (`x*31 ^ 7`) and an
/// alternative (`x*31 ^ 5`).
trait Measured: Sync + 'static {
    /// Its name, for messages.
    const NAME: &'static str;
    /// Calls it (inlined into the caller, so that an inline static call's site is there).
    fn invoke(&self, x: u64) -> u64;
    /// Retargets it to the alternative target when `alt`, else to the main one.
    fn retarget(&self, alt: bool) -> Result<()>;
}

impl Measured for SC {
    const NAME: &'static str = "SC";
    #[inline(always)]
    fn invoke(&self, x: u64) -> u64 {
        SC.call(x)
    }
    fn retarget(&self, alt: bool) -> Result<()> {
        Ok(SC.update(if alt { work_alt } else { work })?)
    }
}

impl Measured for SCI {
    const NAME: &'static str = "SCI";
    #[inline(always)]
    fn invoke(&self, x: u64) -> u64 {
        SCI.call(x)
    }
    fn retarget(&self, alt: bool) -> Result<()> {
        Ok(SCI.update(if alt { work_c_alt } else { work_c })?)
    }
}

/// What the target chosen by `alt` returns for `x`.
fn expected(alt: bool, x: u64) -> u64 {
    mix(x, if alt { 5 } else { 7 })
}

/// Retargets `call` (to its alternative target when `alt`) and checks that this thread's next
/// call reaches the new target.
fn update_to<C: Measured>(call: &C, alt: bool, probe: u64) -> Result<()> {
    call.retarget(alt)?;
    let (got, want) = (call.invoke(black_box(probe)), expected(alt, probe));
    if got == want {
        Ok(())
    } else {
        Err(BenchError::new(format!(
            "after an update, {}({probe}) returned {got:#x}, expected {want:#x}",
            C::NAME
        )))
    }
}

/// What the update measurement found.
struct Updates {
    times_us: Vec<f64>,
    caller_calls: u64,
    violations: u64,
}

/// Times `samples` updates of `call`, alternating its alternative target (first) and its main
/// one, while one thread, pinned to `caller_cpu`, calls it continuously. Leaves it on its main
/// target.
fn measure_updates<C: Measured>(
    call: &'static C,
    samples: usize,
    caller_cpu: usize,
) -> Result<Updates> {
    // Untimed warm-up: the first write to the trampoline's page copies it, and the call table
    // is indexed on the first update.
    for n in 0..4 {
        update_to(call, n % 2 == 0, n)?;
    }
    let stop = AtomicBool::new(false);
    let calls = AtomicU64::new(0);
    std::thread::scope(|scope| {
        let caller = std::thread::Builder::new()
            .name("caller".into())
            .spawn_scoped(scope, || -> Result<(u64, u64)> {
                CpuMask::only(caller_cpu).apply()?;
                let (mut n, mut bad) = (0u64, 0u64);
                let mut x = 0u64;
                loop {
                    let r = call.invoke(black_box(x));
                    if r != expected(false, x) && r != expected(true, x) {
                        bad += 1;
                    }
                    x = x.wrapping_add(1);
                    n += 1;
                    calls.store(n, Ordering::Relaxed);
                    if stop.load(Ordering::Relaxed) {
                        return Ok((n, bad));
                    }
                }
            })
            .map_err(|e| BenchError::new(format!("cannot start the calling thread: {e}")))?;
        // Wait until the caller is pinned and has made a call (or has failed to pin itself).
        while calls.load(Ordering::Relaxed) == 0 && !caller.is_finished() {
            std::thread::yield_now();
        }
        let timed = || -> Result<(Vec<f64>, u64)> {
            let mut times = Vec::with_capacity(samples);
            let before = calls.load(Ordering::Relaxed);
            for i in 0..samples {
                let alt = i % 2 == 0;
                let start = Instant::now();
                call.retarget(alt)?;
                times.push(start.elapsed().as_secs_f64() * 1e6);
                let (got, want) = (call.invoke(black_box(i as u64)), expected(alt, i as u64));
                if got != want {
                    return Err(BenchError::new(format!(
                        "after update {i}, {}({i}) returned {got:#x}, expected {want:#x}",
                        C::NAME
                    )));
                }
            }
            // A short run on a loaded machine may time every update while the caller is
            // descheduled: go on updating, untimed, until it has called meanwhile (at most 2 s),
            // so that the run shows it ran against live updates.
            let deadline = Instant::now() + std::time::Duration::from_secs(2);
            let mut extra = 0;
            while calls.load(Ordering::Relaxed) == before && Instant::now() < deadline {
                call.retarget(extra % 2 == 0)?;
                extra += 1;
                std::thread::yield_now();
            }
            if extra % 2 == 1 {
                call.retarget(false)?;
            }
            let after = calls.load(Ordering::Relaxed);
            Ok((times, after - before))
        };
        let result = if caller.is_finished() {
            Ok((Vec::new(), 0))
        } else {
            timed()
        };
        stop.store(true, Ordering::Relaxed);
        let joined = caller
            .join()
            .map_err(|_| BenchError::new("the calling thread panicked"))?;
        let (times_us, caller_calls) = result?;
        let (_, violations) = joined?;
        Ok(Updates {
            times_us,
            caller_calls,
            violations,
        })
    })
    .and_then(|u| {
        update_to(call, false, 1)?;
        Ok(u)
    })
}

/// Errors out if the thread calling `C` saw a return value from neither target, or ended
/// before all `samples` updates were timed.
fn check_updates<C: Measured>(u: &Updates, samples: usize) -> Result<()> {
    if u.violations != 0 {
        return Err(BenchError::new(format!(
            "{} of the return values of the thread calling {} came from neither target during \
             the updates",
            u.violations,
            C::NAME
        )));
    }
    if u.times_us.len() != samples {
        return Err(BenchError::new(format!(
            "the thread calling {} ended before the updates were timed",
            C::NAME
        )));
    }
    Ok(())
}

/// Measures dispatch, then updates, and reports both.
pub fn run(args: &CallArgs) -> Result<CallRow> {
    if args.iters == 0 || args.reps == 0 || args.samples == 0 || args.cold_rounds == 0 {
        return Err(BenchError::new(
            "--iters, --reps, --samples and --cold-rounds must be at least 1",
        ));
    }
    FN_PTR.store(black_box(work as *mut ()), Ordering::Relaxed);
    let saved = affinity::current()?;
    let _restore = RestoreAffinity(saved);
    let placement = Placement::over(&saved.cpus())?;
    CpuMask::only(placement.main).apply()?;
    // Dispatch is measured with `SC` on `work` and `SCI` on `work_c`, where they start and
    // where updates leave them: `SCI`'s inline site in its loop then calls `work_c` directly.
    update_to(&SC, false, 0)?;
    update_to(&SCI, false, 0)?;
    let loop_code = loop_code()?;
    let static_call_direct = loop_code
        .static_call
        .split("; ")
        .any(|insn| insn == "call SC's trampoline");
    let static_call_inline_direct = loop_code
        .static_call_inline
        .split("; ")
        .any(|insn| insn == "call work_c");
    let inline_sites = textpoke::__private::inline_sites_of(&SCI)?.len();

    let [
        direct,
        static_call,
        fn_pointer,
        dyn_fn,
        direct_c,
        static_call_inline,
    ] = dispatch::measure(&LOOPS, args.iters, args.reps)?;
    let cold = cold::run(args.cold_rounds, args.reps)?;
    let [cold_direct, cold_static_call, cold_fn_pointer] = cold.ns;
    let caller_cpu = placement.busy_cpu(0);
    let updates = measure_updates(&SC, args.samples, caller_cpu)?;
    check_updates::<SC>(&updates, args.samples)?;
    let updates_inline = measure_updates(&SCI, args.samples, caller_cpu)?;
    check_updates::<SCI>(&updates_inline, args.samples)?;
    let mut note = note(
        args,
        &placement,
        caller_cpu,
        static_call_direct,
        static_call_inline_direct,
        inline_sites,
    );
    note.push_str(&cold::note(&cold, args.cold_rounds, args.reps));
    Ok(CallRow {
        direct_ns: direct,
        static_call_ns: static_call,
        fn_pointer_ns: fn_pointer,
        dyn_ns: dyn_fn,
        static_call_vs_direct: static_call / direct,
        direct_c_ns: direct_c,
        static_call_inline_ns: static_call_inline,
        static_call_inline_vs_direct: static_call_inline / direct_c,
        update_us_median: stats::median(&updates.times_us),
        update_us_p90: stats::percentile(&updates.times_us, 0.9),
        update_samples: updates.times_us.len(),
        caller_calls: updates.caller_calls,
        violations: updates.violations,
        update_inline_us_median: stats::median(&updates_inline.times_us),
        update_inline_us_p90: stats::percentile(&updates_inline.times_us, 0.9),
        update_inline_samples: updates_inline.times_us.len(),
        caller_calls_inline: updates_inline.caller_calls,
        violations_inline: updates_inline.violations,
        inline_sites,
        static_call_direct,
        static_call_inline_direct,
        loop_code,
        cold_direct_ns: cold_direct,
        cold_static_call_ns: cold_static_call,
        cold_fn_pointer_ns: cold_fn_pointer,
        cold_static_call_vs_direct: cold_static_call / cold_direct,
        cold_targets: cold::TARGETS,
        cold_rounds: args.cold_rounds,
        cold_retargeted: cold.retargeted,
        cold_loop_code: cold.code,
        iters: args.iters,
        reps: args.reps,
        note,
    })
}

fn note(
    args: &CallArgs,
    placement: &Placement,
    caller_cpu: usize,
    direct: bool,
    inline_direct: bool,
    inline_sites: usize,
) -> String {
    let mut note = format!(
        "dispatch: median of {reps} interleaved repetitions of {iters} calls per loop; each loop \
         is 64-byte aligned and calls the same #[inline(never)] fn work(x) = x*31 ^ 7 on the \
         counter passed through black_box, XOR-ing the results into a checksum checked against \
         the expected one; direct: a plain call; static call: SC.call(x), whose trampoline \
         `jmp rel32`s to work; fn pointer: a Relaxed load of a static AtomicPtr (stored to at \
         run time) on every call, then an indirect call; dyn: an indirect call through the \
         vtable of a black_box'd &dyn Fn (its Fn::call shim for the fn item then jumps to work); \
         direct C: a plain call to extern \"C\" fn work_c, the same work and machine code as \
         work (an empty asm! in it keeps LLVM from merging the two into one address); inline \
         static call: SCI.call(x), SCI being an inline C-ABI static call on work_c, whose call \
         instruction in the loop is textpoke's own call rel32, aimed at work_c directly (after \
         SCI.update back to work_c); loop_code lists each loop's calls and every instruction \
         that names work, work_c, a trampoline or FN_PTR (directly or through a pointer slot), \
         disassembled from this process's own text; update: median of {samples} individually \
         timed SC.update calls alternating between work_alt (x*31 ^ 5) and work while one \
         thread calls SC continuously, checking every return value against both targets; each \
         update is also checked by one call from the updater; update_inline: the same, next, \
         for SCI, alternating between work_c_alt (x*31 ^ 5) and work_c, with a new calling \
         thread; each SCI.update rewrites SCI's trampoline and its {inline_sites} inline call \
         sites (the calling thread's among them) in one batch",
        reps = args.reps,
        iters = args.iters,
        samples = args.samples,
    );
    if !direct {
        note.push_str(
            "; NOTE: the static-call loop does NOT call the trampoline directly: it goes through \
             a pointer slot (see loop_code), because rustc treats the trampoline, declared in an \
             extern block and defined in global_asm!, as possibly external in a PIE and reaches \
             it through the GOT",
        );
    }
    if !inline_direct {
        note.push_str(
            "; NOTE: the inline-static-call loop does NOT call work_c directly (see loop_code): \
             its inline site is not in the loop, or does not point at work_c",
        );
    }
    if caller_cpu == placement.main {
        note.push_str(&format!(
            "; updater and caller both pinned to CPU {} (too few CPUs: they share it)",
            placement.main
        ));
    } else {
        note.push_str(&format!(
            "; updater pinned to CPU {}, caller to CPU {caller_cpu}",
            placement.main
        ));
    }
    crate::mark_debug_build(&mut note);
    note
}

/// Prints the results as a table on stdout.
pub fn print_table(r: &CallRow) -> Result<()> {
    let rows = [
        ("direct call (ns)", r.direct_ns),
        ("static call (ns)", r.static_call_ns),
        ("fn pointer from AtomicPtr (ns)", r.fn_pointer_ns),
        ("&dyn Fn (ns)", r.dyn_ns),
        ("static call / direct", r.static_call_vs_direct),
        ("direct C call (ns)", r.direct_c_ns),
        ("inline static call (ns)", r.static_call_inline_ns),
        (
            "inline static call / direct C",
            r.static_call_inline_vs_direct,
        ),
        ("update, median (µs)", r.update_us_median),
        ("update, p90 (µs)", r.update_us_p90),
        ("update samples", r.update_samples as f64),
        ("caller calls during updates", r.caller_calls as f64),
        ("violations", r.violations as f64),
        ("inline update, median (µs)", r.update_inline_us_median),
        ("inline update, p90 (µs)", r.update_inline_us_p90),
        ("inline update samples", r.update_inline_samples as f64),
        ("caller calls, inline updates", r.caller_calls_inline as f64),
        ("inline violations", r.violations_inline as f64),
        ("inline sites of SCI", r.inline_sites as f64),
        ("cold direct call (ns)", r.cold_direct_ns),
        ("cold static call (ns)", r.cold_static_call_ns),
        ("cold fn pointer (ns)", r.cold_fn_pointer_ns),
        ("cold static call / direct", r.cold_static_call_vs_direct),
        ("cold targets", r.cold_targets as f64),
    ];
    crate::print_rows(("what", "value"), &rows, &r.note)?;
    let code = &r.loop_code;
    for (name, text) in [
        ("direct", &code.direct),
        ("static call", &code.static_call),
        ("fn pointer", &code.fn_pointer),
        ("dyn Fn", &code.dyn_fn),
        ("direct C", &code.direct_c),
        ("inline static call", &code.static_call_inline),
    ] {
        crate::print_line(&format!("code of the {name} loop: {text}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_call_run_gives_a_complete_json_object() -> Result<()> {
        let _serial = crate::tests::serial();
        let row = run(&CallArgs {
            iters: 1000,
            reps: 3,
            samples: 9,
            cold_rounds: 2,
            json: true,
        })?;
        let line = serde_json::to_string(&row)?;
        let v: serde_json::Value = serde_json::from_str(&line)?;
        let num = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_f64)
                .unwrap_or_else(|| panic!("{k} missing or not a number in {line}"))
        };
        let mut positive = vec![
            "direct_ns",
            "static_call_ns",
            "fn_pointer_ns",
            "dyn_ns",
            "static_call_vs_direct",
            "direct_c_ns",
            "static_call_inline_ns",
            "static_call_inline_vs_direct",
            "update_us_median",
            "update_us_p90",
            "update_samples",
            "update_inline_us_median",
            "update_inline_us_p90",
            "update_inline_samples",
            "inline_sites",
            "cold_direct_ns",
            "cold_static_call_ns",
            "cold_fn_pointer_ns",
            "cold_static_call_vs_direct",
            "cold_targets",
            "cold_rounds",
            "cold_retargeted",
            "iters",
            "reps",
        ];
        // With one CPU the caller may not run at all while a few updates are timed.
        if affinity::current()?.cpus().len() > 1 {
            positive.extend(["caller_calls", "caller_calls_inline"]);
        } else {
            assert!(num("caller_calls").is_finite());
            assert!(num("caller_calls_inline").is_finite());
        }
        for k in positive {
            assert!(num(k) > 0.0 && num(k).is_finite(), "{k} in {line}");
        }
        assert_eq!(num("violations"), 0.0);
        assert_eq!(num("violations_inline"), 0.0);
        assert_eq!(v["update_samples"].as_u64(), Some(9));
        assert_eq!(v["update_inline_samples"].as_u64(), Some(9));
        assert_eq!(v["iters"].as_u64(), Some(1000));
        assert_eq!(v["reps"].as_u64(), Some(3));
        assert_eq!(v["cold_targets"].as_u64(), Some(4096));
        assert_eq!(v["cold_rounds"].as_u64(), Some(2));
        assert_eq!(v["cold_retargeted"].as_u64(), Some(3));
        assert!(v["note"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(v["static_call_direct"].is_boolean());
        assert_eq!(
            v["static_call_inline_direct"].as_bool(),
            Some(true),
            "{line}"
        );
        // What each loop calls, whatever the optimization level.
        let code = &row.loop_code;
        assert!(code.direct.contains("call work"), "{line}");
        assert!(code.static_call.contains("SC's trampoline"), "{line}");
        assert!(!code.static_call.contains("work"), "{line}");
        assert!(code.fn_pointer.contains("FN_PTR"), "{line}");
        assert!(code.dyn_fn.contains("call qword ptr [r"), "{line}");
        // At every optimization level (a debug build adds calls to iterator and `black_box`
        // helpers): a direct `call work_c`, which in the inline loop is its inline site, aimed
        // straight at `work_c`, with no trampoline.
        let calls_work_c = |text: &str| text.split("; ").any(|insn| insn == "call work_c");
        assert!(calls_work_c(&code.direct_c), "{line}");
        assert!(calls_work_c(&code.static_call_inline), "{line}");
        assert!(!code.static_call_inline.contains("trampoline"), "{line}");
        // The cold loops, whatever the optimization level: the direct one calls the 4,096
        // targets in order, directly, and makes no indirect call per step; the static-call one reaches
        // the 4,096 trampolines in order; the function-pointer one makes an indirect call per
        // step. With optimization, each makes its rotation's calls and no other.
        let cold = &row.cold_loop_code;
        assert_eq!(cold.direct.rotation_calls, 4096, "{line}");
        assert_eq!(cold.direct.rotation_direct, 4096, "{line}");
        // A debug build's loop may call a helper or two through the GOT, never per step.
        let helpers = if cfg!(debug_assertions) { 16 } else { 0 };
        assert!(cold.direct.indirect_calls <= helpers, "{line}");
        assert_eq!(cold.static_call.rotation_calls, 4096, "{line}");
        assert!(cold.fn_pointer.indirect_calls >= 4096, "{line}");
        assert_eq!(cold.fn_pointer.rotation_direct, 0, "{line}");
        if !cfg!(debug_assertions) {
            for c in [&cold.direct, &cold.static_call, &cold.fn_pointer] {
                assert_eq!((c.rotation_calls, c.calls), (4096, 4096), "{line}");
            }
            assert_eq!(cold.fn_pointer.indirect_calls, 4096, "{line}");
        }
        assert_eq!(SC.call(3), work(3), "the run leaves SC on work");
        assert_eq!(SCI.call(3), work_c(3), "the run leaves SCI on work_c");
        let site_in_loop = textpoke::__private::inline_sites_of(&SCI)?
            .into_iter()
            .any(|site| {
                let start = static_call_inline_loop as *const () as usize;
                (start..start + MAX_LOOP_BYTES).contains(&site)
            });
        assert!(site_in_loop, "an inline site of SCI lies in its loop");
        Ok(())
    }

    #[test]
    fn annotate_names_addresses_and_slots() {
        static SLOT: fn(u64) -> u64 = work;
        let w = work as *const () as usize;
        let names = [(w, "work")];
        let slot = &SLOT as *const fn(u64) -> u64 as usize;
        for (insn, want, named) in [
            (format!("call {w:016X}h"), "call work".to_string(), true),
            (format!("mov rax,[{w:X}h]"), "mov rax,[work]".into(), true),
            (
                format!("call qword ptr [{slot:X}h]"),
                "call qword ptr [slot holding work]".into(),
                true,
            ),
            (
                "call qword ptr [r12+28h]".into(),
                "call qword ptr [r12+28h]".into(),
                false,
            ),
            ("mov ah,bh".into(), "mov ah,bh".into(), false),
            ("call 10h".into(), "call 10h".into(), false),
        ] {
            assert_eq!(annotate(&insn, &names), (want, named), "{insn}");
        }
    }
}
