//! `textpoke demo`: worker threads call thousands of sites while the main thread toggles their
//! keys as fast as it can, and every call is checked against the key's history.

mod history;
pub mod sites;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use history::History;
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
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// What happened. Serialized as the `--json` output.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Site calls made by the workers.
    pub calls: u64,
    /// Calls that took the enabled path.
    pub calls_enabled: u64,
    /// Changes committed (each a batch of one or more keys).
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
    /// Calls whose result no instant of the key's history allows, plus sites found in the
    /// wrong state at the end.
    pub inconsistencies: u64,
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
}

impl Report {
    /// Whether the run found nothing wrong.
    pub fn ok(&self) -> bool {
        self.inconsistencies == 0 && self.errors.is_empty()
    }
}

/// Errors that stop the demo before it starts.
#[derive(Debug)]
pub enum ConfigError {
    /// More sites asked for than the binary has.
    TooManySites(usize),
    /// Zero threads or sites.
    Empty(&'static str),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::TooManySites(n) => {
                write!(f, "--sites {n}: this binary has {MAX_SITES} demo sites")
            }
            ConfigError::Empty(what) => write!(f, "{what} must be at least 1"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Keys are process-wide: two runs at once would corrupt each other's histories.
static RUNNING: Mutex<()> = Mutex::new(());

#[derive(Default)]
struct WorkerTally {
    calls: u64,
    enabled: u64,
    inconsistencies: u64,
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
    let _one_at_a_time = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    let keys = config.sites.div_ceil(PER_KEY).min(KEYS);
    let histories: Vec<History> = KEY_LIST[..keys]
        .iter()
        .map(|k| History::new(k.is_enabled()))
        .collect();
    let sites: Vec<sites::Site> = (0..config.sites).map(sites::site).collect();
    let (emulated0, rewound0) = textpoke::__private::trap_counts();
    let mut errors = Vec::new();
    let sites_per_key = KEY_LIST[0].sites().unwrap_or_else(|e| {
        errors.push(e.to_string());
        0
    });

    let stop = AtomicBool::new(false);
    let mut times = Vec::new();
    let mut key_toggles = 0u64;
    let started = Instant::now();
    let tallies: Vec<WorkerTally> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..config.threads)
            .map(|w| {
                let (sites, histories, stop) = (&sites, &histories, &stop);
                s.spawn(move || work(w, sites, histories, stop))
            })
            .collect();
        let bar = progress_bar(config);
        if errors.is_empty() {
            key_toggles = toggle_until(
                started + config.duration,
                &histories,
                &mut times,
                &mut errors,
                &bar,
            );
        }
        bar.finish_and_clear();
        stop.store(true, Ordering::Relaxed);
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_default())
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();

    // Single-threaded, after the dust settles: every site must show its key's final state.
    let final_wrong = sites
        .iter()
        .enumerate()
        .filter(|(i, f)| f() != KEY_LIST[i / PER_KEY].is_enabled())
        .count() as u64;

    let (emulated1, rewound1) = textpoke::__private::trap_counts();
    times.sort_unstable_by(f64::total_cmp);
    Ok(Report {
        calls: tallies.iter().map(|t| t.calls).sum(),
        calls_enabled: tallies.iter().map(|t| t.enabled).sum(),
        toggles: times.len() as u64,
        key_toggles,
        sites: config.sites,
        keys,
        sites_per_key,
        threads: config.threads,
        seconds,
        inconsistencies: tallies.iter().map(|t| t.inconsistencies).sum::<u64>() + final_wrong,
        toggle_us_median: percentile(&times, 0.5),
        toggle_us_p99: percentile(&times, 0.99),
        traps_emulated: emulated1 - emulated0,
        traps_rewound: rewound1 - rewound0,
        errors,
    })
}

fn progress_bar(config: &Config) -> indicatif::ProgressBar {
    if !config.progress {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(config.duration.as_millis() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{bar:40}] {elapsed}/{duration} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// Calls every site in turn until told to stop, checking each result.
fn work(
    first: usize,
    sites: &[sites::Site],
    histories: &[History],
    stop: &AtomicBool,
) -> WorkerTally {
    let mut tally = WorkerTally::default();
    // Workers start at different sites so that they do not move in lockstep.
    let offset = first * 97 % sites.len();
    while !stop.load(Ordering::Relaxed) {
        for n in 0..sites.len() {
            let i = (n + offset) % sites.len();
            let history = &histories[i / PER_KEY];
            let before = history.read();
            let enabled = sites[i]();
            let after = history.read();
            tally.calls += 1;
            tally.enabled += enabled as u64;
            if !history.consistent(before, after, enabled) {
                tally.inconsistencies += 1;
            }
        }
    }
    tally
}

/// Flips keys until `deadline`, in single changes, inc/dec pairs and multi-key batches.
/// Returns the number of key state changes; `times` gets each change's duration in µs.
fn toggle_until(
    deadline: Instant,
    histories: &[History],
    times: &mut Vec<f64>,
    errors: &mut Vec<String>,
    bar: &indicatif::ProgressBar,
) -> u64 {
    let keys = histories.len();
    let mut key_toggles = 0;
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
        for &k in &chosen {
            histories[k].begin_change();
        }
        let t0 = Instant::now();
        let result = if round % 4 == 1 {
            // The reference-counted path: 0 → 1 enables, 1 → 0 disables.
            let key = KEY_LIST[chosen[0]];
            match (key, key.is_enabled()) {
                (sites::Key::Off(k), true) => k.dec(),
                (sites::Key::Off(k), false) => k.inc(),
                (sites::Key::On(k), true) => k.dec(),
                (sites::Key::On(k), false) => k.inc(),
            }
        } else {
            chosen
                .iter()
                .fold(textpoke::Batch::new(), |b, &k| {
                    KEY_LIST[k].set(b, !KEY_LIST[k].is_enabled())
                })
                .commit()
                .map(drop)
        };
        times.push(t0.elapsed().as_secs_f64() * 1e6);
        if let Err(e) = result {
            errors.push(e.to_string());
            // The key did not change: leave its history odd, so no call is judged against a
            // state that was never reached, and stop.
            break;
        }
        for &k in &chosen {
            histories[k].end_change();
        }
        key_toggles += chosen.len() as u64;
        round += 1;
        if round.is_multiple_of(64) {
            bar.set_position(start.elapsed().as_millis() as u64);
            bar.set_message(format!("{round} changes"));
        }
    }
    key_toggles
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}
