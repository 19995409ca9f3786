//! Static calls: a direct call whose target is switched while threads call it, and a C-ABI call
//! with inline call sites (a `call` instruction textpoke rewrites itself).
//!
//! Run: `cargo run --example static_calls`.

use std::sync::atomic::{AtomicBool, Ordering};

textpoke::static_call! {
    /// The checksum every worker uses; starts as the simple one.
    static CHECKSUM: fn(&[u8]) -> u64 = sum;
    /// A logger that can be switched off entirely (a no-op call).
    static LOG: fn(&str) = log_to_stderr;
    /// A C-ABI call: each `FAST.call(..)` site is a direct `call` to the current target.
    inline static FAST: extern "C" fn(u64) -> u64 = plus_one;
}

fn sum(data: &[u8]) -> u64 {
    data.iter().map(|&b| b as u64).sum()
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn log_to_stderr(msg: &str) {
    eprintln!("log: {msg}");
}

extern "C" fn plus_one(x: u64) -> u64 {
    x + 1
}

extern "C" fn times_two(x: u64) -> u64 {
    x * 2
}

fn main() -> Result<(), textpoke::Error> {
    let data = b"textpoke";
    LOG.call("starting");
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| -> Result<(), textpoke::Error> {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                // Either target, never anything else, whatever the main thread does.
                let h = CHECKSUM.call(data);
                assert!(h == sum(data) || h == fnv(data));
            }
        });
        for _ in 0..100 {
            CHECKSUM.update(fnv)?; // retargets every caller while the worker calls it
            CHECKSUM.update(sum)?;
        }
        stop.store(true, Ordering::Relaxed);
        Ok(())
    })?;
    CHECKSUM.update(fnv)?;
    println!("checksum of {:?}: {:#x}", "textpoke", CHECKSUM.call(data));

    LOG.update_noop()?; // the call now returns at once
    LOG.call("never printed");

    assert_eq!(FAST.call(20), 21);
    FAST.update(times_two)?; // the inline `call` sites now call times_two directly
    assert_eq!(FAST.call(20), 40);
    println!("FAST(20) = {}", FAST.call(20));
    Ok(())
}
