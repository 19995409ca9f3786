//! Alternatives: instruction sequences chosen by CPU feature, applied once, live-safely.
//!
//! ```
//! #[inline(never)]
//! fn which() -> u64 {
//!     let n: u64;
//!     // SAFETY: both sequences only write `n`.
//!     unsafe {
//!         textpoke::alternative!(
//!             default: ["mov {n}, 1"],
//!             "sse2" => ["mov {n}, 2"]; // architectural on x86-64
//!             n = out(reg) n,
//!         );
//!     }
//!     n
//! }
//!
//! assert_eq!(which(), 1); // the first run applies every alternative, then runs the default
//! assert!(textpoke::alternatives::applied());
//! assert_eq!(which(), 2); // now the SSE2 sequence runs inline
//! ```
//!
//! A program may instead call [`apply`] itself, early, to choose when the code is written and to
//! see any error; [`apply_on_first_use`] turns the first-use path off.

pub(crate) mod table;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use crate::arch::{FIRST_USE_LEN, Insn, JUMP_LABEL_LEN, fill_padding, jump_label_code, relocate};
use crate::engine::{self, Code, PatchStats, Poke};
use crate::{Error, Location, Result, features, os};
use table::{AltSite, alt_index};

static APPLIED: AtomicBool = AtomicBool::new(false);

/// [`FIRST_USE`] values. Only `ON` sends a site's run to the hook.
const OFF: u8 = 0;
const ON: u8 = 1;
/// A first use is applying (or trying to) on some thread.
const BUSY: u8 = 2;

/// Whether the next run of a site not yet applied calls [`apply`]; read by the first-use stub,
/// so one byte.
static FIRST_USE: AtomicU8 = AtomicU8::new(ON);

/// The error of the `apply` a first use ran, if it failed.
static FIRST_USE_ERROR: OnceLock<Error> = OnceLock::new();

/// The sites `apply` refused, each with its error; every other site was applied.
static REFUSED: OnceLock<Vec<Error>> = OnceLock::new();

/// The alternative sites [`apply`] refused, each an error naming its site (an unknown feature
/// in a stale or foreign table, a replacement that does not fit, a site that does not hold its
/// jump). They keep running their defaults; every other site was applied. Empty before `apply`
/// has run.
pub fn refused() -> &'static [Error] {
    REFUSED.get().map_or(&[], Vec::as_slice)
}

crate::arch::save_all_and_call!("textpoke_alt_first_use_v1" if FIRST_USE => first_use_hook);

/// Whether [`apply`] has run to completion in this process.
pub fn applied() -> bool {
    APPLIED.load(Ordering::Acquire)
}

/// Chooses, for every alternative site, the first candidate whose feature the CPU has (and
/// `TEXTPOKE_NO_FEATURES` does not mask), relocates it to the site, pads it, and writes every
/// site in one batch; then binds every [`multiversion!`](crate::multiversion) call the same
/// way, in a second batch. Every site and candidate is validated first: a site with an unknown
/// feature (a stale or foreign table), a candidate longer than the default, code that cannot be
/// relocated, or a site that does not hold its expected jump is refused, alone: it keeps
/// running its default, every other site is applied, and `apply` returns the first refused
/// site's error ([`refused`] lists them all). A table that fails validation as a whole is an
/// error, and nothing is written. Runs once; later calls return at once, with the same outcome.
///
/// Calling it is optional: the first run of any alternative site or function-level
/// alternative calls it (see [`apply_on_first_use`]). Call it early to choose when the code is
/// written, and to see its error.
pub fn apply() -> Result<PatchStats> {
    apply_locked(&crate::engine::lock()?)
}

/// Whether the first run of a site not yet applied calls [`apply`] (the default) or leaves
/// the defaults running until the program calls it. A first use applies from wherever it
/// happens, and applying allocates and initializes one-time state: it is not
/// async-signal-safe. A program whose first use could be in a signal handler, or while it holds
/// a lock the allocator needs, should call `apply` itself early, or turn this off. Takes effect for
/// sites run after it returns; does nothing once `apply` has run.
pub fn apply_on_first_use(on: bool) {
    if !applied() {
        FIRST_USE.store(if on { ON } else { OFF }, Ordering::Release);
    }
}

/// The error of the [`apply`] that a first use ran, if it failed. The defaults then keep
/// running; an explicit `apply` tries again and returns the error.
pub fn first_use_error() -> Option<&'static Error> {
    FIRST_USE_ERROR.get()
}

/// Runs [`apply`] on the first use of a function-level alternative. Returns whether the
/// alternatives are applied. Part of the `multiversion!` expansion; not for direct use.
#[doc(hidden)]
pub fn first_use() -> bool {
    if FIRST_USE.load(Ordering::Acquire) == ON {
        first_use_hook();
    }
    applied()
}

/// The first run of a site: applies, unless another thread is doing so (it then runs the
/// default meanwhile). Called by the first-use stub with every register saved.
extern "C" fn first_use_hook() {
    // Before the state can be BUSY: a child forked while it is must find it reset.
    static FORK: std::sync::Once = std::sync::Once::new();
    FORK.call_once(|| os::at_fork_child(forget_after_fork));
    if FIRST_USE
        .compare_exchange(ON, BUSY, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return;
    }
    // Never wait for the lock here: this thread may be the holder, interrupted by a signal
    // whose handler runs a site. Try again at the next run instead.
    let Some(lock) = crate::engine::try_lock() else {
        rearm();
        return;
    };
    if let Err(e) = apply_locked(&lock) {
        let _ = FIRST_USE_ERROR.set(e);
    }
}

/// [`apply`], with the lock held.
fn apply_locked(lock: &crate::engine::PatchGuard) -> Result<PatchStats> {
    // Applied or failed, a first use has nothing more to do.
    FIRST_USE.store(OFF, Ordering::Release);
    if applied() {
        return refused()
            .first()
            .map_or(Ok(PatchStats::default()), |e| Err(e.clone()));
    }
    let sites = alt_index(lock)?;
    let mut pokes = crate::batch::pokes_scratch();
    pokes.clear();
    let mut refused = Vec::new();
    for site in sites {
        match site_poke(site) {
            Ok(poke) => pokes.push(poke),
            Err(e) => refused.push(e),
        }
    }
    let mut stats = engine::patch(lock, &mut pokes)?;
    drop(pokes);
    let bound = select_all(lock)?;
    stats.sites += bound.sites;
    stats.writes += bound.writes;
    stats.syncs += bound.syncs;
    let first = refused.first().cloned();
    let _ = REFUSED.set(refused);
    APPLIED.store(true, Ordering::Release);
    first.map_or(Ok(stats), Err)
}

/// A child forked while another thread was starting a first use must not wait for it forever.
extern "C" fn forget_after_fork() {
    rearm();
}

/// Hands a first use that did not apply back to the next run: BUSY to ON, unless
/// `apply_on_first_use(false)` or `apply` changed the state meanwhile.
fn rearm() {
    let _ = FIRST_USE.compare_exchange(BUSY, ON, Ordering::AcqRel, Ordering::Acquire);
}

/// The feature chosen at each site, in address order (validating the table on first use).
pub fn choices() -> Result<Vec<(usize, String)>> {
    let lock = crate::engine::lock()?;
    alt_index(&lock)?
        .iter()
        .map(|site| Ok((site.addr, choose(site)?.feature.clone())))
        .collect()
}

/// One alternative site of this copy's object, as the registry lists it.
pub(crate) struct AltRow {
    pub(crate) addr: usize,
    site: &'static AltSite,
}

impl AltRow {
    /// Each candidate's feature, in priority order (`""` for the default).
    pub(crate) fn candidates(&self) -> Vec<String> {
        self.site
            .candidates
            .iter()
            .map(|c| c.feature.clone())
            .collect()
    }

    /// The feature chosen for this machine, or why none can be.
    pub(crate) fn chosen(&self) -> std::result::Result<String, String> {
        choose(self.site)
            .map(|c| c.feature.clone())
            .map_err(|e| e.to_string())
    }
}

/// Every alternative site of this copy's object, in address order.
pub(crate) fn rows(lock: &crate::engine::PatchGuard) -> Result<Vec<AltRow>> {
    Ok(alt_index(lock)?
        .iter()
        .map(|site| AltRow {
            addr: site.addr,
            site,
        })
        .collect())
}

/// The code [`apply`] would write at each site, in address order. For tests.
#[doc(hidden)]
pub fn planned_code() -> Result<Vec<(usize, Vec<u8>)>> {
    let lock = crate::engine::lock()?;
    alt_index(&lock)?
        .iter()
        .map(|site| Ok((site.addr, site_poke(site)?.new.as_slice().to_vec())))
        .collect()
}

fn bad(site: &AltSite, why: String) -> Error {
    Error::BadAlternative {
        site: Location::of(site.addr),
        why,
    }
}

fn choose(site: &AltSite) -> Result<&table::Candidate> {
    for c in &site.candidates {
        if c.len > site.len {
            return Err(bad(
                site,
                format!(
                    "the `{}` replacement is {} bytes, longer than the {}-byte site",
                    c.feature, c.len, site.len
                ),
            ));
        }
    }
    for c in &site.candidates {
        if c.feature.is_empty() {
            return Ok(c);
        }
        match features::has(&c.feature) {
            Ok(true) => return Ok(c),
            Ok(false) => {}
            Err(e) => return Err(bad(site, e.to_string())),
        }
    }
    Err(bad(site, "no default candidate in the table".into()))
}

fn site_poke(site: &AltSite) -> Result<Poke> {
    // Validate every candidate's feature, not just the chosen one.
    for c in &site.candidates {
        if !c.feature.is_empty() {
            features::has(&c.feature).map_err(|e| bad(site, e.to_string()))?;
        }
    }
    let chosen = choose(site)?;
    // SAFETY: the table index checked that the candidate's code lies in the object.
    let code = unsafe { std::slice::from_raw_parts(chosen.code as *const u8, chosen.len) };
    let mut new = relocate(code, chosen.code, site.addr).map_err(|e| bad(site, e.to_string()))?;
    if new.len() > site.len {
        return Err(bad(
            site,
            format!(
                "the `{}` code grows to {} bytes when moved, more than the site's {}",
                chosen.feature,
                new.len(),
                site.len
            ),
        ));
    }
    let pad = site.len - new.len();
    new.resize(site.len, 0);
    fill_padding(&mut new[site.len - pad..]);
    let entry = site.default.wrapping_sub(FIRST_USE_LEN);
    let jump = jump_label_code(site.addr, entry, true)
        .ok_or_else(|| bad(site, "the out-of-line default is out of jump range".into()))?;
    let mut old = jump.as_slice().to_vec();
    old.resize(site.len, 0xcc);
    // SAFETY: the table index checked that the site lies in the object's text; the lock is
    // held, so no batch writes it meanwhile.
    let now = unsafe { std::slice::from_raw_parts(site.addr as *const u8, site.len) };
    if now == new.as_slice() {
        // Already applied, by another copy of textpoke linked into this object: nothing to do.
        old.clone_from(&new);
    } else if now != old.as_slice() {
        // Refused here, for this site alone (the batch's own check would refuse them all).
        return Err(Error::SiteMismatch {
            site: Location::of(site.addr),
            expected: crate::CodeBytes {
                addr: site.addr,
                bytes: old,
            },
            found: crate::CodeBytes {
                addr: site.addr,
                bytes: now.to_vec(),
            },
        });
    }
    let too_long = || {
        bad(
            site,
            format!(
                "sites longer than {} bytes are not supported",
                crate::engine::MAX_CODE
            ),
        )
    };
    // Straight to the default, past the first-use call: this batch is the first use.
    let emulate = Insn::Jmp {
        target: site.default,
    };
    debug_assert!(site.len >= JUMP_LABEL_LEN);
    // A thread meeting the site mid-batch runs the default out of line, as it did before.
    Ok(Poke::code(
        site.addr,
        Code::new(&old).ok_or_else(too_long)?,
        Code::new(&new).ok_or_else(too_long)?,
        emulate,
        emulate,
    ))
}

/// Instruction-level alternatives, like the kernel's `ALTERNATIVE()`: a default sequence and
/// replacements guarded by CPU features, sharing one set of `asm!` operands.
///
/// ```text
/// textpoke::alternative!(
///     default: ["asm line", ...],
///     "feature" => ["asm line", ...],   // tried in order; any name features::has knows
///     ...;
///     operands as for asm!
/// );
/// ```
///
/// Until [`apply`] runs, the default runs out of line (one jump there and back). The first
/// such run calls `apply` (unless [`apply_on_first_use`] turned that off), with every register,
/// the flags, the extended state and the red zone kept, whatever the `asm!` options; that
/// first run is not async-signal-safe (see [`apply_on_first_use`]). `apply` replaces each site
/// with its chosen code inline, live-safely. Must be used inside `unsafe`, like `asm!`.
///
/// A replacement longer than its site (the default, and at least 5 bytes) fails the build:
/// the assembler reports `invalid number of bytes` at a line that names the feature and says
/// "replacement is longer than its site". (A stale table that holds one anyway is refused by
/// `apply` for that site alone, which keeps running its default; see [`refused`].)
///
/// ```compile_fail
/// fn f() -> u64 {
///     let n: u64;
///     // SAFETY: both sequences only write `n`.
///     unsafe {
///         textpoke::alternative!(
///             default: ["mov {n:e}, 1"], // 5 bytes
///             "sse2" => ["mov {n}, 2", "add {n}, 3"]; // 11 bytes: does not fit
///             n = out(reg) n,
///         );
///     }
///     n
/// }
/// # assert_eq!(f(), 1); // the error comes from the assembler: `f` must be compiled
/// ```
///
/// A feature name textpoke does not know fails the build, naming it and listing the known ones:
///
/// ```compile_fail,E0080
/// fn f() -> u64 {
///     let n: u64;
///     // SAFETY: both sequences only write `n`.
///     unsafe {
///         textpoke::alternative!(
///             default: ["mov {n}, 1"],
///             "avx3" => ["mov {n}, 2"]; // error: unknown CPU feature `avx3`
///             n = out(reg) n,
///         );
///     }
///     n
/// }
/// ```
#[macro_export]
macro_rules! alternative {
    (
        default: [$($default:literal),* $(,)?]
        $(, $feature:literal => [$($code:literal),* $(,)?])* $(,)?
        ; $($operands:tt)*
    ) => {{
        $(
            const _: () = $crate::features::__check(
                $feature,
                concat!(
                    "textpoke::alternative!: unknown CPU feature `", $feature,
                    "`; the names textpoke knows: ", $crate::__known_features!()
                ),
            );
        )*
        $crate::__arch_alternative!(check [$($default),*] $([$feature: $($code),*])* ; $($operands)*)
    }};
}

/// A function-level alternative's selector: adds the update that binds its static call to the
/// best implementation for this CPU. Listed in `textpoke_select_v1` by
/// [`multiversion!`](crate::multiversion), with [`SELECT_OWNER`] of its copy of textpoke: two
/// self-relative offsets per entry.
#[doc(hidden)]
pub type Selector = fn(crate::Batch<'static>) -> Result<crate::Batch<'static>>;

unsafe extern "C" {
    #[link_name = "__start_textpoke_select_v1"]
    static SELECT_START: [u8; 0];
    #[link_name = "__stop_textpoke_select_v1"]
    static SELECT_STOP: [u8; 0];
}

core::arch::global_asm!(
    ".pushsection textpoke_select_v1,\"aR\",@progbits",
    ".popsection"
);

/// Marks this copy of textpoke's entries in `textpoke_select_v1`, which every copy linked into
/// an object shares. Only its address matters; an atomic, so that it is writable data that
/// identical-data folding never merges with another copy's.
#[doc(hidden)]
pub static SELECT_OWNER: AtomicU8 = AtomicU8::new(0);

/// Binds every function-level alternative ([`multiversion!`](crate::multiversion)) to its best implementation, in
/// one batch. Called by [`apply`].
fn select_all(lock: &crate::engine::PatchGuard) -> Result<PatchStats> {
    let table = crate::table::Table {
        name: "textpoke_select_v1",
        entry_size: 8,
        start: (&raw const SELECT_START) as usize,
        stop: (&raw const SELECT_STOP) as usize,
    };
    let entries = table.entries()?;
    let Some(object) = &entries.object else {
        return Ok(PatchStats::default());
    };
    let mut batch = crate::Batch::new();
    for index in 0..entries.count {
        if entries.field(index, 1) != (&raw const SELECT_OWNER) as usize {
            // Another copy of textpoke's: its selector takes that copy's `Batch`.
            continue;
        }
        let select = entries.field(index, 0);
        table.check_text(object, "selector", select, 1)?;
        // SAFETY: `multiversion!` lists only its own selectors, Rust functions of exactly the
        // `Selector` type of the copy of textpoke that owns the entry, which is this one
        // (checked above); the address lies in the object's text (checked above).
        let select: Selector = unsafe { std::mem::transmute::<usize, Selector>(select) };
        batch = select(batch)?;
    }
    batch.commit_locked(lock)
}

/// Function-level alternatives: a static call bound, when [`apply`] runs (at the latest, the
/// first time any alternative or function-level alternative is called), to the first
/// implementation whose CPU feature is present (and not masked by `TEXTPOKE_NO_FEATURES`).
/// After that, dispatch costs what the static call costs: one direct call through its
/// trampoline, or a true direct call for `inline` C-ABI calls.
///
/// ```
/// textpoke::multiversion! {
///     pub static SUM: fn(&[u32]) -> u64 = {
///         "avx2" => sum_wide,
///         _ => sum_scalar,
///     };
/// }
/// fn sum_scalar(v: &[u32]) -> u64 { v.iter().map(|&x| x as u64).sum() }
/// fn sum_wide(v: &[u32]) -> u64 { v.iter().map(|&x| x as u64).sum::<u64>() }
///
/// fn main() {
///     assert_eq!(SUM.call(&[1, 2, 3]), 6); // the first call applies, then calls the choice
///     assert!(textpoke::alternatives::applied());
///     assert_eq!(SUM.call(&[1, 2, 3]), 6); // a direct call to it, through the trampoline
/// }
/// ```
///
/// Until then the static call's target is a resolver of the same signature, which calls
/// [`apply`] (unless [`apply_on_first_use`] turned that off; not async-signal-safe) and then the
/// bound implementation, or the default if the call could not be bound.
///
/// **Implementations built for a feature.** An entry written `"feature" => unsafe f` may name
/// a `#[target_feature]` function (or an `unsafe fn`) of the same signature. `unsafe` is the
/// author's promise that `f` is safe to call on any CPU that has `feature`: that every feature
/// its `#[target_feature]` enables is implied by it. textpoke binds it only when `feature` is
/// present.
///
/// ```
/// textpoke::multiversion! {
///     /// Bits set in a word.
///     pub inline static ONES: extern "C" fn(u64) -> u32 = {
///         "popcnt" => unsafe ones_popcnt, // compiled to one `popcnt`
///         _ => ones_soft,
///     };
/// }
/// #[target_feature(enable = "popcnt")]
/// extern "C" fn ones_popcnt(x: u64) -> u32 { x.count_ones() }
/// extern "C" fn ones_soft(x: u64) -> u32 { x.count_ones() }
///
/// fn main() {
///     assert_eq!(ONES.call(0b1011), 3); // afterwards, a direct `call ones_popcnt` here
/// }
/// ```
///
/// Without `unsafe`, such a function is refused:
///
/// ```compile_fail,E0308
/// textpoke::multiversion! {
///     static ONES: fn(u64) -> u32 = { "popcnt" => ones_popcnt, _ => ones_soft };
/// }
/// #[target_feature(enable = "popcnt")]
/// fn ones_popcnt(x: u64) -> u32 { x.count_ones() }
/// fn ones_soft(x: u64) -> u32 { x.count_ones() }
/// fn main() {}
/// ```
///
/// A feature name textpoke does not know fails the build, naming the static and the feature:
///
/// ```compile_fail,E0080
/// textpoke::multiversion! {
///     static SUM: fn(u64) -> u64 = { "avx-2" => fast, _ => slow }; // error: `avx-2`, in SUM
/// }
/// fn fast(x: u64) -> u64 { x }
/// fn slow(x: u64) -> u64 { x }
/// fn main() {}
/// ```
#[macro_export]
macro_rules! multiversion {
    () => {};
    (
        $(#[$attr:meta])* $vis:vis inline static $name:ident:
            extern "C" fn($($arg:ty),* $(,)?) $(-> $ret:ty)? = { $($body:tt)* };
        $($rest:tt)*
    ) => {
        $crate::static_call! {
            $(#[$attr])* $vis inline static $name: extern "C" fn($($arg),*) $(-> $ret)? =
                $name::__textpoke_resolve;
        }
        $crate::__multiversion_select!($name ["C"] [$($arg),*] [$($ret)?] [] $($body)*);
        $crate::multiversion!($($rest)*);
    };
    (
        $(#[$attr:meta])* $vis:vis static $name:ident:
            $(extern $abi:literal)? fn($($arg:ty),* $(,)?) $(-> $ret:ty)? = { $($body:tt)* };
        $($rest:tt)*
    ) => {
        $crate::static_call! {
            $(#[$attr])* $vis static $name: $(extern $abi)? fn($($arg),*) $(-> $ret)? =
                $name::__textpoke_resolve;
        }
        $crate::__multiversion_select!($name [$($abi)?] [$($arg),*] [$($ret)?] [] $($body)*);
        $crate::multiversion!($($rest)*);
    };
}

/// Emits a function-level alternative's resolver, its target until the first use: names the
/// arguments one by one, then defines `__textpoke_resolve` with the call's exact signature.
#[doc(hidden)]
#[macro_export]
macro_rules! __multiversion_resolve {
    ($name:ident [$($abi:literal)?] [$($p:ident: $t:ty),*] [$($unused:ident)*] [] [$($ret:ty)?] $default:path) => {
        impl $name {
            #[doc(hidden)]
            pub $(extern $abi)? fn __textpoke_resolve($($p: $t),*) $(-> $ret)? {
                if $crate::alternatives::first_use()
                    && $crate::StaticCall::__core(&$name)
                        .bound_away_from($name::__textpoke_resolve as usize)
                {
                    // `apply` retargeted the call (and every inline site) away from here.
                    $name.call($($p),*)
                } else {
                    $default($($p),*)
                }
            }
        }
    };
    ($name:ident [$($abi:literal)?] [$($p:ident: $t:ty),*] [$n:ident $($ns:ident)*] [$t0:ty $(, $ts:ty)*] [$($ret:ty)?] $default:path) => {
        $crate::__multiversion_resolve!(
            $name [$($abi)?] [$($p: $t,)* $n: $t0] [$($ns)*] [$($ts),*] [$($ret)?] $default
        );
    };
}

/// Reads a `multiversion!` body one entry at a time (`"feature" => f,` or
/// `"feature" => unsafe f,`, then `_ => default`), then emits the selector, its table entry
/// and the resolver.
#[doc(hidden)]
#[macro_export]
macro_rules! __multiversion_select {
    ($name:ident $abi:tt $args:tt $ret:tt [$($arms:tt)*]
        $feature:literal => unsafe $f:path, $($rest:tt)*) => {
        $crate::__multiversion_select!(
            $name $abi $args $ret [$($arms)* [$feature unsafe $f]] $($rest)*
        );
    };
    ($name:ident $abi:tt $args:tt $ret:tt [$($arms:tt)*]
        $feature:literal => $f:path, $($rest:tt)*) => {
        $crate::__multiversion_select!(
            $name $abi $args $ret [$($arms)* [$feature safe $f]] $($rest)*
        );
    };
    ($name:ident $abi:tt $args:tt $ret:tt
        [$([$feature:literal $kind:ident $f:path])*] _ => $default:path $(,)?) => {
        $(
            const _: () = $crate::features::__check(
                $feature,
                concat!(
                    "textpoke::multiversion! ", stringify!($name), ": unknown CPU feature `",
                    $feature, "`; the names textpoke knows: ", $crate::__known_features!()
                ),
            );
        )*
        impl $name {
            #[doc(hidden)]
            pub fn __textpoke_select(
                batch: $crate::Batch<'static>,
            ) -> $crate::Result<$crate::Batch<'static>> {
                $(
                    if $crate::features::has($feature)? {
                        return Ok(batch.update(
                            &$name,
                            $crate::__multiversion_fn!($kind $f, $feature, $abi $args $ret),
                        ));
                    }
                )*
                Ok(batch.update(&$name, $default))
            }
        }
        ::core::arch::global_asm!(
            ".pushsection textpoke_select_v1,\"aR\",@progbits",
            ".balign 4",
            ".long {select} - .",
            ".long {owner} - .",
            ".popsection",
            select = sym $name::__textpoke_select,
            owner = sym $crate::alternatives::SELECT_OWNER,
        );
        $crate::__multiversion_resolve!(
            $name $abi [] [a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 a10 a11] $args $ret $default
        );
    };
}

/// One implementation of a `multiversion!` entry, as the static call's function type. An
/// `unsafe` entry may be an `unsafe fn` or a `#[target_feature]` function.
#[doc(hidden)]
#[macro_export]
macro_rules! __multiversion_fn {
    (safe $f:path, $feature:literal, $abi:tt $args:tt $ret:tt) => {
        $f
    };
    (unsafe $f:path, $feature:literal, [$($abi:literal)?] [$($arg:ty),*] [$($ret:ty)?]) => {{
        let f: unsafe $(extern $abi)? fn($($arg),*) $(-> $ret)? = $f;
        // SAFETY: the entry is marked `unsafe`: its author vouches that calling `f` is safe on
        // a CPU with `$feature` (the CPU features its `#[target_feature]` enables are all
        // implied by it), and the selector binds it only after `features::has` found
        // `$feature` present. Both types are function pointers of one signature and ABI.
        unsafe {
            ::core::mem::transmute::<
                unsafe $(extern $abi)? fn($($arg),*) $(-> $ret)?,
                $(extern $abi)? fn($($arg),*) $(-> $ret)?,
            >(f)
        }
    }};
}
