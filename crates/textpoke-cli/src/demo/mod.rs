//! `textpoke demo`: worker threads call thousands of static-branch sites and a few static
//! calls, patchable functions, immediate values and detoured functions while the main thread
//! toggles the keys, retargets the calls, changes the functions, sets the immediates and turns
//! the detours on and off as fast as it can. Every call and read is checked against the history
//! of the key, call, function, immediate or detour behind it.

pub mod calls;
pub mod detours;
pub mod functions;
mod history;
pub mod immediates;
pub mod plugins;
mod served;
pub mod sites;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use detours::DetourReport;
use functions::FunctionReport;
use history::{History, key_consistent};
use immediates::ImmediateReport;
use plugins::{PluginReport, Plugins};
use serde::Serialize;
use sites::{KEY_LIST, KEYS, MAX_SITES, PER_KEY};

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// How long the main thread toggles.
    pub duration: Duration,
    /// Worker threads calling sites.
    pub threads: usize,
    /// Distinct sites the workers call (at most [`MAX_SITES`]).
    pub sites: usize,
    /// How progress is shown on stderr while it runs.
    pub progress: Progress,
    /// Plugin slots: copies of the plugin fixture loaded, toggled and unloaded meanwhile (0:
    /// none).
    pub plugins: usize,
    /// How often the main thread unloads one slot's plugin and loads a fresh copy.
    pub plugin_reload: Duration,
    /// Serve `textpoke ctl` while the demo runs.
    pub serve: bool,
}

/// What happened. Serialized as the `--json` output.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Site calls made by the workers.
    pub calls: u64,
    /// Calls that took the enabled path.
    pub calls_enabled: u64,
    /// Changes committed (each a batch of keys and static calls, or an `inc`/`dec`).
    pub toggles: u64,
    /// Key state changes within those (a batch may change several keys).
    pub key_toggles: u64,
    /// Distinct sites called.
    pub sites: usize,
    /// Keys toggled.
    pub keys: usize,
    /// Sites patched per key change (every site of a key is patched, called or not).
    pub sites_per_key: usize,
    /// Worker threads.
    pub threads: usize,
    /// Seconds spent toggling.
    pub seconds: f64,
    /// Calls made through static calls.
    pub static_call_calls: u64,
    /// Static-call retargets committed.
    pub static_call_updates: u64,
    /// Static calls retargeted.
    pub static_calls: usize,
    /// Calls (through sites or static calls) whose result no instant of their key's or call's
    /// history allows, plus sites and calls found in the wrong state at the end.
    pub inconsistencies: u64,
    /// What the changes slower than `TAIL_FACTOR` times the median had in common.
    pub tail: Tail,
    /// Median time of one change, in microseconds.
    pub toggle_us_median: f64,
    /// 99th percentile of one change, in microseconds.
    pub toggle_us_p99: f64,
    /// Breakpoint traps handled by emulation during the run.
    pub traps_emulated: usize,
    /// Late breakpoint traps handled by re-executing the finished site.
    pub traps_rewound: usize,
    /// Errors returned by textpoke (any error fails the run).
    pub errors: Vec<String>,
    /// What happened to the plugins, with `--plugins` (its fields are flattened into the
    /// report's JSON object, and absent without plugins).
    #[serde(flatten)]
    pub plugins: Option<PluginReport>,
    /// What happened to the patchable functions (its fields are flattened into the report's
    /// JSON object).
    #[serde(flatten)]
    pub functions: FunctionReport,
    /// What happened to the immediate values (its fields are flattened into the report's JSON
    /// object).
    #[serde(flatten)]
    pub immediates: ImmediateReport,
    /// What happened to the detoured functions (its fields are flattened into the report's
    /// JSON object).
    #[serde(flatten)]
    pub detours: DetourReport,
}

impl Report {
    /// Whether the run found nothing wrong.
    pub fn ok(&self) -> bool {
        self.inconsistencies == 0 && self.errors.is_empty()
    }
}

/// Most plugin slots a run may ask for (each copy is a file of its own, about 11 MB).
pub const MAX_PLUGINS: usize = 32;

/// Errors that stop the demo before it starts.
#[derive(Debug)]
pub enum ConfigError {
    /// More sites asked for than the binary has.
    TooManySites(usize),
    /// More plugins asked for than [`MAX_PLUGINS`].
    TooManyPlugins(usize),
    /// Zero threads or sites.
    Empty(&'static str),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::TooManySites(n) => {
                write!(f, "--sites {n}: this binary has {MAX_SITES} demo sites")
            }
            ConfigError::TooManyPlugins(n) => {
                write!(f, "--plugins {n}: at most {MAX_PLUGINS}")
            }
            ConfigError::Empty(what) => write!(f, "{what} must be at least 1"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Keys are process-wide: two runs at once would corrupt each other's histories.
static RUNNING: Mutex<()> = Mutex::new(());

/// The histories the workers check against, and what they started from.
struct Histories {
    keys: Vec<History>,
    initial: Vec<bool>,
    calls: [History; calls::CALLS],
    functions: functions::Shared,
    immediates: immediates::Shared,
    detours: detours::Shared,
}

#[derive(Default)]
struct WorkerTally {
    calls: u64,
    enabled: u64,
    static_calls: u64,
    inconsistencies: u64,
    plugins: plugins::WorkerTally,
    functions: functions::WorkerTally,
    immediates: immediates::WorkerTally,
    detours: detours::WorkerTally,
}

#[derive(Default)]
struct TogglerTally {
    key_toggles: u64,
    updates: u64,
    /// Per change: its time in µs, whether the patching thread lost its CPU during it, and the
    /// breakpoint traps emulated meanwhile (what stretches the slow ones).
    causes: Vec<(f64, bool, usize)>,
    errors: Vec<String>,
}

/// Involuntary context switches of the calling thread so far: it was preempted.
fn preemptions() -> i64 {
    // SAFETY: a zeroed rusage is a valid out-parameter; RUSAGE_THREAD reports on the caller.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    u.ru_nivcsw
}

/// Runs one change, timing it, and notes what may have stretched it (outside the timing).
fn timed<R>(t: &mut TogglerTally, change: impl FnOnce() -> R) -> R {
    let (switches, traps) = (preemptions(), textpoke::__private::trap_counts().0);
    let t0 = Instant::now();
    let r = change();
    let us = t0.elapsed().as_secs_f64() * 1e6;
    let preempted = preemptions() > switches;
    let traps = textpoke::__private::trap_counts().0 - traps;
    t.causes.push((us, preempted, traps));
    r
}

/// What the slowest changes had in common: those over [`TAIL_FACTOR`] times the median.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Tail {
    /// Changes slower than `TAIL_FACTOR` times the median.
    pub changes: u64,
    /// Of those, the changes during which the patching thread was preempted.
    pub preempted: u64,
    /// Mean breakpoint traps emulated during one of those changes.
    pub mean_traps: f64,
    /// Mean breakpoint traps emulated during any change.
    pub mean_traps_all: f64,
}

/// A change this many times slower than the median counts as the long tail.
pub const TAIL_FACTOR: f64 = 4.0;

fn tail(causes: &[(f64, bool, usize)], median: f64) -> Tail {
    let slow: Vec<_> = causes
        .iter()
        .filter(|(us, _, _)| *us > TAIL_FACTOR * median)
        .collect();
    let mean = |it: &mut dyn Iterator<Item = usize>, n: usize| {
        if n == 0 {
            0.0
        } else {
            it.sum::<usize>() as f64 / n as f64
        }
    };
    Tail {
        changes: slow.len() as u64,
        preempted: slow.iter().filter(|(_, p, _)| *p).count() as u64,
        mean_traps: mean(&mut slow.iter().map(|c| c.2), slow.len()),
        mean_traps_all: mean(&mut causes.iter().map(|c| c.2), causes.len()),
    }
}

/// Runs the demo.
pub fn run(config: &Config) -> Result<Report, ConfigError> {
    if config.sites > MAX_SITES {
        return Err(ConfigError::TooManySites(config.sites));
    }
    if config.sites == 0 {
        return Err(ConfigError::Empty("--sites"));
    }
    if config.threads == 0 {
        return Err(ConfigError::Empty("--threads"));
    }
    if config.plugins > MAX_PLUGINS {
        return Err(ConfigError::TooManyPlugins(config.plugins));
    }
    let _one_at_a_time = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    let keys = config.sites.div_ceil(PER_KEY).min(KEYS);
    let histories = Histories {
        keys: (0..keys).map(|_| History::default()).collect(),
        initial: KEY_LIST[..keys].iter().map(|k| k.is_enabled()).collect(),
        calls: Default::default(),
        functions: Default::default(),
        immediates: Default::default(),
        detours: Default::default(),
    };
    let sites: Vec<sites::Site> = (0..config.sites).map(sites::site).collect();
    let (emulated0, rewound0) = textpoke::__private::trap_counts();
    let mut toggler = TogglerTally::default();
    let sites_per_key = KEY_LIST[0].sites().unwrap_or_else(|e| {
        toggler.errors.push(e.to_string());
        0
    });
    if let Err(e) = calls::reset() {
        toggler.errors.push(e.to_string());
    }
    let mut changer = if toggler.errors.is_empty() {
        functions::Changer::new(&histories.functions)
            .map_err(|e| toggler.errors.push(e))
            .ok()
    } else {
        None
    };
    let mut setter = if toggler.errors.is_empty() {
        immediates::Setter::new(&histories.immediates)
            .map_err(|e| toggler.errors.push(e))
            .ok()
    } else {
        None
    };
    let mut detourer = if toggler.errors.is_empty() {
        detours::Changer::new(&histories.detours)
            .map_err(|e| toggler.errors.push(e))
            .ok()
    } else {
        None
    };
    let (plugins, mut plugin_toggler) = if config.plugins > 0 && toggler.errors.is_empty() {
        match Plugins::load(config.plugins) {
            Ok((p, t)) => (Some(p), t),
            Err(e) => {
                toggler.errors.push(e);
                (None, Default::default())
            }
        }
    } else {
        (None, Default::default())
    };

    // Its error is kept aside until the end: in the list now, it would stop the toggling.
    let serve_error = config.serve.then(served::serve).and_then(Result::err);
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let tallies: Vec<WorkerTally> = std::thread::scope(|s| {
        if config.serve {
            s.spawn(|| served::beat(&stop));
        }
        let workers: Vec<_> = (0..config.threads)
            .map(|w| {
                let (sites, histories, stop) = (&sites, &histories, &stop);
                let plugins = plugins.as_ref();
                s.spawn(move || work(w, sites, histories, plugins, stop))
            })
            .collect();
        let mut bar = Reporter::new(config.progress, config.duration);
        if let (Some(changer), Some(setter), Some(detourer)) =
            (changer.as_mut(), setter.as_mut(), detourer.as_mut())
            && toggler.errors.is_empty()
        {
            let plugins = plugins
                .as_ref()
                .map(|p| (p, &mut plugin_toggler, config.plugin_reload));
            toggle_until(
                started + config.duration,
                &histories,
                &mut toggler,
                (changer, setter, detourer, plugins),
                &mut bar,
            );
        }
        bar.finish();
        stop.store(true, Ordering::Relaxed);
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_default())
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    toggler.errors.extend(serve_error);

    // Single-threaded, after the dust settles: every site must show its key's final state, and
    // every call its last scheduled target.
    let sites_wrong = sites
        .iter()
        .enumerate()
        .filter(|(i, f)| f() != KEY_LIST[i / PER_KEY].is_enabled())
        .count() as u64;
    let calls_wrong = (0..calls::CALLS)
        .filter(|&c| {
            let v = histories.calls[c].read() / 2;
            calls::call(c, 3) != calls::expected(3, calls::scheduled(c, v))
        })
        .count() as u64;

    // The same for every plugin, which is then unloaded.
    let plugin_report = plugins.map(|p| {
        let found = p.finish();
        let workers: Vec<&plugins::WorkerTally> = tallies.iter().map(|t| &t.plugins).collect();
        plugins::report(config.plugins, plugin_toggler, &workers, found)
    });
    let plugin_inconsistencies = plugin_report
        .as_ref()
        .map_or(0, |p| p.plugin_inconsistencies);
    // And for every function, whose tracers are then dropped and replacements reverted.
    let function_report = changer
        .map(|c| {
            let workers: Vec<&functions::WorkerTally> =
                tallies.iter().map(|t| &t.functions).collect();
            c.finish(&workers, &mut toggler.errors)
        })
        .unwrap_or_default();
    let immediate_report = setter
        .map(|s| {
            let workers: Vec<&immediates::WorkerTally> =
                tallies.iter().map(|t| &t.immediates).collect();
            s.finish(&workers, &mut toggler.errors)
        })
        .unwrap_or_default();
    // And for every detour, which is then dropped (disabled).
    let detour_report = detourer
        .map(|d| {
            let workers: Vec<&detours::WorkerTally> = tallies.iter().map(|t| &t.detours).collect();
            d.finish(&workers)
        })
        .unwrap_or_default();
    let (emulated1, rewound1) = textpoke::__private::trap_counts();
    let mut times: Vec<f64> = toggler.causes.iter().map(|c| c.0).collect();
    times.sort_unstable_by(f64::total_cmp);
    let median = percentile(&times, 0.5);
    Ok(Report {
        calls: tallies.iter().map(|t| t.calls).sum(),
        calls_enabled: tallies.iter().map(|t| t.enabled).sum(),
        toggles: times.len() as u64,
        key_toggles: toggler.key_toggles,
        sites: config.sites,
        keys,
        sites_per_key,
        threads: config.threads,
        seconds,
        static_call_calls: tallies.iter().map(|t| t.static_calls).sum(),
        static_call_updates: toggler.updates,
        static_calls: calls::CALLS,
        inconsistencies: tallies.iter().map(|t| t.inconsistencies).sum::<u64>()
            + sites_wrong
            + calls_wrong
            + plugin_inconsistencies
            + function_report.function_inconsistencies
            + immediate_report.immediate_inconsistencies
            + detour_report.detour_inconsistencies,
        toggle_us_median: median,
        toggle_us_p99: percentile(&times, 0.99),
        tail: tail(&toggler.causes, median),
        traps_emulated: emulated1 - emulated0,
        traps_rewound: rewound1 - rewound0,
        errors: toggler.errors,
        plugins: plugin_report,
        functions: function_report,
        immediates: immediate_report,
        detours: detour_report,
    })
}

/// How progress is shown on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// A bar (stderr is a terminal).
    Bar,
    /// A line every second (stderr is a file or a pipe, or stdout carries JSON).
    Lines,
    /// Nothing.
    Off,
}

/// Shows how far the run is, in the demo's own words (changes so far).
struct Reporter {
    mode: Progress,
    bar: indicatif::ProgressBar,
    total: Duration,
    next_line: Duration,
}

impl Reporter {
    fn new(mode: Progress, total: Duration) -> Self {
        let bar = if mode == Progress::Bar {
            let bar = indicatif::ProgressBar::new(total.as_millis() as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{bar:40}] {elapsed}/{duration} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        Reporter {
            mode,
            bar,
            total,
            next_line: Duration::from_secs(1),
        }
    }

    fn update(&mut self, elapsed: Duration, changes: usize) {
        match self.mode {
            Progress::Bar => {
                self.bar.set_position(elapsed.as_millis() as u64);
                self.bar
                    .set_message(format!("{} changes", thousands(changes as u64)));
            }
            Progress::Lines if elapsed >= self.next_line => {
                self.next_line += Duration::from_secs(1);
                eprintln!(
                    "textpoke demo: {:.0} s of {:.0} s, {} changes so far",
                    elapsed.as_secs_f64(),
                    self.total.as_secs_f64(),
                    thousands(changes as u64)
                );
            }
            _ => {}
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// `n` with a comma between each group of three digits: `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Calls every site in turn, and after every fourth a static call, a patchable function, a
/// reader of every immediate and a detoured function, until told to stop, checking each result.
/// With plugins, after every sixteenth site it also runs one plugin key's sites and the
/// plugin's static call (see [`Plugins::visit`]).
fn work(
    first: usize,
    sites: &[sites::Site],
    h: &Histories,
    plugins: Option<&Plugins>,
    stop: &AtomicBool,
) -> WorkerTally {
    let mut tally = WorkerTally::default();
    // Workers start at different sites so that they do not move in lockstep.
    let offset = first * 97 % sites.len();
    let mut x = first as u64;
    let mut px = first as u64;
    let mut fx = first as u64;
    let mut dx = first as u64;
    while !stop.load(Ordering::Relaxed) {
        for n in 0..sites.len() {
            let i = (n + offset) % sites.len();
            let k = i / PER_KEY;
            let before = h.keys[k].read();
            let enabled = sites[i]();
            let after = h.keys[k].read();
            tally.calls += 1;
            tally.enabled += enabled as u64;
            if !key_consistent(h.initial[k], before, after, enabled) {
                tally.inconsistencies += 1;
            }
            if n % 4 == 0 {
                let c = (n / 4) % calls::CALLS;
                x = x.wrapping_add(1) & 0x0fff_ffff_ffff_ffff;
                let before = h.calls[c].read();
                let r = calls::call(c, x);
                let after = h.calls[c].read();
                tally.static_calls += 1;
                if !History::versions(before, after)
                    .any(|v| r == calls::expected(x, calls::scheduled(c, v)))
                {
                    tally.inconsistencies += 1;
                }
            }
            if n % 4 == 2 {
                // Small enough that `x * 32 + 31` cannot overflow.
                fx = fx.wrapping_add(1) & 0x00ff_ffff_ffff_ffff;
                let f = (n / 4) % functions::FUNCTIONS;
                h.functions.visit(f, fx, &mut tally.functions);
            }
            if n % 4 == 1 {
                h.immediates.visit(n / 4, &mut tally.immediates);
            }
            if n % 4 == 3 {
                // Small enough that `x * 32 + 18` cannot overflow.
                dx = dx.wrapping_add(1) & 0x00ff_ffff_ffff_ffff;
                h.detours.visit(n / 4, dx, &mut tally.detours);
            }
            if let Some(p) = plugins
                && n % 16 == 8
            {
                px = px.wrapping_add(1) & 0x0fff_ffff_ffff_ffff;
                p.visit(first, n, px, &mut tally.plugins);
            }
        }
    }
    tally
}

/// Flips keys and retargets static calls until `deadline`: single changes, `inc`/`dec`, and
/// batches that mix several keys with a static call, and a tracer and a replacement. The rounds
/// without such a batch also make one change of functions alone (see
/// [`functions::Changer::change_alone`]). Every round also sets immediates: within its batch of keys
/// and a static call, or alone in the `inc`/`dec` rounds (see
/// [`immediates::Setter::change_alone`]). Every fourth round turns detours on or off alone, and
/// every eighth puts one in its batch of keys and a static call (see [`detours::Changer`]).
/// With plugins, each round also makes one change to a plugin (see [`Plugins::change`]), and
/// every `reload` one slot's plugin is unloaded and loaded afresh, the slots in turn.
fn toggle_until(
    deadline: Instant,
    h: &Histories,
    t: &mut TogglerTally,
    (fns, imms, dets, mut plugins): (
        &mut functions::Changer<'_>,
        &mut immediates::Setter<'_>,
        &mut detours::Changer<'_>,
        Option<(&Plugins, &mut plugins::TogglerTally, Duration)>,
    ),
    bar: &mut Reporter,
) {
    let mut next_reload = Instant::now() + plugins.as_ref().map_or(Duration::ZERO, |p| p.2);
    let mut reloads = 0usize;
    let keys = h.keys.len();
    let mut round = 0usize;
    let start = Instant::now();
    while Instant::now() < deadline {
        let mut chosen = vec![round % keys];
        if round % 4 == 3 {
            // A multi-key batch. Each key at most once: the history model counts one flip per
            // key per change.
            chosen.extend([(round + 1) % keys, (round + 3) % keys]);
            chosen.sort_unstable();
            chosen.dedup();
        }
        let call = round % calls::CALLS;
        for &k in &chosen {
            h.keys[k].begin_change();
        }
        let result = if round % 4 == 1 {
            // The reference-counted path (0 → 1 enables, 1 → 0 disables), then the call alone.
            let key = KEY_LIST[chosen[0]];
            let r = timed(t, || match (key, key.is_enabled()) {
                (sites::Key::Off(k), true) => k.dec(),
                (sites::Key::Off(k), false) => k.inc(),
                (sites::Key::On(k), true) => k.dec(),
                (sites::Key::On(k), false) => k.inc(),
            });
            r.and_then(|()| {
                for &k in &chosen {
                    h.keys[k].end_change();
                }
                chosen.clear();
                retarget(h, call, textpoke::Batch::new(), t)
            })
        } else {
            let batch = chosen.iter().fold(textpoke::Batch::new(), |b, &k| {
                KEY_LIST[k].set(b, !KEY_LIST[k].is_enabled())
            });
            let batch = imms.join(round, batch);
            if round % 4 == 3 {
                retarget(h, call, fns.join(round, batch), t).map(|()| fns.joined(round))
            } else {
                retarget(h, call, dets.join(round, batch), t).map(|()| dets.joined(round))
            }
            .map(|()| imms.joined(round))
        };
        if let Err(e) = result {
            t.errors.push(e.to_string());
            // What failed did not change: leave its history odd, so no call is judged against
            // a version that was never installed, and stop.
            break;
        }
        for &k in &chosen {
            h.keys[k].end_change();
        }
        t.key_toggles += chosen.len() as u64 + (round % 4 == 1) as u64;
        if round % 4 != 3
            && let Err(e) = fns.change_alone(round)
        {
            t.errors.push(e);
            break;
        }
        if round % 4 == 1
            && let Err(e) = imms.change_alone(round)
        {
            t.errors.push(e);
            break;
        }
        if round.is_multiple_of(4)
            && let Err(e) = dets.change_alone(round)
        {
            t.errors.push(e);
            break;
        }
        if let Some((p, pt, reload)) = plugins.as_mut() {
            let mut r = p.change(round, pt);
            if r.is_ok() && Instant::now() >= next_reload {
                r = p.reload(reloads % p.slots(), pt);
                reloads += 1;
                next_reload = Instant::now() + *reload;
            }
            if let Err(e) = r {
                t.errors.push(e);
                break;
            }
        }
        round += 1;
        if round.is_multiple_of(64) {
            bar.update(start.elapsed(), round);
        }
    }
}

/// Adds the next retarget of static call `c` to `batch`, commits it and times it.
fn retarget(
    h: &Histories,
    c: usize,
    batch: textpoke::Batch<'_>,
    t: &mut TogglerTally,
) -> textpoke::Result<()> {
    let batch = calls::update(batch, c, h.calls[c].next_version());
    h.calls[c].begin_change();
    timed(t, || batch.commit())?;
    h.calls[c].end_change();
    t.updates += 1;
    Ok(())
}

/// The value at fraction `p` of `sorted` (0 if empty).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}
