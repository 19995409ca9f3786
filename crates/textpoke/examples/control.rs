//! Control by name from outside: a small "server" whose logging, sampling rate and one helper
//! function an operator changes while it runs, at zero cost while they are off.
//!
//! ```text
//! cargo run --example control -- 60           # serves for 60 s, prints its pid
//! textpoke ctl control list                   # in another terminal (by executable name)
//! textpoke ctl control enable control::VERBOSE
//! textpoke ctl control set control::SAMPLE_EVERY 2
//! textpoke ctl control profile 'control::*' --seconds 2
//! textpoke ctl control replace-noop control::audit
//! ```
//!
//! Or at start-up: `TEXTPOKE='control::VERBOSE=on,control::SAMPLE_EVERY=1' cargo run --example
//! control -- 1`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use textpoke::{Immediate, StaticKey, imm, static_branch_unlikely};

/// Logs every sampled request while on.
static VERBOSE: StaticKey = StaticKey::new();
/// One request in this many is sampled.
static SAMPLE_EVERY: Immediate<u32> = Immediate::new(1000);

static AUDITED: AtomicU64 = AtomicU64::new(0);

/// Records a request; an operator can make it a no-op.
#[textpoke::patchable]
#[inline(never)]
fn audit(id: u64) {
    AUDITED.fetch_add(1, Ordering::Relaxed);
    std::hint::black_box(id);
}

#[textpoke::patchable]
#[inline(never)]
fn handle(id: u64) -> u64 {
    if static_branch_unlikely!(VERBOSE) && id.is_multiple_of(u64::from(imm!(SAMPLE_EVERY).max(1))) {
        println!("request {id}");
    }
    audit(id);
    id.wrapping_mul(2654435761)
}

fn main() -> Result<(), textpoke::Error> {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(60.0);
    let socket = textpoke::control::serve()?;
    println!(
        "pid {} serves textpoke ctl on {socket} for {seconds} s",
        std::process::id()
    );
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut id = 0u64;
    let mut sum = 0u64;
    while Instant::now() < end {
        for _ in 0..1000 {
            sum = sum.wrapping_add(handle(id));
            id += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "handled {id} requests, audited {}, checksum {sum:x}",
        AUDITED.load(Ordering::Relaxed)
    );
    Ok(())
}
