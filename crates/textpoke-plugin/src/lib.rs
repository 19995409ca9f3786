//! A plugin with its own copy of textpoke, for tests, the demo and the benchmark. Loaded with
//! `dlopen` (usually several copies of the file, each under its own path), it is driven through
//! the C functions below; `textpoke-fixture` builds it and wraps them.
//!
//! Every function that can fail returns 0 on success or -1 after writing the error's text,
//! NUL-terminated and truncated to `cap` bytes, into `err`.
//!
//! Besides its 4 keys of 8 sites, its static call, its alternative and its immediate value, it has the benchmark's
//! site groups: one key per size in [`GROUP_SIZES`], controlling exactly that many sites, built
//! like `textpoke-bench`'s own groups (`crates/textpoke-bench/src/sites.rs`), so that toggling a
//! key of the plugin can be timed against the same toggle in the executable.

use std::sync::atomic::{AtomicU64, Ordering};

use textpoke::{StaticKey, static_branch_unlikely};

/// Version of this C API; bumped on any change.
pub const API_VERSION: u32 = 3;

/// Sites per key.
pub const SITES_PER_KEY: usize = 8;

macro_rules! keys {
    ($($m:ident),*) => {
        $(
            mod $m {
                use super::*;
                /// This key.
                pub static KEY: StaticKey = StaticKey::new();
                seq_macro::seq!(I in 0..8 {
                    #(
                        #[inline(never)]
                        fn site~I() -> bool {
                            // Makes every site distinct, so none is merged with another.
                            std::hint::black_box(I);
                            static_branch_unlikely!(KEY)
                        }
                    )*
                    /// Every site of the key.
                    pub static SITES: [fn() -> bool; SITES_PER_KEY] = [#(site~I,)*];
                });
            }
        )*
        /// The plugin's keys.
        static KEYS: [&StaticKey; 4] = [$(&$m::KEY),*];
        /// Their sites.
        static KEY_SITES: [&[fn() -> bool; SITES_PER_KEY]; 4] = [$(&$m::SITES),*];
    };
}
keys!(k0, k1, k2, k3);

/// Sizes of the benchmark's site groups: one key controls exactly each many sites.
pub const GROUP_SIZES: [usize; 5] = [1, 10, 100, 1000, 10000];

/// One benchmark group: a key and every site it controls.
struct Group {
    key: &'static StaticKey,
    sites: &'static [fn() -> bool],
}

macro_rules! site_group {
    ($name:ident, $count:literal) => {
        mod $name {
            use super::*;
            /// The group's key (initially off).
            pub static KEY: StaticKey = StaticKey::new();

            #[inline(never)]
            fn site<const I: usize>() -> bool {
                // Makes every instance distinct, so none is merged with another.
                std::hint::black_box(I);
                static_branch_unlikely!(KEY)
            }

            seq_macro::seq!(I in 0..$count {
                /// Every site of the group.
                pub static SITES: [fn() -> bool; $count] = [#(site::<I>,)*];
            });
        }
    };
}

site_group!(g1, 1);
site_group!(g10, 10);
site_group!(g100, 100);
site_group!(g1000, 1000);
site_group!(g10000, 10000);

/// The groups, in the order of [`GROUP_SIZES`].
static GROUPS: [Group; 5] = [
    Group {
        key: &g1::KEY,
        sites: &g1::SITES,
    },
    Group {
        key: &g10::KEY,
        sites: &g10::SITES,
    },
    Group {
        key: &g100::KEY,
        sites: &g100::SITES,
    },
    Group {
        key: &g1000::KEY,
        sites: &g1000::SITES,
    },
    Group {
        key: &g10000::KEY,
        sites: &g10000::SITES,
    },
];

/// The group of `size` sites.
fn group(size: usize) -> Option<&'static Group> {
    GROUPS.iter().find(|g| g.sites.len() == size)
}

textpoke::static_call! {
    static CALL: fn(u64) -> u64 = add1;
}

fn add1(x: u64) -> u64 {
    x + 1
}
fn add2(x: u64) -> u64 {
    x + 2
}
fn add3(x: u64) -> u64 {
    x + 3
}
static TARGETS: [fn(u64) -> u64; 3] = [add1, add2, add3];

fn report(e: &textpoke::Error, err: *mut u8, cap: usize) -> i32 {
    report_text(&e.to_string(), err, cap)
}

fn report_text(text: &str, err: *mut u8, cap: usize) -> i32 {
    if !err.is_null() && cap > 0 {
        let n = text.len().min(cap - 1);
        // SAFETY: the caller passes a buffer of `cap` writable bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), err, n);
            err.add(n).write(0);
        }
    }
    -1
}

fn done(r: textpoke::Result<()>, err: *mut u8, cap: usize) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => report(&e, err, cap),
    }
}

/// The C API version ([`API_VERSION`]).
#[unsafe(no_mangle)]
pub extern "C" fn tpp_api_version() -> u32 {
    API_VERSION
}

/// Address of the process's patcher table as this copy sees it (0 on error); `*is_self` says
/// whether it is this copy's.
///
/// # Safety
///
/// `is_self` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tpp_patcher(is_self: *mut bool) -> usize {
    match textpoke::__private::patcher_id() {
        Ok((id, me)) => {
            // SAFETY: the caller's contract.
            unsafe { is_self.write(me) };
            id
        }
        Err(_) => 0,
    }
}

/// Number of keys.
#[unsafe(no_mangle)]
pub extern "C" fn tpp_key_count() -> usize {
    KEYS.len()
}

/// Sets key `key` to `on`.
#[unsafe(no_mangle)]
pub extern "C" fn tpp_set(key: usize, on: bool, err: *mut u8, cap: usize) -> i32 {
    let Some(k) = KEYS.get(key) else {
        return -1;
    };
    done(if on { k.enable() } else { k.disable() }, err, cap)
}

/// Sets every key at once, in one batch: bit `i` of `mask` is key `i`'s new state.
#[unsafe(no_mangle)]
pub extern "C" fn tpp_set_all(mask: u64, err: *mut u8, cap: usize) -> i32 {
    let batch = KEYS
        .iter()
        .enumerate()
        .fold(textpoke::Batch::new(), |b, (i, k)| {
            b.set(*k, mask >> i & 1 == 1)
        });
    done(batch.commit().map(drop), err, cap)
}

/// Sets every key from the bits of `mask` and, unless `target` is 0, retargets the static call
/// to `x + target` (1..=3), all in one batch.
#[unsafe(no_mangle)]
pub extern "C" fn tpp_commit(mask: u64, target: usize, err: *mut u8, cap: usize) -> i32 {
    let batch = KEYS
        .iter()
        .enumerate()
        .fold(textpoke::Batch::new(), |b, (i, k)| {
            b.set(*k, mask >> i & 1 == 1)
        });
    let batch = match target {
        0 => batch,
        n => match TARGETS.get(n - 1) {
            Some(&f) => batch.update(&CALL, f),
            None => return report_text(&format!("no target x + {n}"), err, cap),
        },
    };
    done(batch.commit().map(drop), err, cap)
}

/// Sets the key of the benchmark group of `size` sites to `on`, in a batch of its own. On
/// success, unless `stats` is null, writes the batch's `PatchStats` there as three words:
/// sites changed, `pwrite` calls, core serializations.
///
/// # Safety
///
/// `stats` is null or valid for writing three `usize`s; `err` is valid for `cap` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tpp_group_set(
    size: usize,
    on: bool,
    stats: *mut usize,
    err: *mut u8,
    cap: usize,
) -> i32 {
    let Some(g) = group(size) else {
        return report_text(&format!("no group of {size} sites"), err, cap);
    };
    match textpoke::Batch::new().set(g.key, on).commit() {
        Ok(s) => {
            if !stats.is_null() {
                // SAFETY: the caller passes room for three words.
                unsafe {
                    stats.write(s.sites);
                    stats.add(1).write(s.writes);
                    stats.add(2).write(s.syncs);
                }
            }
            0
        }
        Err(e) => report(&e, err, cap),
    }
}

/// Writes to `*out` how many sites textpoke's table lists for the key of the group of `size`
/// sites (indexing the table if it was not yet).
///
/// # Safety
///
/// `out` is valid for a write; `err` is valid for `cap` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tpp_group_sites(
    size: usize,
    out: *mut usize,
    err: *mut u8,
    cap: usize,
) -> i32 {
    let Some(g) = group(size) else {
        return report_text(&format!("no group of {size} sites"), err, cap);
    };
    match g.key.sites() {
        Ok(s) => {
            // SAFETY: the caller's contract.
            unsafe { out.write(s.len()) };
            0
        }
        Err(e) => report(&e, err, cap),
    }
}

/// Runs every site of the group of `size` sites once; returns how many took the enabled path,
/// or `usize::MAX` if there is no such group.
#[unsafe(no_mangle)]
pub extern "C" fn tpp_group_run(size: usize) -> usize {
    group(size).map_or(usize::MAX, |g| {
        g.sites.iter().filter(|f| std::hint::black_box(f())).count()
    })
}

/// Runs every site of key `key`; returns how many took the enabled path.
#[unsafe(no_mangle)]
pub extern "C" fn tpp_run(key: usize) -> usize {
    KEY_SITES
        .get(key)
        .map_or(0, |sites| sites.iter().filter(|s| s()).count())
}

/// Calls the static call: `x + n` for target `n` (1, 2 or 3).
#[unsafe(no_mangle)]
pub extern "C" fn tpp_call(x: u64) -> u64 {
    CALL.call(x)
}

/// Retargets the static call to `x + n` (n in 1..=3).
#[unsafe(no_mangle)]
pub extern "C" fn tpp_retarget(n: usize, err: *mut u8, cap: usize) -> i32 {
    let Some(&f) = n.checked_sub(1).and_then(|i| TARGETS.get(i)) else {
        return -1;
    };
    done(CALL.update(f), err, cap)
}

static DOUBLED: AtomicU64 = AtomicU64::new(0);

/// A function another object's static call may target: `2 * x`.
#[unsafe(no_mangle)]
pub extern "C" fn tpp_double(x: u64) -> u64 {
    DOUBLED.fetch_add(1, Ordering::Relaxed);
    x * 2
}

/// An alternative site: 1 with the default, 2 with the SSE2 replacement (SSE2 is
/// architectural on x86-64, so the replacement is chosen unless `TEXTPOKE_NO_FEATURES` masks
/// it).
#[unsafe(no_mangle)]
pub extern "C" fn tpp_alt() -> u64 {
    let n: u64;
    // SAFETY: both sequences only write `n`.
    unsafe {
        textpoke::alternative!(
            default: ["mov {n}, 1"],
            "sse2" => ["mov {n}, 2"];
            n = out(reg) n,
        );
    }
    n
}

/// Traps textpoke's patcher has emulated so far, as this copy sees them.
#[unsafe(no_mangle)]
pub extern "C" fn tpp_traps_emulated() -> usize {
    textpoke::__private::trap_counts().0
}

/// The plugin's immediate value; its initial value is [`IMM_INITIAL`].
static IMM: textpoke::Immediate<u64> = textpoke::Immediate::new(IMM_INITIAL);

/// The value the plugin's immediate is built with.
pub const IMM_INITIAL: u64 = 0x1111_1111_1111_1111;

/// Reads the plugin's immediate (one of its read sites).
#[unsafe(no_mangle)]
pub extern "C" fn tpp_imm() -> u64 {
    textpoke::imm!(IMM)
}

/// Sets the plugin's immediate to `value`.
#[unsafe(no_mangle)]
pub extern "C" fn tpp_set_imm(value: u64, err: *mut u8, cap: usize) -> i32 {
    done(IMM.set(value), err, cap)
}
