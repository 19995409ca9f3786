//! The demo's sites: 8 keys with 512 distinct sites each, covering every combination of
//! initial state (off, on) and site shape (`unlikely`, `likely`).

use textpoke::StaticKey;

/// Sites per key.
pub const PER_KEY: usize = 512;
/// Number of keys.
pub const KEYS: usize = 8;
/// Every site in the binary that the demo can call.
pub const MAX_SITES: usize = PER_KEY * KEYS;

/// A site: returns whether it took its key's enabled path.
pub type Site = fn() -> bool;

macro_rules! key_group {
    ($group:ident, $key:ident, $init:literal, $branch:ident) => {
        static $key: StaticKey<$init> = StaticKey::new();

        mod $group {
            #[inline(never)]
            fn site<const N: usize>() -> bool {
                // Keeps every instance distinct, or rustc would merge them into one function
                // and with it one site.
                std::hint::black_box(N);
                textpoke::$branch!(super::$key)
            }

            pub static SITES: [super::Site; super::PER_KEY] =
        seq_macro::seq!(N in 0..512 { [#(site::<N>,)*] });
        }
    };
}

key_group!(k0, KEY0, false, static_branch_unlikely);
key_group!(k1, KEY1, false, static_branch_likely);
key_group!(k2, KEY2, true, static_branch_unlikely);
key_group!(k3, KEY3, true, static_branch_likely);
key_group!(k4, KEY4, false, static_branch_unlikely);
key_group!(k5, KEY5, false, static_branch_likely);
key_group!(k6, KEY6, true, static_branch_unlikely);
key_group!(k7, KEY7, true, static_branch_likely);

/// A demo key, whatever its initial state.
#[derive(Clone, Copy)]
pub enum Key {
    /// Compiled disabled.
    Off(&'static StaticKey<false>),
    /// Compiled enabled.
    On(&'static StaticKey<true>),
}

impl Key {
    /// Whether the key is enabled.
    pub fn is_enabled(self) -> bool {
        match self {
            Key::Off(k) => k.is_enabled(),
            Key::On(k) => k.is_enabled(),
        }
    }

    /// Adds "set to `on`" to `batch`.
    pub fn set(self, batch: textpoke::Batch<'static>, on: bool) -> textpoke::Batch<'static> {
        match self {
            Key::Off(k) => batch.set(k, on),
            Key::On(k) => batch.set(k, on),
        }
    }

    /// Number of sites the key controls.
    pub fn sites(self) -> textpoke::Result<usize> {
        match self {
            Key::Off(k) => k.sites().map(|s| s.len()),
            Key::On(k) => k.sites().map(|s| s.len()),
        }
    }
}

/// The demo's keys, in site order: sites `k * PER_KEY ..` belong to key `k`.
pub static KEY_LIST: [Key; KEYS] = [
    Key::Off(&KEY0),
    Key::Off(&KEY1),
    Key::On(&KEY2),
    Key::On(&KEY3),
    Key::Off(&KEY4),
    Key::Off(&KEY5),
    Key::On(&KEY6),
    Key::On(&KEY7),
];

/// Site number `i` (0..MAX_SITES).
pub fn site(i: usize) -> Site {
    let group: &[Site; PER_KEY] = match i / PER_KEY {
        0 => &k0::SITES,
        1 => &k1::SITES,
        2 => &k2::SITES,
        3 => &k3::SITES,
        4 => &k4::SITES,
        5 => &k5::SITES,
        6 => &k6::SITES,
        _ => &k7::SITES,
    };
    group[i % PER_KEY]
}
