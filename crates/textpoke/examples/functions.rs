//! Patchable functions: ftrace's function tracer and profiler, and livepatch, for Rust.
//!
//! A worker thread parses requests in a loop. Meanwhile the main thread traces every function
//! of the `net` module (one batch), profiles them, then replaces `net::parse` with a fixed
//! version while the worker keeps calling it, and reverts it. While nothing is enabled, each
//! patchable function costs one 5-byte NOP.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use textpoke::functions;

mod net {
    /// Parses a length-prefixed request: "3:abc" -> Some(3).
    #[textpoke::patchable]
    pub fn parse(input: &str) -> Option<usize> {
        let (len, body) = input.split_once(':')?;
        let len: usize = len.parse().ok()?;
        // A bug, fixed live below: the body's length is not checked.
        let _ = body;
        Some(len)
    }

    /// The fix: same signature, so `replace!` accepts it.
    pub fn parse_checked(input: &str) -> Option<usize> {
        let (len, body) = input.split_once(':')?;
        let len: usize = len.parse().ok()?;
        (body.len() == len).then_some(len)
    }

    #[textpoke::patchable]
    pub fn respond(len: Option<usize>) -> &'static str {
        if len.is_some() { "ok" } else { "bad request" }
    }
}

fn main() -> Result<(), textpoke::Error> {
    static STOP: AtomicBool = AtomicBool::new(false);
    static BAD: AtomicU64 = AtomicU64::new(0);
    let worker = std::thread::spawn(|| {
        while !STOP.load(Ordering::Relaxed) {
            for request in ["3:abc", "5:abc"] {
                if net::respond(net::parse(request)) == "bad request" {
                    BAD.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });

    // ftrace's function tracer: every function of the module, in one batch.
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let tracer = functions::trace("functions::net::*", |_f| {
        CALLS.fetch_add(1, Ordering::Relaxed);
    })?;
    std::thread::sleep(Duration::from_millis(50));
    drop(tracer);
    println!(
        "traced {} calls of functions::net::* in 50 ms",
        CALLS.load(Ordering::Relaxed)
    );

    // ftrace's function profiler.
    let profile = functions::profile("functions::net::*")?;
    std::thread::sleep(Duration::from_millis(50));
    for row in profile.report() {
        println!(
            "{:>24} {:>10} calls {:>12?} total {:>10?} max",
            row.name, row.calls, row.total, row.max
        );
    }
    drop(profile);

    // livepatch: fix `parse` while the worker calls it.
    let bad_before = BAD.load(Ordering::Relaxed);
    let fix = functions::replace!(net::parse, net::parse_checked)?;
    BAD.store(0, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(50));
    println!(
        "before the fix: {bad_before} bad requests; with it: {} in 50 ms (\"5:abc\" is refused now)",
        BAD.load(Ordering::Relaxed)
    );
    assert!(
        BAD.load(Ordering::Relaxed) > 0,
        "the fixed parse refuses \"5:abc\""
    );
    fix.disable()?;
    assert_eq!(net::parse("5:abc"), Some(5), "reverted");

    STOP.store(true, Ordering::Relaxed);
    worker.join().expect("worker");
    for f in functions::list("*")? {
        println!("{} ({}:{}): {} site(s)", f.name, f.file, f.line, f.sites);
    }
    Ok(())
}
