pub struct Group {
    pub size: usize,
    pub textpoke_key_sites: fn() -> textpoke::Result<usize>,
    pub static_keys_sites: &'static [fn() -> bool],
}

macro_rules! site_group {
    ($name:ident, $count:literal) => {
        pub mod $name {
            pub static TEXTPOKE_KEY: textpoke::StaticKey = textpoke::StaticKey::new();
            pub static STATIC_KEYS_KEY: static_keys::StaticFalseKey = static_keys::new_static_false_key();
            #[inline(never)]
            fn textpoke_site<const N: usize>() -> bool {
                std::hint::black_box(N);
                textpoke::static_branch_unlikely!(TEXTPOKE_KEY)
            }
            #[inline(never)]
            fn static_keys_site<const N: usize>() -> bool {
                std::hint::black_box(N);
                static_keys::static_branch_unlikely!(STATIC_KEYS_KEY)
            }
            seq_macro::seq!(I in 0..$count {
                pub static TEXTPOKE_SITES: [fn() -> bool; $count] = [#(textpoke_site::<I>,)*];
                pub static STATIC_KEYS_SITES: [fn() -> bool; $count] = [#(static_keys_site::<I>,)*];
            });
            pub fn tp_count() -> textpoke::Result<usize> { TEXTPOKE_KEY.sites().map(|s| s.len()) }
        }
    };
}

site_group!(g1, 1);
site_group!(g10, 10);
site_group!(g100, 100);
site_group!(g1000, 1000);
site_group!(g10000, 10000);

pub static GROUPS: [Group; 5] = [
    Group { size: 1, textpoke_key_sites: g1::tp_count, static_keys_sites: &g1::STATIC_KEYS_SITES },
    Group { size: 10, textpoke_key_sites: g10::tp_count, static_keys_sites: &g10::STATIC_KEYS_SITES },
    Group { size: 100, textpoke_key_sites: g100::tp_count, static_keys_sites: &g100::STATIC_KEYS_SITES },
    Group { size: 1000, textpoke_key_sites: g1000::tp_count, static_keys_sites: &g1000::STATIC_KEYS_SITES },
    Group { size: 10000, textpoke_key_sites: g10000::tp_count, static_keys_sites: &g10000::STATIC_KEYS_SITES },
];
