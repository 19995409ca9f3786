//! Shared by the `call` and `alt` benchmarks: loops that each make `iters` calls of a function
//! computing [`mix`]`(x, 7)`, checked by their XOR, and timed interleaved.

use std::hint::black_box;
use std::time::Instant;

use crate::{BenchError, Result, stats};

/// The work every measured function does (with its own constant): one multiply, one XOR.
#[inline(always)]
pub fn mix(x: u64, k: u64) -> u64 {
    x.wrapping_mul(31) ^ k
}

/// A dispatch loop: makes `iters` calls and returns the XOR of their results.
pub type Loop = fn(u64) -> u64;

/// The checksum every loop must return for `iters` calls.
pub fn checksum(iters: u64) -> u64 {
    (0..iters).fold(0, |acc, i| acc ^ mix(i, 7))
}

fn check(name: &str, iters: u64, got: u64) -> Result<()> {
    if got == checksum(iters) {
        return Ok(());
    }
    Err(BenchError::new(format!(
        "the {name} loop returned checksum {got:#x} for {iters} calls, expected {:#x}: it did \
         not reach the x*31 ^ 7 implementation every time",
        checksum(iters)
    )))
}

/// Runs every loop `reps` times, interleaved (each repetition starts with a different loop);
/// returns the median ns per call of each. A short warm-up run of each checks it first.
pub fn measure<const N: usize>(
    loops: &[(&str, Loop); N],
    iters: u64,
    reps: usize,
) -> Result<[f64; N]> {
    let warm = iters / 10 + 1;
    for (name, f) in loops {
        check(name, warm, f(black_box(warm)))?;
    }
    let want = checksum(iters);
    let mut ns: [Vec<f64>; N] = std::array::from_fn(|_| Vec::with_capacity(reps));
    for rep in 0..reps {
        for k in 0..N {
            let which = (rep + k) % N;
            let (name, f) = loops[which];
            let start = Instant::now();
            let got = f(black_box(iters));
            let elapsed = start.elapsed();
            if got != want {
                check(name, iters, got)?;
            }
            ns[which].push(elapsed.as_secs_f64() * 1e9 / iters as f64);
        }
    }
    Ok(ns.map(|v| stats::median(&v)))
}
