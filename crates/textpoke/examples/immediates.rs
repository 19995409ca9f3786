//! Immediate values: a sampling rate compiled into the hot path as the immediate of a `mov`
//! (no load), retuned by an "operator" while worker threads keep running it.
//!
//! Run: `cargo run --example immediates`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

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
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| -> Result<(), textpoke::Error> {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    (1..)
                        .take_while(|_| !stop.load(Ordering::Relaxed))
                        .map(handle_request)
                        .last()
                })
            })
            .collect();
        // The operator, 20 rounds: sample more often for a moment (every site rewritten,
        // live-safe), then retune and trace in one transaction, then back.
        for _ in 0..20 {
            SAMPLE_SHIFT.set(4)?;
            std::thread::sleep(Duration::from_millis(15));
            Batch::new().set(&SAMPLE_SHIFT, 6).enable(&TRACE).commit()?;
            std::thread::sleep(Duration::from_millis(15));
            Batch::new()
                .set(&SAMPLE_SHIFT, 10)
                .disable(&TRACE)
                .commit()?;
            std::thread::sleep(Duration::from_millis(15));
        }
        stop.store(true, Ordering::Relaxed);
        workers.into_iter().for_each(|w| drop(w.join()));
        println!(
            "{} requests handled, {} sampled, {} traced; sampling retuned 60 times",
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
