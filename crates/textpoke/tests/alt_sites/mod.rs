//! Alternative sites shared by the alternatives tests.
#![allow(dead_code)]

use textpoke::features::has;

pub static TARGET: u64 = 0x5eed;

/// 1 for the default, 2 for `avx512f`, 3 for `sse2`.
#[inline(never)]
pub fn which() -> u64 {
    let n: u64;
    // SAFETY: every sequence only writes `n`.
    unsafe {
        textpoke::alternative!(
            default: ["mov {n}, 1"],
            "avx512f" => ["mov {n}, 2"],
            "sse2" => ["mov {n}, 3"];
            n = out(reg) n,
        );
    }
    n
}

extern "C" fn forty_two() -> u64 {
    42
}

/// The replacement calls a function and loads an address RIP-relatively: both must still
/// reach their targets once the code is copied to the site.
#[inline(never)]
pub fn moved() -> (u64, u64) {
    let (a, b): (u64, u64);
    // SAFETY: the call follows the C ABI (clobbers declared); the lea only computes an address.
    unsafe {
        textpoke::alternative!(
            default: [
                "xor eax, eax",
                "xor edx, edx",
                "nop dword ptr [rax + rax + 0]",
                "nop dword ptr [rax + rax + 0]",
                "nop dword ptr [rax + rax + 0]",
            ],
            "sse2" => ["call {f}", "lea rdx, [rip + {t}]"];
            f = sym forty_two, t = sym TARGET, out("rdx") b, out("rax") a,
            clobber_abi("C"),
        );
    }
    (a, b)
}

pub fn expected() -> u64 {
    if has("avx512f").unwrap() {
        2
    } else if has("sse2").unwrap() {
        3
    } else {
        1
    }
}

textpoke::multiversion! {
    /// Function-level: bound at apply.
    pub static PICK: fn(u64) -> u64 = {
        "avx512f" => pick::<2>,
        "sse2" => pick::<3>,
        _ => pick::<1>,
    };
    /// Function-level with inline C-ABI call sites.
    pub inline static PICK_C: extern "C" fn(u64) -> u64 = {
        "sse2" => pick_c::<3>,
        _ => pick_c::<1>,
    };
    /// Function-level with a `#[target_feature]` implementation.
    pub static COUNT: fn(u64) -> u64 = {
        "popcnt" => unsafe count_popcnt,
        _ => count_soft,
    };
}

/// Built for POPCNT; tagged so the tests can tell which implementation ran.
#[target_feature(enable = "popcnt")]
fn count_popcnt(x: u64) -> u64 {
    x.count_ones() as u64 + 1000
}

fn count_soft(x: u64) -> u64 {
    x.count_ones() as u64
}

/// What `COUNT.call(0b1011)` returns once applied.
pub fn count_expected() -> u64 {
    if has("popcnt").unwrap() { 1003 } else { 3 }
}

fn pick<const N: u64>(x: u64) -> u64 {
    x * 10 + N
}

extern "C" fn pick_c<const N: u64>(x: u64) -> u64 {
    x * 10 + N
}

/// The implementation `PICK_C` binds to when SSE2 is present.
pub const PICK_C_SSE2: extern "C" fn(u64) -> u64 = pick_c::<3>;
