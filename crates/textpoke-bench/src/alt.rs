//! `alt`: what applying alternatives costs, and what a call through a function-level
//! alternative costs once applied.
//!
//! Apply: this program holds exactly 1,000 instruction-level alternative sites, the
//! monomorphizations `alt_site::<N>` (`default: mov n, 1`, `"sse2" => mov n, 2`; each stores its
//! own `N` through `black_box`, so LLVM's MergeFunctions cannot fold them into one).
//! [`textpoke::alternatives::apply`] runs once per process, so each sample is taken in a forked
//! child: the child times `apply()` and writes the µs to a pipe; the parent, which has not applied
//! (its children would inherit an applied program), reads it and reaps the child. One more child
//! first checks that every site returns 1 before `apply()` and 2 after it.
//!
//! Dispatch, measured afterwards in the parent once it has applied too: five loops, each 64-byte
//! aligned, call a function doing `x*31 ^ 7` on the loop counter passed through `black_box`,
//! XOR-ing the results into a checksum every loop must agree on:
//!
//! - direct: a plain `call work`;
//! - textpoke alternative: `ALT.call(x)`, a `multiversion!` static call that `apply()` bound to
//!   [`work_a`] (`"sse2"`) rather than its default [`work_b`] (`x*31 ^ 5`);
//! - direct C: a plain `call work_c`, the C-ABI twin;
//! - textpoke inline alternative: `ALTI.call(x)`, the inline C-ABI form, bound to [`work_c_a`];
//! - multiversion: [`mv_work`], a `#[multiversion(targets(...))]` function from the
//!   `multiversion` crate, with the same body.
//!
//! The loops run `reps` times each, interleaved in a rotating order; the median ns per call of
//! each is reported, beside what each loop's machine code calls (read back from this process).

use std::fs::File;
use std::hint::black_box;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Instant;

use serde::Serialize;

use crate::branch::dispatch_loop;
use crate::call::describe_loop;
use crate::dispatch::{self, Loop, mix};
use crate::{BenchError, Result, stats};

/// Number of instruction-level alternative sites whose apply is timed.
pub const ALT_SITES_COUNT: usize = 1000;

/// The target: `textpoke_alt_ns <= TARGET * direct_ns`.
const TARGET: f64 = 1.15;

/// One instruction-level alternative site: returns 1 until `apply()`, then 2 (SSE2 is part of
/// x86-64, so it is chosen unless `TEXTPOKE_NO_FEATURES` masks it).
#[inline(never)]
fn alt_site<const N: usize>() -> u64 {
    // Makes every instance distinct, so none is merged with another.
    black_box(N);
    let n: u64;
    // SAFETY: both sequences only write the output register `n`; no memory, stack or other
    // register is touched.
    unsafe {
        textpoke::alternative!(
            default: ["mov {n}, 1"],
            "sse2" => ["mov {n}, 2"];
            n = out(reg) n,
            options(nomem, nostack),
        );
    }
    n
}

seq_macro::seq!(N in 0..1000 {
    /// Every instruction-level alternative site of this program.
    static ALT_SITES: [fn() -> u64; ALT_SITES_COUNT] = [#(alt_site::<N>,)*];
});

textpoke::multiversion! {
    /// The measured function-level alternative (Rust ABI): bound by `apply()` to [`work_a`].
    static ALT: fn(u64) -> u64 = {
        "sse2" => work_a,
        _ => work_b,
    };
    /// The measured function-level alternative with inline C-ABI call sites: bound by
    /// `apply()` to [`work_c_a`].
    inline static ALTI: extern "C" fn(u64) -> u64 = {
        "sse2" => work_c_a,
        _ => work_c_b,
    };
}

/// Keeps functions with the same work apart: an empty `asm!` whose template is only a comment
/// naming the function. LLVM's MergeFunctions compares inline assembly text, so functions with
/// different tags are never folded into one address; no instruction is emitted.
macro_rules! distinct {
    ($tag:literal) => {
        // SAFETY: the template is a comment: no instruction is emitted, and no register,
        // memory, stack or flag is touched.
        unsafe {
            std::arch::asm!(
                concat!("/* ", $tag, " */"),
                options(nomem, nostack, preserves_flags)
            )
        }
    };
}

/// The function the direct loop calls.
#[inline(never)]
fn work(x: u64) -> u64 {
    mix(x, 7)
}

/// `ALT`'s implementation for CPUs with SSE2 (all x86-64 CPUs): the same work as [`work`].
#[inline(never)]
fn work_a(x: u64) -> u64 {
    distinct!("work_a");
    mix(x, 7)
}

/// `ALT`'s default: a different constant, so that a checksum tells the two apart.
#[inline(never)]
fn work_b(x: u64) -> u64 {
    distinct!("work_b");
    mix(x, 5)
}

/// The function the direct C loop calls: the same work as [`work`].
#[inline(never)]
extern "C" fn work_c(x: u64) -> u64 {
    distinct!("work_c");
    mix(x, 7)
}

/// `ALTI`'s implementation for CPUs with SSE2: the same work as [`work_c`].
#[inline(never)]
extern "C" fn work_c_a(x: u64) -> u64 {
    distinct!("work_c_a");
    mix(x, 7)
}

/// `ALTI`'s default: a different constant.
#[inline(never)]
extern "C" fn work_c_b(x: u64) -> u64 {
    distinct!("work_c_b");
    mix(x, 5)
}

/// The `multiversion` crate's version of the same work: clones for AVX2 and SSE4.2 and a
/// generic one, chosen by the crate's own run-time dispatch.
#[multiversion::multiversion(targets("x86_64+avx2", "x86_64+sse4.2"))]
fn mv_work(x: u64) -> u64 {
    mix(x, 7)
}

/// Options of the `alt` subcommand.
#[derive(Clone, Debug, clap::Args)]
pub struct AltArgs {
    /// Forked children, each timing one `apply()` of the 1,000 sites; the median is reported.
    #[arg(long, default_value_t = 21)]
    pub samples: usize,
    /// Calls per repetition of each dispatch loop.
    #[arg(long, default_value_t = 20_000_000)]
    pub iters: u64,
    /// Repetitions of each dispatch loop; the median is reported.
    #[arg(long, default_value_t = 21)]
    pub reps: usize,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What each dispatch loop's machine code calls, read back from this process's own text.
#[derive(Clone, Debug, Serialize)]
pub struct AltLoopCode {
    /// The direct loop.
    pub direct: String,
    /// The textpoke function-level alternative loop.
    pub textpoke_alt: String,
    /// The direct C-ABI loop.
    pub direct_c: String,
    /// The textpoke inline (C-ABI) function-level alternative loop.
    pub textpoke_alt_inline: String,
    /// The `multiversion` crate's loop.
    pub multiversion: String,
}

/// The results.
#[derive(Clone, Debug, Serialize)]
pub struct AltRow {
    /// Median wall time of one `apply()` in a fresh (forked) process, in µs.
    pub apply_us: f64,
    /// Fastest of those, in µs.
    pub apply_us_min: f64,
    /// 90th percentile of those, in µs.
    pub apply_us_p90: f64,
    /// Timed `apply()` calls (one per forked child).
    pub apply_samples: usize,
    /// Median wall time of the first run of one site in a fresh (forked) process, which applies
    /// every alternative before running its default, in µs (as many samples as `apply_us`).
    pub first_use_us: f64,
    /// Sites whose bytes one `apply()` changed (`PatchStats::sites`): the alternative sites and
    /// the code of the two `multiversion!` static calls it binds.
    pub apply_sites: usize,
    /// `pwrite` calls one `apply()` made.
    pub apply_writes: usize,
    /// Core serializations one `apply()` made.
    pub apply_syncs: usize,
    /// Instruction-level alternative sites in this program's table (`alternatives::choices()`).
    pub apply_alt_sites_in_table: usize,
    /// `alt_site` functions checked to return 1 before `apply()` and 2 after it.
    pub apply_alt_sites_verified: usize,
    /// One sample, in the checking child: `alternatives::choices()` on a fresh process, which
    /// validates and indexes the table and chooses each site's code, in µs.
    pub check_index_us: f64,
    /// One sample, in the checking child: the `apply()` that followed, with the table already
    /// indexed, in µs.
    pub check_apply_after_index_us: f64,
    /// A direct call to `work`, ns per call.
    pub direct_ns: f64,
    /// `ALT.call(x)`, a `multiversion!` static call bound to `work_a`, ns per call.
    pub textpoke_alt_ns: f64,
    /// `textpoke_alt_ns / direct_ns`.
    pub textpoke_alt_vs_direct: f64,
    /// Whether `textpoke_alt_vs_direct <= 1.15`, the target.
    pub textpoke_alt_target_met: bool,
    /// A direct call to the C-ABI `work_c`, ns per call.
    pub direct_c_ns: f64,
    /// `ALTI.call(x)`, an inline C-ABI `multiversion!` static call bound to `work_c_a`, ns per
    /// call.
    pub textpoke_alt_inline_ns: f64,
    /// `textpoke_alt_inline_ns / direct_c_ns`.
    pub textpoke_alt_inline_vs_direct: f64,
    /// A call of the `multiversion` crate's `mv_work`, ns per call.
    pub multiversion_ns: f64,
    /// `multiversion_ns / direct_ns`.
    pub multiversion_vs_direct: f64,
    /// What each dispatch loop calls, read back from this process's machine code.
    pub loop_code: AltLoopCode,
    /// Calls per repetition of each dispatch loop.
    pub iters: u64,
    /// Repetitions of each dispatch loop.
    pub reps: usize,
    /// How it was measured.
    pub note: String,
}

dispatch_loop!(direct_loop, i => work(black_box(i)));

dispatch_loop!(textpoke_alt_loop, i => ALT.call(black_box(i)));

dispatch_loop!(direct_c_loop, i => work_c(black_box(i)));

dispatch_loop!(textpoke_alt_inline_loop, i => ALTI.call(black_box(i)));

dispatch_loop!(multiversion_loop, i => mv_work(black_box(i)));

/// The loops, in the order their results are reported.
const LOOPS: [(&str, Loop); 5] = [
    ("direct", direct_loop),
    ("textpoke alternative", textpoke_alt_loop),
    ("direct C", direct_c_loop),
    ("textpoke inline alternative", textpoke_alt_inline_loop),
    ("multiversion", multiversion_loop),
];

/// Runs `f` in a forked child and returns the text it produced, or its error.
///
/// The child runs `f`, writes its outcome to a pipe and ends with `_exit`, so it neither flushes
/// stdio buffers inherited from the parent nor runs exit handlers. `f` must only need what a
/// forked child of this program can rely on: the benchmark forks before starting any thread,
/// and the test that calls it holds the crate's test lock, so no other thread is inside
/// textpoke; glibc's `malloc` is fork-safe.
fn in_child(f: impl FnOnce() -> std::result::Result<String, String>) -> Result<String> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a writable array of two `c_int`, which is what `pipe2` fills in.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(BenchError::new(format!(
            "pipe2: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: `pipe2` succeeded, so both are fresh descriptors that nothing else owns.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the child runs only `f` (see this function's docs for what it may rely on), writes
    // to the pipe and calls `_exit`; it never returns into the caller.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(BenchError::new(format!(
            "fork: {}",
            std::io::Error::last_os_error()
        )));
    }
    if pid == 0 {
        drop(read_end);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .unwrap_or_else(|_| Err("the child panicked".into()));
        let msg = match outcome {
            Ok(text) => format!("ok {text}"),
            Err(e) => format!("err {e}"),
        };
        let status = match File::from(write_end).write_all(msg.as_bytes()) {
            Ok(()) => 0,
            Err(_) => 1,
        };
        // SAFETY: ends the child at once; nothing of the parent's is flushed or run twice.
        unsafe { libc::_exit(status) }
    }
    drop(write_end);
    let mut text = String::new();
    let read = File::from(read_end).read_to_string(&mut text);
    let mut status = 0;
    loop {
        // SAFETY: `pid` is our own child, not yet reaped; `status` is a writable `c_int`.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(BenchError::new(format!("waitpid: {e}")));
        }
    }
    read.map_err(|e| BenchError::new(format!("reading the child's pipe: {e}")))?;
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(BenchError::new(format!(
            "the forked child failed (wait status {status:#x}); it said: {text:?}"
        )));
    }
    if let Some(ok) = text.strip_prefix("ok ") {
        Ok(ok.to_string())
    } else {
        Err(BenchError::new(format!(
            "in the forked child: {}",
            text.strip_prefix("err ").unwrap_or(&text)
        )))
    }
}

/// What one `apply()` did.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Applied {
    sites: usize,
    writes: usize,
    syncs: usize,
}

impl From<textpoke::PatchStats> for Applied {
    fn from(s: textpoke::PatchStats) -> Self {
        Applied {
            sites: s.sites,
            writes: s.writes,
            syncs: s.syncs,
        }
    }
}

/// Parses whitespace-separated numbers written by a child.
fn numbers<const K: usize>(text: &str) -> Result<[f64; K]> {
    let v: Vec<f64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| BenchError::new(format!("bad reply {text:?} from a child: {e}")))?;
    v.try_into()
        .map_err(|_| BenchError::new(format!("bad reply {text:?} from a child")))
}

/// Checks every site and both function-level alternatives before and after `apply()`.
/// Returns the sites verified, the sites in the table, and what `apply()` did.
fn verify_in_child() -> std::result::Result<String, String> {
    let site_values = |want: u64, when: &str| {
        for (n, site) in ALT_SITES.iter().enumerate() {
            let got = site();
            if got != want {
                return Err(format!(
                    "alt_site::<{n}> returned {got} {when} apply, expected {want}"
                ));
            }
        }
        Ok(())
    };
    let calls = |k: u64, when: &str| {
        let (a, c) = (ALT.call(black_box(3)), ALTI.call(black_box(3)));
        if a == mix(3, k) && c == mix(3, k) {
            Ok(())
        } else {
            Err(format!(
                "{when} apply, ALT(3) = {a:#x} and ALTI(3) = {c:#x}, expected {:#x}",
                mix(3, k)
            ))
        }
    };
    if textpoke::alternatives::applied() {
        return Err("alternatives were already applied before the fork".into());
    }
    site_values(1, "before")?;
    calls(5, "before")?;
    let start = Instant::now();
    let in_table = textpoke::alternatives::choices()
        .map_err(|e| e.to_string())?
        .len();
    let index_us = start.elapsed().as_secs_f64() * 1e6;
    let start = Instant::now();
    let stats = textpoke::alternatives::apply().map_err(|e| e.to_string())?;
    let apply_us = start.elapsed().as_secs_f64() * 1e6;
    site_values(2, "after")?;
    calls(7, "after")?;
    Ok(format!(
        "{} {in_table} {} {} {} {index_us} {apply_us}",
        ALT_SITES.len(),
        stats.sites,
        stats.writes,
        stats.syncs
    ))
}

/// Times one `apply()`; returns µs and what it did.
fn time_apply_in_child() -> std::result::Result<String, String> {
    let start = Instant::now();
    let stats = textpoke::alternatives::apply().map_err(|e| e.to_string())?;
    let us = start.elapsed().as_secs_f64() * 1e6;
    Ok(format!(
        "{us} {} {} {}",
        stats.sites, stats.writes, stats.syncs
    ))
}

/// Times the first run of a site, which applies every alternative first; returns µs.
fn time_first_use_in_child() -> std::result::Result<String, String> {
    textpoke::alternatives::apply_on_first_use(true);
    let start = Instant::now();
    let first = black_box(ALT_SITES[0])();
    let us = start.elapsed().as_secs_f64() * 1e6;
    let next = ALT_SITES[1]();
    if let Some(e) = textpoke::alternatives::first_use_error() {
        return Err(format!("the first use failed to apply: {e}"));
    }
    if (first, next, textpoke::alternatives::applied()) != (1, 2, true) {
        return Err(format!(
            "first use: the first site returned {first} (expected the default, 1), the next \
             {next} (expected 2)"
        ));
    }
    Ok(format!("{us}"))
}

/// What each dispatch loop calls, from its machine code.
fn loop_code() -> Result<AltLoopCode> {
    let names = [
        (work as *const () as usize, "work"),
        (work_a as *const () as usize, "work_a"),
        (work_b as *const () as usize, "work_b"),
        (
            textpoke::__private::trampoline_of(&ALT)?,
            "ALT's trampoline",
        ),
        (work_c as *const () as usize, "work_c"),
        (work_c_a as *const () as usize, "work_c_a"),
        (work_c_b as *const () as usize, "work_c_b"),
        (
            textpoke::__private::trampoline_of(&ALTI)?,
            "ALTI's trampoline",
        ),
        (mv_work as *const () as usize, "mv_work"),
    ];
    let describe = |f: Loop| describe_loop(f as usize, &names);
    Ok(AltLoopCode {
        direct: describe(direct_loop)?,
        textpoke_alt: describe(textpoke_alt_loop)?,
        direct_c: describe(direct_c_loop)?,
        textpoke_alt_inline: describe(textpoke_alt_inline_loop)?,
        multiversion: describe(multiversion_loop)?,
    })
}

/// Runs the benchmark.
pub fn run(args: &AltArgs) -> Result<AltRow> {
    if args.samples == 0 || args.reps == 0 || args.iters == 0 {
        return Err(BenchError::new(
            "--samples, --reps and --iters must be positive",
        ));
    }
    if textpoke::alternatives::applied() {
        return Err(BenchError::new(
            "alternatives are already applied in this process: apply cannot be timed",
        ));
    }
    // Children time `apply()` from an unapplied state: no site may apply it first.
    textpoke::alternatives::apply_on_first_use(false);
    let workers = [
        work as *const () as usize,
        work_a as *const () as usize,
        work_c as *const () as usize,
        work_c_a as *const () as usize,
    ];
    if (1..workers.len()).any(|i| workers[..i].contains(&workers[i])) {
        return Err(BenchError::new(
            "work, work_a, work_c and work_c_a are not four distinct functions (merged by the \
             compiler)",
        ));
    }

    // Verification, then the timed samples, each in a child: this process must not apply yet.
    let [
        verified,
        in_table,
        sites,
        writes,
        syncs,
        index_us,
        after_index_us,
    ] = numbers::<7>(&in_child(verify_in_child)?)?;
    let first = Applied {
        sites: sites as usize,
        writes: writes as usize,
        syncs: syncs as usize,
    };
    let mut apply_us = Vec::with_capacity(args.samples);
    for _ in 0..args.samples {
        let [us, sites, writes, syncs] = numbers::<4>(&in_child(time_apply_in_child)?)?;
        let got = Applied {
            sites: sites as usize,
            writes: writes as usize,
            syncs: syncs as usize,
        };
        if got != first {
            return Err(BenchError::new(format!(
                "one apply() did {got:?}, another {first:?}"
            )));
        }
        apply_us.push(us);
    }
    let mut first_use_us = Vec::with_capacity(args.samples);
    for _ in 0..args.samples {
        let [us] = numbers::<1>(&in_child(time_first_use_in_child)?)?;
        first_use_us.push(us);
    }

    // Now this process applies, and the dispatch loops run bound.
    let here = Applied::from(textpoke::alternatives::apply()?);
    if here != first {
        return Err(BenchError::new(format!(
            "apply() in this process did {here:?}, in a child {first:?}"
        )));
    }
    let [direct, alt, direct_c, alt_inline, mv] = dispatch::measure(&LOOPS, args.iters, args.reps)?;
    let loop_code = loop_code()?;
    let note = note(args, &loop_code, first);
    Ok(AltRow {
        apply_us: stats::median(&apply_us),
        apply_us_min: stats::percentile(&apply_us, 0.0),
        apply_us_p90: stats::percentile(&apply_us, 0.9),
        apply_samples: apply_us.len(),
        first_use_us: stats::median(&first_use_us),
        apply_sites: first.sites,
        apply_writes: first.writes,
        apply_syncs: first.syncs,
        apply_alt_sites_in_table: in_table as usize,
        apply_alt_sites_verified: verified as usize,
        check_index_us: index_us,
        check_apply_after_index_us: after_index_us,
        direct_ns: direct,
        textpoke_alt_ns: alt,
        textpoke_alt_vs_direct: alt / direct,
        textpoke_alt_target_met: alt / direct <= TARGET,
        direct_c_ns: direct_c,
        textpoke_alt_inline_ns: alt_inline,
        textpoke_alt_inline_vs_direct: alt_inline / direct_c,
        multiversion_ns: mv,
        multiversion_vs_direct: mv / direct,
        loop_code,
        iters: args.iters,
        reps: args.reps,
        note,
    })
}

fn note(args: &AltArgs, code: &AltLoopCode, applied: Applied) -> String {
    let mv_indirect = code.multiversion.contains("call qword ptr")
        || code
            .multiversion
            .split("; ")
            .any(|insn| insn.starts_with("call r"));
    let mut note = format!(
        "apply: median of {samples} forked children, each timing one \
         textpoke::alternatives::apply() from a fresh (unapplied) state; this program has \
         {ALT_SITES_COUNT} alternative! sites (alt_site::<N>, default `mov n, 1`, sse2 `mov n, \
         2`), written in one batch, and apply then binds the 2 multiversion! static calls in a \
         second batch ({sites} sites changed, {writes} pwrites, {syncs} core syncs in all); the \
         time includes first-use work a fresh process pays: validating and indexing the table \
         (check_index_us: one sample of alternatives::choices() alone, in the checking child), \
         lazy initialization and fresh heap pages (page faults), membarrier registration (per address space, so again in each child), and copy-on-write \
         of the text pages written; one extra child checked every site returns 1 before and 2 \
         after apply, and ALT/ALTI before and after binding; the parent applied only after the \
         samples, and turned first-use application off so that no site applied before the \
         timed apply(). first_use_us: the same number of children, each timing the first run \
         of alt_site::<0> with first-use application on (the stub saves every register, \
         apply() runs, then the default). dispatch: median of {reps} interleaved repetitions of {iters} calls per loop, \
         each loop 64-byte aligned, calling x*31 ^ 7 on the counter through black_box and \
         XOR-ing a checksum checked against the expected one; direct: call work; \
         textpoke_alt: ALT.call(x), multiversion! (Rust ABI) bound by apply to work_a: a call \
         to ALT's trampoline, whose jmp rel32 goes to work_a; direct C: call work_c (extern \
         \"C\"); textpoke_alt_inline: ALTI.call(x), the inline C-ABI multiversion! form, whose \
         call in the loop is aimed by apply straight at work_c_a; multiversion: mv_work, \
         #[multiversion(targets(\"x86_64+avx2\", \"x86_64+sse4.2\"))] from the multiversion \
         crate 0.9.2",
        samples = args.samples,
        reps = args.reps,
        iters = args.iters,
        sites = applied.sites,
        writes = applied.writes,
        syncs = applied.syncs,
    );
    if mv_indirect {
        note.push_str(
            ", whose loop (see loop_code.multiversion) loads the chosen clone's address from \
             the crate's static (mv_work::__DISPATCHED_FN, a Relaxed atomic load) on every call \
             and calls it indirectly (objdump of the release build: mov rax,[rip+__DISPATCHED_FN]; \
             call rax, inside the loop)",
        );
    } else {
        note.push_str(
            ", whose loop has no indirect call (see loop_code.multiversion): the crate \
             dispatched statically or inside a called wrapper",
        );
    }
    if !code.textpoke_alt.contains("call ALT's trampoline") {
        note.push_str(
            "; NOTE: the textpoke_alt loop does NOT call ALT's trampoline with a call rel32: it \
             loads the trampoline's address from a pointer slot (the GOT, see \
             loop_code.textpoke_alt) once, before the loop, and calls it indirectly through a \
             register; the trampoline's jmp rel32 then reaches work_a (the same code as the \
             static-call loop of `call`: rustc reaches the trampoline, declared in an extern \
             block, through the GOT in a PIE)",
        );
    }
    note.push_str(
        "; work_a, work_c, work_c_a (and the defaults) each hold an empty asm! comment naming \
         them, so that LLVM does not merge them with work",
    );
    crate::mark_debug_build(&mut note);
    note
}

/// Prints the results as a table on stdout.
pub fn print_table(r: &AltRow) -> Result<()> {
    let rows = [
        ("apply 1,000 alternatives (µs)", r.apply_us),
        ("apply, fastest (µs)", r.apply_us_min),
        ("apply, p90 (µs)", r.apply_us_p90),
        ("apply samples", r.apply_samples as f64),
        ("first run of a site, applying (µs)", r.first_use_us),
        ("sites changed by apply", r.apply_sites as f64),
        ("pwrites by apply", r.apply_writes as f64),
        ("core syncs by apply", r.apply_syncs as f64),
        (
            "alternative sites in table",
            r.apply_alt_sites_in_table as f64,
        ),
        (
            "alternative sites verified",
            r.apply_alt_sites_verified as f64,
        ),
        ("check: index + choose, 1 sample (µs)", r.check_index_us),
        (
            "check: apply after index (µs)",
            r.check_apply_after_index_us,
        ),
        ("direct call (ns)", r.direct_ns),
        ("textpoke alternative (ns)", r.textpoke_alt_ns),
        ("textpoke alternative / direct", r.textpoke_alt_vs_direct),
        ("direct C call (ns)", r.direct_c_ns),
        ("textpoke inline alternative (ns)", r.textpoke_alt_inline_ns),
        (
            "inline alternative / direct C",
            r.textpoke_alt_inline_vs_direct,
        ),
        ("multiversion crate (ns)", r.multiversion_ns),
        ("multiversion / direct", r.multiversion_vs_direct),
    ];
    crate::print_rows(("what", "value"), &rows, &r.note)?;
    crate::print_line(&format!(
        "target textpoke alternative <= {TARGET} x direct: {}",
        if r.textpoke_alt_target_met {
            "met"
        } else {
            "NOT met"
        }
    ))?;
    let code = &r.loop_code;
    for (name, text) in [
        ("direct", &code.direct),
        ("textpoke alternative", &code.textpoke_alt),
        ("direct C", &code.direct_c),
        ("textpoke inline alternative", &code.textpoke_alt_inline),
        ("multiversion", &code.multiversion),
    ] {
        crate::print_line(&format!("code of the {name} loop: {text}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_alt_run_gives_a_complete_json_object() -> Result<()> {
        let _serial = crate::tests::serial();
        let row = run(&AltArgs {
            samples: 3,
            iters: 1000,
            reps: 3,
            json: true,
        })?;
        let line = serde_json::to_string(&row)?;
        let v: serde_json::Value = serde_json::from_str(&line)?;
        for k in [
            "apply_us",
            "apply_us_min",
            "apply_us_p90",
            "apply_samples",
            "apply_sites",
            "apply_writes",
            "apply_syncs",
            "apply_alt_sites_in_table",
            "apply_alt_sites_verified",
            "check_index_us",
            "check_apply_after_index_us",
            "direct_ns",
            "textpoke_alt_ns",
            "textpoke_alt_vs_direct",
            "direct_c_ns",
            "textpoke_alt_inline_ns",
            "textpoke_alt_inline_vs_direct",
            "multiversion_ns",
            "multiversion_vs_direct",
            "iters",
            "reps",
        ] {
            let x = v
                .get(k)
                .and_then(serde_json::Value::as_f64)
                .unwrap_or_else(|| panic!("{k} missing or not a number in {line}"));
            assert!(x.is_finite() && x > 0.0, "{k} in {line}");
        }
        assert_eq!(v["apply_samples"].as_u64(), Some(3));
        assert_eq!(
            v["apply_alt_sites_verified"].as_u64(),
            Some(ALT_SITES_COUNT as u64)
        );
        assert_eq!(
            v["apply_alt_sites_in_table"].as_u64(),
            Some(ALT_SITES_COUNT as u64)
        );
        assert!(v["apply_sites"].as_u64() >= Some(ALT_SITES_COUNT as u64));
        assert!(v["textpoke_alt_target_met"].is_boolean());
        assert!(v["note"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(textpoke::alternatives::applied());
        assert_eq!(ALT_SITES[0](), 2);
        Ok(())
    }
}
