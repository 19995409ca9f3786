//! The demo's detours: [`DETOURS`] functions that were not built for patching, two of the
//! executable's (written in assembly, so their first instructions are known) and the C
//! library's `labs`, each detoured to a replacement by the main thread while the workers call
//! them, alone or in its batches of keys and a static call.
//!
//! Detour `d` computes `x * 32 + d` for the workers' `x` (`labs` does so for the argument
//! `-(x * 32 + 2)`), its replacement `x * 32 + 16 + d`, so every result says which code ran.
//! Each detour has a history (see `history`), flipped by every change: a result must come from
//! the original or the replacement, whichever was installed at some instant during the call.
//! `Detour::original` (the relocated prologue in its trampoline) must always give the
//! original's result, whatever state the detour is in.
//!
//! The first function's prologue is `push rbx` and two `pause`s: the jump overwrites all three,
//! so a thread preempted between them when a detour is enabled is inside the bytes being
//! changed and must be moved into the trampoline (`detour_threads_moved` counts those moves).
//! The second's is `endbr64` (which stays) and one 8-byte instruction, which no thread can be
//! inside of. `labs` is whatever the C library made it (glibc 2.36: `mov`, `neg`, `cmovs`,
//! `ret`: two instructions overwritten).

use std::sync::OnceLock;
use std::time::Instant;

use libc::c_long;
use serde::Serialize;
use textpoke::{Batch, Detour};

use super::history::{History, key_consistent};

/// Functions detoured.
pub const DETOURS: usize = 3;

/// What a replacement adds to the original's result.
const REPLACED: c_long = 16;

/// Every detoured function's type (the C library's `labs`, which the others imitate).
type Fun = unsafe extern "C" fn(c_long) -> c_long;

// Each with CFI, so that the executable's unwind table gives textpoke its bounds, and a type and
// size, so that tools see a function.
core::arch::global_asm!(
    ".text",
    // x * 32: three instructions in the five bytes the jump overwrites, the first one byte
    // long. The `pause`s (about 25 ns each on this machine's EPYC, under 1% of a worker's time)
    // widen the window in which a preempted worker is found inside those bytes when the
    // detour is enabled, so that the demo moves threads out of them now and then.
    ".globl textpoke_demo_detour_push",
    ".hidden textpoke_demo_detour_push",
    ".type textpoke_demo_detour_push,@function",
    ".p2align 4",
    "textpoke_demo_detour_push:",
    ".cfi_startproc",
    "push rbx",
    ".cfi_adjust_cfa_offset 8",
    ".cfi_offset rbx, -16",
    "pause",
    "pause",
    "mov rbx, rdi",
    "shl rbx, 5",
    "mov rax, rbx",
    "pop rbx",
    ".cfi_adjust_cfa_offset -8",
    ".cfi_restore rbx",
    "ret",
    ".cfi_endproc",
    ".size textpoke_demo_detour_push, .-textpoke_demo_detour_push",
    // x * 32 + 1: `endbr64`, then one instruction longer than the jump.
    ".globl textpoke_demo_detour_endbr",
    ".hidden textpoke_demo_detour_endbr",
    ".type textpoke_demo_detour_endbr,@function",
    ".p2align 4",
    "textpoke_demo_detour_endbr:",
    ".cfi_startproc",
    "endbr64",
    "lea rax, [rdi * 8]",
    "shl rax, 2",
    "inc rax",
    "ret",
    ".cfi_endproc",
    ".size textpoke_demo_detour_endbr, .-textpoke_demo_detour_endbr",
);

// What the assembly above implements: one integer argument in `rdi`, the result in `rax`.
unsafe extern "C" {
    fn textpoke_demo_detour_push(x: c_long) -> c_long;
    fn textpoke_demo_detour_endbr(x: c_long) -> c_long;
}

extern "C" fn push_v2(x: c_long) -> c_long {
    x.wrapping_mul(32).wrapping_add(REPLACED)
}

extern "C" fn endbr_v2(x: c_long) -> c_long {
    x.wrapping_mul(32).wrapping_add(REPLACED + 1)
}

/// Stands in for `labs`, whose callers here pass `-(x * 32 + 2)`.
extern "C" fn labs_v2(v: c_long) -> c_long {
    v.wrapping_neg().wrapping_add(REPLACED)
}

/// Detoured function `d`.
fn target(d: usize) -> Fun {
    match d {
        0 => textpoke_demo_detour_push,
        1 => textpoke_demo_detour_endbr,
        _ => libc::labs,
    }
}

/// Detoured function `d`'s replacement.
fn replacement(d: usize) -> Fun {
    match d {
        0 => push_v2,
        1 => endbr_v2,
        _ => labs_v2,
    }
}

/// The argument that makes function `d` compute from `x` (`labs` of a negative number gives
/// it back).
fn arg(d: usize, x: u64) -> c_long {
    match d {
        0 | 1 => x as c_long,
        _ => -((x * 32 + 2) as c_long),
    }
}

/// What function `d` returns for `x`, replaced or not. `x` must be below 2^56, so that
/// nothing overflows.
pub fn expected(d: usize, x: u64, replaced: bool) -> c_long {
    (x * 32) as c_long + REPLACED * replaced as c_long + d as c_long
}

/// Calls `f` (a detoured function or its original) with `d`'s argument for `x`.
fn call(f: Fun, d: usize, x: u64) -> c_long {
    // Through an opaque pointer: the compiler can neither inline `labs` (a builtin it knows)
    // nor move the call out from between the histories' loads.
    let f = std::hint::black_box(f);
    // SAFETY: every function here and every replacement takes any `long` and only computes.
    unsafe { f(arg(d, x)) }
}

/// Whether a history that starts off (detour disabled) and flips at every change is on now.
/// Only meaningful to the thread that makes the changes.
fn on(h: &History) -> bool {
    h.read() / 2 % 2 == 1
}

/// The histories the workers check against (every detour disabled at version 0), and the
/// originals once the detours exist.
#[derive(Default)]
pub struct Shared {
    history: [History; DETOURS],
    originals: OnceLock<[Fun; DETOURS]>,
}

/// What one worker did to the detoured functions.
#[derive(Default)]
pub struct WorkerTally {
    calls: u64,
    replaced: u64,
    originals: u64,
    inconsistencies: u64,
}

impl Shared {
    /// The worker's `k`-th visit: calls detoured function `k % DETOURS` with `x` and checks
    /// its result against its history; every 16th visit also calls its original, which must
    /// give the original's result whatever the detour's state.
    pub fn visit(&self, k: usize, x: u64, t: &mut WorkerTally) {
        let d = k % DETOURS;
        let before = self.history[d].read();
        let r = call(target(d), d, x);
        let after = self.history[d].read();
        t.calls += 1;
        let replaced = r == expected(d, x, true);
        t.replaced += replaced as u64;
        if !(replaced || r == expected(d, x, false))
            || !key_consistent(false, before, after, replaced)
        {
            t.inconsistencies += 1;
        }
        if k.is_multiple_of(16)
            && let Some(originals) = self.originals.get()
        {
            t.originals += 1;
            if call(originals[d], d, x) != expected(d, x, false) {
                t.inconsistencies += 1;
            }
        }
    }
}

/// The detours' part of the `--json` report (its fields are flattened into the report's
/// object).
#[derive(Clone, Debug, Default, Serialize)]
pub struct DetourReport {
    /// Functions detoured: two of the executable's and the C library's `labs`.
    pub detours: usize,
    /// Calls of the detoured functions by the workers, each checked against its history.
    pub detour_calls: u64,
    /// Of those, calls that ran the replacement.
    pub detour_calls_replaced: u64,
    /// Calls of `Detour::original` by the workers, each of which must give the original's
    /// result.
    pub detour_original_calls: u64,
    /// Detours turned on or off (a batch that changes two counts two).
    pub detour_changes: u64,
    /// Of those, changes committed in one batch with keys and a static call.
    pub detour_changes_batched: u64,
    /// Median time of one change of detours alone (`enable`, `disable`, or a batch of two),
    /// in microseconds. Half of them enable and half disable, which cost differently (see the
    /// next two), so this median lands near either.
    pub detour_change_us_median: f64,
    /// Median time of those changes alone that enabled a detour (each brings every other
    /// thread to a known point with a signal), in microseconds.
    pub detour_enable_us_median: f64,
    /// Median time of those changes alone that only disabled detours (one instruction written
    /// back: no thread can be inside it, so no signal), in microseconds.
    pub detour_disable_us_median: f64,
    /// Threads found inside the instructions a detour overwrites when it was enabled, and
    /// moved into its trampoline.
    pub detour_threads_moved: usize,
    /// The detours' share of `inconsistencies`: results that no instant of their detour's
    /// history during the call allows, originals that gave another result, and functions
    /// found in the wrong state once the workers stopped or once the detours were dropped.
    pub detour_inconsistencies: u64,
}

impl DetourReport {
    /// The summary's line.
    pub fn summary(&self) -> String {
        let n = |v: u64| super::thousands(v);
        format!(
            "{} detours (2 in the executable, libc's labs) called {} times ({} replaced, {} \
             originals), changed {} times ({} in batches with keys and a static call), alone \
             median {:.1} µs (enable {:.1} µs, disable {:.1} µs); threads moved out of \
             overwritten instructions: {}; {} detour inconsistencies",
            self.detours,
            n(self.detour_calls),
            n(self.detour_calls_replaced),
            n(self.detour_original_calls),
            n(self.detour_changes),
            n(self.detour_changes_batched),
            self.detour_change_us_median,
            self.detour_enable_us_median,
            self.detour_disable_us_median,
            n(self.detour_threads_moved as u64),
            n(self.detour_inconsistencies)
        )
    }
}

/// The main thread's side: owns the detours, turns them on and off and counts what it did.
pub struct Changer<'s> {
    shared: &'s Shared,
    detours: [Detour<Fun>; DETOURS],
    changes: u64,
    batched: u64,
    /// Per change alone: its time in µs, and whether it enabled a detour.
    times: Vec<(f64, bool)>,
    moved_before: usize,
}

impl<'s> Changer<'s> {
    /// Makes every detour (disabled) and gives the workers their originals.
    ///
    /// # Errors
    ///
    /// A detour textpoke refuses, `labs` included (the C library's code is not ours to choose,
    /// and a refusal must fail the run rather than shrink it).
    pub fn new(shared: &'s Shared) -> Result<Self, String> {
        let detours: Vec<Detour<Fun>> = (0..DETOURS)
            .map(|d| {
                // SAFETY: each replacement takes any `long` and only computes, as its target
                // does; nothing else in the process calls these functions (`labs` included:
                // neither the demo's libraries nor textpoke use it).
                unsafe { Detour::new(target(d), replacement(d)) }
                    .map_err(|e| format!("detour {d}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        let detours: [Detour<Fun>; DETOURS] = detours
            .try_into()
            .map_err(|_| "detours: wrong count".to_string())?;
        let originals = std::array::from_fn(|d| detours[d].original());
        shared
            .originals
            .set(originals)
            .map_err(|_| "detours: a run's originals were set twice".to_string())?;
        Ok(Changer {
            shared,
            detours,
            changes: 0,
            batched: 0,
            times: Vec::new(),
            moved_before: textpoke::__private::threads_moved(),
        })
    }

    /// The detour round `round` puts in the batch of keys and a static call, if any: one every
    /// eighth round (enabling one makes every thread answer a signal, which costs more than the
    /// rest of the batch), the same detour in two such batches in a row, so that with the
    /// changes alone in between each detour is in turn enabled and disabled by all three ways
    /// (see the test).
    fn joined_detour(round: usize) -> Option<usize> {
        (round % 8 == 2).then_some(round / 16 % DETOURS)
    }

    /// The detours changed alone in round `round` (one of the rounds whose changes of
    /// detours [`change_alone`](Self::change_alone) makes): in turn one by `enable` or
    /// `disable`, and two in one batch.
    fn alone(round: usize) -> Vec<usize> {
        let turn = round / 4;
        let first = turn % DETOURS;
        if turn.is_multiple_of(2) {
            vec![first]
        } else {
            vec![first, (first + 1) % DETOURS]
        }
    }

    /// Adds detour `d`'s flip to `batch`: the opposite of its current state.
    fn add<'a>(&'a self, batch: Batch<'a>, d: usize) -> Batch<'a> {
        if on(&self.shared.history[d]) {
            batch.disable_detour(&self.detours[d])
        } else {
            batch.enable_detour(&self.detours[d])
        }
    }

    /// Adds round `round`'s flip, if it has one, to `batch`, the main thread's batch of keys
    /// and a static call, and begins its change; [`joined`](Self::joined) ends it once the
    /// batch is committed.
    pub fn join<'a>(&'a self, round: usize, batch: Batch<'a>) -> Batch<'a> {
        match Self::joined_detour(round) {
            Some(d) => {
                let batch = self.add(batch, d);
                self.shared.history[d].begin_change();
                batch
            }
            None => batch,
        }
    }

    /// The batch [`join`](Self::join) added to is committed.
    pub fn joined(&mut self, round: usize) {
        if let Some(d) = Self::joined_detour(round) {
            self.shared.history[d].end_change();
            self.changes += 1;
            self.batched += 1;
        }
    }

    /// Round `round`'s change of detours alone: by turns one by its own `enable`/`disable`, and
    /// two in one batch.
    pub fn change_alone(&mut self, round: usize) -> Result<(), String> {
        let chosen = Self::alone(round);
        let enables = chosen.iter().any(|&d| !on(&self.shared.history[d]));
        let t0;
        let r = match *chosen {
            [d] => {
                let was_on = on(&self.shared.history[d]);
                self.shared.history[d].begin_change();
                t0 = Instant::now();
                if was_on {
                    self.detours[d].disable()
                } else {
                    self.detours[d].enable()
                }
            }
            _ => {
                let batch = chosen.iter().fold(Batch::new(), |b, &d| self.add(b, d));
                for &d in &chosen {
                    self.shared.history[d].begin_change();
                }
                t0 = Instant::now();
                batch.commit()
            }
        };
        // On failure the histories stay odd: nothing is judged against a state never
        // installed, and the run stops.
        r.map_err(|e| format!("detours {chosen:?} changed alone in round {round}: {e}"))?;
        self.times.push((t0.elapsed().as_secs_f64() * 1e6, enables));
        for &d in &chosen {
            self.shared.history[d].end_change();
        }
        self.changes += chosen.len() as u64;
        Ok(())
    }

    /// Once the workers have stopped: calls every function once in its final state (and its
    /// original), drops the detours, checks that every function is the original again, and
    /// reports.
    pub fn finish(self, workers: &[&WorkerTally]) -> DetourReport {
        // Any `x` below 2^56 will do (see `expected`).
        const X: u64 = 12_345;
        let mut wrong = 0u64;
        for (d, detour) in self.detours.iter().enumerate() {
            let replaced = on(&self.shared.history[d]);
            wrong += (detour.is_enabled() != replaced) as u64;
            wrong += (call(target(d), d, X) != expected(d, X, replaced)) as u64;
            wrong += (call(detour.original(), d, X) != expected(d, X, false)) as u64;
        }
        let moved = textpoke::__private::threads_moved() - self.moved_before;
        // Dropping a detour disables it: `labs` is the C library's own again.
        drop(self.detours);
        wrong += (0..DETOURS)
            .filter(|&d| call(target(d), d, X) != expected(d, X, false))
            .count() as u64;
        let median = |keep: &dyn Fn(bool) -> bool| {
            let mut t: Vec<f64> = self
                .times
                .iter()
                .filter(|c| keep(c.1))
                .map(|c| c.0)
                .collect();
            t.sort_unstable_by(f64::total_cmp);
            super::percentile(&t, 0.5)
        };
        DetourReport {
            detours: DETOURS,
            detour_calls: workers.iter().map(|w| w.calls).sum(),
            detour_calls_replaced: workers.iter().map(|w| w.replaced).sum(),
            detour_original_calls: workers.iter().map(|w| w.originals).sum(),
            detour_changes: self.changes,
            detour_changes_batched: self.batched,
            detour_change_us_median: median(&|_| true),
            detour_enable_us_median: median(&|enables| enables),
            detour_disable_us_median: median(&|enables| !enables),
            detour_threads_moved: moved,
            detour_inconsistencies: workers.iter().map(|w| w.inconsistencies).sum::<u64>() + wrong,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_tell_which_code_ran() {
        for d in 0..DETOURS {
            for x in [0, 1, 7, (1 << 56) - 1] {
                assert_ne!(expected(d, x, false), expected(d, x, true));
                // No detour's result can be mistaken for another's.
                for e in (0..DETOURS).filter(|&e| e != d) {
                    for r in [false, true] {
                        assert_ne!(expected(d, x, r), expected(e, x, false));
                        assert_ne!(expected(d, x, r), expected(e, x, true));
                    }
                }
            }
        }
        // The Rust replacements compute what the workers expect (the originals are checked
        // by the demo itself, once detoured).
        for x in [0, 5, 1 << 40] {
            for d in 0..DETOURS {
                // SAFETY: the replacements only compute.
                assert_eq!(unsafe { replacement(d)(arg(d, x)) }, expected(d, x, true));
            }
        }
    }

    #[test]
    fn the_originals_compute_what_the_workers_expect() {
        for x in [0, 5, 1 << 40] {
            for d in 0..DETOURS {
                assert_eq!(call(target(d), d, x), expected(d, x, false), "detour {d}");
            }
        }
    }

    /// Every change flips one detour, a batch never names one twice, and over a few dozen
    /// rounds every detour is enabled and disabled in every way the demo has: alone, in a
    /// batch of two, and in the main thread's batch of keys and a static call.
    #[test]
    fn every_detour_is_flipped_both_ways_alone_in_pairs_and_joined() {
        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        enum Way {
            Alone,
            Pair,
            Joined,
        }
        let mut state = [false; DETOURS];
        let mut seen = Vec::new();
        for round in 0..256 {
            if let Some(d) = Changer::joined_detour(round) {
                state[d] = !state[d];
                seen.push((d, Way::Joined, state[d]));
            }
            if round % 4 == 0 {
                let chosen = Changer::alone(round);
                let mut distinct = chosen.clone();
                distinct.sort_unstable();
                distinct.dedup();
                assert_eq!(distinct.len(), chosen.len(), "round {round}: {chosen:?}");
                let way = if chosen.len() == 1 {
                    Way::Alone
                } else {
                    Way::Pair
                };
                for d in chosen {
                    state[d] = !state[d];
                    seen.push((d, way, state[d]));
                }
            }
        }
        for d in 0..DETOURS {
            for way in [Way::Alone, Way::Pair, Way::Joined] {
                for enabled in [false, true] {
                    assert!(
                        seen.contains(&(d, way, enabled)),
                        "detour {d} never {} {way:?}",
                        if enabled { "enabled" } else { "disabled" }
                    );
                }
            }
        }
    }
}
