//! A plugin with its own copy of textpoke, for tests, the demo and the benchmark. Loaded with
//! `dlopen` (usually several copies of the file, each under its own path), it is driven through
//! the C functions below; `textpoke-fixture` builds it and wraps them.
//!
//! Every function that can fail returns 0 on success or -1 after writing the error's text,
//! NUL-terminated and truncated to `cap` bytes, into `err`.

use std::sync::atomic::{AtomicU64, Ordering};

use textpoke::{StaticKey, static_branch_unlikely};

/// Version of this C API; bumped on any change.
pub const API_VERSION: u32 = 1;

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
    if !err.is_null() && cap > 0 {
        let text = e.to_string();
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
