//! What `textpoke demo --serve` offers an operator: a key, an immediate and a patchable
//! function of their own, which `textpoke ctl` may change at will while the demo runs.
//!
//! They are apart from the demo's stress items on purpose: the demo checks every one of those
//! against the history of its own changes, so a change made from outside would count as an
//! inconsistency. Nothing checks these; they only make a heartbeat visible on stdout.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use textpoke::{Immediate, StaticKey, imm, static_branch_unlikely};

/// Off, so that the demo stays quiet until an operator asks for the heartbeat.
static CHATTY: StaticKey = StaticKey::new();

/// Milliseconds between heartbeats.
static INTERVAL_MS: Immediate<u32> = Immediate::new(1000);

/// The longest single sleep: the demo's end is noticed within it, whatever the interval.
const GRANULE: Duration = Duration::from_millis(100);

/// The path of this module, which every item's name starts with.
const PREFIX: &str = module_path!();

/// Prints one heartbeat line. Patchable so that `trace` can count it and `replace-noop` can
/// silence it.
#[textpoke::patchable]
fn heartbeat(n: u64) {
    // A closed stdout (the reader went away) is no reason for the demo to panic.
    let _ = writeln!(
        std::io::stdout().lock(),
        "demo: heartbeat {n} (CHATTY is on)"
    );
}

/// Starts the control server and tells the operator on stderr how to reach it, with commands
/// naming the items of this module.
pub fn serve() -> Result<(), String> {
    match textpoke::control::serve() {
        Ok(socket) => {
            let pid = std::process::id();
            let p = PREFIX;
            eprintln!(
                "textpoke demo: pid {pid} serves textpoke ctl on {socket}; from another shell:\n\
                 \x20 textpoke ctl {pid} list '{p}::*'\n\
                 \x20 textpoke ctl {pid} enable {p}::CHATTY        (heartbeats on stdout)\n\
                 \x20 textpoke ctl {pid} set {p}::INTERVAL_MS 200\n\
                 \x20 textpoke ctl {pid} trace {p}::heartbeat      (then `list` counts calls)\n\
                 \x20 textpoke ctl {pid} replace-noop {p}::heartbeat   (undo: revert)"
            );
            Ok(())
        }
        Err(e) => Err(format!("--serve: {e}")),
    }
}

/// Until `stop`: sleeps [`INTERVAL_MS`] and, while [`CHATTY`] is on, calls [`heartbeat`].
pub fn beat(stop: &AtomicBool) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // At least 1 ms: an interval of 0 would spin a CPU the workers need.
        let mut left = Duration::from_millis(imm!(INTERVAL_MS).max(1).into());
        while !left.is_zero() && !stop.load(Ordering::Relaxed) {
            let step = left.min(GRANULE);
            std::thread::sleep(step);
            left -= step;
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if static_branch_unlikely!(CHATTY) {
            // Counted even while it is a no-op, so that a revert shows how many went unheard.
            n += 1;
            heartbeat(n);
        }
    }
}
