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
//! assert_eq!(which(), 1); // before `apply`, the default runs (out of line)
//! textpoke::alternatives::apply()?;
//! assert_eq!(which(), 2); // now the SSE2 sequence runs inline
//! # Ok::<(), textpoke::Error>(())
//! ```

use std::sync::atomic::{AtomicBool, Ordering};

use crate::arch::{Insn, JUMP_LABEL_LEN, fill_padding, jump_label_code, relocate};
use crate::engine::{self, Code, PatchStats, Poke};
use crate::table::alt::{AltSite, alt_index};
use crate::{Error, Location, Result, features, os};

static APPLIED: AtomicBool = AtomicBool::new(false);

/// Whether [`apply`] has run to completion in this process.
pub fn applied() -> bool {
    APPLIED.load(Ordering::Acquire)
}

/// Chooses, for every alternative site, the first candidate whose feature the CPU has (and
/// `TEXTPOKE_NO_FEATURES` does not mask), relocates it to the site, pads it, and writes every
/// site in one batch; then binds every [`multiversion!`](crate::multiversion) call the same way, in a second batch. Every site and candidate is validated first: an unknown feature, a
/// candidate longer than the default, code that cannot be relocated, or a site that does not
/// hold its expected jump is an error naming the site, and nothing is written. Runs once; later
/// calls return at once.
pub fn apply() -> Result<PatchStats> {
    let lock = os::patch_lock();
    if applied() {
        return Ok(PatchStats::default());
    }
    let sites = crate::table::alt::alt_index(&lock)?;
    let mut pokes = crate::batch::pokes_scratch();
    pokes.clear();
    for site in sites {
        pokes.push(site_poke(site)?);
    }
    let mut stats = engine::patch(&lock, &mut pokes)?;
    drop(pokes);
    let bound = select_all(&lock)?;
    stats.sites += bound.sites;
    stats.writes += bound.writes;
    stats.syncs += bound.syncs;
    APPLIED.store(true, Ordering::Release);
    Ok(stats)
}

/// The feature chosen at each site, in address order (validating the table on first use).
pub fn choices() -> Result<Vec<(usize, String)>> {
    let lock = os::patch_lock();
    alt_index(&lock)?
        .iter()
        .map(|site| Ok((site.addr, choose(site)?.feature.clone())))
        .collect()
}

fn bad(site: &AltSite, why: String) -> Error {
    Error::BadAlternative {
        site: Location::of(site.addr),
        why,
    }
}

fn choose(site: &AltSite) -> Result<&crate::table::alt::Candidate> {
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
    let jump = jump_label_code(site.addr, site.default, true)
        .ok_or_else(|| bad(site, "the out-of-line default is out of jump range".into()))?;
    let mut old = jump.as_slice().to_vec();
    old.resize(site.len, 0xcc);
    let too_long = || {
        bad(
            site,
            format!(
                "sites longer than {} bytes are not supported",
                crate::engine::MAX_CODE
            ),
        )
    };
    let emulate = Insn::Jmp {
        target: site.default,
    };
    debug_assert!(site.len >= JUMP_LABEL_LEN);
    Ok(Poke {
        addr: site.addr,
        old: Code::new(&old).ok_or_else(too_long)?,
        new: Code::new(&new).ok_or_else(too_long)?,
        // A thread meeting the site mid-batch runs the default out of line, as it did before.
        insn: Some(emulate),
        undo: Some(emulate),
    })
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
/// Until [`apply`] runs, the default runs out of line (one jump there and back). `apply`
/// replaces each site with its chosen code inline, live-safely. A replacement longer than the
/// default is refused when `apply` validates the table. Must be used inside `unsafe`, like
/// `asm!`.
#[macro_export]
macro_rules! alternative {
    (
        default: [$($default:literal),* $(,)?]
        $(, $feature:literal => [$($code:literal),* $(,)?])* $(,)?
        ; $($operands:tt)*
    ) => {
        $crate::__arch_alternative!([$($default),*] $([$feature: $($code),*])* ; $($operands)*)
    };
}

/// A function-level alternative's selector: adds the update that binds its static call to the
/// best implementation for this CPU. Listed in `textpoke_select_v1` by [`multiversion!`](crate::multiversion).
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

/// Binds every function-level alternative ([`multiversion!`](crate::multiversion)) to its best implementation, in
/// one batch. Called by [`apply`].
fn select_all(lock: &os::PatchGuard) -> Result<PatchStats> {
    let table = crate::table::Table {
        name: "textpoke_select_v1",
        entry_size: 4,
        start: (&raw const SELECT_START) as usize,
        stop: (&raw const SELECT_STOP) as usize,
    };
    let entries = table.entries()?;
    let Some(object) = &entries.object else {
        return Ok(PatchStats::default());
    };
    let mut batch = crate::Batch::new();
    for index in 0..entries.count {
        let select = entries.field(index, 0);
        table.check_text(object, "selector", select, 1)?;
        // SAFETY: `multiversion!` lists only its own selectors, Rust functions of exactly the
        // `Selector` type, and the address lies in the object's text (checked above).
        let select: Selector = unsafe { std::mem::transmute::<usize, Selector>(select) };
        batch = select(batch)?;
    }
    batch.commit_locked(lock)
}

/// Function-level alternatives: a static call bound, when [`apply`] runs, to the first
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
/// fn main() -> Result<(), textpoke::Error> {
///     assert_eq!(SUM.call(&[1, 2, 3]), 6); // the default until apply
///     textpoke::alternatives::apply()?;     // binds SUM to the best implementation
///     assert_eq!(SUM.call(&[1, 2, 3]), 6);
///     Ok(())
/// }
/// ```
#[macro_export]
macro_rules! multiversion {
    () => {};
    (
        $(#[$attr:meta])* $vis:vis inline static $name:ident:
            extern "C" fn($($arg:ty),* $(,)?) $(-> $ret:ty)? =
            { $($feature:literal => $f:path,)* _ => $default:path $(,)? };
        $($rest:tt)*
    ) => {
        $crate::static_call! {
            $(#[$attr])* $vis inline static $name: extern "C" fn($($arg),*) $(-> $ret)? = $default;
        }
        $crate::__multiversion_select!($name, [$($feature => $f),*], $default);
        $crate::multiversion!($($rest)*);
    };
    (
        $(#[$attr:meta])* $vis:vis static $name:ident:
            $(extern $abi:literal)? fn($($arg:ty),* $(,)?) $(-> $ret:ty)? =
            { $($feature:literal => $f:path,)* _ => $default:path $(,)? };
        $($rest:tt)*
    ) => {
        $crate::static_call! {
            $(#[$attr])* $vis static $name: $(extern $abi)? fn($($arg),*) $(-> $ret)? = $default;
        }
        $crate::__multiversion_select!($name, [$($feature => $f),*], $default);
        $crate::multiversion!($($rest)*);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __multiversion_select {
    ($name:ident, [$($feature:literal => $f:path),*], $default:path) => {
        impl $name {
            #[doc(hidden)]
            pub fn __textpoke_select(
                batch: $crate::Batch<'static>,
            ) -> $crate::Result<$crate::Batch<'static>> {
                $(
                    if $crate::features::has($feature)? {
                        return Ok(batch.update(&$name, $f));
                    }
                )*
                Ok(batch.update(&$name, $default))
            }
        }
        ::core::arch::global_asm!(
            ".pushsection textpoke_select_v1,\"aR\",@progbits",
            ".balign 4",
            ".long {select} - .",
            ".popsection",
            select = sym $name::__textpoke_select,
        );
    };
}
