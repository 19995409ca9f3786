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
/// site in one batch. Every site and candidate is validated first: an unknown feature, a
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
    let stats = engine::patch(&lock, &mut pokes)?;
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
