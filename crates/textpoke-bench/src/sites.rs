//! The benchmark's static-branch sites: groups of 1, 10, 100, 1,000, 10,000 and 100,000 sites,
//! each group built twice, once on textpoke and once on static-keys, the same way.
//!
//! A group is `fns` monomorphizations `site::<I>` of one `#[inline(never)]` generic function
//! per group and library, each holding `per_fn` sites: groups up to 10,000 have one site per
//! function, the 100,000-site group 100 sites in each of 1,000 functions. One function per site
//! would be 200,000 functions for that group alone, most of a debug build's time; a hundred
//! sites in a function cost a fraction of a hundred functions. Every site's taken arm stores
//! its own number `I * per_fn + J` through `black_box`, so no two sites or functions are
//! identical and neither LLVM's MergeFunctions nor its block merging can fold them (which would
//! leave fewer sites than counted).
//!
//! One key per group and library controls exactly that group's sites, so toggling a group's key
//! patches exactly `size` sites. A static array of function pointers per group lets busy threads
//! run every site: each function runs all of its sites and returns how many took the enabled
//! path.

use textpoke::StaticKey;

/// A static-keys key in the state its sites are compiled in (off).
pub type PeerKey = static_keys::StaticFalseKey;

/// One library's site functions of one group.
#[derive(Clone, Copy)]
pub struct SiteFns {
    /// Every site function, each returning how many of its `per_fn` sites took the enabled
    /// path.
    pub fns: &'static [fn() -> usize],
    /// Sites in each function.
    pub per_fn: usize,
}

impl SiteFns {
    /// Number of sites, over every function.
    pub fn sites(&self) -> usize {
        self.fns.len() * self.per_fn
    }

    /// Runs every site once; returns how many took the enabled path.
    pub fn run(&self) -> usize {
        self.fns.iter().map(|f| f()).sum()
    }
}

/// One group of sites of each library, and the key controlling each.
pub struct SiteGroup {
    /// Number of sites each key controls.
    pub size: usize,
    /// textpoke's key for this group.
    pub textpoke_key: &'static StaticKey,
    /// Every textpoke site of this group.
    pub textpoke_sites: SiteFns,
    /// static-keys' key for this group.
    pub static_keys_key: &'static PeerKey,
    /// Every static-keys site of this group.
    pub static_keys_sites: SiteFns,
}

/// Defines `$fn::<I>`, a site function holding `$per_fn` sites `$lib::static_branch_unlikely!
/// ($key)`, returning how many took the enabled path.
macro_rules! site_fn {
    ($fn:ident, $lib:ident, $key:ident, $per_fn:literal) => {
        #[inline(never)]
        fn $fn<const I: usize>() -> usize {
            let mut enabled = 0;
            seq_macro::seq!(J in 0..$per_fn {
                // static-keys' macro holds an `unsafe` block: sound, since it only emits a
                // NOP/JMP site and its table entry for a key that is a `static` of its own type.
                if $lib::static_branch_unlikely!($key) {
                    // Makes every site distinct, so none is merged with another.
                    std::hint::black_box(const { I * $per_fn + J });
                    enabled = usize::wrapping_add(enabled, 1);
                }
            });
            enabled
        }
    };
}
use site_fn;

macro_rules! site_group {
    ($name:ident, $fns:literal, $per_fn:literal) => {
        #[doc = concat!(
            "The group of ", stringify!($fns), " × ", stringify!($per_fn), " sites per library."
        )]
        pub mod $name {
            /// textpoke's key for this group (initially off).
            pub static TEXTPOKE_KEY: textpoke::StaticKey = textpoke::StaticKey::new();
            /// static-keys' key for this group (initially off).
            pub static STATIC_KEYS_KEY: super::PeerKey = static_keys::new_static_false_key();
            /// Sites in each site function of this group.
            pub const PER_FN: usize = $per_fn;

            super::site_fn!(textpoke_site, textpoke, TEXTPOKE_KEY, $per_fn);
            super::site_fn!(static_keys_site, static_keys, STATIC_KEYS_KEY, $per_fn);

            seq_macro::seq!(I in 0..$fns {
                /// Every textpoke site function of this group.
                pub static TEXTPOKE_SITES: [fn() -> usize; $fns] = [#(textpoke_site::<I>,)*];
                /// Every static-keys site function of this group.
                pub static STATIC_KEYS_SITES: [fn() -> usize; $fns] =
                    [#(static_keys_site::<I>,)*];
            });
        }
    };
}

site_group!(g1, 1, 1);
site_group!(g10, 10, 1);
site_group!(g100, 100, 1);
site_group!(g1000, 1000, 1);
site_group!(g10000, 10000, 1);
site_group!(g100000, 1000, 100);

macro_rules! group {
    ($name:ident) => {
        SiteGroup {
            size: $name::TEXTPOKE_SITES.len() * $name::PER_FN,
            textpoke_key: &$name::TEXTPOKE_KEY,
            textpoke_sites: SiteFns {
                fns: &$name::TEXTPOKE_SITES,
                per_fn: $name::PER_FN,
            },
            static_keys_key: &$name::STATIC_KEYS_KEY,
            static_keys_sites: SiteFns {
                fns: &$name::STATIC_KEYS_SITES,
                per_fn: $name::PER_FN,
            },
        }
    };
}

/// Every group, smallest first.
pub static GROUPS: [SiteGroup; 6] = [
    group!(g1),
    group!(g10),
    group!(g100),
    group!(g1000),
    group!(g10000),
    group!(g100000),
];

/// The group whose keys control exactly `size` sites.
pub fn group(size: usize) -> Option<&'static SiteGroup> {
    GROUPS.iter().find(|g| g.size == size)
}

/// The sizes `--sites` accepts, for messages.
pub fn sizes() -> String {
    GROUPS
        .iter()
        .map(|g| g.size.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
