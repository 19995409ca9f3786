//! `--plugins N`: copies of the plugin fixture (`textpoke-fixture`), each a shared object of its
//! own with its own copy of textpoke, its own 4 keys of 8 sites and its own static call, loaded,
//! toggled, retargeted and unloaded while the workers run their sites and call.
//!
//! Each plugin lives in a **slot**, a `RwLock<Option<Slot>>`:
//!
//! - a worker calls a plugin's sites and static call only while it holds the slot's read lock,
//!   and reads the histories of the plugin's key and call before and after each call, within
//!   that lock, exactly as it does for the executable's (see `history`);
//! - the main thread also changes a plugin's keys and call under the read lock, with the same
//!   history discipline (begin the change, commit, end the change);
//! - every so often the main thread takes a slot's write lock, so that no worker is inside the
//!   plugin, unloads it (`dlclose`), checks that its file is no longer mapped, loads a copy again
//!   from the same file, checks that the copy starts fresh (keys off, the call on `x + 1`) and
//!   shares the executable's patcher, and gives the slot fresh histories.
//!
//! So no call ever runs into an object being closed, and every call is judged against the
//! history of the very object it ran in.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard};
use std::time::Instant;

use serde::Serialize;
use textpoke_fixture::{KEYS, Plugin, SITES_PER_KEY};

use super::history::{History, key_consistent};

/// A plugin's static call targets: version `v` of the call is `x + scheduled(v)`. Version 0 is
/// what a freshly loaded copy holds (`x + 1`), and every update changes the target.
pub fn scheduled(v: u64) -> u64 {
    1 + v % 3
}

/// One loaded copy of the plugin and the histories of its keys and static call.
pub struct Slot {
    plugin: Plugin,
    keys: [History; KEYS],
    call: History,
}

impl Slot {
    fn new(plugin: Plugin) -> Self {
        Slot {
            plugin,
            keys: Default::default(),
            call: History::default(),
        }
    }

    /// Key `k`'s current state, from its history (keys start disabled and flip at every
    /// change). Only meaningful to the thread that makes the changes.
    fn state(&self, k: usize) -> bool {
        self.keys[k].read() / 2 % 2 == 1
    }

    /// Every key's state, as a mask.
    fn mask(&self) -> u64 {
        (0..KEYS).fold(0, |m, k| m | (self.state(k) as u64) << k)
    }
}

/// Whether running the `SITES_PER_KEY` sites of a key, of which `enabled` took the enabled
/// path, is consistent with the key's history between `before` and `after`: all or none if
/// the call saw one state only, anything if it overlapped both.
pub fn run_consistent(before: u64, after: u64, enabled: usize) -> bool {
    let may_on = key_consistent(false, before, after, true);
    let may_off = key_consistent(false, before, after, false);
    match enabled {
        0 => may_off,
        n if n == SITES_PER_KEY => may_on,
        n if n > SITES_PER_KEY => false,
        _ => may_on && may_off,
    }
}

/// The plugin part of the `--json` report (present only with `--plugins`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PluginReport {
    /// Plugin slots, each holding one loaded copy at a time.
    pub plugins: usize,
    /// Copies loaded (`dlopen`), the first one of each slot included.
    pub plugin_loads: u64,
    /// Copies unloaded (`dlclose`) while the workers ran.
    pub plugin_unloads: u64,
    /// Plugin site calls made by the workers.
    pub plugin_calls: u64,
    /// Those that took the enabled path.
    pub plugin_calls_enabled: u64,
    /// Calls of the plugins' static calls made by the workers.
    pub plugin_static_call_calls: u64,
    /// Changes committed to the plugins (each a batch of one plugin's keys and static call).
    pub plugin_toggles: u64,
    /// Plugin key state changes within those.
    pub plugin_key_toggles: u64,
    /// Plugin static-call retargets within those.
    pub plugin_static_call_updates: u64,
    /// Keys per plugin.
    pub plugin_keys: usize,
    /// Sites per plugin key.
    pub plugin_sites_per_key: usize,
    /// Median time of one plugin change, in microseconds.
    pub plugin_toggle_us_median: f64,
    /// 99th percentile of one plugin change, in microseconds.
    pub plugin_toggle_us_p99: f64,
    /// Median time a slot was write-locked to unload a copy and load and check the next, in
    /// microseconds.
    pub plugin_reload_us_median: f64,
    /// The plugins' share of `inconsistencies`: calls no history allows, copies found in the
    /// wrong state at the end or not fresh after a load, and copies still mapped after
    /// `dlclose`.
    pub plugin_inconsistencies: u64,
}

/// Every slot, and what the main thread did to them.
pub struct Plugins {
    slots: Vec<RwLock<Option<Slot>>>,
    /// The executable's patcher, which every copy must share.
    patcher: usize,
    inconsistencies: AtomicU64,
}

/// What one worker did to the plugins.
#[derive(Default)]
pub struct WorkerTally {
    /// Site calls.
    pub calls: u64,
    /// Those that took the enabled path.
    pub enabled: u64,
    /// Static calls.
    pub static_calls: u64,
    /// Results no history allows.
    pub inconsistencies: u64,
}

/// What the main thread did to the plugins.
#[derive(Default)]
pub struct TogglerTally {
    loads: u64,
    unloads: u64,
    changes: u64,
    key_toggles: u64,
    updates: u64,
    times: Vec<f64>,
    reload_times: Vec<f64>,
}

fn read(slot: &RwLock<Option<Slot>>) -> RwLockReadGuard<'_, Option<Slot>> {
    slot.read().unwrap_or_else(|e| e.into_inner())
}

/// Whether any mapping of this process is of `path`.
fn mapped(path: &Path) -> Result<bool, String> {
    let maps = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| format!("cannot read /proc/self/maps: {e}"))?;
    let path = path.to_string_lossy();
    Ok(maps.lines().any(|l| {
        l.split_whitespace()
            .nth(5)
            .is_some_and(|p| p == path.as_ref())
    }))
}

impl Plugins {
    /// Loads a copy of the plugin into each of `n` slots.
    pub fn load(n: usize) -> Result<(Plugins, TogglerTally), String> {
        let (patcher, _) = textpoke::__private::patcher_id().map_err(|e| e.to_string())?;
        let plugins = Plugins {
            slots: (0..n).map(|_| RwLock::new(None)).collect(),
            patcher,
            inconsistencies: AtomicU64::new(0),
        };
        let mut t = TogglerTally::default();
        for i in 0..n {
            plugins.reload(i, &mut t)?;
        }
        Ok((plugins, t))
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    fn inconsistent(&self) {
        self.inconsistencies.fetch_add(1, Ordering::Relaxed);
    }

    /// Loads copy `i` from its file, checks it, and returns it.
    fn load_copy(&self, i: usize) -> Result<Plugin, String> {
        let p = Plugin::load(i)?;
        if p.patcher() != (self.patcher, false) {
            return Err(format!(
                "{}: the plugin's textpoke sees patcher {:#x} (its own: {}), not the \
                 executable's {:#x}",
                p.path().display(),
                p.patcher().0,
                p.patcher().1,
                self.patcher
            ));
        }
        // A fresh copy: every key off, the call on its compiled-in target.
        for k in 0..KEYS {
            if p.run(k) != 0 {
                self.inconsistent();
            }
        }
        if p.call(7) != 7 + scheduled(0) {
            self.inconsistent();
        }
        Ok(p)
    }

    /// Unloads slot `i`'s copy, if any, once no worker is inside it, checks that its file is
    /// no longer mapped, and loads a fresh copy with fresh histories.
    pub fn reload(&self, i: usize, t: &mut TogglerTally) -> Result<(), String> {
        let mut slot = self.slots[i].write().unwrap_or_else(|e| e.into_inner());
        let t0 = Instant::now();
        if let Some(old) = slot.take() {
            let path: PathBuf = old.plugin.path().to_path_buf();
            drop(old);
            t.unloads += 1;
            if mapped(&path)? {
                self.inconsistent();
            }
        }
        let plugin = self.load_copy(i)?;
        *slot = Some(Slot::new(plugin));
        t.loads += 1;
        t.reload_times.push(t0.elapsed().as_secs_f64() * 1e6);
        Ok(())
    }

    /// Called by worker `w` at its `n`-th step: runs one plugin key's sites and the plugin's
    /// static call under the slot's read lock, checking both.
    pub fn visit(&self, w: usize, n: usize, x: u64, tally: &mut WorkerTally) {
        let s = (n / 16 + w) % self.slots.len();
        // A slot being reloaded is skipped rather than waited for: the worker goes on with the
        // executable's sites.
        let Ok(guard) = self.slots[s].try_read() else {
            return;
        };
        let Some(slot) = guard.as_ref() else {
            return;
        };
        let k = (n / 64 + w) % KEYS;
        let before = slot.keys[k].read();
        let enabled = slot.plugin.run(k);
        let after = slot.keys[k].read();
        tally.calls += SITES_PER_KEY as u64;
        tally.enabled += enabled as u64;
        if !run_consistent(before, after, enabled) {
            tally.inconsistencies += 1;
        }
        let before = slot.call.read();
        let r = slot.plugin.call(x);
        let after = slot.call.read();
        tally.static_calls += 1;
        if !History::versions(before, after).any(|v| r == x.wrapping_add(scheduled(v))) {
            tally.inconsistencies += 1;
        }
    }

    /// The main thread's `round`-th change to a plugin (slot `round % N`), by a fixed schedule:
    /// one key, the static call alone, two keys in one batch, or two keys and the call in one
    /// batch.
    pub fn change(&self, round: usize, t: &mut TogglerTally) -> Result<(), String> {
        let n = self.slots.len();
        let guard = read(&self.slots[round % n]);
        let Some(slot) = guard.as_ref() else {
            return Ok(());
        };
        let r = round / n;
        let k = r / 4 % KEYS;
        let (keys, retarget): (&[usize], bool) = match r % 4 {
            0 => (&[k], false),
            1 => (&[], true),
            2 => (&[k, (k + 2) % KEYS], false),
            _ => (&[k, (k + 1) % KEYS], true),
        };
        let flipped = keys.iter().fold(slot.mask(), |m, &k| m ^ 1 << k);
        let target = retarget.then(|| scheduled(slot.call.next_version()) as usize);
        for &k in keys {
            slot.keys[k].begin_change();
        }
        if retarget {
            slot.call.begin_change();
        }
        let t0 = Instant::now();
        // On failure the histories stay odd: what failed may or may not have changed, so every
        // later call may see either, and the run stops.
        match (keys, target) {
            (&[k], None) => slot.plugin.set(k, flipped >> k & 1 == 1)?,
            ([], Some(n)) => slot.plugin.retarget(n)?,
            (_, None) => slot.plugin.set_all(flipped)?,
            (_, target) => slot.plugin.commit(flipped, target)?,
        }
        t.times.push(t0.elapsed().as_secs_f64() * 1e6);
        for &k in keys {
            slot.keys[k].end_change();
        }
        if retarget {
            slot.call.end_change();
            t.updates += 1;
        }
        t.changes += 1;
        t.key_toggles += keys.len() as u64;
        Ok(())
    }

    /// Single-threaded, after the workers stopped: every plugin's sites must show its keys'
    /// final states, and its call its last target. Then unloads every copy. Returns the
    /// inconsistencies found outside the workers' calls (here, after loads and after unloads).
    pub fn finish(self) -> u64 {
        for slot in &self.slots {
            let guard = read(slot);
            let Some(slot) = guard.as_ref() else {
                continue;
            };
            for k in 0..KEYS {
                let want = if slot.state(k) { SITES_PER_KEY } else { 0 };
                if slot.plugin.run(k) != want {
                    self.inconsistent();
                }
            }
            if slot.plugin.call(3) != 3 + scheduled(slot.call.read() / 2) {
                self.inconsistent();
            }
        }
        let found = self.inconsistencies.load(Ordering::Relaxed);
        drop(self);
        // Best effort: the files are a temporary copy of the embedded plugin.
        let _ = textpoke_fixture::remove_files();
        found
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_unstable_by(f64::total_cmp);
    super::percentile(v, p)
}

/// The plugin part of the report; `found` is what [`Plugins::finish`] returned.
pub fn report(n: usize, mut t: TogglerTally, workers: &[&WorkerTally], found: u64) -> PluginReport {
    PluginReport {
        plugins: n,
        plugin_loads: t.loads,
        plugin_unloads: t.unloads,
        plugin_calls: workers.iter().map(|w| w.calls).sum(),
        plugin_calls_enabled: workers.iter().map(|w| w.enabled).sum(),
        plugin_static_call_calls: workers.iter().map(|w| w.static_calls).sum(),
        plugin_toggles: t.changes,
        plugin_key_toggles: t.key_toggles,
        plugin_static_call_updates: t.updates,
        plugin_keys: KEYS,
        plugin_sites_per_key: SITES_PER_KEY,
        plugin_toggle_us_median: percentile(&mut t.times, 0.5),
        plugin_toggle_us_p99: percentile(&mut t.times, 0.99),
        plugin_reload_us_median: percentile(&mut t.reload_times, 0.5),
        plugin_inconsistencies: workers.iter().map(|w| w.inconsistencies).sum::<u64>() + found,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_a_keys_sites_is_all_or_nothing_unless_it_overlapped_a_change() {
        assert!(run_consistent(0, 0, 0));
        assert!(!run_consistent(0, 0, 3));
        assert!(!run_consistent(0, 0, SITES_PER_KEY));
        assert!(run_consistent(2, 2, SITES_PER_KEY));
        assert!(!run_consistent(2, 2, 0));
        assert!(run_consistent(0, 1, 3) && run_consistent(1, 2, 0) && run_consistent(1, 1, 8));
        assert!(!run_consistent(0, 2, SITES_PER_KEY + 1));
    }

    #[test]
    fn every_update_changes_the_target_and_version_0_is_x_plus_1() {
        assert_eq!(scheduled(0), 1);
        for v in 0..30 {
            assert_ne!(scheduled(v), scheduled(v + 1));
        }
    }
}
