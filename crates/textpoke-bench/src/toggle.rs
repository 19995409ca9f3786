//! `toggle`: how long it takes to flip one key that controls N sites while other threads run
//! those sites, for textpoke and static-keys in the same process, on sites built the same way.
//!
//! For each size, and for each library in turn:
//!
//! 1. the key's site count is verified (textpoke's `StaticKey::sites`, static-keys' table), and
//!    every site's value is checked after an enable and after a disable (this also warms up:
//!    textpoke builds its index, and the first write to each code page copies it);
//! 2. `busy_threads` threads start calling every site of the key in a loop, each pinned to a CPU
//!    other than the patching thread's (when there is one), so that they really run meanwhile;
//! 3. the key is toggled `samples` times, alternating enable and disable, each toggle timed on
//!    its own; the median is reported;
//! 4. the busy threads stop, the key is left disabled, and the sites are checked once more.
//!
//! With `--plugins N`, N copies of the plugin fixture (`textpoke-fixture`: a `cdylib` with its
//! own copy of textpoke, loaded with `dlopen(RTLD_LOCAL)`, each from its own file) are loaded
//! first, and for each size step 3 changes: in each of `samples` rounds the executable's key and
//! then the key of the same size in each plugin are toggled once each, in turn, and before each
//! toggle the busy threads are switched to run exactly the sites of the key about to be toggled
//! (the plugin's through its exported `tpp_group_run`) and have completed a full pass of them. So
//! the executable's and the plugins' toggles are measured under the same load and the same noise;
//! `textpoke_us_median` then comes from these interleaved toggles, and `plugin_us_median` (over
//! every plugin toggle) and `plugin_ratio` are added to the row.
//!
//! After the sizes, the run's one-site floor ([`FloorRow`]): textpoke's 1-site key toggled
//! `samples` times, each toggle followed by one timed `membarrier(SYNC_CORE)`, beside one busy
//! thread running the site, so that the ratio of the two medians compares costs met under the
//! same load. With `--plot`, the rows are then drawn into an SVG (see [`crate::plot`]).
//!
//! static-keys patches each site by swapping in a patched copy of its page with `mremap`, and its
//! docs call toggling while other threads run unsupported. By default its busy threads run its
//! own sites anyway, so that both libraries work under the same load; the `note` of every row
//! says which way it was measured, and `--static-keys-busy none` measures it without them.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use serde::Serialize;
use textpoke::{Batch, PatchStats};
use textpoke_fixture::{GroupStats, Plugin};

use crate::affinity::{self, CpuMask, Placement, RestoreAffinity};
use crate::sites::{self, SiteFns, SiteGroup};
use crate::{BenchError, Result, peer, plot, raw, stats};

/// What the busy threads run while static-keys' key is toggled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PeerBusy {
    /// Its own sites, as textpoke's busy threads run textpoke's (unsupported by static-keys).
    Own,
    /// No busy threads at all while static-keys toggles (what static-keys supports).
    None,
}

/// Options of the `toggle` subcommand.
#[derive(Clone, Debug, clap::Args)]
pub struct ToggleArgs {
    /// Sites controlled by the measured key; a comma list measures each size in turn.
    /// Sizes: 1, 10, 100, 1000, 10000, 100000 (not with --plugins: the plugin's groups stop at
    /// 10000).
    #[arg(long, value_delimiter = ',', default_value = "10000")]
    pub sites: Vec<usize>,
    /// Threads calling every site of the measured key while it is toggled.
    #[arg(long, default_value_t = 1)]
    pub busy_threads: usize,
    /// Timed toggles of textpoke's key per size.
    #[arg(long, default_value_t = 101)]
    pub samples: usize,
    /// Timed toggles of static-keys' key per size [default: as many as fit
    /// --static-keys-budget-ms, at most --samples and at least 11, or at least 5 where 11 would
    /// take over a minute (about 100,000 sites)].
    #[arg(long)]
    pub static_keys_samples: Option<usize>,
    /// Time to spend on static-keys' timed toggles per size, in milliseconds, when
    /// --static-keys-samples is not given.
    #[arg(long, default_value_t = 3000)]
    pub static_keys_budget_ms: u64,
    /// What busy threads run while static-keys toggles.
    #[arg(long, value_enum, default_value_t = PeerBusy::Own)]
    pub static_keys_busy: PeerBusy,
    /// Also toggle, interleaved with the executable's key, a key with the same number of sites
    /// in each of N loaded copies of the plugin fixture, and report `plugin_us_median`.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub plugins: usize,
    /// Leave thread placement to the scheduler instead of pinning the patching thread and the
    /// busy threads to different CPUs.
    #[arg(long)]
    pub no_pin: bool,
    /// Print one JSON object per size on stdout instead of a table, then one for the run's
    /// one-site floor.
    #[arg(long)]
    pub json: bool,
    /// Also draw median µs per toggle against sites, log-log, for both libraries, into this
    /// SVG file (after the run).
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<std::path::PathBuf>,
}

/// One size's results.
#[derive(Clone, Debug, Serialize)]
pub struct ToggleRow {
    /// Sites controlled by each measured key.
    pub sites: usize,
    /// Threads calling the sites during the timed toggles.
    pub busy_threads: usize,
    /// Median wall time of one textpoke toggle, in microseconds.
    pub textpoke_us_median: f64,
    /// Median wall time of one static-keys toggle, in microseconds.
    pub static_keys_us_median: f64,
    /// `static_keys_us_median / textpoke_us_median`.
    pub speedup: f64,
    /// textpoke's table section size over its number of entries.
    pub table_bytes_per_site: f64,
    /// static-keys' table section size over its number of entries.
    pub static_keys_table_bytes_per_site: f64,
    /// Timed textpoke toggles.
    pub textpoke_samples: usize,
    /// Timed static-keys toggles.
    pub static_keys_samples: usize,
    /// `pwrite` calls per textpoke toggle (median over the samples, from `PatchStats`).
    pub writes: usize,
    /// Core serializations per textpoke toggle (median over the samples, from `PatchStats`).
    pub syncs: usize,
    /// 90th percentile of textpoke's toggle times, in microseconds.
    pub textpoke_us_p90: f64,
    /// 90th percentile of static-keys' toggle times, in microseconds.
    pub static_keys_us_p90: f64,
    /// Site calls the busy threads made while textpoke's key was being toggled.
    pub textpoke_busy_calls: u64,
    /// Site calls the busy threads made while static-keys' key was being toggled.
    pub static_keys_busy_calls: u64,
    /// How the comparison was made, and anything it could not do.
    pub note: String,
    /// With `--plugins`: the plugins' keys, measured in the same run (flattened into the row's
    /// JSON object; absent without plugins).
    #[serde(flatten)]
    pub plugin: Option<PluginRow>,
}

/// The one-site floor of a run, printed once after the rows: a toggle of textpoke's 1-site key
/// against one core serialization, both beside one busy thread running that site, timed in
/// turn (a toggle, then a membarrier, and again) so that both meet the same load and noise.
#[derive(Clone, Debug, Serialize)]
pub struct FloorRow {
    /// Median wall time of one toggle of textpoke's 1-site key while one busy thread runs that
    /// site, in µs.
    pub one_site_us: f64,
    /// Median wall time of one `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)` while
    /// the same busy thread runs the same site, in µs.
    pub membarrier_us: f64,
    /// `one_site_us / membarrier_us` (the project's target: at most 2.5).
    pub one_site_over_membarrier: f64,
    /// Core serializations per 1-site toggle (median over the samples, from `PatchStats`):
    /// about this many times `membarrier_us` of `one_site_us` is the protocol's floor.
    pub one_site_syncs: usize,
    /// `pwrite` calls per 1-site toggle (median over the samples, from `PatchStats`).
    pub one_site_writes: usize,
    /// Timed toggles, and as many timed membarriers (`--samples`).
    pub floor_samples: usize,
    /// Site calls the busy thread made while both were timed.
    pub floor_busy_calls: u64,
    /// How the floor was measured.
    pub floor_note: String,
}

/// Busy threads beside the one-site floor's toggles and membarriers, whatever `--busy-threads`
/// says: the floor is defined against one.
const FLOOR_BUSY_THREADS: usize = 1;

/// Warm-up membarriers before the floor's timed ones (the first after a pause is slower).
const FLOOR_WARMUP: usize = 10;

/// Measures the one-site floor: `args.samples` toggles of textpoke's 1-site key, each followed
/// by one timed `membarrier(SYNC_CORE)`, beside [`FLOOR_BUSY_THREADS`] busy thread running
/// the site, placed as the rows' threads are.
pub fn measure_floor(args: &ToggleArgs) -> Result<FloorRow> {
    let group = sites::group(1).ok_or_else(|| BenchError::new("no group of 1 site"))?;
    verify(group)?;
    raw::register_sync_core()?;
    let (_restore, placement) = place(args.no_pin)?;
    let mut stats: Vec<PatchStats> = Vec::with_capacity(args.samples + 3);
    let mut set = textpoke_setter(group, &mut stats);
    check_toggle("textpoke", group.textpoke_sites, &mut set)?;
    let mut barriers = Vec::with_capacity(args.samples);
    let (toggles, busy_calls) = with_busy_threads(
        FLOOR_BUSY_THREADS,
        placement.as_ref(),
        group.textpoke_sites,
        || {
            (0..FLOOR_WARMUP).try_for_each(|_| raw::sync_core())?;
            time_toggles(args.samples, &mut set, || {
                barriers.push(stats::time_us(raw::sync_core)?);
                Ok(())
            })
        },
    )?;
    drop(set);
    check_sites("textpoke", group.textpoke_sites, false)?;
    let (writes, syncs) = timed_writes_and_syncs(&stats, args.samples);
    let one_site_us = stats::median(&toggles);
    let membarrier_us = stats::median(&barriers);
    let mut floor_note = format!(
        "{} toggles of textpoke's 1-site key (alternating enable/disable), each followed by one \
         membarrier(PRIVATE_EXPEDITED_SYNC_CORE) timed on its own, after {FLOOR_WARMUP} \
         untimed membarriers, all beside {FLOOR_BUSY_THREADS} busy thread running the site \
         (whatever --busy-threads says); {syncs} core syncs and {writes} pwrites per toggle",
        args.samples
    );
    match &placement {
        Some(p) => floor_note.push_str(&format!("; {}", p.describe(FLOOR_BUSY_THREADS))),
        None => floor_note.push_str("; threads placed by the scheduler (--no-pin)"),
    }
    crate::mark_debug_build(&mut floor_note);
    Ok(FloorRow {
        one_site_us,
        membarrier_us,
        one_site_over_membarrier: one_site_us / membarrier_us,
        one_site_syncs: syncs,
        one_site_writes: writes,
        floor_samples: toggles.len(),
        floor_busy_calls: busy_calls,
        floor_note,
    })
}

/// The plugin part of a row (`--plugins N`).
#[derive(Clone, Debug, Serialize)]
pub struct PluginRow {
    /// Plugins loaded, each toggling its own key of `sites` sites.
    pub plugins: usize,
    /// Median wall time of one plugin key toggle, over every plugin's, in microseconds.
    pub plugin_us_median: f64,
    /// 90th percentile of the plugin toggle times, in microseconds.
    pub plugin_us_p90: f64,
    /// `plugin_us_median / textpoke_us_median` (target: at most 1.2).
    pub plugin_ratio: f64,
    /// Median of each plugin's own toggles, in microseconds, in load order.
    pub plugin_us_medians: Vec<f64>,
    /// Timed plugin toggles, all plugins together.
    pub plugin_samples: usize,
    /// `pwrite` calls per plugin toggle (median, from the plugin's `PatchStats`).
    pub plugin_writes: usize,
    /// Core serializations per plugin toggle (median, from the plugin's `PatchStats`).
    pub plugin_syncs: usize,
    /// Site calls the busy threads made in the plugins while their keys were being toggled.
    pub plugin_busy_calls: u64,
}

/// Measures every size in `args.sites`, handing each row to `out` as soon as it is ready, then
/// the one-site floor, which it returns; with `--plot`, draws the rows into that file last.
pub fn run(args: &ToggleArgs, out: &mut dyn FnMut(&ToggleRow) -> Result<()>) -> Result<FloorRow> {
    if args.sites.is_empty() {
        return Err(BenchError::new("--sites names no size"));
    }
    // Every size is checked before anything is measured.
    let groups = args
        .sites
        .iter()
        .map(|&n| {
            sites::group(n).ok_or_else(|| {
                BenchError::new(format!(
                    "no key controls exactly {n} sites; --sites takes {}",
                    sites::sizes()
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if args.samples == 0 || args.static_keys_samples == Some(0) {
        return Err(BenchError::new("sample counts must be at least 1"));
    }
    if args.plugins > MAX_PLUGINS {
        return Err(BenchError::new(format!(
            "--plugins {}: at most {MAX_PLUGINS}",
            args.plugins
        )));
    }
    if args.plugins > 0
        && let Some(n) = args
            .sites
            .iter()
            .find(|n| !textpoke_fixture::GROUP_SIZES.contains(n))
    {
        return Err(BenchError::new(format!(
            "--plugins: the plugin has no group of {n} sites; its sizes are {:?}",
            textpoke_fixture::GROUP_SIZES
        )));
    }
    if let Some(path) = &args.plot {
        // A run can take minutes: a path that cannot be written fails now, not after it.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| BenchError::new(format!("--plot {}: {e}", path.display())))?;
    }
    peer::init();
    let plugins = load_plugins(args.plugins)?;
    let mut rows = Vec::new();
    let result: Result<()> = groups.into_iter().try_for_each(|group| {
        let row = measure(group, args, &plugins)?;
        out(&row)?;
        rows.push(row);
        Ok(())
    });
    drop(plugins);
    // Best effort: the files are temporary copies of the embedded plugin.
    let _ = textpoke_fixture::remove_files();
    result?;
    let floor = measure_floor(args)?;
    if let Some(path) = &args.plot {
        plot::write_toggle_svg(path, &rows, &floor)?;
    }
    Ok(floor)
}

/// Fewest timed static-keys toggles per size, unless they would take over
/// [`PEER_FLOOR_BUDGET_US`].
const PEER_MIN_SAMPLES: usize = 11;

/// Fewest timed static-keys toggles per size however slow they are.
const PEER_MIN_SAMPLES_SLOW: usize = 5;

/// Time that [`PEER_MIN_SAMPLES`] static-keys toggles may take, in µs; slower toggles get fewer
/// samples, down to [`PEER_MIN_SAMPLES_SLOW`].
const PEER_FLOOR_BUDGET_US: f64 = 60e6;

/// Most plugins `--plugins` takes (each copy is a file of its own, about 11 MB).
pub const MAX_PLUGINS: usize = 32;

/// Loads `n` copies of the plugin, each from its own file.
fn load_plugins(n: usize) -> Result<Vec<Plugin>> {
    (0..n)
        .map(|i| Plugin::load(i).map_err(|e| BenchError::new(format!("plugin {i}: {e}"))))
        .collect()
}

/// Checks that the plugin's key for `n` sites controls exactly `n` sites, and that every site
/// follows an enable and a disable (this also warms the plugin up, as [`check_toggle`] does the
/// executable).
fn check_plugin(i: usize, p: &Plugin, n: usize) -> Result<()> {
    let err = |e: String| BenchError::new(format!("plugin {i}: {e}"));
    let found = p.group_sites(n).map_err(err)?;
    if found != n {
        return Err(err(format!(
            "its key for the {n}-site group controls {found} sites"
        )));
    }
    let expect = |on: bool| match p.group_run(n) {
        Some(m) if m == if on { n } else { 0 } => Ok(()),
        m => Err(err(format!(
            "{m:?} of its {n} sites took the enabled path with the key {}",
            if on { "enabled" } else { "disabled" }
        ))),
    };
    let set = |on: bool| match p.group_set(n, on).map_err(err)? {
        s if s.sites == n => Ok(()),
        s => Err(err(format!(
            "a toggle of its {n}-site key patched {} sites",
            s.sites
        ))),
    };
    expect(false)?;
    set(true)?;
    expect(true)?;
    set(false)?;
    expect(false)
}

/// How many entries static-keys' table must hold for a key with `size` sites. At opt-level 0
/// its `static_branch_unlikely!` keeps both arms of `if key.initial_enabled()`, so every site
/// also emits a dead JMP-form copy with its own entry.
fn expected_peer_entries(size: usize) -> usize {
    if cfg!(debug_assertions) {
        2 * size
    } else {
        size
    }
}

/// Checks that each of `group`'s keys controls exactly its sites, and nothing else.
pub fn verify(group: &SiteGroup) -> Result<()> {
    let n = group.size;
    let found = group.textpoke_key.sites()?.len();
    if found != n || group.textpoke_sites.sites() != n {
        return Err(BenchError::new(format!(
            "textpoke's key for the {n}-site group controls {found} sites and the group has {} \
             sites in its functions; expected {n} of each (were site functions merged or \
             dropped?)",
            group.textpoke_sites.sites()
        )));
    }
    let found = peer::entries_of(group.static_keys_key)?;
    let want = expected_peer_entries(n);
    if found != want || group.static_keys_sites.sites() != n {
        return Err(BenchError::new(format!(
            "static-keys' key for the {n}-site group has {found} table entries and the group has \
             {} sites in its functions; expected {want} and {n} (were site functions merged or \
             dropped?)",
            group.static_keys_sites.sites()
        )));
    }
    Ok(())
}

/// Fails unless every site takes the enabled path exactly when `want`.
fn check_sites(lib: &str, sites: SiteFns, want: bool) -> Result<()> {
    let expected = if want { sites.per_fn } else { 0 };
    let found = sites
        .fns
        .iter()
        .map(|f| f())
        .enumerate()
        .find(|&(_, m)| m != expected);
    match found {
        None => Ok(()),
        Some((i, m)) => Err(BenchError::new(format!(
            "{m} of the {} {lib} sites of site function {i} (of {}) took the enabled path while \
             their key is {}",
            sites.per_fn,
            sites.fns.len(),
            if want { "enabled" } else { "disabled" }
        ))),
    }
}

/// Enables and disables a key, checking every site after each.
fn check_toggle(lib: &str, sites: SiteFns, mut set: impl FnMut(bool) -> Result<()>) -> Result<()> {
    check_sites(lib, sites, false)?;
    set(true)?;
    check_sites(lib, sites, true)?;
    set(false)?;
    check_sites(lib, sites, false)
}

/// Runs `body` while `threads` threads, named `busy-{i}` and pinned to
/// `placement.busy_cpu(i)` when there is a placement, each run `work(i)`, which returns once
/// `stop` is set. A thread that cannot be pinned calls `unpinned(i)` (so that whoever waits
/// for it is released) and fails. `body` runs only if every thread started; `stop` is set and
/// every thread joined before this returns, with what `body` and each thread returned.
pub(crate) fn with_threads<T, R: Send>(
    threads: usize,
    placement: Option<&Placement>,
    stop: &AtomicBool,
    work: &(dyn Fn(usize) -> R + Sync),
    unpinned: &(dyn Fn(usize) + Sync),
    body: impl FnOnce() -> Result<T>,
) -> Result<(T, Vec<R>)> {
    std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(threads);
        let mut spawn_error = None;
        for i in 0..threads {
            let spawned = std::thread::Builder::new()
                .name(format!("busy-{i}"))
                .spawn_scoped(scope, move || -> Result<R> {
                    if let Some(p) = placement
                        && let Err(e) = CpuMask::only(p.busy_cpu(i)).apply()
                    {
                        unpinned(i);
                        return Err(e);
                    }
                    Ok(work(i))
                });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    spawn_error = Some(BenchError::new(format!("cannot start busy thread: {e}")));
                    break;
                }
            }
        }
        // Threads that did start would never be waited for by `body`.
        let result = match spawn_error {
            Some(e) => Err(e),
            None => body(),
        };
        stop.store(true, Ordering::Relaxed);
        let mut returned = Vec::with_capacity(handles.len());
        let mut thread_error = None;
        for h in handles {
            match h.join() {
                Ok(Ok(r)) => returned.push(r),
                Ok(Err(e)) => thread_error = Some(e),
                Err(_) => thread_error = Some(BenchError::new("a busy thread panicked")),
            }
        }
        let value = result?;
        match thread_error {
            Some(e) => Err(e),
            None => Ok((value, returned)),
        }
    })
}

/// Runs `body` while `threads` threads run every site in `sites` over and over, busy
/// thread `i` pinned to `placement.busy_cpu(i)` when there is a placement. Returns what `body`
/// returned and the number of site runs the threads made. The threads have each made one full pass
/// before `body` starts, and are stopped and joined before this returns.
fn with_busy_threads<T>(
    threads: usize,
    placement: Option<&Placement>,
    sites: SiteFns,
    body: impl FnOnce() -> Result<T>,
) -> Result<(T, u64)> {
    let stop = AtomicBool::new(false);
    let ready = AtomicUsize::new(0);
    let work = |_: usize| {
        let sites = black_box(sites);
        let mut passes = 0u64;
        loop {
            black_box(sites.run());
            passes += 1;
            if passes == 1 {
                ready.fetch_add(1, Ordering::Release);
            }
            if stop.load(Ordering::Relaxed) {
                return passes;
            }
        }
    };
    let unpinned = |_: usize| {
        ready.fetch_add(1, Ordering::Release);
    };
    let (value, passes) = with_threads(threads, placement, &stop, &work, &unpinned, || {
        while ready.load(Ordering::Acquire) < threads {
            std::thread::yield_now();
        }
        body()
    })?;
    Ok((value, passes.iter().sum::<u64>() * sites.sites() as u64))
}

/// Runs `body` while `threads` busy threads each run `run(t)` over and over, for the target
/// `t` last chosen by the `switch` function handed to `body` (initially 0); busy thread `i` is
/// pinned to `placement.busy_cpu(i)` when there is a placement. `switch(t)` returns once every
/// busy thread has completed a full `run(t)` since it was called, so the threads are running
/// `t` from then on. Returns what `body` returned and, per target, the number of complete runs
/// the threads made of it. The threads are stopped and joined before this returns.
fn with_switching_busy_threads<T>(
    threads: usize,
    placement: Option<&Placement>,
    targets: usize,
    run: &(dyn Fn(usize) + Sync),
    body: impl FnOnce(&dyn Fn(usize)) -> Result<T>,
) -> Result<(T, Vec<u64>)> {
    // The chosen target in the low 16 bits, above it an epoch that grows at every switch; each
    // busy thread publishes in `done` the value under which it last completed a run.
    let chosen = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let done: Vec<AtomicU64> = (0..threads).map(|_| AtomicU64::new(0)).collect();
    let epoch = AtomicU64::new(0);
    let switch = |t: usize| {
        let v = (epoch.fetch_add(1, Ordering::Relaxed) + 1) << 16 | t as u64;
        chosen.store(v, Ordering::Release);
        while done.iter().any(|d| d.load(Ordering::Acquire) < v) {
            std::hint::spin_loop();
        }
    };
    let work = |i: usize| {
        let mut runs = vec![0u64; targets];
        loop {
            let v = chosen.load(Ordering::Acquire);
            let t = (v & 0xffff) as usize;
            run(t);
            runs[t] += 1;
            done[i].store(v, Ordering::Release);
            if stop.load(Ordering::Relaxed) {
                return runs;
            }
        }
    };
    // A thread that could not be pinned must not hold up `switch`.
    let unpinned = |i: usize| done[i].store(u64::MAX, Ordering::Release);
    let (value, per_thread) = with_threads(threads, placement, &stop, &work, &unpinned, || {
        switch(0);
        body(&switch)
    })?;
    let mut runs = vec![0u64; targets];
    for r in per_thread {
        runs.iter_mut().zip(r).for_each(|(a, b)| *a += b);
    }
    Ok((value, runs))
}

/// Toggles `samples` times, alternating enable (first) and disable, timing each toggle in
/// microseconds, and runs `between` after each (outside the timer). Leaves the key disabled.
fn time_toggles(
    samples: usize,
    mut set: impl FnMut(bool) -> Result<()>,
    mut between: impl FnMut() -> Result<()>,
) -> Result<Vec<f64>> {
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples {
        times.push(stats::time_us(|| set(i % 2 == 0))?);
        between()?;
    }
    if samples % 2 == 1 {
        set(false)?;
    }
    Ok(times)
}

/// Pins the calling thread to the patcher's CPU of a placement over the CPUs it may use, unless
/// `no_pin`; the guard gives the thread its mask back when dropped.
pub(crate) fn place(no_pin: bool) -> Result<(RestoreAffinity, Option<Placement>)> {
    let saved = affinity::current()?;
    let restore = RestoreAffinity(saved);
    if no_pin {
        return Ok((restore, None));
    }
    let p = Placement::over(&saved.cpus())?;
    CpuMask::only(p.main).apply()?;
    Ok((restore, Some(p)))
}

/// Sets `group`'s textpoke key in a batch of its own, failing unless the batch patched exactly
/// the group's sites; each batch's `PatchStats` go to `stats`.
fn textpoke_setter<'a>(
    group: &'static SiteGroup,
    stats: &'a mut Vec<PatchStats>,
) -> impl FnMut(bool) -> Result<()> + 'a {
    move |on| {
        let s = Batch::new().set(group.textpoke_key, on).commit()?;
        if s.sites != group.size {
            return Err(BenchError::new(format!(
                "a textpoke toggle of the {}-site key patched {} sites",
                group.size, s.sites
            )));
        }
        stats.push(s);
        Ok(())
    }
}

/// The median `pwrite` calls and core serializations of the timed batches in `stats`, which
/// follow the two untimed ones of [`check_toggle`].
fn timed_writes_and_syncs(stats: &[PatchStats], samples: usize) -> (usize, usize) {
    let timed = &stats[2..2 + samples];
    (
        stats::median_usize(timed.iter().map(|s| s.writes)),
        stats::median_usize(timed.iter().map(|s| s.syncs)),
    )
}

/// Measures one group: textpoke first (interleaved with the plugins' keys of the same size, if
/// any are loaded), then static-keys.
pub fn measure(
    group: &'static SiteGroup,
    args: &ToggleArgs,
    plugins: &[Plugin],
) -> Result<ToggleRow> {
    let n = group.size;
    verify(group)?;
    let (_restore, placement) = place(args.no_pin)?;

    // textpoke.
    let mut stats: Vec<PatchStats> = Vec::with_capacity(args.samples + 3);
    let mut set_textpoke = textpoke_setter(group, &mut stats);
    check_toggle("textpoke", group.textpoke_sites, &mut set_textpoke)?;
    let (textpoke_times, textpoke_busy_calls, plugin) = if plugins.is_empty() {
        let (times, busy_calls) = with_busy_threads(
            args.busy_threads,
            placement.as_ref(),
            group.textpoke_sites,
            || time_toggles(args.samples, &mut set_textpoke, || Ok(())),
        )?;
        (times, busy_calls, None)
    } else {
        let (times, busy_calls, p) =
            measure_with_plugins(group, args, placement.as_ref(), plugins, &mut set_textpoke)?;
        (times, busy_calls, Some(p))
    };
    check_sites("textpoke", group.textpoke_sites, false)?;
    drop(set_textpoke);
    let (writes, syncs) = timed_writes_and_syncs(&stats, args.samples);

    // static-keys.
    let peer_key = group.static_keys_key;
    let set_peer = |on: bool| -> Result<()> {
        // SAFETY: `peer::set` wants no other thread running the key's sites unless the risk is
        // accepted. With `--static-keys-busy own` it is, deliberately, and reported in the
        // row's note: static-keys swaps in a fully patched copy of each page with one `mremap`,
        // so a thread running the page sees either the old or the new page, never a torn
        // instruction, and the TLB shootdown of `mremap` interrupts (hence serializes) it.
        unsafe { peer::set(peer_key, on) }
    };
    let peer_busy = match args.static_keys_busy {
        PeerBusy::Own => args.busy_threads,
        PeerBusy::None => 0,
    };
    check_toggle("static-keys", group.static_keys_sites, set_peer)?;
    let (peer_times, static_keys_busy_calls) = with_busy_threads(
        peer_busy,
        placement.as_ref(),
        group.static_keys_sites,
        || {
            let samples = match args.static_keys_samples {
                Some(s) => s,
                None => {
                    // One timed pair under load sets the sample count for the budget.
                    let warm = time_toggles(2, set_peer, || Ok(()))?;
                    let per_toggle = warm.iter().copied().fold(1.0, f64::max);
                    let fit = (args.static_keys_budget_ms as f64 * 1e3 / per_toggle) as usize;
                    // At 100,000 sites a static-keys toggle takes seconds: 11 of them would
                    // make the run last minutes per size for little more accuracy.
                    let floor = ((PEER_FLOOR_BUDGET_US / per_toggle) as usize)
                        .clamp(PEER_MIN_SAMPLES_SLOW, PEER_MIN_SAMPLES)
                        .min(args.samples);
                    (fit.clamp(floor, args.samples.max(floor)) - 1) | 1
                }
            };
            time_toggles(samples, set_peer, || Ok(()))
        },
    )?;
    check_sites("static-keys", group.static_keys_sites, false)?;

    let textpoke_us_median = stats::median(&textpoke_times);
    let static_keys_us_median = stats::median(&peer_times);
    Ok(ToggleRow {
        sites: n,
        busy_threads: args.busy_threads,
        textpoke_us_median,
        static_keys_us_median,
        speedup: static_keys_us_median / textpoke_us_median,
        table_bytes_per_site: textpoke_table_bytes_per_site()?,
        static_keys_table_bytes_per_site: peer::table_bytes_per_site(),
        textpoke_samples: textpoke_times.len(),
        static_keys_samples: peer_times.len(),
        writes,
        syncs,
        textpoke_us_p90: stats::percentile(&textpoke_times, 0.9),
        static_keys_us_p90: stats::percentile(&peer_times, 0.9),
        textpoke_busy_calls,
        static_keys_busy_calls,
        note: note(
            group,
            args.busy_threads,
            peer_busy,
            placement.as_ref(),
            plugins.len(),
        ) + &peer_samples_note(args, &peer_times),
        plugin: plugin.map(|mut p| {
            p.plugin_ratio = p.plugin_us_median / textpoke_us_median;
            p
        }),
    })
}

/// The interleaved measurement of `--plugins`: in each of `args.samples` rounds, the
/// executable's key (through `set_textpoke`) and then each plugin's key of the same size are
/// toggled once, all in the same direction, the busy threads switched before each toggle to run
/// the sites of the key about to be toggled. Returns the executable's times, the busy threads'
/// site calls in the executable, and the plugin part of the row (but its ratio). Leaves every
/// key disabled.
fn measure_with_plugins(
    group: &'static SiteGroup,
    args: &ToggleArgs,
    placement: Option<&Placement>,
    plugins: &[Plugin],
    set_textpoke: &mut dyn FnMut(bool) -> Result<()>,
) -> Result<(Vec<f64>, u64, PluginRow)> {
    let n = group.size;
    for (i, p) in plugins.iter().enumerate() {
        check_plugin(i, p, n)?;
    }
    let sites = black_box(group.textpoke_sites);
    // Target 0 is the executable's key, target 1 + i plugin i's.
    let run = |t: usize| match t.checked_sub(1) {
        None => {
            black_box(sites.run());
        }
        Some(i) => {
            black_box(plugins[i].group_run(n));
        }
    };
    let mut exe_times = Vec::with_capacity(args.samples);
    let mut plugin_times: Vec<Vec<f64>> = vec![Vec::with_capacity(args.samples); plugins.len()];
    let mut plugin_stats: Vec<GroupStats> = Vec::with_capacity(args.samples * plugins.len());
    let set_plugin = |i: usize, on: bool| -> Result<GroupStats> {
        let s = plugins[i]
            .group_set(n, on)
            .map_err(|e| BenchError::new(format!("plugin {i}: {e}")))?;
        if s.sites != n {
            return Err(BenchError::new(format!(
                "plugin {i}: a toggle of its {n}-site key patched {} sites",
                s.sites
            )));
        }
        Ok(s)
    };
    let ((), runs) = with_switching_busy_threads(
        args.busy_threads,
        placement,
        1 + plugins.len(),
        &run,
        |switch| {
            for round in 0..args.samples {
                let on = round % 2 == 0;
                switch(0);
                exe_times.push(stats::time_us(|| set_textpoke(on))?);
                for (i, times) in plugin_times.iter_mut().enumerate() {
                    switch(1 + i);
                    times.push(stats::time_us(|| {
                        plugin_stats.push(set_plugin(i, on)?);
                        Ok(())
                    })?);
                }
            }
            Ok(())
        },
    )?;
    if args.samples % 2 == 1 {
        set_textpoke(false)?;
        for i in 0..plugins.len() {
            set_plugin(i, false)?;
        }
    }
    for (i, p) in plugins.iter().enumerate() {
        if p.group_run(n) != Some(0) {
            return Err(BenchError::new(format!(
                "plugin {i}: some of its {n} sites take the enabled path with the key disabled"
            )));
        }
    }
    let all: Vec<f64> = plugin_times.iter().flatten().copied().collect();
    let row = PluginRow {
        plugins: plugins.len(),
        plugin_us_median: stats::median(&all),
        plugin_us_p90: stats::percentile(&all, 0.9),
        plugin_ratio: 0.0,
        plugin_us_medians: plugin_times.iter().map(|t| stats::median(t)).collect(),
        plugin_samples: all.len(),
        plugin_writes: stats::median_usize(plugin_stats.iter().map(|s| s.writes)),
        plugin_syncs: stats::median_usize(plugin_stats.iter().map(|s| s.syncs)),
        plugin_busy_calls: runs[1..].iter().sum::<u64>() * n as u64,
    };
    Ok((exe_times, runs[0] * n as u64, row))
}

/// textpoke's table section size over its number of entries.
pub fn textpoke_table_bytes_per_site() -> Result<f64> {
    let entries = textpoke::tables::jump_sites()?.len();
    let bytes = textpoke::__private::jump_table_bytes();
    Ok(if entries == 0 {
        0.0
    } else {
        bytes as f64 / entries as f64
    })
}

/// Says when static-keys got fewer timed toggles than usual, because each took so long.
fn peer_samples_note(args: &ToggleArgs, peer_times: &[f64]) -> String {
    let usual = PEER_MIN_SAMPLES.min(args.samples);
    if args.static_keys_samples.is_some() || peer_times.len() >= usual {
        return String::new();
    }
    format!(
        "; static-keys' timed toggles were BOUNDED to {} (median {:.1} s each): fewer than \
         {usual} where {usual} would take over {:.0} s, never fewer than \
         {PEER_MIN_SAMPLES_SLOW}, so its median and p90 are rough",
        peer_times.len(),
        stats::median(peer_times) / 1e6,
        PEER_FLOOR_BUDGET_US / 1e6
    )
}

fn note(
    group: &SiteGroup,
    busy: usize,
    peer_busy: usize,
    placement: Option<&Placement>,
    plugins: usize,
) -> String {
    let n = group.size;
    let mut note = format!(
        "each library toggled one key controlling exactly {n} sites (counts verified from both \
         tables, every site's value checked after enable and disable), alternating \
         enable/disable, timing each toggle"
    );
    if group.textpoke_sites.per_fn > 1 {
        note.push_str(&format!(
            "; the sites are {} functions of {} sites each, for both libraries",
            group.textpoke_sites.fns.len(),
            group.textpoke_sites.per_fn
        ));
    }
    if plugins > 0 {
        note.push_str(&format!(
            "; textpoke's key was toggled in turn with a key of {n} sites in each of {plugins} \
             dlopen'ed plugins (each its own file, with its own copy of textpoke; counts and \
             values verified likewise), one toggle of each per round, the busy thread(s) \
             switched before each toggle to run the sites of the key about to be toggled and \
             done with a full pass of them before the timer started; textpoke's and the \
             plugins' times come from these same rounds"
        ));
    }
    if busy == 0 {
        note.push_str("; no busy threads");
    } else {
        note.push_str(&format!(
            "; textpoke ran with {busy} busy thread(s) calling all {n} of its sites"
        ));
        if peer_busy == busy {
            note.push_str(&format!(
                "; static-keys likewise ran with {busy} busy thread(s) calling its own {n} sites, \
                 which its docs call unsupported (it swaps in a patched copy of each page with \
                 mremap); it did not crash in this run, but it still serializes no core"
            ));
        } else {
            note.push_str(
                "; static-keys ran with NO busy threads (--static-keys-busy none), as its docs \
                 require",
            );
        }
    }
    match placement {
        Some(p) => note.push_str(&format!("; {}", p.describe(busy))),
        None => note.push_str("; threads placed by the scheduler (--no-pin)"),
    }
    if cfg!(debug_assertions) {
        note.push_str(
            "; DEBUG BUILD: times are not representative, and static-keys also patches a dead \
             JMP-form copy of each site that opt-level 0 keeps",
        );
    }
    note
}

/// Prints rows as a table on stdout.
pub struct TablePrinter {
    header_done: bool,
    notes: Vec<String>,
}

/// The plugin columns of a row, or nothing.
fn plugin_columns(p: Option<&PluginRow>) -> String {
    p.map_or(String::new(), |p| {
        format!(
            " | {:>10.1} {:>10.1} {:>6.2}x",
            p.plugin_us_median, p.plugin_us_p90, p.plugin_ratio
        )
    })
}

impl TablePrinter {
    /// A printer that has printed nothing yet.
    pub fn new() -> Self {
        TablePrinter {
            header_done: false,
            notes: Vec::new(),
        }
    }

    /// Prints one row (and the header before the first).
    pub fn row(&mut self, r: &ToggleRow) -> Result<()> {
        if !self.header_done {
            crate::print_line(
                &(format!(
                    "{:>6} {:>5} | {:>12} {:>10} | {:>14} {:>10} | {:>8} | {:>6} {:>5} | {:>12}",
                    "sites",
                    "busy",
                    "textpoke µs",
                    "p90",
                    "static-keys µs",
                    "p90",
                    "speedup",
                    "writes",
                    "syncs",
                    "table B/site"
                ) + &r.plugin.as_ref().map_or(String::new(), |_| {
                    format!(" | {:>10} {:>10} {:>7}", "plugin µs", "p90", "ratio")
                })),
            )?;
            self.header_done = true;
        }
        crate::print_line(
            &(format!(
                "{:>6} {:>5} | {:>12.1} {:>10.1} | {:>14.1} {:>10.1} | {:>7.1}x | {:>6} {:>5} | {:>5} vs {:>2}",
                r.sites,
                r.busy_threads,
                r.textpoke_us_median,
                r.textpoke_us_p90,
                r.static_keys_us_median,
                r.static_keys_us_p90,
                r.speedup,
                r.writes,
                r.syncs,
                r.table_bytes_per_site,
                r.static_keys_table_bytes_per_site
            ) + &plugin_columns(r.plugin.as_ref())),
        )?;
        self.notes.push(format!(
            "{} sites ({} textpoke / {} static-keys samples): {}",
            r.sites, r.textpoke_samples, r.static_keys_samples, r.note
        ));
        Ok(())
    }

    /// Prints the run's one-site floor, then the notes collected from every row and its own.
    pub fn finish(self, floor: &FloorRow) -> Result<()> {
        crate::print_line(&format!(
            "one-site floor: 1-site toggle {:.1} µs, membarrier SYNC_CORE {:.1} µs, both beside \
             1 busy thread: {:.2}x (target: at most 2.5x); {} syncs and {} writes per toggle",
            floor.one_site_us,
            floor.membarrier_us,
            floor.one_site_over_membarrier,
            floor.one_site_syncs,
            floor.one_site_writes
        ))?;
        for n in self.notes {
            crate::print_line(&format!("note: {n}"))?;
        }
        crate::print_line(&format!("note: one-site floor: {}", floor.floor_note))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_controls_exactly_its_group() -> Result<()> {
        let _serial = crate::tests::serial();
        peer::init();
        for group in &sites::GROUPS {
            verify(group)?;
        }
        Ok(())
    }

    /// A row's JSON text and value.
    type Json = (String, serde_json::Value);

    fn json(row: &impl Serialize) -> Result<Json> {
        let line = serde_json::to_string(row)?;
        let value = serde_json::from_str(&line)?;
        Ok((line, value))
    }

    /// A short run with a busy thread over `sites`, with `plugins` loaded, plotted into `plot`
    /// if given: each row's JSON, then the floor's.
    fn tiny_run(
        sites: Vec<usize>,
        plugins: usize,
        plot: Option<std::path::PathBuf>,
    ) -> Result<(Vec<Json>, Json)> {
        let args = ToggleArgs {
            sites,
            busy_threads: 1,
            samples: 5,
            static_keys_samples: Some(3),
            static_keys_budget_ms: 1,
            static_keys_busy: PeerBusy::Own,
            plugins,
            no_pin: false,
            json: true,
            plot,
        };
        let mut rows = Vec::new();
        let floor = run(&args, &mut |row| {
            rows.push(json(row)?);
            Ok(())
        })?;
        Ok((rows, json(&floor)?))
    }

    /// Field `k` of row `v` (printed as `line`), which must be a number.
    fn num(v: &serde_json::Value, line: &str, k: &str) -> f64 {
        v.get(k)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or_else(|| panic!("{k} missing or not a number in {line}"))
    }

    #[test]
    fn tiny_toggle_run_gives_a_complete_json_object() -> Result<()> {
        let _serial = crate::tests::serial();
        let (rows, _) = tiny_run(vec![1, 10], 0, None)?;
        assert_eq!(rows.len(), 2);
        for ((line, v), n) in rows.iter().zip([1u64, 10]) {
            let num = |k: &str| num(v, line, k);
            assert_eq!(v["sites"].as_u64(), Some(n));
            assert_eq!(v["busy_threads"].as_u64(), Some(1));
            assert_eq!(v["textpoke_samples"].as_u64(), Some(5));
            assert_eq!(v["static_keys_samples"].as_u64(), Some(3));
            for k in ["textpoke_us_median", "static_keys_us_median", "speedup"] {
                assert!(num(k) > 0.0 && num(k).is_finite(), "{k} in {line}");
            }
            assert_eq!(
                num("table_bytes_per_site"),
                textpoke::tables::JUMP_ENTRY_SIZE as f64
            );
            assert_eq!(num("static_keys_table_bytes_per_site"), 24.0);
            assert_eq!(num("syncs"), 2.0, "two core syncs per toggle: {line}");
            assert!(num("writes") >= 2.0, "{line}");
            assert!(num("textpoke_busy_calls") > 0.0 && num("static_keys_busy_calls") > 0.0);
            assert!(v["note"].as_str().is_some_and(|s| !s.is_empty()));
        }
        for group in &sites::GROUPS {
            assert!(!group.textpoke_key.is_enabled());
            check_sites("textpoke", group.textpoke_sites, false)?;
            check_sites("static-keys", group.static_keys_sites, false)?;
        }
        Ok(())
    }

    #[test]
    fn plugin_keys_are_measured_beside_the_executables() -> Result<()> {
        let _serial = crate::tests::serial();
        let (rows, _) = tiny_run(vec![1, 100], 2, None)?;
        assert_eq!(rows.len(), 2);
        for ((line, v), n) in rows.iter().zip([1u64, 100]) {
            let num = |k: &str| num(v, line, k);
            assert_eq!(v["sites"].as_u64(), Some(n));
            assert_eq!(v["plugins"].as_u64(), Some(2));
            assert_eq!(v["textpoke_samples"].as_u64(), Some(5));
            assert_eq!(v["plugin_samples"].as_u64(), Some(10));
            assert_eq!(v["plugin_us_medians"].as_array().map(Vec::len), Some(2));
            for k in ["textpoke_us_median", "plugin_us_median", "plugin_ratio"] {
                assert!(num(k) > 0.0 && num(k).is_finite(), "{k} in {line}");
            }
            let ratio = num("plugin_us_median") / num("textpoke_us_median");
            assert!((num("plugin_ratio") - ratio).abs() < 1e-9, "{line}");
            assert_eq!(num("plugin_syncs"), 2.0, "{line}");
            assert!(num("textpoke_busy_calls") > 0.0 && num("plugin_busy_calls") > 0.0);
        }
        for group in &sites::GROUPS {
            assert!(!group.textpoke_key.is_enabled());
        }
        Ok(())
    }

    #[test]
    fn a_run_reports_its_one_site_floor_once() -> Result<()> {
        let _serial = crate::tests::serial();
        let (rows, (line, v)) = tiny_run(vec![10], 0, None)?;
        assert_eq!(rows.len(), 1);
        let num = |k: &str| num(&v, &line, k);
        for k in ["one_site_us", "membarrier_us", "one_site_over_membarrier"] {
            assert!(num(k) > 0.0 && num(k).is_finite(), "{k} in {line}");
        }
        let ratio = num("one_site_us") / num("membarrier_us");
        assert!(
            (num("one_site_over_membarrier") - ratio).abs() < 1e-9,
            "{line}"
        );
        assert_eq!(num("floor_samples"), 5.0, "{line}");
        // Whatever the engine's protocol, a toggle serializes the cores and writes the site.
        assert!(
            num("one_site_syncs") >= 1.0 && num("one_site_writes") >= 1.0,
            "{line}"
        );
        assert!(num("floor_busy_calls") > 0.0, "{line}");
        assert!(v["floor_note"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(v.get("sites").is_none(), "the floor is no row: {line}");
        assert!(!sites::GROUPS[0].textpoke_key.is_enabled());
        Ok(())
    }

    /// Fails unless `svg` is well-formed XML (every element closed, in order) whose root is
    /// `<svg>`.
    fn assert_well_formed_svg(svg: &str) {
        let mut open: Vec<&str> = Vec::new();
        let mut root = None;
        let mut rest = svg;
        while let Some(i) = rest.find('<') {
            assert!(
                !open.is_empty() || rest[..i].trim().is_empty(),
                "text outside the root"
            );
            let end = rest[i..].find('>').expect("a tag is never closed") + i;
            let tag = &rest[i + 1..end];
            rest = &rest[end + 1..];
            if tag.starts_with('?') || tag.starts_with('!') {
                continue;
            }
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(open.pop(), Some(name.trim()), "mismatched </{name}>");
                continue;
            }
            let name = tag.split_whitespace().next().unwrap_or("");
            assert!(!name.is_empty() && !name.contains('/'), "bad tag <{tag}>");
            if open.is_empty() {
                assert!(root.replace(name).is_none(), "a second root <{name}>");
            }
            if !tag.ends_with('/') {
                open.push(name);
            }
        }
        assert!(open.is_empty(), "unclosed elements {open:?}");
        assert!(rest.trim().is_empty(), "text after the root");
        assert_eq!(root, Some("svg"));
    }

    #[test]
    fn plot_writes_a_well_formed_svg_of_both_libraries() -> Result<()> {
        let _serial = crate::tests::serial();
        let path = std::env::temp_dir().join(format!(
            "textpoke-bench-plot-test-{}.svg",
            std::process::id()
        ));
        let run = tiny_run(vec![10, 1], 0, Some(path.clone()));
        let svg = std::fs::read_to_string(&path);
        let _ = std::fs::remove_file(&path);
        let (rows, _) = run?;
        assert_eq!(rows.len(), 2);
        let svg = svg.map_err(|e| BenchError::new(format!("reading the plot: {e}")))?;
        assert_well_formed_svg(&svg);
        assert!(
            svg.contains("xmlns=\"http://www.w3.org/2000/svg\""),
            "{svg}"
        );
        // One line per library, one dot per size and library, and each library named.
        assert!(svg.matches("<polyline").count() >= 2, "{svg}");
        assert!(svg.matches("<circle").count() >= 4, "{svg}");
        for name in [
            "textpoke",
            "static-keys",
            "membarrier",
            "sites controlled by the key",
        ] {
            assert!(svg.contains(name), "{name} missing from the plot");
        }
        Ok(())
    }

    #[test]
    fn the_100000_site_group_follows_its_key_under_a_busy_thread() -> Result<()> {
        let _serial = crate::tests::serial();
        let group = sites::group(100_000).expect("a group of 100,000 sites");
        verify(group)?;
        assert!(
            group.textpoke_sites.per_fn > 1,
            "built as functions of many sites"
        );
        let mut stats = Vec::new();
        // static-keys is left out: its toggle of 200,000 entries (a debug build keeps a dead
        // copy of each site) takes minutes here; its count is checked by `verify`.
        let ((), calls) = with_busy_threads(1, None, group.textpoke_sites, || {
            check_toggle(
                "textpoke",
                group.textpoke_sites,
                textpoke_setter(group, &mut stats),
            )
        })?;
        assert!(
            calls >= 100_000,
            "the busy thread ran every site at least once"
        );
        assert_eq!(stats.len(), 2);
        check_sites("textpoke", group.textpoke_sites, false)
    }

    #[test]
    fn without_plugins_rows_have_no_plugin_fields() -> Result<()> {
        let _serial = crate::tests::serial();
        let args = ToggleArgs {
            sites: vec![1],
            busy_threads: 0,
            samples: 1,
            static_keys_samples: Some(1),
            static_keys_budget_ms: 1,
            static_keys_busy: PeerBusy::None,
            plugins: 0,
            no_pin: true,
            json: true,
            plot: None,
        };
        let mut rows = Vec::new();
        run(&args, &mut |row| {
            rows.push(serde_json::to_value(row)?);
            Ok(())
        })?;
        assert!(rows[0].get("plugin_us_median").is_none(), "{}", rows[0]);
        assert!(rows[0].get("plugins").is_none(), "{}", rows[0]);
        Ok(())
    }

    #[test]
    fn unknown_sizes_are_refused_before_anything_runs() {
        let _serial = crate::tests::serial();
        let args = ToggleArgs {
            sites: vec![1, 5000],
            busy_threads: 0,
            samples: 1,
            static_keys_samples: Some(1),
            static_keys_budget_ms: 1,
            static_keys_busy: PeerBusy::None,
            plugins: 0,
            no_pin: true,
            json: true,
            plot: None,
        };
        let mut rows = 0;
        let err = run(&args, &mut |_| {
            rows += 1;
            Ok(())
        })
        .expect_err("5000 is not a group size");
        assert_eq!(rows, 0);
        assert!(err.to_string().contains("5000"), "{err}");
    }
}
