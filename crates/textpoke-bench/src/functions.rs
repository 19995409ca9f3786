//! `functions`: what a patchable function costs, disabled and traced, beside the `tracing`
//! crate's `#[instrument]`, and how long tracing 1,000 functions or replacing one takes while
//! another thread calls them.
//!
//! Calls: five loops shaped as `call`'s dispatch loops (64-byte aligned, the counter passed
//! through `black_box`, the results XOR-ed into a checksum every loop must return), each calling
//! one `#[inline(never)]` function doing `call`'s work, `x*31 ^ 7`:
//!
//! - plain: [`plain`], not patchable;
//! - patchable, disabled: [`patchable`], `#[textpoke::patchable]`, nothing enabled on it;
//! - traced: [`traced`], the same patchable function under another name, traced throughout by
//!   one tracer whose entry hook counts calls (a `Relaxed` `fetch_add`). A twin rather than
//!   [`patchable`] itself, so that no batch runs between the interleaved repetitions;
//! - `tracing` instrument: [`instrumented`], the plain function under `#[tracing::instrument]`
//!   (its defaults: an `INFO` span named after the function, recording `x`), with [`Counting`]
//!   as the global subscriber: it accepts that span (`Interest::always`) and counts `new_span`
//!   and `enter`;
//! - `tracing`, filtered out: [`filtered`], the same under another name, whose callsite
//!   [`Counting`] rejects (`Interest::never`), as a subscriber's level or target filter does.
//!
//! The loops run `reps` times each, interleaved in a rotating order, and the median ns per call
//! of each is reported (as `call` does, with the same helper). The hook's count and the
//! subscriber's counts are checked against each other afterwards: every traced and every
//! instrumented call was seen, and no filtered one made a span.
//!
//! The code of [`plain`] and of [`patchable`] is read back from this process's text, from each
//! function's entry to its first `ret` (what a call runs while nothing is enabled), and compared
//! instruction by instruction: the patchable one must be the plain one plus exactly one 5-byte
//! NOP, which must be the function's one static-branch site (`textpoke::tables::jump_sites`),
//! jumping past that `ret` when enabled.
//!
//! Batches, each with one busy thread (pinned to a CPU other than the patching thread's, when
//! there is one) calling the functions meanwhile and checking every result:
//!
//! - tracing 1,000 functions: one [`Tracer`] whose glob matches exactly the 1,000 patchable
//!   functions of [`many`] (`many::f0` to `many::f999`, each with a constant of its own so that
//!   none is merged with another), started and stopped `samples` times in turn, each
//!   `Tracer::enable` and `Tracer::disable` timed on its own, while the busy thread calls all
//!   1,000 through a table of function pointers;
//! - replacing one function: a [`Replacement`](textpoke::functions::Replacement) of
//!   [`replaced`] by [`replacement`] (`x*31 ^ 13`), enabled and disabled `samples` times in turn,
//!   each half timed on its own, while the busy thread calls [`replaced`] and checks that every
//!   result is the old function's or the new one's; after each half, the patching thread's own
//!   next call must reach the function it selected.

use std::hint::black_box;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::Serialize;
use textpoke::PatchStats;
use textpoke::functions::{self, Entry, Tracer};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata};

use crate::affinity::Placement;
use crate::branch::dispatch_loop;
use crate::call::{describe_loop, function_bytes};
use crate::dispatch::{self, Loop, mix};
use crate::{BenchError, Result, stats, toggle};

/// Options of the `functions` subcommand.
#[derive(Clone, Debug, clap::Args)]
pub struct FunctionsArgs {
    /// Calls per repetition of each call loop.
    #[arg(long, default_value_t = 10_000_000)]
    pub iters: u64,
    /// Repetitions of each call loop; the median is reported.
    #[arg(long, default_value_t = 21)]
    pub reps: usize,
    /// Timed enables (and as many timed disables) of the 1,000-function tracer, and timed
    /// enable/disable pairs of the replacement; medians are reported.
    #[arg(long, default_value_t = 101)]
    pub samples: usize,
}

/// The results of one run.
#[derive(Clone, Debug, Serialize)]
pub struct FunctionsRow {
    /// A call of the plain function, ns per call.
    pub plain_ns: f64,
    /// A call of the same function marked `#[textpoke::patchable]`, nothing enabled on it, ns
    /// per call.
    pub patchable_disabled_ns: f64,
    /// `patchable_disabled_ns / plain_ns` (the project's target: at most 1.05).
    pub patchable_vs_plain: f64,
    /// A call of the patchable function with one tracer whose entry hook counts calls, ns per
    /// call.
    pub traced_ns: f64,
    /// A call of the plain function under `#[tracing::instrument]`, its span accepted by the
    /// global subscriber (which counts `new_span` and `enter`), ns per call.
    pub tracing_instrument_ns: f64,
    /// A call of the plain function under `#[tracing::instrument]`, its callsite rejected by the
    /// global subscriber (`Interest::never`), ns per call.
    pub tracing_disabled_ns: f64,
    /// `traced_ns / tracing_instrument_ns`.
    pub traced_vs_tracing: f64,
    /// Calls the traced function's entry hook counted (every call of its loop, warm-up
    /// included; checked equal to `tracing_spans`).
    pub traced_hook_calls: u64,
    /// Spans the subscriber made (`new_span`), all for the accepted function: checked equal to
    /// the `enter` calls, and to `traced_hook_calls` (the loops make as many calls).
    pub tracing_spans: u64,
    /// Static-branch sites of the disabled patchable function (1: not inlined anywhere).
    pub patchable_sites: usize,
    /// Whether the disabled patchable function's code, from its entry to its first `ret`, is the
    /// plain function's plus exactly one 5-byte NOP, its site.
    pub one_nop_more: bool,
    /// The plain function's code from its entry to its first `ret`, disassembled.
    pub plain_code: String,
    /// The same for the disabled patchable function.
    pub patchable_code: String,
    /// Whether the plain and the patchable loops each call their function with a direct `call`.
    pub loops_call_directly: bool,
    /// Median wall time of one `Tracer::enable` of a tracer matching 1,000 patchable functions
    /// (one batch) while a busy thread calls all 1,000, in µs.
    pub enable_1000_us: f64,
    /// 90th percentile of those times, in µs.
    pub enable_1000_us_p90: f64,
    /// Median wall time of one `Tracer::disable` of the same tracer, likewise, in µs.
    pub disable_1000_us: f64,
    /// Core serializations per enable (median over the samples, from `PatchStats`).
    pub enable_1000_syncs: usize,
    /// Sites patched per enable (median over the samples, from `PatchStats`).
    pub enable_1000_sites: usize,
    /// `pwrite` calls per enable (median over the samples, from `PatchStats`).
    pub enable_1000_writes: usize,
    /// Functions the tracer matched (`Tracer::functions().len()`; checked to be 1,000).
    pub enable_1000_functions: usize,
    /// Timed enables, and as many timed disables.
    pub enable_1000_samples: usize,
    /// Calls the busy thread made while the enables and disables were timed.
    pub enable_1000_busy_calls: u64,
    /// Calls of the busy thread that returned a wrong result (always 0: any other count is an
    /// error).
    pub enable_1000_violations: u64,
    /// Entry-hook runs of the 1,000-function tracer (all the busy thread's, while it was
    /// enabled).
    pub enable_1000_hook_calls: u64,
    /// Median wall time of one `Replacement::enable` while a busy thread calls the function, in
    /// µs.
    pub replace_us: f64,
    /// Median wall time of one `Replacement::disable` (the revert), likewise, in µs.
    pub revert_us: f64,
    /// Core serializations per `Replacement::enable` (median over the samples).
    pub replace_syncs: usize,
    /// Timed enables, and as many timed disables.
    pub replace_samples: usize,
    /// Calls the busy thread made while the replacement was timed.
    pub replace_busy_calls: u64,
    /// Of those, calls that returned the replacement's result.
    pub replace_busy_new_calls: u64,
    /// Calls of the busy thread whose result was neither the old function's nor the new one's
    /// (always 0: any other count is an error).
    pub replace_violations: u64,
    /// Calls per repetition of each call loop.
    pub iters: u64,
    /// Repetitions of each call loop.
    pub reps: usize,
    /// How it was measured, and what the disassembly showed.
    pub note: String,
}

/// The function every patchable function here wraps: `call`'s work, `x*31 ^ 7`.
#[inline(never)]
fn plain(x: u64) -> u64 {
    mix(x, 7)
}

/// Defines a patchable function doing [`plain`]'s work.
macro_rules! patchable_work {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[textpoke::patchable]
        #[inline(never)]
        fn $name(x: u64) -> u64 {
            mix(x, 7)
        }
    };
}

patchable_work!(
    /// The patchable function measured disabled: nothing is ever enabled on it.
    patchable
);
patchable_work!(
    /// The patchable function measured traced: one tracer counts its calls.
    traced
);
patchable_work!(
    /// The patchable function whose replacement is timed.
    replaced
);

/// What [`replaced`] is replaced by: the same work with another constant, so that every result
/// tells which function made it.
#[inline(never)]
fn replacement(x: u64) -> u64 {
    mix(x, 13)
}

/// Defines a plain function doing [`plain`]'s work under `#[tracing::instrument]`.
macro_rules! instrumented_work {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[tracing::instrument]
        #[inline(never)]
        fn $name(x: u64) -> u64 {
            mix(x, 7)
        }
    };
}

instrumented_work!(
    /// The instrumented function whose span [`Counting`] accepts.
    instrumented
);
instrumented_work!(
    /// The instrumented function whose callsite [`Counting`] rejects.
    filtered
);

/// The 1,000 patchable functions one tracer enables in one batch.
mod many {
    use crate::dispatch::mix;

    seq_macro::seq!(N in 0..1000 {
        #(
            /// One of the 1,000 traced in one batch: the work with a constant of its own, so
            /// that no two are merged into one.
            #[textpoke::patchable]
            #[inline(never)]
            pub(super) fn f~N(x: u64) -> u64 {
                mix(x, N)
            }
        )*

        /// Every one of them, in order: `ALL[n](x)` is `mix(x, n)`.
        pub(super) static ALL: [fn(u64) -> u64; 1000] = [#(f~N,)*];
    });
}

/// The path of a function of this module, as `#[textpoke::patchable]` records it.
macro_rules! path_of {
    ($name:literal) => {
        concat!(module_path!(), "::", $name)
    };
}

/// The glob of the 1,000-function tracer.
const MANY_GLOB: &str = path_of!("many::f*");

/// Entry-hook runs of the tracer of [`traced`].
static TRACED_HITS: AtomicU64 = AtomicU64::new(0);
/// Entry-hook runs of the 1,000-function tracer.
static MANY_HITS: AtomicU64 = AtomicU64::new(0);
/// Spans [`Counting`] made.
static SPANS: AtomicU64 = AtomicU64::new(0);
/// Spans [`Counting`] entered.
static ENTERS: AtomicU64 = AtomicU64::new(0);

/// A minimal `tracing` subscriber: accepts the span of [`instrumented`] and no other callsite,
/// and counts the spans it makes and enters.
struct Counting;

impl Counting {
    fn accepts(meta: &Metadata<'_>) -> bool {
        meta.is_span() && meta.name() == "instrumented"
    }
}

impl tracing::Subscriber for Counting {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if Self::accepts(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        Self::accepts(meta)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        // Span ids must be non-zero.
        Id::from_u64(SPANS.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, _: &Event<'_>) {}

    fn enter(&self, _: &Id) {
        ENTERS.fetch_add(1, Ordering::Relaxed);
    }

    fn exit(&self, _: &Id) {}
}

/// Makes [`Counting`] the process's global subscriber (once: a global subscriber cannot be
/// replaced).
fn install_subscriber() -> Result<()> {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    let ok = *INSTALLED.get_or_init(|| tracing::subscriber::set_global_default(Counting).is_ok());
    if ok {
        Ok(())
    } else {
        Err(BenchError::new(
            "another global tracing subscriber was set before this benchmark's",
        ))
    }
}

dispatch_loop!(plain_loop, i => plain(black_box(i)));
dispatch_loop!(patchable_loop, i => patchable(black_box(i)));
dispatch_loop!(traced_loop, i => traced(black_box(i)));
dispatch_loop!(instrumented_loop, i => instrumented(black_box(i)));
dispatch_loop!(filtered_loop, i => filtered(black_box(i)));

/// The call loops, in the order their results are reported.
const LOOPS: [(&str, Loop); 5] = [
    ("plain", plain_loop),
    ("patchable", patchable_loop),
    ("traced", traced_loop),
    ("tracing instrument", instrumented_loop),
    ("tracing filtered", filtered_loop),
];

/// One instruction, at its offset from the start of its function.
struct Insn {
    offset: usize,
    len: usize,
    text: String,
}

/// Most bytes of a function read back; its entry path ends well before.
const MAX_FN_BYTES: usize = 256;

/// The instructions a call of the function at `addr` runs when it branches nowhere: from its
/// entry to its first `ret`, each with its length.
fn entry_path(addr: usize) -> Result<Vec<Insn>> {
    let bytes = function_bytes(addr, MAX_FN_BYTES)?;
    let mut insns = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        // Decoding stops at the end of the bytes it is given, so the shortest prefix that holds
        // one valid instruction is exactly that instruction.
        let (len, text) = (1..=rest.len().min(15))
            .find_map(|n| {
                let text = textpoke::__private::disassemble(addr + offset, &rest[..n]);
                (text != "(bad)").then_some((n, text))
            })
            .ok_or_else(|| {
                BenchError::new(format!("no valid instruction at {:#x}", addr + offset))
            })?;
        let done = text.starts_with("ret");
        insns.push(Insn { offset, len, text });
        if done {
            return Ok(insns);
        }
        offset += len;
    }
    Err(BenchError::new(format!(
        "no ret in the first {} bytes of the function at {addr:#x}",
        bytes.len()
    )))
}

fn join(insns: &[Insn]) -> String {
    let texts: Vec<&str> = insns.iter().map(|i| i.text.as_str()).collect();
    texts.join("; ")
}

/// What the comparison of [`plain`]'s and [`patchable`]'s code found.
struct CodeCheck {
    one_nop_more: bool,
    plain: String,
    patchable: String,
    finding: String,
}

/// Compares the entry paths of [`plain`] and [`patchable`] (see the module docs).
fn check_code() -> Result<CodeCheck> {
    let (plain_addr, patch_addr) = (plain as *const () as usize, patchable as *const () as usize);
    let plain_path = entry_path(plain_addr)?;
    let patch_path = entry_path(patch_addr)?;
    let bytes_of = |path: &[Insn]| path.last().map_or(0, |i| i.offset + i.len);
    let (plain_len, patch_len) = (bytes_of(&plain_path), bytes_of(&patch_path));
    let sites: Vec<_> = textpoke::tables::jump_sites()?
        .into_iter()
        .filter(|s| (patch_addr..patch_addr + patch_len).contains(&s.addr))
        .collect();
    let code = function_bytes(patch_addr, patch_len)?;
    let site_insn = match sites.as_slice() {
        [site] => patch_path.iter().position(|i| {
            patch_addr + i.offset == site.addr
                && i.len == 5
                && textpoke::insn::is_nop(&code[i.offset..i.offset + 5])
        }),
        _ => None,
    };
    let rest: Vec<&str> = patch_path
        .iter()
        .enumerate()
        .filter(|&(k, _)| Some(k) != site_insn)
        .map(|(_, i)| i.text.as_str())
        .collect();
    let plain_texts: Vec<&str> = plain_path.iter().map(|i| i.text.as_str()).collect();
    let one_nop_more = site_insn.is_some() && rest == plain_texts && patch_len == plain_len + 5;
    let (plain, patchable) = (join(&plain_path), join(&patch_path));
    let finding = match (site_insn, sites.first()) {
        (Some(k), Some(site)) if one_nop_more => format!(
            "plain's entry path is `{plain}` ({plain_len} bytes); the disabled patchable one's \
             is `{patchable}` ({patch_len} bytes): the same instructions and one 5-byte NOP \
             more, at +{:#x}, its one site, which jumps to +{:#x} (past the ret) when enabled",
            patch_path[k].offset,
            site.target.wrapping_sub(patch_addr)
        ),
        _ => format!(
            "NOTE: the disabled patchable function is NOT the plain one plus one NOP: plain's \
             entry path is `{plain}` ({plain_len} bytes), the patchable one's `{patchable}` \
             ({patch_len} bytes), with {} static-branch site(s) in it",
            sites.len()
        ),
    };
    Ok(CodeCheck {
        one_nop_more,
        plain,
        patchable,
        finding,
    })
}

/// Whether the plain and patchable loops each call their function directly.
fn loops_call_directly() -> Result<bool> {
    let names = [
        (plain as *const () as usize, "plain"),
        (patchable as *const () as usize, "patchable"),
    ];
    let calls = |f: Loop, name: &str| -> Result<bool> {
        let code = describe_loop(f as usize, &names)?;
        Ok(code.split("; ").any(|insn| insn == format!("call {name}")))
    };
    Ok(calls(plain_loop, "plain")? && calls(patchable_loop, "patchable")?)
}

/// What the busy thread did while a measurement ran.
pub(crate) struct Busy {
    /// Passes it completed.
    pub(crate) passes: u64,
    /// Wrong results, over every pass.
    pub(crate) violations: u64,
}

/// Runs `body` while one busy thread, pinned to `placement`'s first busy CPU, runs `pass(0)`,
/// `pass(1)`, … (each returning how many of its results were wrong). `body` starts once the
/// thread has completed a pass; the thread is stopped and joined before this returns.
pub(crate) fn with_busy_thread<T>(
    placement: &Placement,
    pass: &(dyn Fn(u64) -> u64 + Sync),
    body: impl FnOnce() -> Result<T>,
) -> Result<(T, Busy)> {
    let stop = AtomicBool::new(false);
    let ready = AtomicBool::new(false);
    let work = |_: usize| {
        let mut busy = Busy {
            passes: 0,
            violations: 0,
        };
        loop {
            busy.violations += pass(busy.passes);
            busy.passes += 1;
            ready.store(true, Ordering::Release);
            if stop.load(Ordering::Relaxed) {
                return busy;
            }
        }
    };
    // A thread that could not be pinned must not leave `body` waiting.
    let unpinned = |_: usize| ready.store(true, Ordering::Release);
    let (value, mut threads) =
        toggle::with_threads(1, Some(placement), &stop, &work, &unpinned, || {
            while !ready.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
            body()
        })?;
    let busy = threads
        .pop()
        .ok_or_else(|| BenchError::new("the busy thread returned nothing"))?;
    Ok((value, busy))
}

/// Timed rounds of an "on" batch and an "off" one.
pub(crate) struct Pairs {
    pub(crate) on_us: Vec<f64>,
    pub(crate) off_us: Vec<f64>,
    pub(crate) on_stats: Vec<PatchStats>,
}

/// Runs `samples` rounds of `on` then `off`, timing each on its own, and `check(state)` after
/// each (outside the timer).
pub(crate) fn time_pairs(
    samples: usize,
    on: impl Fn() -> textpoke::Result<PatchStats>,
    off: impl Fn() -> textpoke::Result<PatchStats>,
    check: impl Fn(bool, u64) -> Result<()>,
) -> Result<Pairs> {
    let mut pairs = Pairs {
        on_us: Vec::with_capacity(samples),
        off_us: Vec::with_capacity(samples),
        on_stats: Vec::with_capacity(samples),
    };
    for i in 0..samples as u64 {
        let mut on_stats = None;
        pairs.on_us.push(stats::time_us(|| {
            on_stats = Some(on()?);
            Ok(())
        })?);
        pairs.on_stats.extend(on_stats);
        check(true, i)?;
        pairs.off_us.push(stats::time_us(|| Ok(off().map(drop)?))?);
        check(false, i)?;
    }
    Ok(pairs)
}

/// Tracing the 1,000 functions of [`many`].
struct Many {
    functions: usize,
    pairs: Pairs,
    busy: Busy,
    hook_calls: u64,
}

fn measure_many(samples: usize, placement: &Placement) -> Result<Many> {
    let tracer = Tracer::new(MANY_GLOB, |_: &Entry| {
        MANY_HITS.fetch_add(1, Ordering::Relaxed);
    })?;
    let functions = tracer.functions().len();
    if functions != many::ALL.len() {
        return Err(BenchError::new(format!(
            "the tracer of {MANY_GLOB} matched {functions} functions, not {}",
            many::ALL.len()
        )));
    }
    // Untimed warm-up: the first batch faults in the written code pages' copies.
    tracer.enable()?;
    tracer.disable()?;
    let before = MANY_HITS.load(Ordering::Relaxed);
    let pass = |x: u64| {
        let mut wrong = 0;
        for (n, f) in many::ALL.iter().enumerate() {
            if f(black_box(x)) != mix(x, n as u64) {
                wrong += 1;
            }
        }
        wrong
    };
    let check = |on: bool, _: u64| {
        let sites_ok = tracer.is_enabled() == on;
        sites_ok.then_some(()).ok_or_else(|| {
            BenchError::new(format!(
                "the 1,000-function tracer is not {on} after its batch"
            ))
        })
    };
    let (pairs, busy) = with_busy_thread(placement, &pass, || {
        time_pairs(samples, || tracer.enable(), || tracer.disable(), check)
    })?;
    if let Some(s) = pairs.on_stats.iter().find(|s| s.sites != functions) {
        return Err(BenchError::new(format!(
            "enabling the 1,000-function tracer patched {} sites",
            s.sites
        )));
    }
    Ok(Many {
        functions,
        pairs,
        busy,
        hook_calls: MANY_HITS.load(Ordering::Relaxed) - before,
    })
}

/// Replacing [`replaced`] by [`replacement`].
struct Replace {
    pairs: Pairs,
    busy: Busy,
    new_calls: u64,
}

fn measure_replace(samples: usize, placement: &Placement) -> Result<Replace> {
    let r = functions::replacement!(replaced, replacement)?;
    // Untimed warm-up, as for the tracer.
    r.enable()?;
    r.disable()?;
    let new_calls = AtomicU64::new(0);
    let pass = |x: u64| {
        let got = replaced(black_box(x));
        if got == mix(x, 13) {
            new_calls.fetch_add(1, Ordering::Relaxed);
        }
        u64::from(got != mix(x, 7) && got != mix(x, 13))
    };
    let check = |on: bool, i: u64| {
        let (got, want) = (replaced(black_box(i)), mix(i, if on { 13 } else { 7 }));
        (got == want).then_some(()).ok_or_else(|| {
            BenchError::new(format!(
                "with the replacement {}, replaced({i}) returned {got:#x}, expected {want:#x}",
                if on { "enabled" } else { "disabled" }
            ))
        })
    };
    let (pairs, busy) = with_busy_thread(placement, &pass, || {
        time_pairs(samples, || r.enable(), || r.disable(), check)
    })?;
    Ok(Replace {
        pairs,
        busy,
        new_calls: new_calls.into_inner(),
    })
}

/// Measures everything, in one run (see the module docs).
pub fn measure(args: &FunctionsArgs) -> Result<FunctionsRow> {
    if args.iters == 0 || args.reps == 0 || args.samples == 0 {
        return Err(BenchError::new(
            "--iters, --reps and --samples must be at least 1",
        ));
    }
    install_subscriber()?;
    let (_restore, placement) = toggle::place(false)?;
    let placement =
        placement.ok_or_else(|| BenchError::new("no thread placement (pinning is on)"))?;

    let disabled = functions::list(path_of!("patchable"))?;
    let patchable_sites = match disabled.as_slice() {
        [f] if f.tracers == 0 && !f.replaced => f.sites,
        _ => {
            return Err(BenchError::new(format!(
                "{} is not one untraced, unreplaced patchable function: {disabled:?}",
                path_of!("patchable")
            )));
        }
    };
    let code = check_code()?;
    let loops_call_directly = loops_call_directly()?;

    let tracer = Tracer::new(path_of!("traced"), |_: &Entry| {
        TRACED_HITS.fetch_add(1, Ordering::Relaxed);
    })?;
    if tracer.functions() != [path_of!("traced")] {
        return Err(BenchError::new(format!(
            "the tracer of {} matched {:?}",
            path_of!("traced"),
            tracer.functions()
        )));
    }
    tracer.enable()?;
    let counts = || [&TRACED_HITS, &SPANS, &ENTERS].map(|c| c.load(Ordering::Relaxed));
    let before = counts();
    let [
        plain_ns,
        patchable_ns,
        traced_ns,
        instrument_ns,
        filtered_ns,
    ] = dispatch::measure(&LOOPS, args.iters, args.reps)?;
    let after = counts();
    drop(tracer);
    let [hooks, spans, enters] = [0, 1, 2].map(|k| after[k] - before[k]);
    if hooks != spans || spans != enters || hooks < args.iters * args.reps as u64 {
        return Err(BenchError::new(format!(
            "the loops made {}×{} calls each, but the traced function's hook ran {hooks} times, \
             and the subscriber made {spans} spans and entered {enters}",
            args.reps, args.iters
        )));
    }

    let many = measure_many(args.samples, &placement)?;
    if many.busy.violations != 0 {
        return Err(BenchError::new(format!(
            "{} results of the thread calling the 1,000 functions were wrong",
            many.busy.violations
        )));
    }
    let replace = measure_replace(args.samples, &placement)?;
    if replace.busy.violations != 0 {
        return Err(BenchError::new(format!(
            "{} results of the thread calling the replaced function came from neither function",
            replace.busy.violations
        )));
    }
    let median_of =
        |s: &[PatchStats], f: fn(&PatchStats) -> usize| stats::median_usize(s.iter().map(f));
    let note = note(args, &placement, &code.finding);
    Ok(FunctionsRow {
        plain_ns,
        patchable_disabled_ns: patchable_ns,
        patchable_vs_plain: patchable_ns / plain_ns,
        traced_ns,
        tracing_instrument_ns: instrument_ns,
        tracing_disabled_ns: filtered_ns,
        traced_vs_tracing: traced_ns / instrument_ns,
        traced_hook_calls: hooks,
        tracing_spans: spans,
        patchable_sites,
        one_nop_more: code.one_nop_more,
        plain_code: code.plain,
        patchable_code: code.patchable,
        loops_call_directly,
        enable_1000_us: stats::median(&many.pairs.on_us),
        enable_1000_us_p90: stats::percentile(&many.pairs.on_us, 0.9),
        disable_1000_us: stats::median(&many.pairs.off_us),
        enable_1000_syncs: median_of(&many.pairs.on_stats, |s| s.syncs),
        enable_1000_sites: median_of(&many.pairs.on_stats, |s| s.sites),
        enable_1000_writes: median_of(&many.pairs.on_stats, |s| s.writes),
        enable_1000_functions: many.functions,
        enable_1000_samples: many.pairs.on_us.len(),
        enable_1000_busy_calls: many.busy.passes * many::ALL.len() as u64,
        enable_1000_violations: many.busy.violations,
        enable_1000_hook_calls: many.hook_calls,
        replace_us: stats::median(&replace.pairs.on_us),
        revert_us: stats::median(&replace.pairs.off_us),
        replace_syncs: median_of(&replace.pairs.on_stats, |s| s.syncs),
        replace_samples: replace.pairs.on_us.len(),
        replace_busy_calls: replace.busy.passes,
        replace_busy_new_calls: replace.new_calls,
        replace_violations: replace.busy.violations,
        iters: args.iters,
        reps: args.reps,
        note,
    })
}

fn note(args: &FunctionsArgs, placement: &Placement, finding: &str) -> String {
    let mut note = format!(
        "calls: median of {reps} interleaved repetitions of {iters} calls per loop, each loop \
         64-byte aligned, calling an #[inline(never)] fn(x) = x*31 ^ 7 on the counter through \
         black_box and checking the XOR of the results; plain: not patchable; patchable: \
         #[textpoke::patchable], nothing enabled; traced: a patchable twin with one tracer whose \
         entry hook does a Relaxed fetch_add; tracing instrument: the plain function under \
         #[tracing::instrument] (defaults: an INFO span recording x) with a global subscriber of \
         the benchmark's own that accepts its callsite (Interest::always) and counts new_span \
         and enter; tracing disabled: the same under another name, its callsite rejected by \
         that subscriber (Interest::never); code: {finding}; enable_1000: {samples} timed \
         Tracer::enable and as many Tracer::disable batches of one tracer matching the 1,000 \
         patchable functions {MANY_GLOB}, in turn, while one busy thread calls all 1,000 \
         through a table of fn pointers and checks every result; replace: {samples} timed \
         Replacement::enable and as many disable batches, in turn, replacing x*31 ^ 7 by \
         x*31 ^ 13 while one busy thread calls it and checks that every result is one of the \
         two, and the patching thread checks its own next call after each; {}",
        placement.describe(1),
        reps = args.reps,
        iters = args.iters,
        samples = args.samples,
    );
    crate::mark_debug_build(&mut note);
    note
}

/// Prints the results as a table on stdout.
pub fn print_table(r: &FunctionsRow) -> Result<()> {
    let rows = [
        ("plain call (ns)", r.plain_ns),
        ("patchable, disabled (ns)", r.patchable_disabled_ns),
        ("patchable / plain", r.patchable_vs_plain),
        ("traced, 1 entry hook (ns)", r.traced_ns),
        ("tracing::instrument (ns)", r.tracing_instrument_ns),
        ("tracing, filtered out (ns)", r.tracing_disabled_ns),
        ("traced / tracing::instrument", r.traced_vs_tracing),
        ("enable 1,000 functions (µs)", r.enable_1000_us),
        ("enable 1,000, p90 (µs)", r.enable_1000_us_p90),
        ("disable 1,000 functions (µs)", r.disable_1000_us),
        ("enable 1,000: syncs", r.enable_1000_syncs as f64),
        ("enable 1,000: sites", r.enable_1000_sites as f64),
        ("enable 1,000: busy calls", r.enable_1000_busy_calls as f64),
        ("replace (µs)", r.replace_us),
        ("revert (µs)", r.revert_us),
        ("replace: busy calls", r.replace_busy_calls as f64),
        ("replace: violations", r.replace_violations as f64),
    ];
    crate::print_rows(("what", "value"), &rows, &r.note)?;
    crate::print_line(&format!("plain code: {}", r.plain_code))?;
    crate::print_line(&format!("patchable code: {}", r.patchable_code))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_and_print(args: &FunctionsArgs) -> Result<(FunctionsRow, serde_json::Value)> {
        let _serial = crate::tests::serial();
        let row = measure(args)?;
        let line = serde_json::to_string(&row)?;
        println!("{line}");
        Ok((row, serde_json::from_str(&line)?))
    }

    #[test]
    fn tiny_functions_run_gives_a_complete_json_object() -> Result<()> {
        let (row, v) = run_and_print(&FunctionsArgs {
            iters: 1000,
            reps: 3,
            samples: 3,
        })?;
        let num = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_f64)
                .unwrap_or_else(|| panic!("{k} missing or not a number in {v}"))
        };
        for k in [
            "plain_ns",
            "patchable_disabled_ns",
            "patchable_vs_plain",
            "traced_ns",
            "tracing_instrument_ns",
            "tracing_disabled_ns",
            "traced_vs_tracing",
            "traced_hook_calls",
            "tracing_spans",
            "patchable_sites",
            "enable_1000_us",
            "enable_1000_us_p90",
            "disable_1000_us",
            "enable_1000_syncs",
            "enable_1000_sites",
            "enable_1000_writes",
            "enable_1000_functions",
            "enable_1000_samples",
            "enable_1000_busy_calls",
            "replace_us",
            "revert_us",
            "replace_syncs",
            "replace_samples",
            "replace_busy_calls",
            "iters",
            "reps",
        ] {
            assert!(num(k) > 0.0 && num(k).is_finite(), "{k} in {v}");
        }
        for k in [
            "enable_1000_hook_calls",
            "replace_busy_new_calls",
            "enable_1000_violations",
            "replace_violations",
        ] {
            assert!(num(k) >= 0.0, "{k} in {v}");
        }
        assert_eq!(num("enable_1000_violations"), 0.0);
        assert_eq!(num("replace_violations"), 0.0);
        // Warm-up calls included: at least the timed ones.
        assert!(row.traced_hook_calls >= 3 * 1000, "{v}");
        assert_eq!(row.tracing_spans, row.traced_hook_calls);
        assert_eq!(row.patchable_sites, 1);
        assert_eq!(row.enable_1000_functions, 1000);
        assert_eq!(row.enable_1000_sites, 1000);
        assert_eq!((row.enable_1000_samples, row.replace_samples), (3, 3));
        assert!(row.enable_1000_syncs >= 1 && row.replace_syncs >= 1, "{v}");
        assert!(row.note.contains("enable_1000"));
        print_table(&row)?;
        assert!(row.loops_call_directly, "{v}");
        assert!(row.plain_code.ends_with("ret"), "{v}");
        assert!(row.patchable_code.contains("nop"), "{v}");
        if !cfg!(debug_assertions) {
            assert!(row.one_nop_more, "{v}");
        }
        // The run leaves everything as it found it.
        assert!(
            functions::list(path_of!("*"))?
                .iter()
                .all(|f| f.tracers == 0 && !f.replaced)
        );
        assert_eq!(replaced(3), mix(3, 7));
        Ok(())
    }
}
