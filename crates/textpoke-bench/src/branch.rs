//! `branch`: the cost of one disabled branch in a tight loop, in ns per iteration.
//!
//! The four loops the spec asks for share one shape: per iteration a `black_box` of the counter
//! (so the loop cannot be removed or vectorized) and, except in the empty loop, one disabled
//! branch whose enabled arm does a `black_box`'d increment (so the branch cannot be removed or
//! turned into branch-free code). The branches are
//!
//! - textpoke: `static_branch_unlikely!`, a 5-byte NOP;
//! - `AtomicBool`: a `Relaxed` load of a real static, a test and a conditional jump;
//! - static-keys: `static_branch_unlikely!`, a 5-byte NOP.
//!
//! A one-branch loop is bound by its taken back-edge (one per cycle), which can hide the
//! branch entirely, so three more loops (`_x8`) test eight disabled branches per iteration.
//!
//! Every loop is preceded by an `.p2align 6` (padding executed once), which with LLVM's own
//! 16-byte loop alignment puts each one-branch loop inside one 64-byte line: otherwise whichever
//! loop the linker happens to place across a line boundary runs at half speed (seen on AMD
//! EPYC), which measures code placement rather than the branch.
//!
//! Each loop runs `reps` times, all loops interleaved in a rotating order so that frequency
//! drift or a noisy neighbour hits all of them alike; the median of each is reported.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::Serialize;
use textpoke::StaticKey;

use crate::sites::PeerKey;
use crate::{BenchError, Result, peer, stats};

/// textpoke's key for the branch loop; never enabled.
static BRANCH_KEY: StaticKey = StaticKey::new();
/// static-keys' key for the branch loop; never enabled.
static PEER_BRANCH_KEY: PeerKey = static_keys::new_static_false_key();
/// The flag of the `AtomicBool` loop. It is stored to at run time (see [`run`]), so the
/// compiler cannot treat it as a constant.
static FLAG: AtomicBool = AtomicBool::new(false);

/// Options of the `branch` subcommand.
#[derive(Clone, Debug, clap::Args)]
pub struct BranchArgs {
    /// Loop iterations per repetition.
    #[arg(long, default_value_t = 100_000_000)]
    pub iters: u64,
    /// Repetitions of each loop; the median is reported.
    #[arg(long, default_value_t = 21)]
    pub reps: usize,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The results.
#[derive(Clone, Debug, Serialize)]
pub struct BranchRow {
    /// The loop with no branch, ns per iteration.
    pub empty_ns: f64,
    /// The loop with one disabled textpoke site, ns per iteration.
    pub textpoke_disabled_ns: f64,
    /// The loop with one `AtomicBool` `Relaxed` load, test and branch, ns per iteration.
    pub atomic_bool_ns: f64,
    /// The loop with one disabled static-keys site, ns per iteration.
    pub static_keys_disabled_ns: f64,
    /// The loop with eight disabled textpoke sites, ns per iteration.
    pub textpoke_disabled_x8_ns: f64,
    /// The loop with eight `AtomicBool` loads, tests and branches, ns per iteration.
    pub atomic_bool_x8_ns: f64,
    /// The loop with eight disabled static-keys sites, ns per iteration.
    pub static_keys_disabled_x8_ns: f64,
    /// Iterations per repetition.
    pub iters: u64,
    /// Repetitions of each loop.
    pub reps: usize,
    /// How it was measured.
    pub note: String,
}

/// Pads to a 64-byte boundary at this point of the code (placed just before a loop).
macro_rules! align_loop {
    () => {
        // SAFETY: emits only NOP padding into the instruction stream; it touches no register,
        // memory, stack or flag.
        unsafe { std::arch::asm!(".p2align 6", options(nomem, nostack, preserves_flags)) }
    };
}
pub(crate) use align_loop;

/// Defines a dispatch loop: an aligned `#[inline(never)] fn(iters) -> u64` that makes `iters`
/// calls, `$i` being the loop counter, and returns the XOR of their results.
macro_rules! dispatch_loop {
    ($name:ident, $i:ident => $call:expr) => {
        #[inline(never)]
        fn $name(iters: u64) -> u64 {
            let mut acc = 0u64;
            $crate::branch::align_loop!();
            for $i in 0..iters {
                acc ^= $call;
            }
            acc
        }
    };
}
pub(crate) use dispatch_loop;

#[inline(never)]
fn empty_loop(iters: u64) -> u64 {
    align_loop!();
    for i in 0..iters {
        black_box(i);
    }
    0
}

/// Defines a loop with `$n` copies of the branch `$cond` per iteration.
macro_rules! branch_loop {
    ($name:ident, $n:literal, $cond:expr) => {
        #[inline(never)]
        fn $name(iters: u64) -> u64 {
            let mut hits = 0u64;
            align_loop!();
            for i in 0..iters {
                black_box(i);
                seq_macro::seq!(_K in 0..$n {
                    if $cond {
                        hits = black_box(hits + 1);
                    }
                });
            }
            hits
        }
    };
}

branch_loop!(
    textpoke_loop,
    1,
    textpoke::static_branch_unlikely!(BRANCH_KEY)
);
branch_loop!(atomic_bool_loop, 1, FLAG.load(Ordering::Relaxed));
// SAFETY (of the `unsafe` inside static-keys' macro): it only emits static-keys' NOP/JMP site
// and its table entry, for a key that is a `static` of static-keys' own type.
branch_loop!(
    static_keys_loop,
    1,
    static_keys::static_branch_unlikely!(PEER_BRANCH_KEY)
);
branch_loop!(
    textpoke_loop_x8,
    8,
    textpoke::static_branch_unlikely!(BRANCH_KEY)
);
branch_loop!(atomic_bool_loop_x8, 8, FLAG.load(Ordering::Relaxed));
// SAFETY: as for `static_keys_loop`.
branch_loop!(
    static_keys_loop_x8,
    8,
    static_keys::static_branch_unlikely!(PEER_BRANCH_KEY)
);

/// A benchmark loop: runs `iters` iterations and returns how often a branch was taken.
type Loop = fn(u64) -> u64;

/// The loops, in the order their results are reported: name, function, and the divisor of
/// `--iters` that gives its iteration count (the 8-branch loops run fewer, longer iterations).
const LOOPS: [(&str, Loop, u64); 7] = [
    ("empty", empty_loop, 1),
    ("textpoke", textpoke_loop, 1),
    ("atomic_bool", atomic_bool_loop, 1),
    ("static_keys", static_keys_loop, 1),
    ("textpoke_x8", textpoke_loop_x8, 8),
    ("atomic_bool_x8", atomic_bool_loop_x8, 8),
    ("static_keys_x8", static_keys_loop_x8, 8),
];

/// Runs every loop `reps` times and reports the median ns per iteration of each.
pub fn run(args: &BranchArgs) -> Result<BranchRow> {
    if args.iters == 0 || args.reps == 0 {
        return Err(BenchError::new("--iters and --reps must be at least 1"));
    }
    peer::init();
    FLAG.store(black_box(false), Ordering::Relaxed);
    if BRANCH_KEY.is_enabled() || PEER_BRANCH_KEY.is_enabled() {
        return Err(BenchError::new("a branch benchmark key is enabled"));
    }
    // Warm-up: one short run of each.
    for (name, f, div) in LOOPS {
        check(name, f(black_box(args.iters / div / 10 + 1)))?;
    }
    let mut ns: [Vec<f64>; LOOPS.len()] = Default::default();
    for rep in 0..args.reps {
        for k in 0..LOOPS.len() {
            let which = (rep + k) % LOOPS.len();
            let (name, f, div) = LOOPS[which];
            let iters = (args.iters / div).max(1);
            let start = Instant::now();
            let hits = f(black_box(iters));
            let elapsed = start.elapsed();
            check(name, hits)?;
            ns[which].push(elapsed.as_secs_f64() * 1e9 / iters as f64);
        }
    }
    let [empty, textpoke, atomic, peer, textpoke8, atomic8, peer8] = ns.map(|v| stats::median(&v));
    let mut note = format!(
        "median of {} interleaved repetitions of {} iterations ({} for the x8 loops, which \
         test 8 disabled branches per iteration); each loop is preceded by 64-byte alignment \
         and stores its counter through black_box per iteration; a disabled branch is one \
         5-byte NOP for textpoke and static-keys, a Relaxed load, test and branch for AtomicBool",
        args.reps,
        args.iters,
        (args.iters / 8).max(1)
    );
    crate::mark_debug_build(&mut note);
    Ok(BranchRow {
        empty_ns: empty,
        textpoke_disabled_ns: textpoke,
        atomic_bool_ns: atomic,
        static_keys_disabled_ns: peer,
        textpoke_disabled_x8_ns: textpoke8,
        atomic_bool_x8_ns: atomic8,
        static_keys_disabled_x8_ns: peer8,
        iters: args.iters,
        reps: args.reps,
        note,
    })
}

fn check(name: &str, hits: u64) -> Result<()> {
    if hits == 0 {
        Ok(())
    } else {
        Err(BenchError::new(format!(
            "the {name} loop took its disabled branch {hits} times"
        )))
    }
}

/// Prints the results as a table on stdout.
pub fn print_table(r: &BranchRow) -> Result<()> {
    let rows = [
        ("empty loop", r.empty_ns),
        ("textpoke (disabled)", r.textpoke_disabled_ns),
        ("AtomicBool (false)", r.atomic_bool_ns),
        ("static-keys (disabled)", r.static_keys_disabled_ns),
        ("textpoke x8", r.textpoke_disabled_x8_ns),
        ("AtomicBool x8", r.atomic_bool_x8_ns),
        ("static-keys x8", r.static_keys_disabled_x8_ns),
    ];
    crate::print_rows(("loop", "ns/iter"), &rows, &r.note)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_branch_run_gives_a_complete_json_object() -> Result<()> {
        let _serial = crate::tests::serial();
        let row = run(&BranchArgs {
            iters: 1000,
            reps: 3,
            json: true,
        })?;
        let v: serde_json::Value = serde_json::from_str(&serde_json::to_string(&row)?)?;
        for k in [
            "empty_ns",
            "textpoke_disabled_ns",
            "atomic_bool_ns",
            "static_keys_disabled_ns",
            "textpoke_disabled_x8_ns",
            "atomic_bool_x8_ns",
            "static_keys_disabled_x8_ns",
        ] {
            let x = v[k].as_f64().unwrap_or(-1.0);
            assert!(x >= 0.0 && x.is_finite(), "{k} in {v}");
        }
        assert_eq!(v["reps"].as_u64(), Some(3));
        Ok(())
    }

    #[test]
    fn branch_sites_are_in_the_tables() -> Result<()> {
        let _serial = crate::tests::serial();
        peer::init();
        assert_eq!(BRANCH_KEY.sites()?.len(), 1 + 8);
        assert!(peer::entries_of(&PEER_BRANCH_KEY)? >= 1);
        Ok(())
    }
}
