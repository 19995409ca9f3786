//! Immediate values (part of `functions`): a read of a textpoke [`Immediate`] against a
//! `Relaxed` load of an `AtomicU32`, warm and with the variable's cache line evicted, and the
//! time of one `set` of an immediate with 1,000 read sites while a busy thread reads them.
//!
//! Every read loop is a [`dispatch_loop!`]: per iteration it XORs `mix(i, v)` into a checksum,
//! `v` being the value read (7), so a loop that read anything else fails the run. The cold
//! loops evict a line with `clflush` and wait for it with `mfence` before each read: the
//! atomic's own line in the atomic loop (so its load goes to memory), a line nothing reads in
//! the immediate loop (the same instructions, and an immediate has no line to evict). The
//! atomic loops carry an empty `asm!` statement beside their load, so that LLVM compiles every
//! loop to the same shape (see [`atomic_read`]).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;
use textpoke::{Batch, Immediate, PatchStats, imm};

use crate::affinity::{self, CpuMask, Placement, RestoreAffinity};
use crate::branch::dispatch_loop;
use crate::dispatch::{self, Loop, mix};
use crate::{BenchError, Result, stats};

/// The immediate the read loops read; never changed.
static READ_IMM: Immediate<u32> = Immediate::new(7);

/// A cache line of its own holding `v`.
#[repr(align(64))]
struct Line<T>(T);

/// The atomic the read loops load. Stored to at run time (see [`run`]), so the compiler cannot
/// treat it as a constant.
static READ_ATOMIC: Line<AtomicU32> = Line(AtomicU32::new(7));
/// The line the immediate's cold loop evicts: nothing reads it.
static SPARE_LINE: Line<AtomicU32> = Line(AtomicU32::new(0));

/// Evicts the cache line at `p` and waits until it is gone.
#[inline(always)]
fn evict<T>(p: &T) {
    // SAFETY: `clflush` of a valid address (a live reference) and `mfence` have no effect on
    // memory contents; both are SSE2, which every x86-64 CPU has.
    unsafe {
        core::arch::x86_64::_mm_clflush((p as *const T).cast());
        core::arch::x86_64::_mm_mfence();
    }
}

/// A `Relaxed` load of the atomic, beside an empty `asm!` statement. LLVM does not unroll a
/// loop that holds an `asm!` statement, such as an `imm!` site, but unrolls the same loop with a
/// plain load four times; the empty statement (no instruction) gives both loops one shape, so
/// they differ only in the read.
#[inline(always)]
fn atomic_read() -> u64 {
    // SAFETY: an empty template: no instruction is emitted, and no register, memory, stack or
    // flag is touched.
    unsafe { core::arch::asm!("", options(nomem, nostack, preserves_flags)) };
    u64::from(READ_ATOMIC.0.load(Ordering::Relaxed))
}

dispatch_loop!(imm_loop, i => mix(i, u64::from(imm!(READ_IMM))));
dispatch_loop!(atomic_loop, i => mix(i, atomic_read()));
dispatch_loop!(imm_cold_loop, i => {
    evict(&SPARE_LINE);
    mix(i, u64::from(imm!(READ_IMM)))
});
dispatch_loop!(atomic_cold_loop, i => {
    evict(&READ_ATOMIC);
    mix(i, atomic_read())
});

const WARM: [(&str, Loop); 2] = [("imm", imm_loop), ("atomic", atomic_loop)];
const COLD: [(&str, Loop); 2] = [
    ("imm_cold", imm_cold_loop),
    ("atomic_cold", atomic_cold_loop),
];

/// The values the set measurement alternates between: every byte differs, so a torn read
/// would be neither.
const VALUES: [u32; 2] = [0x1111_1111, 0x2222_2222];

/// The immediate with [`SET_SITES`] read sites.
static SET_IMM: Immediate<u32> = Immediate::new(VALUES[0]);

/// Number of read sites of [`SET_IMM`].
pub const SET_SITE_COUNT: usize = 1000;

#[inline(never)]
fn set_site<const I: usize>() -> u32 {
    // Makes every instance distinct, so none is merged with another.
    black_box(I);
    imm!(SET_IMM)
}

seq_macro::seq!(I in 0..1000 {
    /// Every read site of [`SET_IMM`], each in a function of its own.
    static SET_SITES: [fn() -> u32; SET_SITE_COUNT] = [#(set_site::<I>,)*];
});

/// Options of the immediate-value part of the `functions` subcommand.
#[derive(Clone, Debug, clap::Args)]
pub struct ImmArgs {
    /// Iterations per repetition of each warm read loop (the cold loops run 1/100 as many).
    #[arg(long = "imm-iters", id = "imm_iters", default_value_t = 100_000_000)]
    pub iters: u64,
    /// Repetitions of each read loop; the median is reported.
    #[arg(long = "imm-reps", id = "imm_reps", default_value_t = 21)]
    pub reps: usize,
    /// Timed `set`s of the immediate with 1,000 sites; the median is reported.
    #[arg(long = "imm-samples", id = "imm_samples", default_value_t = 101)]
    pub samples: usize,
}

/// The results.
#[derive(Clone, Debug, Serialize)]
pub struct ImmRow {
    /// Read of an immediate (`mov reg, imm32`), ns per loop iteration.
    pub imm_read_ns: f64,
    /// `Relaxed` load of an `AtomicU32`, ns per loop iteration.
    pub atomic_read_ns: f64,
    /// Read of an immediate after a `clflush` and `mfence` of an unrelated line, ns per
    /// iteration.
    pub imm_cold_read_ns: f64,
    /// Load of the atomic after a `clflush` and `mfence` of its line, ns per iteration.
    pub atomic_cold_read_ns: f64,
    /// Median time of one `set` of an immediate with 1,000 read sites, busy thread reading.
    pub imm_set_us: f64,
    /// 90th percentile of the same.
    pub imm_set_us_p90: f64,
    /// Read sites rewritten by each `set`.
    pub imm_set_sites: usize,
    /// `pwrite`s of the last `set`.
    pub imm_set_writes: usize,
    /// Core syncs of the last `set`.
    pub imm_set_syncs: usize,
    /// Reads the busy thread made (and checked) while the `set`s ran.
    pub imm_busy_reads: u64,
    /// Iterations per repetition of the warm loops.
    pub imm_iters: u64,
    /// Repetitions of each loop.
    pub imm_reps: usize,
    /// How it was measured.
    pub imm_note: String,
}

/// Measures everything; the calling thread is pinned to one CPU meanwhile.
pub fn run(args: &ImmArgs) -> Result<ImmRow> {
    if args.iters == 0 || args.reps == 0 || args.samples == 0 {
        return Err(BenchError::new(
            "--imm-iters, --imm-reps and --imm-samples must be at least 1",
        ));
    }
    READ_ATOMIC.0.store(black_box(7), Ordering::Relaxed);
    let saved = affinity::current()?;
    let _restore = RestoreAffinity(saved);
    let placement = Placement::over(&saved.cpus())?;
    CpuMask::only(placement.main).apply()?;
    let [imm_read, atomic_read] = dispatch::measure(&WARM, args.iters, args.reps)?;
    let cold_iters = (args.iters / 100).max(1);
    let [imm_cold, atomic_cold] = dispatch::measure(&COLD, cold_iters, args.reps)?;
    let busy_cpu = placement.busy_cpu(0);
    let (times, busy_reads, stats) = measure_sets(args.samples, busy_cpu)?;
    let mut note = format!(
        "reads: median of {reps} interleaved repetitions of {iters} iterations ({cold_iters} for \
         the cold loops), each XOR-ing mix(i, value read) into a checksum checked against the \
         expected one; imm: imm!(an Immediate<u32>), a `mov reg, imm32`; atomic: a Relaxed load \
         of an AtomicU32 on a line of its own (stored to at run time); cold: clflush + mfence \
         before each read, of the atomic's line in the atomic loop and of an unread line in the \
         imm loop; set: median of {samples} Immediate::set calls alternating 0x11111111 and \
         0x22222222 on one immediate with {SET_SITE_COUNT} read sites (each in a function of \
         its own), while a busy thread pinned to CPU {busy_cpu} calls every site in turn and \
         checks every value; {}",
        placement.describe(1),
        reps = args.reps,
        iters = args.iters,
        samples = args.samples,
    );
    crate::mark_debug_build(&mut note);
    Ok(ImmRow {
        imm_read_ns: imm_read,
        atomic_read_ns: atomic_read,
        imm_cold_read_ns: imm_cold,
        atomic_cold_read_ns: atomic_cold,
        imm_set_us: stats::median(&times),
        imm_set_us_p90: stats::percentile(&times, 0.9),
        imm_set_sites: stats.sites,
        imm_set_writes: stats.writes,
        imm_set_syncs: stats.syncs,
        imm_busy_reads: busy_reads,
        imm_iters: args.iters,
        imm_reps: args.reps,
        imm_note: note,
    })
}

/// Times `samples` `set`s of [`SET_IMM`] while a thread pinned to `busy_cpu` reads every
/// site; returns the times in µs, the reads the busy thread checked and the last set's cost.
/// Any read that is neither value, or a site that does not read the value just set, fails the
/// run.
fn measure_sets(samples: usize, busy_cpu: usize) -> Result<(Vec<f64>, u64, PatchStats)> {
    let sites = SET_IMM.sites()?.len();
    if sites != SET_SITE_COUNT {
        return Err(BenchError::new(format!(
            "the immediate has {sites} read sites, expected {SET_SITE_COUNT}"
        )));
    }
    // Untimed warm-up: the first set indexes the table and copies the sites' pages.
    for v in [VALUES[1], VALUES[0]] {
        SET_IMM.set(v)?;
    }
    let stop = AtomicBool::new(false);
    let reads = AtomicU64::new(0);
    std::thread::scope(|scope| {
        let reader = std::thread::Builder::new()
            .name("reader".into())
            .spawn_scoped(scope, || -> Result<u64> {
                CpuMask::only(busy_cpu).apply()?;
                let mut torn = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for site in &SET_SITES {
                        let v = site();
                        torn += u64::from(v != VALUES[0] && v != VALUES[1]);
                    }
                    reads.fetch_add(SET_SITE_COUNT as u64, Ordering::Relaxed);
                }
                Ok(torn)
            })
            .map_err(|e| BenchError::new(format!("cannot start the reading thread: {e}")))?;
        while reads.load(Ordering::Relaxed) == 0 && !reader.is_finished() {
            std::thread::yield_now();
        }
        let timed = || -> Result<(Vec<f64>, PatchStats)> {
            let mut times = Vec::with_capacity(samples);
            let mut stats = PatchStats::default();
            for i in 0..samples {
                let v = VALUES[(i + 1) % 2];
                let start = Instant::now();
                // What `SET_IMM.set(v)` does, keeping the batch's cost.
                stats = Batch::new().set(&SET_IMM, v).commit()?;
                times.push(start.elapsed().as_secs_f64() * 1e6);
                if let Some(bad) = SET_SITES.iter().position(|site| site() != v) {
                    return Err(BenchError::new(format!(
                        "after set {i} to {v:#x}, site {bad} read {:#x}",
                        SET_SITES[bad]()
                    )));
                }
            }
            Ok((times, stats))
        };
        let timed = timed();
        stop.store(true, Ordering::Relaxed);
        let torn = reader
            .join()
            .map_err(|_| BenchError::new("the reading thread panicked"))??;
        if torn > 0 {
            return Err(BenchError::new(format!(
                "the busy thread read {torn} values that were neither 0x11111111 nor 0x22222222"
            )));
        }
        let (times, stats) = timed?;
        Ok((times, reads.load(Ordering::Relaxed), stats))
    })
}

/// Prints the results as a table on stdout.
pub fn print_table(r: &ImmRow) -> Result<()> {
    let rows = [
        ("imm read (ns)", r.imm_read_ns),
        ("AtomicU32 read (ns)", r.atomic_read_ns),
        ("imm read, cold (ns)", r.imm_cold_read_ns),
        ("AtomicU32 read, cold (ns)", r.atomic_cold_read_ns),
        ("imm set, 1,000 sites (us)", r.imm_set_us),
    ];
    crate::print_rows(("what", "median"), &rows, &r.imm_note)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_imm_run_gives_a_complete_json_object() -> Result<()> {
        let _serial = crate::tests::serial();
        let row = run(&ImmArgs {
            iters: 1000,
            reps: 3,
            samples: 3,
        })?;
        let v: serde_json::Value = serde_json::from_str(&serde_json::to_string(&row)?)?;
        for k in [
            "imm_read_ns",
            "atomic_read_ns",
            "imm_cold_read_ns",
            "atomic_cold_read_ns",
            "imm_set_us",
            "imm_set_us_p90",
        ] {
            let x = v[k].as_f64().unwrap_or(-1.0);
            assert!(x >= 0.0 && x.is_finite(), "{k} in {v}");
        }
        assert_eq!(v["imm_set_sites"].as_u64(), Some(SET_SITE_COUNT as u64));
        assert_eq!(v["imm_set_syncs"].as_u64(), Some(2));
        assert!(v["imm_set_writes"].as_u64().is_some_and(|w| w >= 3));
        assert_eq!(v["imm_reps"].as_u64(), Some(3));
        assert!(v["imm_note"].as_str().is_some_and(|n| !n.is_empty()));
        Ok(())
    }
}
