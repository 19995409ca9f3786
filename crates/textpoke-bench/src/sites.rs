//! The benchmark's static-branch sites: groups of 1, 10, 100, 1,000 and 10,000 sites, each
//! group built twice, once on textpoke and once on static-keys, the same way.
//!
//! Every site is a monomorphization `site::<I>` of one `#[inline(never)]` generic function per
//! group and library. Each body stores its own `I` through `black_box`, so no two instances are
//! identical and LLVM's MergeFunctions cannot fold them into one (which would leave one site).
//! One key per group and library controls exactly that group's sites, so toggling a group's key
//! patches exactly `size` sites. A static array of function pointers per group lets busy threads
//! call every site.
//!
//! The 22,222 site functions cost a few seconds of compile time in a debug build; a cheaper
//! construction has not been needed.

use textpoke::StaticKey;

/// A static-keys key in the state its sites are compiled in (off).
pub type PeerKey = static_keys::StaticFalseKey;

/// One group of sites of each library, and the key controlling each.
pub struct SiteGroup {
    /// Number of sites each key controls.
    pub size: usize,
    /// textpoke's key for this group.
    pub textpoke_key: &'static StaticKey,
    /// Every textpoke site of this group, as a function returning the branch's value.
    pub textpoke_sites: &'static [fn() -> bool],
    /// static-keys' key for this group.
    pub static_keys_key: &'static PeerKey,
    /// Every static-keys site of this group, as a function returning the branch's value.
    pub static_keys_sites: &'static [fn() -> bool],
}

macro_rules! site_group {
    ($name:ident, $count:literal) => {
        #[doc = concat!("The group of ", stringify!($count), " sites per library.")]
        pub mod $name {
            /// textpoke's key for this group (initially off).
            pub static TEXTPOKE_KEY: textpoke::StaticKey = textpoke::StaticKey::new();
            /// static-keys' key for this group (initially off).
            pub static STATIC_KEYS_KEY: super::PeerKey = static_keys::new_static_false_key();

            #[inline(never)]
            fn textpoke_site<const I: usize>() -> bool {
                // Makes every instance distinct, so none is merged with another.
                std::hint::black_box(I);
                textpoke::static_branch_unlikely!(TEXTPOKE_KEY)
            }

            #[inline(never)]
            fn static_keys_site<const I: usize>() -> bool {
                // Makes every instance distinct, so none is merged with another.
                std::hint::black_box(I);
                // SAFETY: the macro's `unsafe` only emits static-keys' NOP/JMP site and its table
                // entry for a key that is a `static` of static-keys' own type.
                static_keys::static_branch_unlikely!(STATIC_KEYS_KEY)
            }

            seq_macro::seq!(I in 0..$count {
                /// Every textpoke site of this group.
                pub static TEXTPOKE_SITES: [fn() -> bool; $count] = [#(textpoke_site::<I>,)*];
                /// Every static-keys site of this group.
                pub static STATIC_KEYS_SITES: [fn() -> bool; $count] =
                    [#(static_keys_site::<I>,)*];
            });
        }
    };
}

site_group!(g1, 1);
site_group!(g10, 10);
site_group!(g100, 100);
site_group!(g1000, 1000);
site_group!(g10000, 10000);

macro_rules! group {
    ($name:ident, $count:literal) => {
        SiteGroup {
            size: $count,
            textpoke_key: &$name::TEXTPOKE_KEY,
            textpoke_sites: &$name::TEXTPOKE_SITES,
            static_keys_key: &$name::STATIC_KEYS_KEY,
            static_keys_sites: &$name::STATIC_KEYS_SITES,
        }
    };
}

/// Every group, smallest first.
pub static GROUPS: [SiteGroup; 5] = [
    group!(g1, 1),
    group!(g10, 10),
    group!(g100, 100),
    group!(g1000, 1000),
    group!(g10000, 10000),
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
