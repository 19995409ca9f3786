//! Static keys: booleans that live in the code as a NOP or a JMP at every site. This folder
//! owns the key API, its table format (`table`) and its planning.

pub(crate) mod table;

use std::marker::PhantomData;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::arch::{Insn, JUMP_LABEL_LEN, jump_label_code};
use crate::engine::PatchGuard;
use crate::engine::{self, PatchStats, Poke};
use crate::{Error, Item, Location, Result};
use table::{JumpSite, jump_index};

/// Signature stored in every key, checked when a table entry names it.
const KEY_MAGIC: u32 = u32::from_le_bytes(*b"tpk2");

/// The part of a key the engine and tables see; identical for every initial state.
#[repr(C, align(8))]
pub(crate) struct KeyCore {
    /// Reference count; the key is enabled while it is positive.
    count: AtomicI32,
    magic: u32,
    /// Where the key was declared (its `StaticKey::new()`).
    declared: &'static std::panic::Location<'static>,
}

impl KeyCore {
    pub(crate) fn addr(&self) -> usize {
        self as *const Self as usize
    }

    /// The key, for messages.
    pub(crate) fn item(&self) -> Item {
        Item::new("key", self.addr(), self.declared, None)
    }

    /// The key's address, named, for messages.
    fn location(&self) -> Location {
        Location::in_item(self.addr(), self.item())
    }

    fn enabled(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    /// Offset and value of the signature table validation looks for.
    pub(crate) const SIGNATURE: (usize, u32) = (std::mem::offset_of!(KeyCore, magic), KEY_MAGIC);
}

/// A static key: a boolean whose every test is one NOP or JMP in the code.
///
/// `INIT` is the state the sites are compiled in, so a site is right from the first instruction
/// the process runs, before any textpoke call. Declare keys as `static`s; the
/// [`static_branch_unlikely!`](crate::static_branch_unlikely) and
/// [`static_branch_likely!`](crate::static_branch_likely) macros take their path.
///
/// Every method is safe to call while other threads execute the key's sites, and from many
/// threads at once.
///
/// ```
/// use textpoke::{StaticKey, static_branch_unlikely};
///
/// static VERBOSE: StaticKey = StaticKey::new();
///
/// fn work() -> u32 {
///     if static_branch_unlikely!(VERBOSE) { 1 } else { 0 }
/// }
///
/// assert_eq!(work(), 0);
/// VERBOSE.enable()?;
/// assert_eq!(work(), 1);
/// VERBOSE.disable()?;
/// assert_eq!(work(), 0);
/// # Ok::<(), textpoke::Error>(())
/// ```
#[repr(transparent)]
pub struct StaticKey<const INIT: bool = false> {
    core: KeyCore,
    _init: PhantomData<[(); 0]>,
}

impl<const INIT: bool> Default for StaticKey<INIT> {
    #[track_caller]
    fn default() -> Self {
        Self::new()
    }
}

impl<const INIT: bool> StaticKey<INIT> {
    /// A key in state `INIT` (reference count 1 if `true`, 0 if `false`). Where it is called
    /// is recorded, so that messages about the key's sites say where it was declared.
    #[track_caller]
    pub const fn new() -> Self {
        StaticKey {
            core: KeyCore {
                count: AtomicI32::new(INIT as i32),
                magic: KEY_MAGIC,
                declared: std::panic::Location::caller(),
            },
            _init: PhantomData,
        }
    }

    pub(crate) fn core(&self) -> &KeyCore {
        &self.core
    }

    /// Whether the key is enabled (its reference count is positive).
    pub fn is_enabled(&self) -> bool {
        self.core.enabled()
    }

    /// The key's reference count.
    pub fn count(&self) -> i32 {
        self.core.count.load(Ordering::Acquire)
    }

    /// Enables the key: its count becomes 1 if it was 0, and every site is patched.
    /// Does nothing if already enabled.
    pub fn enable(&self) -> Result<()> {
        crate::Batch::new().enable(self).commit().map(drop)
    }

    /// Disables the key: its count becomes 0 (whatever it was), and every site is patched.
    /// References taken with [`inc`](Self::inc) are dropped with it: a later `dec` for them is
    /// an underflow error. Use either `enable`/`disable` or `inc`/`dec` on one key.
    pub fn disable(&self) -> Result<()> {
        crate::Batch::new().disable(self).commit().map(drop)
    }

    /// Increments the count, enabling the key on 0 → 1, like the kernel's `static_key_slow_inc`.
    /// Lock-free when the key is already enabled.
    pub fn inc(&self) -> Result<()> {
        let count = &self.core.count;
        loop {
            let mut v = count.load(Ordering::Acquire);
            while v > 0 {
                let next = v.checked_add(1).ok_or_else(|| Error::Overflow {
                    key: self.core.location(),
                })?;
                match count.compare_exchange_weak(v, next, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => return Ok(()),
                    Err(now) => v = now,
                }
            }
            let lock = crate::engine::lock()?;
            // Under the lock the count leaves 0 only here; concurrent fast paths need it
            // positive. If another thread enabled the key meanwhile, count up instead.
            if count.load(Ordering::Acquire) == 0 {
                patch_keys(&lock, &[(self.core(), false, true)])?;
                count.store(1, Ordering::Release);
                return Ok(());
            }
        }
    }

    /// Decrements the count, disabling the key on 1 → 0. Underflow is an error and changes
    /// nothing. Lock-free while the count stays positive.
    pub fn dec(&self) -> Result<()> {
        let count = &self.core.count;
        let mut v = count.load(Ordering::Acquire);
        while v > 1 {
            match count.compare_exchange_weak(v, v - 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(now) => v = now,
            }
        }
        let lock = crate::engine::lock()?;
        loop {
            match count.load(Ordering::Acquire) {
                0 => {
                    return Err(Error::Underflow {
                        key: self.core.location(),
                    });
                }
                1 => {
                    // Claim 1 → 0 first so that a concurrent inc takes the slow path and waits.
                    if count
                        .compare_exchange(1, 0, Ordering::AcqRel, Ordering::Acquire)
                        .is_err()
                    {
                        continue;
                    }
                    return patch_keys(&lock, &[(self.core(), true, false)])
                        .map(drop)
                        .inspect_err(|_| count.store(1, Ordering::Release));
                }
                v => {
                    if count
                        .compare_exchange(v, v - 1, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Addresses of this key's sites (validating the table on first use).
    pub fn sites(&self) -> Result<Vec<usize>> {
        let lock = crate::engine::lock()?;
        let index = jump_index(&lock)?;
        Ok(index
            .sites_of(self.core.addr())
            .iter()
            .map(|s| s.addr)
            .collect())
    }
}

/// How many sites `key` has (validating the table on first use).
pub(crate) fn site_count<const I: bool>(lock: &PatchGuard, key: &StaticKey<I>) -> Result<usize> {
    Ok(jump_index(lock)?.sites_of(key.core.addr()).len())
}

/// What a thread meeting `site` executes while its key is `enabled`.
fn insn(site: &JumpSite, enabled: bool) -> Insn {
    if site.jumps_when(enabled) {
        Insn::Jmp {
            target: site.target,
        }
    } else {
        Insn::Nop {
            len: JUMP_LABEL_LEN as u8,
        }
    }
}

/// Builds the poke that moves `site` from its key's state `from` to `to`.
fn poke(site: &JumpSite, from: bool, to: bool) -> Result<Poke> {
    let code = |enabled: bool| {
        jump_label_code(site.addr, site.target, site.jumps_when(enabled)).ok_or_else(|| {
            Error::OutOfRange {
                site: Location::of(site.addr),
                target: site.target,
                len: JUMP_LABEL_LEN,
            }
        })
    };
    Poke::between(site.addr, from, to, code, |enabled| insn(site, enabled))
}

/// Adds the pokes that move every site of each key from its `from` state to its `to` state.
fn key_pokes(
    lock: &PatchGuard,
    keys: &[(&KeyCore, bool, bool)],
    pokes: &mut Vec<Poke>,
) -> Result<()> {
    let index = jump_index(lock)?;
    for &(key, from, to) in keys {
        if from != to {
            for site in index.sites_of(key.addr()) {
                pokes.push(poke(site, from, to)?);
            }
        }
    }
    Ok(())
}

/// Patches every site of every key from its `from` state to its `to` state, as one batch.
/// Counts are the caller's business.
pub(crate) fn patch_keys(lock: &PatchGuard, keys: &[(&KeyCore, bool, bool)]) -> Result<PatchStats> {
    let mut pokes = crate::batch::pokes_scratch();
    pokes.clear();
    key_pokes(lock, keys, &mut pokes)
        .and_then(|()| engine::patch(lock, &mut pokes))
        .map_err(|e| e.name_items(|addr| item_at(lock, addr)))
}

/// The key whose site is at `addr`, if the index is built and has one (an error path does not
/// build it).
pub(crate) fn item_at(_lock: &PatchGuard, addr: usize) -> Option<Item> {
    let index = table::INDEX.peek()?.as_ref().ok()?;
    let site = index.all().iter().find(|s| s.addr == addr)?;
    // SAFETY: validation checked that every entry's key is a `KeyCore` of this copy of
    // textpoke (its signature) in the object's data, and keys are statics.
    let core = unsafe { &*(site.key as *const KeyCore) };
    Some(core.item())
}

/// One key of this copy's object, as the registry lists it.
pub(crate) struct KeyRow {
    pub(crate) core: &'static KeyCore,
    pub(crate) sites: usize,
}

impl KeyRow {
    pub(crate) fn count(&self) -> i32 {
        self.core.count.load(Ordering::Acquire)
    }

    pub(crate) fn declared(&self) -> &'static std::panic::Location<'static> {
        self.core.declared
    }

    /// Its sites compiled with `static_branch_likely!`.
    pub(crate) fn likely(&self) -> usize {
        // Once built, the index is never changed until this copy's object is unloaded (and
        // this copy's code is running): reading it needs no lock.
        table::INDEX
            .peek()
            .and_then(|r| r.as_ref().ok())
            .map_or(0, |i| {
                i.sites_of(self.core.addr())
                    .iter()
                    .filter(|s| s.likely)
                    .count()
            })
    }
}

/// Every key with sites in this copy's object but those in `skip` (sorted addresses), in
/// address order. Hops from key to key: a key's sites are found by binary search, not walked.
pub(crate) fn rows(lock: &PatchGuard, skip: &[usize]) -> Result<Vec<KeyRow>> {
    let all = jump_index(lock)?.all();
    let mut out: Vec<KeyRow> = Vec::new();
    let mut i = 0;
    while let Some(site) = all.get(i) {
        let end = i + all[i..].partition_point(|s| s.key == site.key);
        if skip.binary_search(&site.key).is_err() {
            out.push(KeyRow {
                // SAFETY: validation checked that every entry's key is a `KeyCore` of this
                // copy of textpoke (its signature) in the object's data, and keys are statics.
                core: unsafe { &*(site.key as *const KeyCore) },
                sites: end - i,
            });
        }
        i = end;
    }
    Ok(out)
}

/// Key changes planned in one batch. Planning zeroes the count of every key being disabled
/// (so a concurrent `inc` waits for the lock instead of counting up a key on its way down);
/// `commit` records the enabled ones, `abort` restores the counts.
pub(crate) struct KeyPlan<'a> {
    changes: Vec<(&'a KeyCore, bool, bool)>,
    restore: Vec<(&'a KeyCore, i32)>,
}

impl<'a> KeyPlan<'a> {
    /// Plans setting each key to its wanted state (last word wins for a repeated key). The
    /// caller holds the patch lock.
    pub(crate) fn new(wanted: &[(&'a KeyCore, bool)]) -> Self {
        // Sorted by key, stably, so the last word for a key is the last of its run: linear
        // time after the sort, for batches of thousands of keys (a tracer's functions).
        let mut sorted: Vec<(&'a KeyCore, bool)> = wanted.to_vec();
        sorted.sort_by_key(|(k, _)| k.addr());
        let mut unique: Vec<(&'a KeyCore, bool)> = Vec::with_capacity(sorted.len());
        for (key, on) in sorted {
            match unique.last_mut() {
                Some(last) if std::ptr::eq(last.0, key) => last.1 = on,
                _ => unique.push((key, on)),
            }
        }
        let mut plan = KeyPlan {
            changes: Vec::new(),
            restore: Vec::new(),
        };
        for (key, on) in unique {
            match (key.enabled(), on) {
                (false, true) => plan.changes.push((key, false, true)),
                (true, false) => {
                    plan.restore
                        .push((key, key.count.swap(0, Ordering::AcqRel)));
                    plan.changes.push((key, true, false));
                }
                _ => {}
            }
        }
        plan
    }

    pub(crate) fn pokes(&self, lock: &PatchGuard, pokes: &mut Vec<Poke>) -> Result<()> {
        key_pokes(lock, &self.changes, pokes)
    }

    pub(crate) fn commit(self) {
        for (key, _, to) in self.changes {
            if to {
                key.count.store(1, Ordering::Release);
            }
        }
    }

    pub(crate) fn abort(self) {
        for (key, count) in self.restore {
            key.count.store(count, Ordering::Release);
        }
    }
}
