//! Static keys: a hot path with a tracing branch that costs one NOP while it is off, turned on
//! and off by an "operator" while worker threads keep running it.
//!
//! Run: `cargo run --example static_keys` (add `-- --seconds 5` to run longer).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use textpoke::{StaticKey, static_branch_unlikely};

/// Off at build time: every site is compiled as a 5-byte NOP.
static TRACE: StaticKey = StaticKey::new();

static HANDLED: AtomicU64 = AtomicU64::new(0);
static TRACED: AtomicU64 = AtomicU64::new(0);

/// The hot path: one NOP while TRACE is off, a jump to the tracing code while it is on.
#[inline(never)]
fn handle_request(n: u64) -> u64 {
    if static_branch_unlikely!(TRACE) {
        TRACED.fetch_add(1, Ordering::Relaxed);
    }
    HANDLED.fetch_add(1, Ordering::Relaxed);
    n.wrapping_mul(31)
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
        // The operator: tracing on for a moment, then off again, while the workers run.
        let start = Instant::now();
        let mut switches = 0;
        while start.elapsed() < Duration::from_secs_f64(seconds) {
            TRACE.enable()?; // every site becomes a jump, safely, with the workers running
            std::thread::sleep(Duration::from_millis(20));
            TRACE.disable()?; // and a NOP again
            std::thread::sleep(Duration::from_millis(20));
            switches += 2;
        }
        stop.store(true, Ordering::Relaxed);
        println!(
            "{} requests handled, {} traced, tracing switched {switches} times",
            HANDLED.load(Ordering::Relaxed),
            TRACED.load(Ordering::Relaxed)
        );
        Ok(())
    })?;
    // Reference counting, like the kernel's static_branch_inc/dec: on while anyone wants it.
    TRACE.inc()?;
    TRACE.inc()?;
    TRACE.dec()?;
    assert!(TRACE.is_enabled());
    TRACE.dec()?;
    assert!(!TRACE.is_enabled());
    assert!(
        TRACED.load(Ordering::Relaxed) > 0,
        "tracing ran while it was on"
    );
    Ok(())
}
