//! Immediate values: a sampling rate compiled into the hot path as the immediate of a `mov`
//! (no load), retuned by an "operator" while worker threads keep running it.
//!
//! Run: `cargo run --example immediates` (add `-- --seconds 5` to run longer).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use textpoke::{Batch, Immediate, StaticKey, imm, static_branch_unlikely};

/// One request in 2^10 is sampled until the operator says otherwise. The value is in the code
/// from the start: nothing needs initialising.
static SAMPLE_SHIFT: Immediate<u32> = Immediate::new(10);
/// Off at build time: a 5-byte NOP at its site.
static TRACE: StaticKey = StaticKey::new();

static HANDLED: AtomicU64 = AtomicU64::new(0);
static SAMPLED: AtomicU64 = AtomicU64::new(0);
static TRACED: AtomicU64 = AtomicU64::new(0);

/// The hot path: the shift is one `mov reg, imm32`.
#[inline(never)]
fn handle_request(n: u64) -> u64 {
    if n & ((1 << imm!(SAMPLE_SHIFT)) - 1) == 0 {
        SAMPLED.fetch_add(1, Ordering::Relaxed);
    }
    if static_branch_unlikely!(TRACE) {
        TRACED.fetch_add(1, Ordering::Relaxed);
    }
    HANDLED.fetch_add(1, Ordering::Relaxed);
    n
}

fn main() -> Result<(), textpoke::Error> {
    let seconds: f64 = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| -> Result<(), textpoke::Error> {
        for _ in 0..2 {
            s.spawn(|| {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n = handle_request(n + 1);
                }
            });
        }
        // The operator: sample more often for a moment (every site rewritten, live-safe),
        // then retune and trace in one transaction, then back.
        let start = Instant::now();
        let mut changes = 0;
        while start.elapsed() < Duration::from_secs_f64(seconds) {
            SAMPLE_SHIFT.set(4)?;
            std::thread::sleep(Duration::from_millis(20));
            Batch::new().set(&SAMPLE_SHIFT, 6).enable(&TRACE).commit()?;
            std::thread::sleep(Duration::from_millis(20));
            Batch::new()
                .set(&SAMPLE_SHIFT, 10)
                .disable(&TRACE)
                .commit()?;
            std::thread::sleep(Duration::from_millis(20));
            changes += 3;
        }
        stop.store(true, Ordering::Relaxed);
        println!(
            "{} requests handled, {} sampled, {} traced; sampling retuned {changes} times",
            HANDLED.load(Ordering::Relaxed),
            SAMPLED.load(Ordering::Relaxed),
            TRACED.load(Ordering::Relaxed)
        );
        Ok(())
    })?;
    assert_eq!(SAMPLE_SHIFT.get(), 10);
    assert_eq!(imm!(SAMPLE_SHIFT), 10);
    println!(
        "SAMPLE_SHIFT = {} ({} read sites)",
        imm!(SAMPLE_SHIFT),
        SAMPLE_SHIFT.sites()?.len()
    );
    Ok(())
}
