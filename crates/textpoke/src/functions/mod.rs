//! Patchable functions: the kernel's ftrace (function tracer and profiler) and livepatch
//! (function replacement) for Rust functions marked [`#[patchable]`](crate::patchable).
//!
//! The attribute puts one 5-byte site at the start of the function's body: a static-branch
//! site of the function's own key, a NOP while nothing is enabled, so the function costs one
//! NOP more and is inlined as before (every inlined copy carries its own site, recorded in the
//! key's table). While the function is traced or replaced, the site jumps to an out-of-line
//! path that runs the matching tracers' hooks, then the replacement, or the function's own
//! body again, entered past its site.
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//!
//! #[textpoke::patchable]
//! fn parse(input: &str) -> usize {
//!     input.len()
//! }
//!
//! fn parse_v2(input: &str) -> usize {
//!     input.len() * 2
//! }
//!
//! static CALLS: AtomicUsize = AtomicUsize::new(0);
//!
//! // ftrace's function tracer: hooks on every function whose path matches.
//! let tracer = textpoke::functions::trace("*::parse", |f| {
//!     assert!(f.name().ends_with("::parse"));
//!     CALLS.fetch_add(1, Ordering::Relaxed);
//! })?;
//! assert_eq!(parse("abc"), 3);
//! assert_eq!(CALLS.load(Ordering::Relaxed), 1);
//! drop(tracer); // untraced again, in one batch
//!
//! // livepatch: every later call runs the replacement; a different signature fails to build.
//! let patch = textpoke::functions::replace!(parse, parse_v2)?;
//! assert_eq!(parse("abc"), 6);
//! patch.revert()?; // or by name: textpoke::functions::revert("*::parse")
//! assert_eq!(parse("abc"), 3);
//! # Ok::<(), textpoke::Error>(())
//! ```
//!
//! The dispatch from the site takes no lock and allocates nothing, so a traced function may run
//! in a signal handler (in the executable: a plugin's thread-locals may be allocated on first
//! use by the loader). A hook that calls a traced function does not re-enter the hooks on
//! the same thread.

mod dispatch;
mod glob;
pub(crate) mod table;

use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use dispatch::{Divert, Entry, Exit, __divert};

use crate::{Batch, Error, Result, StaticKey};
use dispatch::Hooks;

/// Signature stored in every function's state, checked when a table entry names it.
const FN_MAGIC: u32 = u32::from_le_bytes(*b"tpf1");

/// A patchable function's state: its key (whose sites are the function's sites), its name and
/// what is enabled on it. Made by [`#[patchable]`](crate::patchable) only.
#[repr(C, align(8))]
pub struct FnMeta {
    magic: u32,
    line: u32,
    key: &'static StaticKey,
    name: &'static str,
    file: &'static str,
    /// Slots of the tracers whose filter matched.
    tracers: AtomicU64,
    /// The installed replacement, if any.
    replacement: AtomicPtr<Replacement>,
}

/// A replacement: which code (one instantiation of the function) is replaced, and by what.
/// Interned, never freed, so a thread that loaded one can always read it.
#[derive(PartialEq, Eq)]
struct Replacement {
    code: usize,
    target: usize,
}

impl FnMeta {
    /// Used by `#[patchable]` only.
    #[doc(hidden)]
    pub const fn __new(
        key: &'static StaticKey,
        name: &'static str,
        file: &'static str,
        line: u32,
    ) -> Self {
        FnMeta {
            magic: FN_MAGIC,
            line,
            key,
            name,
            file,
            tracers: AtomicU64::new(0),
            replacement: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// Offset and value of the signature table validation looks for.
    pub(crate) const SIGNATURE: (usize, u32) = (std::mem::offset_of!(FnMeta, magic), FN_MAGIC);

    /// The replacement target for the code at `code`, if one is installed for it.
    fn replacement_for(&self, code: usize) -> Option<usize> {
        let r = self.replacement.load(Ordering::Acquire);
        // SAFETY: replacements are interned and never freed.
        let r = unsafe { r.as_ref() }?;
        (code != 0 && r.code == code).then_some(r.target)
    }

    /// Whether the site must jump: something is enabled.
    fn wanted(&self) -> bool {
        self.tracers.load(Ordering::Acquire) != 0 || !self.replacement.load(Ordering::Acquire).is_null()
    }
}

/// Serializes changes of what is enabled on functions (tracers, replacements), so that each
/// function's key follows its state. Never taken by a patchable function's dispatch.
static STATE: Mutex<()> = Mutex::new(());

fn state() -> MutexGuard<'static, ()> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every patchable function of this copy of textpoke's object.
fn functions() -> Result<&'static table::FnIndex> {
    let lock = crate::engine::lock()?;
    table::fn_index(&lock)
}

/// Enables or disables, in one batch, the keys of `metas` so that each follows its state.
fn sync_keys(metas: &[&'static FnMeta]) -> Result<crate::PatchStats> {
    let mut batch = Batch::new();
    for meta in metas {
        batch = if meta.wanted() {
            batch.enable(meta.key)
        } else {
            batch.disable(meta.key)
        };
    }
    batch.commit()
}

/// One patchable function, as [`list`] shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionInfo {
    /// Its Rust path (`module::function`, `module::Type::method` for an `impl` block marked
    /// `#[patchable]`).
    pub name: &'static str,
    /// Its source file.
    pub file: &'static str,
    /// Its line.
    pub line: u32,
    /// Sites: one per inlined copy and per generic instantiation.
    pub sites: usize,
    /// Tracers whose filter matches it.
    pub tracers: usize,
    /// Whether a replacement is installed.
    pub replaced: bool,
}

/// Every patchable function whose path matches `pattern` (`*` for all), sorted by path.
pub fn list(pattern: &str) -> Result<Vec<FunctionInfo>> {
    let mut out = Vec::new();
    for (meta, _) in &functions()?.functions {
        if glob::matches(pattern, meta.name) {
            out.push(FunctionInfo {
                name: meta.name,
                file: meta.file,
                line: meta.line,
                sites: meta.key.sites()?.len(),
                tracers: meta.tracers.load(Ordering::Acquire).count_ones() as usize,
                replaced: !meta.replacement.load(Ordering::Acquire).is_null(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(b.name));
    Ok(out)
}

/// Active hooks on the functions that matched a filter. Dropping it (or [`disable`]) removes
/// them, in one batch.
///
/// [`disable`]: Tracer::disable
#[must_use = "the tracer is removed when dropped"]
pub struct Tracer {
    slot: usize,
    metas: Vec<&'static FnMeta>,
    active: bool,
}

impl Tracer {
    /// The functions it traces.
    pub fn functions(&self) -> Vec<&'static str> {
        self.metas.iter().map(|m| m.name).collect()
    }

    /// Removes the hooks, in one batch, and waits until no thread runs them.
    pub fn disable(mut self) -> Result<()> {
        self.remove()
    }

    fn remove(&mut self) -> Result<()> {
        if !std::mem::replace(&mut self.active, false) {
            return Ok(());
        }
        let _state = state();
        for meta in &self.metas {
            meta.tracers.fetch_and(!(1 << self.slot), Ordering::AcqRel);
        }
        let synced = sync_keys(&self.metas);
        dispatch::uninstall(self.slot);
        synced.map(drop)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        // Dropping cannot report an error; `disable` does. A failed batch leaves sites jumping
        // to a path that finds no hooks for this tracer, which is harmless.
        let _ = self.remove();
    }
}

/// Calls `on_entry` at the start of every call of every patchable function whose path matches
/// `pattern` (glob: `*`, `?`), like ftrace's function tracer. One batch for every matching
/// function; several tracers may be active at once, with overlapping filters.
pub fn trace(pattern: &str, on_entry: impl Fn(&Entry) + Send + Sync + 'static) -> Result<Tracer> {
    install(
        pattern,
        Hooks {
            entry: Some(Box::new(on_entry)),
            exit: None,
        },
    )
}

/// As [`trace`], and calls `on_exit` when each call ends: on every path out (a return, a `?`,
/// unwinding).
pub fn trace_calls(
    pattern: &str,
    on_entry: impl Fn(&Entry) + Send + Sync + 'static,
    on_exit: impl Fn(&Exit) + Send + Sync + 'static,
) -> Result<Tracer> {
    install(
        pattern,
        Hooks {
            entry: Some(Box::new(on_entry)),
            exit: Some(Box::new(on_exit)),
        },
    )
}

fn install(pattern: &str, hooks: Hooks) -> Result<Tracer> {
    let index = functions()?;
    let metas: Vec<&'static FnMeta> = index
        .functions
        .iter()
        .map(|(m, _)| *m)
        .filter(|m| glob::matches(pattern, m.name))
        .collect();
    let _state = state();
    let slot = dispatch::install(hooks).ok_or_else(|| Error::Functions {
        what: pattern.to_owned(),
        why: format!("{} tracers are active already", dispatch::SLOTS),
    })?;
    for meta in &metas {
        meta.tracers.fetch_or(1 << slot, Ordering::AcqRel);
    }
    let mut tracer = Tracer {
        slot,
        metas,
        active: true,
    };
    if let Err(e) = sync_keys(&tracer.metas) {
        drop(_state);
        let _ = tracer.remove();
        return Err(e);
    }
    Ok(tracer)
}

/// Calls, total and maximum time of one function, as [`Profile::report`] gives them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileRow {
    /// The function's Rust path.
    pub name: &'static str,
    /// Calls that ended (returned or unwound) while profiled.
    pub calls: u64,
    /// Their total time.
    pub total: Duration,
    /// The longest.
    pub max: Duration,
}

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    total_ns: AtomicU64,
    max_ns: AtomicU64,
}

/// ftrace's function profiler over the functions that matched a filter: calls, total and
/// maximum time per function. Dropping it stops profiling.
pub struct Profile {
    tracer: Tracer,
    counters: Arc<Vec<(usize, Counters)>>,
}

impl Profile {
    /// One row per profiled function, most total time first.
    pub fn report(&self) -> Vec<ProfileRow> {
        let mut rows: Vec<ProfileRow> = self
            .tracer
            .metas
            .iter()
            .zip(self.counters.iter())
            .map(|(meta, (_, c))| ProfileRow {
                name: meta.name,
                calls: c.calls.load(Ordering::Relaxed),
                total: Duration::from_nanos(c.total_ns.load(Ordering::Relaxed)),
                max: Duration::from_nanos(c.max_ns.load(Ordering::Relaxed)),
            })
            .collect();
        rows.sort_by(|a, b| b.total.cmp(&a.total).then(a.name.cmp(b.name)));
        rows
    }

    /// Stops profiling, in one batch.
    pub fn disable(self) -> Result<()> {
        self.tracer.disable()
    }
}

/// Profiles every patchable function whose path matches `pattern`.
pub fn profile(pattern: &str) -> Result<Profile> {
    let index = functions()?;
    let mut counters: Vec<(usize, Counters)> = index
        .functions
        .iter()
        .filter(|(m, _)| glob::matches(pattern, m.name))
        .map(|(m, _)| (*m as *const FnMeta as usize, Counters::default()))
        .collect();
    counters.sort_unstable_by_key(|c| c.0);
    let counters = Arc::new(counters);
    let shared = counters.clone();
    let tracer = install(
        pattern,
        Hooks {
            entry: None,
            exit: Some(Box::new(move |exit: &Exit| {
                let me = exit.meta() as *const FnMeta as usize;
                if let Ok(i) = shared.binary_search_by_key(&me, |c| c.0) {
                    let c = &shared[i].1;
                    let ns = u64::try_from(exit.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    c.calls.fetch_add(1, Ordering::Relaxed);
                    c.total_ns.fetch_add(ns, Ordering::Relaxed);
                    c.max_ns.fetch_max(ns, Ordering::Relaxed);
                }
            })),
        },
    )?;
    // The tracer's functions and the counters were both filtered from the same index by
    // address order; keep the tracer's in the counters' order for `report`.
    let mut tracer = tracer;
    tracer.metas.sort_unstable_by_key(|m| *m as *const FnMeta as usize);
    Ok(Profile { tracer, counters })
}

static INTERNED: Mutex<Vec<&'static Replacement>> = Mutex::new(Vec::new());

fn intern(r: Replacement) -> &'static Replacement {
    let mut all = INTERNED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(found) = all.iter().find(|x| ***x == r) {
        return found;
    }
    let leaked: &'static Replacement = Box::leak(Box::new(r));
    all.push(leaked);
    leaked
}

fn meta_of(code: usize) -> Result<&'static FnMeta> {
    functions()?.by_code(code).ok_or_else(|| Error::Functions {
        what: crate::Location::of(code).to_string(),
        why: "not a patchable function that can be replaced (is it marked #[textpoke::patchable], \
              in this object, without `impl Trait` in its signature?)"
            .into(),
    })
}

/// A replacement installed by [`replace!`]. It stays installed when dropped, as livepatch's
/// do; [`Replaced::revert`] or [`revert`] removes it.
#[must_use = "keep it to revert the replacement, or call functions::revert by name"]
pub struct Replaced {
    meta: &'static FnMeta,
}

impl Replaced {
    /// The replaced function's Rust path.
    pub fn name(&self) -> &'static str {
        self.meta.name
    }

    /// Later calls run the function's own body again. A thread already inside the
    /// replacement finishes there.
    pub fn revert(self) -> Result<()> {
        let _state = state();
        revert_locked(self.meta)
    }
}

fn revert_locked(meta: &'static FnMeta) -> Result<()> {
    let old = meta.replacement.swap(std::ptr::null_mut(), Ordering::AcqRel);
    sync_keys(&[meta]).map(drop).inspect_err(|_| {
        meta.replacement.store(old, Ordering::Release);
    })
}

/// Reverts every replaced function whose path matches `pattern`, in one batch. Returns how
/// many were reverted.
pub fn revert(pattern: &str) -> Result<usize> {
    let index = functions()?;
    let _state = state();
    let mut reverted = Vec::new();
    for (meta, _) in &index.functions {
        if glob::matches(pattern, meta.name) {
            let old = meta.replacement.swap(std::ptr::null_mut(), Ordering::AcqRel);
            if !old.is_null() {
                reverted.push((*meta, old));
            }
        }
    }
    let metas: Vec<&'static FnMeta> = reverted.iter().map(|r| r.0).collect();
    match sync_keys(&metas) {
        Ok(_) => Ok(metas.len()),
        Err(e) => {
            for (meta, old) in reverted {
                meta.replacement.store(old, Ordering::Release);
            }
            Err(e)
        }
    }
}

/// [`replace!`]'s work: `pair` is `[f, g]`, coerced to one function pointer type.
///
/// # Safety
///
/// `P` must be a function pointer type (`replace!` checks it with `core::ptr::fn_addr_eq`,
/// which only takes function pointers).
#[doc(hidden)]
pub unsafe fn __replace<P: Copy>(pair: [P; 2]) -> Result<Replaced> {
    const { assert!(size_of::<P>() == size_of::<usize>()) };
    // SAFETY: `P` is a function pointer (the caller's guarantee), the size of an address.
    let [f, g] = pair.map(|p| unsafe { std::mem::transmute_copy::<P, usize>(&p) });
    let meta = meta_of(f)?;
    let _state = state();
    let new = intern(Replacement { code: f, target: g });
    let old = meta
        .replacement
        .swap((new as *const Replacement).cast_mut(), Ordering::AcqRel);
    match sync_keys(&[meta]) {
        Ok(_) => Ok(Replaced { meta }),
        Err(e) => {
            meta.replacement.store(old, Ordering::Release);
            Err(e)
        }
    }
}

/// Makes every later call of patchable function `f` run `g` instead, with the same arguments,
/// and return its result (livepatch). Safe while threads call `f`: a thread already inside
/// `f` finishes there. Returns a [`Replaced`]. `g` must have exactly `f`'s signature:
///
/// ```compile_fail,E0308
/// #[textpoke::patchable]
/// fn parse(input: &str) -> usize { input.len() }
/// fn wrong(input: &[u8]) -> usize { input.len() }
/// let _ = textpoke::functions::replace!(parse, wrong); // error: mismatched types
/// ```
///
/// For a generic function, name the instantiation (`replace!(f::<u32>, g)`): each is replaced
/// on its own. A replacement and tracers combine: the hooks run, then the replacement.
#[macro_export]
#[doc(hidden)]
macro_rules! __functions_replace {
    ($f:expr, $g:expr $(,)?) => {{
        // An array's elements are coerced to one type: distinct function items of the same
        // signature become one function pointer type, and any other pair fails to build.
        let pair = [$f, $g];
        // Builds only if that type is a function pointer (not a closure or an integer).
        let _ = ::core::ptr::fn_addr_eq(pair[0], pair[1]);
        // SAFETY: `pair` holds two function pointers of one type (checked just above).
        unsafe { $crate::functions::__replace(pair) }
    }};
}

#[doc(inline)]
pub use crate::__functions_replace as replace;
