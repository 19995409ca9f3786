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
//! patch.disable()?; // or by name: textpoke::functions::revert("*::parse")
//! assert_eq!(parse("abc"), 3);
//! # Ok::<(), textpoke::Error>(())
//! ```
//!
//! The attribute goes on free functions, methods (`self`, `&self`, `&mut self`, or on the
//! `impl` block, which puts the type in the names), generic functions (each instantiation
//! has its own site; replace one with `replace!(f::<u32>, g)`), `unsafe fn` and
//! `extern "C" fn`. A function with `impl Trait` in its signature can be traced but not
//! replaced. Where it cannot work, it says so at build time:
//!
//! ```compile_fail
//! #[textpoke::patchable] // error: cannot go on a `const fn`: it also runs at compile time
//! const fn answer() -> u32 { 42 }
//! ```
//!
//! ```compile_fail
//! #[textpoke::patchable] // error: cannot go on an `async fn`: make the function that
//! async fn fetch() -> u32 { 42 } // creates the future patchable
//! ```
//!
//! ```compile_fail
//! #[textpoke::patchable] // error: goes on a function, a method or an impl block
//! struct NotAFunction;
//! ```
//!
//! The dispatch from the site takes no lock and allocates nothing, so a traced function may run
//! in a signal handler (in the executable: a plugin's thread-locals may be allocated on first
//! use by the loader). A hook that calls a traced function does not re-enter the hooks on
//! the same thread.

mod dispatch;
pub(crate) mod glob;
pub(crate) mod table;

use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use dispatch::{__divert, Divert, Entry, Exit};

use crate::{Batch, Error, Result, StaticKey};
use dispatch::Hooks;

/// Signature stored in every function's state, checked when a table entry names it.
const FN_MAGIC: u32 = u32::from_le_bytes(*b"tpf2");

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
    replacement: AtomicPtr<Interned>,
    /// Whether it returns `()`, so that it can be made a no-op (its expansion returns at once
    /// when its replacement target is [`__NOOP`]).
    unit: bool,
}

/// The replacement target that makes a function that returns `()` return at once. Not an
/// address any code has. Used by `#[patchable]` only.
#[doc(hidden)]
pub const __NOOP: usize = 1;

/// The code address of a replacement that applies to every instantiation of its function.
const ALL_CODE: usize = usize::MAX;

impl FnMeta {
    /// Used by `#[patchable]` only.
    #[doc(hidden)]
    pub const fn __new(
        key: &'static StaticKey,
        name: &'static str,
        file: &'static str,
        line: u32,
        unit: bool,
    ) -> Self {
        FnMeta {
            magic: FN_MAGIC,
            line,
            key,
            name,
            file,
            tracers: AtomicU64::new(0),
            replacement: AtomicPtr::new(std::ptr::null_mut()),
            unit,
        }
    }

    /// Offset and value of the signature table validation looks for.
    pub(crate) const SIGNATURE: (usize, u32) = (std::mem::offset_of!(FnMeta, magic), FN_MAGIC);

    /// The replacement target for the code at `code`, if one is installed for it.
    fn replacement_for(&self, code: usize) -> Option<usize> {
        let r = self.replacement.load(Ordering::Acquire);
        // SAFETY: replacements are interned and never freed.
        let r = unsafe { r.as_ref() }?;
        (code != 0 && (r.code == code || r.code == ALL_CODE)).then_some(r.target)
    }

    /// Whether the site must jump: something is enabled.
    fn wanted(&self) -> bool {
        self.tracers.load(Ordering::Acquire) != 0
            || !self.replacement.load(Ordering::Acquire).is_null()
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
    /// Whether it is a no-op now (see [`replace_noop`]).
    pub noop: bool,
    /// Whether it returns `()` (and so can be made a no-op).
    pub unit: bool,
}

/// Every patchable function whose path matches `pattern` (`*` for all), sorted by path.
pub fn list(pattern: &str) -> Result<Vec<FunctionInfo>> {
    let mut out = Vec::new();
    let glob = glob::Glob::new(pattern);
    // One lock for every function's site count, not one each.
    let lock = crate::engine::lock()?;
    for (meta, _) in &table::fn_index(&lock)?.functions {
        if glob.matches(meta.name) {
            // SAFETY: replacements are interned and never freed.
            let replacement = unsafe { meta.replacement.load(Ordering::Acquire).as_ref() };
            out.push(FunctionInfo {
                name: meta.name,
                file: meta.file,
                line: meta.line,
                sites: crate::keys::site_count(&lock, meta.key)?,
                tracers: meta.tracers.load(Ordering::Acquire).count_ones() as usize,
                replaced: replacement.is_some(),
                noop: replacement.is_some_and(|r| r.target == __NOOP),
                unit: meta.unit,
            });
        }
    }
    drop(lock);
    out.sort_by(|a, b| a.name.cmp(b.name));
    Ok(out)
}

/// Hooks on the functions that matched a filter, like one ftrace tracer. Made inactive by
/// [`Tracer::new`] (to start in a [`Batch`] with other changes), or active by
/// [`trace`]. Dropping it stops it (one batch) and frees its hooks once no thread runs them.
pub struct Tracer {
    slot: usize,
    metas: Vec<&'static FnMeta>,
}

impl Tracer {
    /// A tracer, not yet started, that calls `on_entry` at the start of every call of every
    /// patchable function whose path matches `pattern` (glob: `*`, `?`). Several tracers may be
    /// active at once, with overlapping filters.
    pub fn new(pattern: &str, on_entry: impl Fn(&Entry) + Send + Sync + 'static) -> Result<Self> {
        Self::with_hooks(
            pattern,
            Hooks {
                entry: Some(Box::new(on_entry)),
                exit: None,
            },
        )
    }

    /// As [`new`](Self::new), and calls `on_exit` when each call ends: on every path out (a
    /// return, a `?`, unwinding).
    pub fn with_exits(
        pattern: &str,
        on_entry: impl Fn(&Entry) + Send + Sync + 'static,
        on_exit: impl Fn(&Exit) + Send + Sync + 'static,
    ) -> Result<Self> {
        Self::with_hooks(
            pattern,
            Hooks {
                entry: Some(Box::new(on_entry)),
                exit: Some(Box::new(on_exit)),
            },
        )
    }

    fn with_hooks(pattern: &str, hooks: Hooks) -> Result<Self> {
        let index = functions()?;
        let metas = index
            .functions
            .iter()
            .map(|(m, _)| *m)
            .filter(|m| glob::matches(pattern, m.name))
            .collect();
        let _state = state();
        let slot = dispatch::install(hooks).ok_or_else(|| Error::Functions {
            what: pattern.to_owned(),
            why: format!("{} tracers exist already", dispatch::SLOTS),
        })?;
        Ok(Tracer { slot, metas })
    }

    /// The functions it traces, sorted by path.
    pub fn functions(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self.metas.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names
    }

    /// Whether it is started.
    pub fn is_enabled(&self) -> bool {
        self.metas
            .first()
            .is_some_and(|m| m.tracers.load(Ordering::Acquire) & self.bit() != 0)
    }

    fn bit(&self) -> u64 {
        1 << self.slot
    }

    /// Starts it: one batch for every matching function.
    pub fn enable(&self) -> Result<crate::PatchStats> {
        Batch::new().start_tracer(self).commit()
    }

    /// Stops it: one batch.
    pub fn disable(&self) -> Result<crate::PatchStats> {
        Batch::new().stop_tracer(self).commit()
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        // Dropping cannot report an error; `disable` does. If the batch fails, the sites keep
        // jumping to a path that finds no hooks in this slot, which is harmless.
        let _ = self.disable();
        let _state = state();
        for meta in &self.metas {
            meta.tracers.fetch_and(!self.bit(), Ordering::AcqRel);
        }
        dispatch::uninstall(self.slot);
    }
}

/// Starts a [`Tracer`] calling `on_entry` on every function whose path matches `pattern`,
/// like ftrace's function tracer: one batch for every matching function.
pub fn trace(pattern: &str, on_entry: impl Fn(&Entry) + Send + Sync + 'static) -> Result<Tracer> {
    let tracer = Tracer::new(pattern, on_entry)?;
    tracer.enable()?;
    Ok(tracer)
}

/// As [`trace`], with exit hooks too (see [`Tracer::with_exits`]).
pub fn trace_calls(
    pattern: &str,
    on_entry: impl Fn(&Entry) + Send + Sync + 'static,
    on_exit: impl Fn(&Exit) + Send + Sync + 'static,
) -> Result<Tracer> {
    let tracer = Tracer::with_exits(pattern, on_entry, on_exit)?;
    tracer.enable()?;
    Ok(tracer)
}

/// A change of what is enabled on functions, planned in a [`Batch`].
pub(crate) enum FnChange<'a> {
    Tracer(&'a Tracer, bool),
    Replacement(&'a Replacement, bool),
}

/// Function changes applied before their batch's sites are written, and undone if it fails.
pub(crate) struct FnPlan {
    _state: MutexGuard<'static, ()>,
    undo: Vec<(&'static FnMeta, u64, *mut Interned)>,
}

impl FnPlan {
    /// Applies `changes` to the functions' states (a site that jumps finds them), and returns
    /// the keys that must follow, with the state they must be in.
    pub(crate) fn new(
        changes: &[FnChange<'_>],
        keys: &mut Vec<(&'static StaticKey, bool)>,
    ) -> Self {
        let plan_state = state();
        let mut touched: Vec<&'static FnMeta> = changes
            .iter()
            .flat_map(|change| match change {
                FnChange::Tracer(t, _) => t.metas.clone(),
                FnChange::Replacement(r, _) => vec![r.meta],
            })
            .collect();
        touched.sort_unstable_by_key(|m| *m as *const FnMeta as usize);
        touched.dedup_by_key(|m| *m as *const FnMeta as usize);
        let undo = touched
            .iter()
            .map(|m| {
                (
                    *m,
                    m.tracers.load(Ordering::Acquire),
                    m.replacement.load(Ordering::Acquire),
                )
            })
            .collect();
        for change in changes {
            match *change {
                FnChange::Tracer(t, on) => {
                    for m in &t.metas {
                        if on {
                            m.tracers.fetch_or(t.bit(), Ordering::AcqRel);
                        } else {
                            m.tracers.fetch_and(!t.bit(), Ordering::AcqRel);
                        }
                    }
                }
                FnChange::Replacement(r, on) => {
                    let mine = (r.interned as *const Interned).cast_mut();
                    if on {
                        r.meta.replacement.store(mine, Ordering::Release);
                    } else {
                        // Reverting removes only this replacement, not another installed since.
                        let _ = r.meta.replacement.compare_exchange(
                            mine,
                            std::ptr::null_mut(),
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        );
                    }
                }
            }
        }
        keys.extend(touched.iter().map(|m| (m.key, m.wanted())));
        FnPlan {
            _state: plan_state,
            undo,
        }
    }

    /// The batch failed: every function gets its state back.
    pub(crate) fn abort(self) {
        for (meta, tracers, replacement) in &self.undo {
            meta.tracers.store(*tracers, Ordering::Release);
            meta.replacement.store(*replacement, Ordering::Release);
        }
    }
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
    /// By state address, as the exit hook looks them up.
    counters: Arc<Vec<(usize, &'static str, Counters)>>,
}

impl Profile {
    /// One row per profiled function, most total time first.
    pub fn report(&self) -> Vec<ProfileRow> {
        let mut rows: Vec<ProfileRow> = self
            .counters
            .iter()
            .map(|(_, name, c)| ProfileRow {
                name,
                calls: c.calls.load(Ordering::Relaxed),
                total: Duration::from_nanos(c.total_ns.load(Ordering::Relaxed)),
                max: Duration::from_nanos(c.max_ns.load(Ordering::Relaxed)),
            })
            .collect();
        rows.sort_by(|a, b| b.total.cmp(&a.total).then(a.name.cmp(b.name)));
        rows
    }

    /// The tracer that feeds it (to stop and start it, or put it in a batch).
    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }
}

/// Starts profiling every patchable function whose path matches `pattern`.
pub fn profile(pattern: &str) -> Result<Profile> {
    let index = functions()?;
    let mut counters: Vec<(usize, &'static str, Counters)> = index
        .functions
        .iter()
        .filter(|(m, _)| glob::matches(pattern, m.name))
        .map(|(m, _)| (*m as *const FnMeta as usize, m.name, Counters::default()))
        .collect();
    counters.sort_unstable_by_key(|c| c.0);
    let counters = Arc::new(counters);
    let shared = counters.clone();
    let tracer = Tracer::with_hooks(
        pattern,
        Hooks {
            entry: None,
            exit: Some(Box::new(move |exit: &Exit| {
                let me = exit.meta() as *const FnMeta as usize;
                if let Ok(i) = shared.binary_search_by_key(&me, |c| c.0) {
                    let c = &shared[i].2;
                    let ns = u64::try_from(exit.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    c.calls.fetch_add(1, Ordering::Relaxed);
                    c.total_ns.fetch_add(ns, Ordering::Relaxed);
                    c.max_ns.fetch_max(ns, Ordering::Relaxed);
                }
            })),
        },
    )?;
    tracer.enable()?;
    Ok(Profile { tracer, counters })
}

/// Which code (one instantiation of a function) is replaced, and by what. Interned and never
/// freed, so a thread that loaded one can always read it.
#[derive(PartialEq, Eq)]
struct Interned {
    code: usize,
    target: usize,
}

static INTERNED: Mutex<Vec<&'static Interned>> = Mutex::new(Vec::new());

fn intern(r: Interned) -> &'static Interned {
    let mut all = INTERNED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(found) = all.iter().find(|x| ***x == r) {
        return found;
    }
    let leaked: &'static Interned = Box::leak(Box::new(r));
    all.push(leaked);
    leaked
}

/// A replacement of one patchable function by another of its signature (livepatch), made by
/// [`replacement!`] (not yet installed) or [`replace!`] (installed). It stays installed when
/// dropped, as livepatch's do; [`disable`](Self::disable) or [`revert`] removes it.
pub struct Replacement {
    meta: &'static FnMeta,
    interned: &'static Interned,
}

impl Replacement {
    /// The replaced function's Rust path.
    pub fn name(&self) -> &'static str {
        self.meta.name
    }

    /// Whether it is installed.
    pub fn is_enabled(&self) -> bool {
        std::ptr::eq(self.meta.replacement.load(Ordering::Acquire), self.interned)
    }

    /// Installs it: every later call of the function runs the replacement. A thread already
    /// inside the function finishes there.
    pub fn enable(&self) -> Result<crate::PatchStats> {
        Batch::new().replace(self).commit()
    }

    /// Removes it (if it is the one installed): later calls run the function's own body again.
    /// A thread already inside the replacement finishes there.
    pub fn disable(&self) -> Result<crate::PatchStats> {
        Batch::new().revert(self).commit()
    }
}

/// Makes every function whose path matches `pattern` and that returns `()` a no-op, in one
/// batch (every instantiation; a function whose code cannot be named, with `impl Trait`
/// arguments, is left alone). Returns the paths made no-ops. Undo with [`revert`].
pub fn replace_noop(pattern: &str) -> Result<Vec<&'static str>> {
    let found = noop_replacements(pattern)?;
    found
        .iter()
        .fold(Batch::new(), |b, r| b.replace(r))
        .commit()?;
    Ok(found.iter().map(|r| r.meta.name).collect())
}

/// The no-op replacements of the functions [`replace_noop`] would change, not installed.
pub(crate) fn noop_replacements(pattern: &str) -> Result<Vec<Replacement>> {
    Ok(functions()?
        .functions
        .iter()
        .filter(|(m, codes)| m.unit && codes.iter().any(|&c| c != 0))
        .filter(|(m, _)| glob::matches(pattern, m.name))
        .map(|(meta, _)| Replacement {
            meta,
            interned: intern(Interned {
                code: ALL_CODE,
                target: __NOOP,
            }),
        })
        .collect())
}

/// The keys of every patchable function of this copy's object, sorted: their sites are the
/// functions', listed as functions rather than keys.
pub(crate) fn key_addrs(lock: &crate::engine::PatchGuard) -> Result<Vec<usize>> {
    let mut keys: Vec<usize> = table::fn_index(lock)?
        .functions
        .iter()
        .map(|(m, _)| m.key.core().addr())
        .collect();
    keys.sort_unstable();
    Ok(keys)
}

/// Reverts every replaced function whose path matches `pattern`, in one batch. Returns how
/// many were reverted.
pub fn revert(pattern: &str) -> Result<usize> {
    let index = functions()?;
    let found: Vec<Replacement> = index
        .functions
        .iter()
        .filter(|(m, _)| glob::matches(pattern, m.name))
        .filter_map(|(meta, _)| {
            // SAFETY: replacements are interned and never freed.
            let interned = unsafe { meta.replacement.load(Ordering::Acquire).as_ref() }?;
            Some(Replacement { meta, interned })
        })
        .collect();
    found
        .iter()
        .fold(Batch::new(), |b, r| b.revert(r))
        .commit()
        .map(|_| found.len())
}

fn meta_of(code: usize) -> Result<&'static FnMeta> {
    functions()?.by_code(code).ok_or_else(|| Error::Functions {
        what: crate::Location::of(code).to_string(),
        why: "not a patchable function that can be replaced (is it marked #[textpoke::patchable], \
              in this object, without `impl Trait` in its signature?)"
            .into(),
    })
}

/// [`replacement!`]'s work: `pair` is `[f, g]`, coerced to one function pointer type.
///
/// # Safety
///
/// `P` must be a function pointer type (`replacement!` checks it with `core::ptr::fn_addr_eq`,
/// which only takes function pointers).
#[doc(hidden)]
pub unsafe fn __replacement<P: Copy>(pair: [P; 2]) -> Result<Replacement> {
    const { assert!(size_of::<P>() == size_of::<usize>()) };
    // SAFETY: `P` is a function pointer (the caller's guarantee), the size of an address.
    let [f, g] = pair.map(|p| unsafe { std::mem::transmute_copy::<P, usize>(&p) });
    let meta = meta_of(f)?;
    crate::os::TextMap::new()
        .find(g, 1)
        .ok_or_else(|| Error::Functions {
            what: meta.name.to_owned(),
            why: format!(
                "replacement {} is not code in a loaded object",
                crate::Location::of(g)
            ),
        })?;
    Ok(Replacement {
        meta,
        interned: intern(Interned { code: f, target: g }),
    })
}

/// A [`Replacement`] of patchable function `f` by `g`, not yet installed (to install it in a
/// [`Batch`] with other changes). `g` must have exactly `f`'s signature:
///
/// ```compile_fail,E0308
/// #[textpoke::patchable]
/// fn parse(input: &str) -> usize { input.len() }
/// fn wrong(input: &[u8]) -> usize { input.len() }
/// let _ = textpoke::functions::replacement!(parse, wrong); // error: mismatched types
/// ```
///
/// For a generic function, name the instantiation (`replacement!(f::<u32>, g)`): each is
/// replaced on its own. A replacement and tracers combine: the hooks run, then the replacement.
#[macro_export]
#[doc(hidden)]
macro_rules! __functions_replacement {
    ($f:expr, $g:expr $(,)?) => {{
        // An array's elements are coerced to one type: distinct function items of the same
        // signature become one function pointer type, and any other pair fails to build.
        let pair = [$f, $g];
        // Builds only if that type is a function pointer (not a closure or an integer).
        let _ = ::core::ptr::fn_addr_eq(pair[0], pair[1]);
        // SAFETY: `pair` holds two function pointers of one type (checked just above).
        unsafe { $crate::functions::__replacement(pair) }
    }};
}

/// Makes every later call of patchable function `f` run `g` instead, with the same arguments,
/// and return its result (livepatch), in one batch; returns the installed [`Replacement`].
/// Safe while threads call `f`. See [`replacement!`] for the type check.
#[macro_export]
#[doc(hidden)]
macro_rules! __functions_replace {
    ($f:expr, $g:expr $(,)?) => {
        $crate::functions::replacement!($f, $g).and_then(|r| r.enable().map(|_| r))
    };
}

#[doc(inline)]
pub use crate::__functions_replace as replace;
#[doc(inline)]
pub use crate::__functions_replacement as replacement;
