//! The demo's patchable functions: 8 `#[textpoke::patchable]` functions, each with a
//! replacement of its signature, and 3 tracers with overlapping filters, all changed by the
//! main thread while the workers call the functions.
//!
//! Function `i` returns `x * 32 + i`, its replacement `x * 32 + 16 + i`, so every result says
//! which code produced it. Each function's replacement and each tracer has a history (see
//! `history`), flipped by every change: a result must be the original's or the replacement's,
//! from a state installed at some instant during the call.
//!
//! A tracer's hook counts its runs in a thread-local counter, so a worker sees exactly which
//! hooks ran during its own call: for each tracer, a call of a function the tracer matched
//! that lay entirely inside the tracer's active period must have run its hook once, a call
//! that began after the tracer's stop returned (or ended before its start began) must not
//! have, and no call of a function outside the tracer's filter may ever run it.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;
use textpoke::functions::{self, Entry, Replacement, Tracer};

use super::history::{History, key_consistent};

/// Patchable functions.
pub const FUNCTIONS: usize = 8;
/// Tracers.
pub const TRACERS: usize = 3;

/// What the replacement adds to the original's result.
const REPLACED: u64 = 16;

/// Every demo function's path starts with this.
const PREFIX: &str = module_path!();

/// The tracers' filters: the `a` functions, the functions ending in `1` (one `a`, one `b`:
/// overlapping the first), and all of them.
pub const PATTERNS: [&str; TRACERS] = [
    concat!(module_path!(), "::a*"),
    concat!(module_path!(), "::*1"),
    concat!(module_path!(), "::*"),
];

/// Whether tracer `j`'s filter matches function `i` (functions 0..4 are `a0..a3`, then
/// `b0..b3`), as the demo expects the glob to decide.
pub const fn member(j: usize, i: usize) -> bool {
    match j {
        0 => i < 4,
        1 => i % 4 == 1,
        _ => true,
    }
}

macro_rules! demo_functions {
    ($($i:literal $name:ident $v2:ident),* $(,)?) => {
        $(
            #[textpoke::patchable]
            fn $name(x: u64) -> u64 {
                x * 32 + $i
            }

            fn $v2(x: u64) -> u64 {
                x * 32 + REPLACED + $i
            }
        )*

        /// Each function's path, as hooks see it.
        pub const NAMES: [&str; FUNCTIONS] = [$(concat!(module_path!(), "::", stringify!($name))),*];

        /// Calls function `i` directly (so that it may be inlined, with its own site).
        pub fn call(i: usize, x: u64) -> u64 {
            match i {
                $($i => $name(x),)*
                _ => unreachable!("function {i} of {FUNCTIONS}"),
            }
        }

        /// Function `i`'s replacement, made by `replacement!` (not installed) or `replace!`
        /// (installed).
        fn replacement(i: usize, install: bool) -> textpoke::Result<Replacement> {
            match i {
                $($i if install => functions::replace!($name, $v2),
                  $i => functions::replacement!($name, $v2),)*
                _ => unreachable!("function {i} of {FUNCTIONS}"),
            }
        }
    };
}

demo_functions!(0 a0 a0_v2, 1 a1 a1_v2, 2 a2 a2_v2, 3 a3 a3_v2, 4 b0 b0_v2, 5 b1 b1_v2, 6 b2 b2_v2, 7 b3 b3_v2);

/// What function `i` returns for `x`, replaced or not.
pub fn expected(i: usize, x: u64, replaced: bool) -> u64 {
    x * 32 + REPLACED * replaced as u64 + i as u64
}

thread_local! {
    /// Runs of each tracer's hook on this thread.
    static HITS: [Cell<u64>; TRACERS] = const { [const { Cell::new(0) }; TRACERS] };
    /// The function each tracer's hook last ran for on this thread.
    static LAST: [Cell<&'static str>; TRACERS] = const { [const { Cell::new("") }; TRACERS] };
}

fn hits() -> [u64; TRACERS] {
    HITS.with(|h| std::array::from_fn(|j| h[j].get()))
}

/// The histories the workers check against (every function unreplaced and every tracer
/// stopped at version 0), and the hooks' own counts.
#[derive(Default)]
pub struct Shared {
    replaced: [History; FUNCTIONS],
    traced: [History; TRACERS],
    hook_calls: Arc<[AtomicU64; TRACERS]>,
}

/// Whether a history that starts off and flips at every change is on now. Only meaningful to
/// the thread that makes the changes.
fn on(h: &History) -> bool {
    h.read() / 2 % 2 == 1
}

/// How each check failed (their sum is `function_inconsistencies`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Faults {
    /// Results that are neither the original's nor the replacement's, or from a state not
    /// installed at any instant during the call.
    pub results: u64,
    /// Calls wholly inside a tracer's active period, of a function it matched, that did not
    /// run its hook.
    pub missed_hooks: u64,
    /// Calls wholly outside a tracer's active periods (begun after its stop returned, or
    /// ended before its start began) that ran its hook, or ran it twice.
    pub stray_hooks: u64,
    /// Hooks that ran for a function outside their tracer's filter, or were told another
    /// function's name than the one called.
    pub foreign_hooks: u64,
    /// Functions found in the wrong state once the workers stopped, and hook runs counted by
    /// the hooks but seen by no checked call.
    pub final_state: u64,
}

impl Faults {
    fn total(&self) -> u64 {
        self.results + self.missed_hooks + self.stray_hooks + self.foreign_hooks + self.final_state
    }

    fn add(&mut self, o: &Faults) {
        self.results += o.results;
        self.missed_hooks += o.missed_hooks;
        self.stray_hooks += o.stray_hooks;
        self.foreign_hooks += o.foreign_hooks;
        self.final_state += o.final_state;
    }
}

/// What one worker did to the functions.
#[derive(Default)]
pub struct WorkerTally {
    calls: u64,
    replaced: u64,
    hooks: [u64; TRACERS],
    faults: Faults,
}

impl Shared {
    /// Calls function `i` with `x` and checks its result and the hooks that ran for it
    /// against the histories.
    pub fn visit(&self, i: usize, x: u64, t: &mut WorkerTally) {
        let f0 = self.replaced[i].read();
        let t0: [u64; TRACERS] = std::array::from_fn(|j| self.traced[j].read());
        let h0 = hits();
        let r = call(i, x);
        let h1 = hits();
        let t1: [u64; TRACERS] = std::array::from_fn(|j| self.traced[j].read());
        let f1 = self.replaced[i].read();
        t.calls += 1;
        let replaced = r == expected(i, x, true);
        t.replaced += replaced as u64;
        if !(replaced || r == expected(i, x, false)) || !key_consistent(false, f0, f1, replaced) {
            t.faults.results += 1;
        }
        for j in 0..TRACERS {
            let ran = h1[j] - h0[j];
            t.hooks[j] += ran;
            check_hook(j, i, ran, (t0[j], t1[j]), &mut t.faults);
        }
    }
}

/// Checks that tracer `j`'s hook ran `ran` times during a call of function `i` that read the
/// tracer's history `seen` before and after.
fn check_hook(j: usize, i: usize, ran: u64, seen: (u64, u64), f: &mut Faults) {
    if !member(j, i) {
        f.foreign_hooks += (ran != 0) as u64;
    } else if ran > on_versions(seen.0, seen.1) {
        // Each tracer runs its hook at most once per call. Tracer `j`'s history counts a drop
        // and a remake (a new tracer, in another slot) as two flips, so a call that overlapped
        // several of `j`'s active periods may meet one hook of each tracer that filled them.
        f.stray_hooks += 1;
    } else if !key_consistent(false, seen.0, seen.1, ran == 1) {
        if ran == 1 {
            f.stray_hooks += 1;
        } else {
            f.missed_hooks += 1;
        }
    } else if ran == 1 && LAST.with(|l| l[j].get()) != NAMES[i] {
        f.foreign_hooks += 1;
    }
}

/// How many enabled versions a call that read `before` and then `after` overlapped.
fn on_versions(before: u64, after: u64) -> u64 {
    History::versions(before, after)
        .filter(|v| v % 2 == 1)
        .count() as u64
}

/// One tracer's line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct TracerReport {
    /// Its filter.
    pub pattern: &'static str,
    /// Functions it matched.
    pub functions: usize,
    /// Times it was started (by `enable`, `trace` or in a batch).
    pub starts: u64,
    /// Runs of its hook.
    pub hook_calls: u64,
}

/// The functions' part of the `--json` report (its fields are flattened into the report's
/// object).
#[derive(Clone, Debug, Default, Serialize)]
pub struct FunctionReport {
    /// Patchable functions called by the workers.
    pub functions: usize,
    /// Calls of them made by the workers, each checked.
    pub function_calls: u64,
    /// Those that ran the replacement.
    pub function_calls_replaced: u64,
    /// Runs of the tracers' hooks, as the hooks counted them.
    pub function_hook_calls: u64,
    /// Changes committed that changed functions: alone (a replacement, a tracer, several in
    /// one batch, a revert by pattern, tracers dropped and made again) or in one batch with keys
    /// and a static call.
    pub function_changes: u64,
    /// Of those, batches that also flipped keys and retargeted a static call.
    pub function_batches: u64,
    /// Replacements installed or reverted.
    pub function_replacement_flips: u64,
    /// Tracers started or stopped (dropping an active tracer stops it).
    pub function_tracer_flips: u64,
    /// Times every tracer was dropped and made again, in a rotated order, so that each takes
    /// another's slot.
    pub function_tracer_rebuilds: u64,
    /// Median time of one change of functions alone, in microseconds (the batches with keys
    /// are timed as `toggle_us_*`).
    pub function_change_us_median: f64,
    /// Each tracer.
    pub function_tracer_stats: Vec<TracerReport>,
    /// The functions' share of `inconsistencies`.
    pub function_inconsistencies: u64,
    /// What those were.
    pub function_faults: Faults,
}

impl FunctionReport {
    /// The summary's line, with what the inconsistencies were if there are any.
    pub fn summary(&self) -> String {
        let n = |v: u64| super::thousands(v);
        let f = &self.function_faults;
        let faults = if self.function_inconsistencies == 0 {
            String::new()
        } else {
            format!(
                "; {} function inconsistencies: {} results, {} missed hooks, {} stray hooks, {} \
                 hooks for a function outside their filter or told another's name, {} at the end",
                n(self.function_inconsistencies),
                n(f.results),
                n(f.missed_hooks),
                n(f.stray_hooks),
                n(f.foreign_hooks),
                n(f.final_state)
            )
        };
        format!(
            "{} patchable functions called {} times ({} replaced), {} tracer hook runs; {} \
             function changes ({} replacement flips, {} tracer flips, {} tracer rebuilds, {} \
             in batches with keys and a static call), median {:.1} µs{faults}",
            self.functions,
            n(self.function_calls),
            n(self.function_calls_replaced),
            n(self.function_hook_calls),
            n(self.function_changes),
            n(self.function_replacement_flips),
            n(self.function_tracer_flips),
            n(self.function_tracer_rebuilds),
            n(self.function_batches),
            self.function_change_us_median
        )
    }
}

/// One state flip: a tracer started or stopped, or a function replaced or reverted.
#[derive(Clone, Copy)]
enum Flip {
    Tracer(usize),
    Function(usize),
}

/// The main thread's side: the tracers and replacements, and what it did with them.
pub struct Changer<'s> {
    shared: &'s Shared,
    tracers: [Option<Tracer>; TRACERS],
    replacements: Vec<Replacement>,
    starts: [u64; TRACERS],
    changes: u64,
    batches: u64,
    replacement_flips: u64,
    tracer_flips: u64,
    rebuilds: u64,
    times: Vec<f64>,
}

fn err(e: textpoke::Error) -> String {
    e.to_string()
}

impl<'s> Changer<'s> {
    /// Reverts whatever an earlier run left replaced, and makes the tracers (stopped) and the
    /// replacements (not installed).
    pub fn new(shared: &'s Shared) -> Result<Self, String> {
        functions::revert(&format!("{PREFIX}::*")).map_err(err)?;
        let mut c = Changer {
            shared,
            tracers: Default::default(),
            replacements: (0..FUNCTIONS)
                .map(|i| replacement(i, false))
                .collect::<textpoke::Result<_>>()
                .map_err(err)?,
            starts: [0; TRACERS],
            changes: 0,
            batches: 0,
            replacement_flips: 0,
            tracer_flips: 0,
            rebuilds: 0,
            times: Vec::new(),
        };
        for j in 0..TRACERS {
            c.tracers[j] = Some(c.make_tracer(j, false)?);
        }
        Ok(c)
    }

    fn history(&self, flip: Flip) -> &'s History {
        match flip {
            Flip::Tracer(j) => &self.shared.traced[j],
            Flip::Function(i) => &self.shared.replaced[i],
        }
    }

    fn tracer(&self, j: usize) -> &Tracer {
        self.tracers[j]
            .as_ref()
            .expect("tracers are only missing while rebuilt")
    }

    /// Makes tracer `j`, started by `trace` if `start`, and checks what its filter matched.
    fn make_tracer(&mut self, j: usize, start: bool) -> Result<Tracer, String> {
        let counts = self.shared.hook_calls.clone();
        let hook = move |e: &Entry| {
            HITS.with(|h| h[j].set(h[j].get() + 1));
            LAST.with(|l| l[j].set(e.name()));
            counts[j].fetch_add(1, Ordering::Relaxed);
        };
        let tracer = if start {
            self.flip_counted(&[Flip::Tracer(j)], |_| functions::trace(PATTERNS[j], hook))?
        } else {
            Tracer::new(PATTERNS[j], hook).map_err(err)?
        };
        let want: Vec<&str> = (0..FUNCTIONS)
            .filter(|&i| member(j, i))
            .map(|i| NAMES[i])
            .collect();
        if tracer.functions() != want {
            return Err(format!(
                "tracer {:?} matched {:?}, not {want:?}",
                PATTERNS[j],
                tracer.functions()
            ));
        }
        Ok(tracer)
    }

    /// Runs `change`, which flips exactly `flips`, inside their histories' change, and times
    /// it (counted by [`count`](Self::count)).
    fn flip<R>(
        &self,
        flips: &[Flip],
        change: impl FnOnce(&Self) -> textpoke::Result<R>,
    ) -> Result<(R, f64), String> {
        for &f in flips {
            self.history(f).begin_change();
        }
        let t0 = Instant::now();
        // On failure the histories stay odd: nothing is judged against a state never
        // installed, and the run stops.
        let r = change(self).map_err(err)?;
        let us = t0.elapsed().as_secs_f64() * 1e6;
        self.end(flips);
        Ok((r, us))
    }

    fn end(&self, flips: &[Flip]) {
        for &f in flips {
            self.history(f).end_change();
        }
    }

    /// Counts a committed change of `flips`, which took `us` if it changed functions alone.
    fn count(&mut self, flips: &[Flip], us: Option<f64>) {
        for &f in flips {
            match f {
                Flip::Tracer(j) => {
                    self.tracer_flips += 1;
                    // The flip is done: the history says where it went.
                    self.starts[j] += on(self.history(f)) as u64;
                }
                Flip::Function(_) => self.replacement_flips += 1,
            }
        }
        self.changes += 1;
        self.times.extend(us);
    }

    /// [`flip`](Self::flip), then [`count`](Self::count).
    fn flip_counted<R>(
        &mut self,
        flips: &[Flip],
        change: impl FnOnce(&Self) -> textpoke::Result<R>,
    ) -> Result<R, String> {
        let (r, us) = self.flip(flips, change)?;
        self.count(flips, Some(us));
        Ok(r)
    }

    /// Adds `flip` to `batch`: the opposite of its current state.
    fn add<'a>(&'a self, batch: textpoke::Batch<'a>, flip: Flip) -> textpoke::Batch<'a> {
        let was = on(self.history(flip));
        match flip {
            Flip::Tracer(j) if was => batch.stop_tracer(self.tracer(j)),
            Flip::Tracer(j) => batch.start_tracer(self.tracer(j)),
            Flip::Function(i) if was => batch.revert(&self.replacements[i]),
            Flip::Function(i) => batch.replace(&self.replacements[i]),
        }
    }

    /// The flips round `round` puts in the batch of keys and a static call: one tracer and one
    /// function.
    fn joined_flips(round: usize) -> [Flip; 2] {
        [
            Flip::Tracer((round / 4 + 1) % TRACERS),
            Flip::Function((round / 4 + 3) % FUNCTIONS),
        ]
    }

    /// Adds round `round`'s flips to `batch`, the main thread's batch of keys and a static
    /// call, and begins their changes; [`joined`](Self::joined) ends them once it is
    /// committed.
    pub fn join<'a>(&'a self, round: usize, batch: textpoke::Batch<'a>) -> textpoke::Batch<'a> {
        let flips = Self::joined_flips(round);
        let batch = flips.iter().fold(batch, |b, &f| self.add(b, f));
        for &f in &flips {
            self.history(f).begin_change();
        }
        batch
    }

    /// The batch [`join`](Self::join) added to is committed.
    pub fn joined(&mut self, round: usize) {
        let flips = Self::joined_flips(round);
        self.end(&flips);
        self.count(&flips, None);
        self.batches += 1;
    }

    /// Round `round`'s change of functions alone, for the rounds whose keys change without
    /// them: in turn a replacement, a tracer (`enable`/`disable`), and one batch of a tracer
    /// and two replacements; every 64 rounds that batch gives way to a rebuild of the tracers,
    /// and 32 rounds later to a revert by pattern.
    pub fn change_alone(&mut self, round: usize) -> Result<(), String> {
        let turn = round / 4;
        match round % 4 {
            0 => {
                let i = turn % FUNCTIONS;
                let flip = [Flip::Function(i)];
                if on(self.history(flip[0])) {
                    self.flip_counted(&flip, |c| c.replacements[i].disable())
                        .map(drop)
                } else if turn.is_multiple_of(3) {
                    // `replace!` makes and installs a replacement equal to the one kept.
                    self.replacements[i] = self.flip_counted(&flip, |_| replacement(i, true))?;
                    Ok(())
                } else {
                    self.flip_counted(&flip, |c| c.replacements[i].enable())
                        .map(drop)
                }
            }
            1 => {
                let j = turn % TRACERS;
                let flip = [Flip::Tracer(j)];
                if on(self.history(flip[0])) {
                    self.flip_counted(&flip, |c| c.tracer(j).disable())
                        .map(drop)
                } else {
                    self.flip_counted(&flip, |c| c.tracer(j).enable()).map(drop)
                }
            }
            _ if round % 64 == 2 => self.rebuild(),
            _ if round % 64 == 34 => self.revert_group(turn % TRACERS),
            _ => {
                let flips = [
                    Flip::Tracer((turn + 2) % TRACERS),
                    Flip::Function((turn + 5) % FUNCTIONS),
                    Flip::Function((turn + 6) % FUNCTIONS),
                ];
                self.flip_counted(&flips, |c| {
                    flips
                        .iter()
                        .fold(textpoke::Batch::new(), |b, &f| c.add(b, f))
                        .commit()
                })
                .map(drop)
            }
        }
    }

    /// Drops every tracer (stopping the active ones), then makes them again in a rotated
    /// order, alternately started by `trace` and stopped.
    fn rebuild(&mut self) -> Result<(), String> {
        for j in 0..TRACERS {
            let flip = [Flip::Tracer(j)];
            let t = self.tracers[j].take();
            if on(self.history(flip[0])) {
                self.flip_counted(&flip, |_| {
                    drop(t);
                    Ok(())
                })?;
            } else {
                drop(t);
            }
        }
        self.rebuilds += 1;
        // A new tracer takes a free slot of the dispatcher (the lowest, today): in another
        // order, each takes a slot another tracer has just left, while a call that loaded its
        // function's mask before that tracer stopped may still be on its way into the slot.
        let first = self.rebuilds as usize;
        for n in 0..TRACERS {
            let j = (first + n) % TRACERS;
            let start = (first + j).is_multiple_of(2);
            self.tracers[j] = Some(self.make_tracer(j, start)?);
        }
        Ok(())
    }

    /// Reverts every replaced function of tracer `j`'s filter by pattern, which must find
    /// exactly those.
    fn revert_group(&mut self, j: usize) -> Result<(), String> {
        let flips: Vec<Flip> = (0..FUNCTIONS)
            .filter(|&i| member(j, i) && on(&self.shared.replaced[i]))
            .map(Flip::Function)
            .collect();
        let n = self.flip_counted(&flips, |_| functions::revert(PATTERNS[j]))?;
        if n == flips.len() {
            Ok(())
        } else {
            Err(format!(
                "revert({:?}) reverted {n} functions, not the {} replaced",
                PATTERNS[j],
                flips.len()
            ))
        }
    }

    /// Once the workers have stopped: checks every function's final state and the hook counts
    /// against what the workers saw, leaves nothing traced or replaced, and reports.
    pub fn finish(mut self, workers: &[&WorkerTally], errors: &mut Vec<String>) -> FunctionReport {
        let mut faults = Faults::default();
        let mut seen = [0u64; TRACERS];
        for w in workers {
            faults.add(&w.faults);
            for (s, h) in seen.iter_mut().zip(w.hooks) {
                *s += h;
            }
        }
        for i in 0..FUNCTIONS {
            let h0 = hits();
            let r = call(i, 3);
            let h1 = hits();
            faults.final_state += (r != expected(i, 3, on(&self.shared.replaced[i]))) as u64;
            for j in 0..TRACERS {
                seen[j] += h1[j] - h0[j];
                let want = (member(j, i) && on(&self.shared.traced[j])) as u64;
                faults.final_state += (h1[j] - h0[j] != want) as u64;
            }
        }
        let counted: [u64; TRACERS] =
            std::array::from_fn(|j| self.shared.hook_calls[j].load(Ordering::Relaxed));
        faults.final_state += (0..TRACERS).filter(|&j| counted[j] != seen[j]).count() as u64;
        self.tracers = Default::default();
        if let Err(e) = functions::revert(&format!("{PREFIX}::*")) {
            errors.push(e.to_string());
        }
        let mut times = std::mem::take(&mut self.times);
        times.sort_unstable_by(f64::total_cmp);
        FunctionReport {
            functions: FUNCTIONS,
            function_calls: workers.iter().map(|w| w.calls).sum(),
            function_calls_replaced: workers.iter().map(|w| w.replaced).sum(),
            function_hook_calls: counted.iter().sum(),
            function_changes: self.changes,
            function_batches: self.batches,
            function_replacement_flips: self.replacement_flips,
            function_tracer_flips: self.tracer_flips,
            function_tracer_rebuilds: self.rebuilds,
            function_change_us_median: super::percentile(&times, 0.5),
            function_tracer_stats: (0..TRACERS)
                .map(|j| TracerReport {
                    pattern: PATTERNS[j],
                    functions: (0..FUNCTIONS).filter(|&i| member(j, i)).count(),
                    starts: self.starts[j],
                    hook_calls: counted[j],
                })
                .collect(),
            function_inconsistencies: faults.total(),
            function_faults: faults,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_say_which_code_ran() {
        let all: Vec<u64> = (0..FUNCTIONS)
            .flat_map(|i| [expected(i, 5, false), expected(i, 5, true)])
            .collect();
        let mut distinct = all.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), all.len());
        assert!(NAMES.iter().all(|n| n.starts_with(PREFIX)));
    }
}
