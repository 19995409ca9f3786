//! Alternatives applied at first use: the first run of any site (or function-level
//! alternative) applies them all, from wherever it runs, without disturbing the code around it.
//!
//! Each test runs in a fresh process of its own (this binary re-run with `--exact`), since a
//! first use happens once per process.

mod alt_sites;
mod support;

use std::arch::x86_64::{__m128i, __m256i};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use alt_sites::{PICK, PICK_C, TARGET, expected, moved, which};
use textpoke::alternatives::{applied, apply, apply_on_first_use, first_use_error};
use textpoke::features::OVERRIDE_VAR;

/// Set in the fresh process that runs one test's body.
const CHILD_VAR: &str = "TEXTPOKE_TEST_FIRST_USE_CHILD";

/// Runs `body` in a fresh process (this binary, test `name` only, with `env` set); panics with
/// the child's output if it failed.
fn fresh(name: &str, env: &[(&str, &str)], body: impl FnOnce()) {
    if std::env::var_os(CHILD_VAR).is_some() {
        return body();
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, "1")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_first_run_applies_then_the_choice_runs() {
    fresh("the_first_run_applies_then_the_choice_runs", &[], || {
        assert!(!applied());
        assert_eq!(which(), 1, "the first run applies, then runs the default");
        assert!(applied(), "{:?}", first_use_error());
        assert_eq!(which(), expected());
        assert_eq!(moved(), (42, &raw const TARGET as u64));
        assert_eq!(PICK.call(4), 40 + expected(), "function-level ones too");
        assert_eq!(PICK_C.call(4), 43);
        assert_eq!(apply().unwrap().sites, 0, "nothing is left to apply");
    });
}

#[test]
fn a_function_level_first_use_applies_and_calls_the_choice() {
    fresh(
        "a_function_level_first_use_applies_and_calls_the_choice",
        &[],
        || {
            assert!(!applied());
            assert_eq!(
                PICK_C.call(4),
                43,
                "the resolver applies, then calls the choice"
            );
            assert!(applied());
            assert_eq!(PICK_C.call(5), 53);
            assert_eq!(PICK.call(4), 40 + expected());
            assert_eq!(
                which(),
                expected(),
                "instruction-level sites were applied too"
            );
        },
    );
}

#[test]
fn with_every_feature_masked_the_defaults_are_applied() {
    fresh(
        "with_every_feature_masked_the_defaults_are_applied",
        &[(OVERRIDE_VAR, "avx512f,sse2")],
        || {
            assert_eq!(which(), 1);
            assert!(applied());
            assert_eq!(which(), 1);
            assert_eq!(moved(), (0, 0));
            assert_eq!((PICK.call(4), PICK_C.call(4)), (41, 41));
        },
    );
}

#[test]
fn turned_off_the_defaults_run_until_apply() {
    fresh("turned_off_the_defaults_run_until_apply", &[], || {
        apply_on_first_use(false);
        for _ in 0..3 {
            assert_eq!(which(), 1);
            assert_eq!((PICK.call(4), PICK_C.call(4)), (41, 41));
        }
        assert!(!applied());
        apply().unwrap();
        assert_eq!(which(), expected());
        assert_eq!(PICK_C.call(4), 43);
    });
}

#[test]
fn threads_racing_to_apply_see_the_default_or_the_choice() {
    fresh(
        "threads_racing_to_apply_see_the_default_or_the_choice",
        &[],
        || {
            let go = AtomicBool::new(false);
            let bad = AtomicUsize::new(0);
            std::thread::scope(|s| {
                for _ in 0..4 {
                    s.spawn(|| {
                        while !go.load(Ordering::Acquire) {
                            std::hint::spin_loop();
                        }
                        for _ in 0..10_000 {
                            let w = which();
                            let m = moved();
                            let p = PICK_C.call(1);
                            if (w != 1 && w != expected())
                                || (m != (0, 0) && m != (42, &raw const TARGET as u64))
                                || (p != 11 && p != 13)
                            {
                                bad.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
                go.store(true, Ordering::Release);
            });
            assert_eq!(bad.load(Ordering::Relaxed), 0);
            assert!(applied(), "{:?}", first_use_error());
            assert_eq!(which(), expected());
        },
    );
}

/// Sixteen distinct 128-bit patterns.
fn xmm_patterns() -> [__m128i; 16] {
    // SAFETY: `__m128i` is 16 plain bytes; every bit pattern is valid.
    std::array::from_fn(|i| unsafe {
        std::mem::transmute::<[u64; 2], __m128i>([0x1111 * (i as u64 + 1), !(i as u64)])
    })
}

fn bits<T: Copy, const N: usize>(v: T) -> [u64; N] {
    assert_eq!(std::mem::size_of::<T>(), N * 8);
    // SAFETY: the sizes are equal (checked above) and every bit pattern of `[u64; N]` is valid.
    unsafe { std::mem::transmute_copy(&v) }
}

/// Adds 1 to `gp[0]` in an alternative site that keeps every other general register and
/// sixteen vector registers live across it.
#[inline(never)]
fn add_one_keeping_registers(gp: &mut [u64; 12], xmm: &mut [__m128i; 16]) {
    let [a, c, d, si, di, r8, r9, r10, r11, r12, r13, r14] = gp;
    let [
        x0,
        x1,
        x2,
        x3,
        x4,
        x5,
        x6,
        x7,
        x8,
        x9,
        x10,
        x11,
        x12,
        x13,
        x14,
        x15,
    ] = xmm;
    // SAFETY: both sequences only add 1 to `rax`; every operand is declared.
    unsafe {
        textpoke::alternative!(
            default: ["add rax, 1"],
            "sse2" => ["add rax, 1"];
            inout("rax") *a, inout("rcx") *c, inout("rdx") *d, inout("rsi") *si,
            inout("rdi") *di, inout("r8") *r8, inout("r9") *r9, inout("r10") *r10,
            inout("r11") *r11, inout("r12") *r12, inout("r13") *r13, inout("r14") *r14,
            inout("xmm0") *x0, inout("xmm1") *x1, inout("xmm2") *x2, inout("xmm3") *x3,
            inout("xmm4") *x4, inout("xmm5") *x5, inout("xmm6") *x6, inout("xmm7") *x7,
            inout("xmm8") *x8, inout("xmm9") *x9, inout("xmm10") *x10, inout("xmm11") *x11,
            inout("xmm12") *x12, inout("xmm13") *x13, inout("xmm14") *x14,
            inout("xmm15") *x15,
            options(nostack),
        );
    }
}

#[test]
fn the_first_run_keeps_every_register() {
    fresh("the_first_run_keeps_every_register", &[], || {
        let gp0: [u64; 12] = std::array::from_fn(|i| 0x0101_0101_0101_0101 * (i as u64 + 1));
        let xmm0 = xmm_patterns();
        for run in 0..2 {
            let (mut gp, mut xmm) = (gp0, xmm0);
            add_one_keeping_registers(&mut gp, &mut xmm);
            assert_eq!(gp[0], gp0[0] + 1, "run {run}");
            assert_eq!(gp[1..], gp0[1..], "run {run}: general registers");
            for (i, (got, want)) in xmm.iter().zip(&xmm0).enumerate() {
                assert_eq!(bits::<_, 2>(*got), bits::<_, 2>(*want), "run {run}: xmm{i}");
            }
            assert!(applied(), "{:?}", first_use_error());
        }
    });
}

/// As [`add_one_keeping_registers`], with the full 256-bit vector registers.
///
/// # Safety
///
/// The CPU must have AVX.
#[target_feature(enable = "avx")]
#[inline(never)]
unsafe fn add_one_keeping_ymm(a: &mut u64, ymm: &mut [__m256i; 8]) {
    let [y0, y1, y2, y3, y4, y5, y6, y7] = ymm;
    // SAFETY: both sequences only add 1 to `rax`; every operand is declared.
    unsafe {
        textpoke::alternative!(
            default: ["add rax, 1"],
            "sse2" => ["add rax, 1"];
            inout("rax") *a,
            inout("ymm0") *y0, inout("ymm1") *y1, inout("ymm2") *y2, inout("ymm3") *y3,
            inout("ymm4") *y4, inout("ymm5") *y5, inout("ymm6") *y6, inout("ymm7") *y7,
        );
    }
}

#[test]
fn the_first_run_keeps_the_upper_halves_of_vector_registers() {
    if !is_x86_feature_detected!("avx") {
        eprintln!("no AVX on this CPU: only the 128-bit registers are checked");
        return;
    }
    fresh(
        "the_first_run_keeps_the_upper_halves_of_vector_registers",
        &[],
        || {
            // SAFETY: `__m256i` is 32 plain bytes; every bit pattern is valid.
            let ymm0: [__m256i; 8] = std::array::from_fn(|i| unsafe {
                std::mem::transmute::<[u64; 4], __m256i>([i as u64, 0xdead, 0xbeef, !(i as u64)])
            });
            let (mut a, mut ymm) = (7, ymm0);
            // SAFETY: AVX is present (checked above).
            unsafe { add_one_keeping_ymm(&mut a, &mut ymm) };
            assert_eq!(a, 8);
            assert!(applied(), "{:?}", first_use_error());
            for (i, (got, want)) in ymm.iter().zip(&ymm0).enumerate() {
                assert_eq!(bits::<_, 4>(*got), bits::<_, 4>(*want), "ymm{i}");
            }
        },
    );
}

/// Fills the 128-byte red zone below the stack pointer, runs an alternative site marked
/// `nostack`, and returns how many of the sixteen words still hold what was written.
///
/// The three `asm!` blocks are `nostack` and the function has no locals, so nothing of the
/// compiler's lives in the red zone between them; only the site could disturb it.
#[inline(never)]
fn red_zone_words_kept() -> u64 {
    let kept: u64;
    // SAFETY: writes only the red zone, which nothing else of this function uses (see above);
    // the site only writes `n`; the last block only reads the red zone.
    unsafe {
        std::arch::asm!(
            "mov rax, 0x5eed0000",
            "mov ecx, 16",
            "2:",
            "mov [rsp + rcx * 8 - 136], rax",
            "inc rax",
            "dec ecx",
            "jnz 2b",
            out("rax") _, out("rcx") _,
            options(nostack),
        );
        textpoke::alternative!(
            default: ["nop"],
            "sse2" => ["nop"];
            options(nostack),
        );
        std::arch::asm!(
            "mov rax, 0x5eed0000",
            "mov ecx, 16",
            "xor {kept:e}, {kept:e}",
            "2:",
            "cmp [rsp + rcx * 8 - 136], rax",
            "jne 3f",
            "inc {kept}",
            "3:",
            "inc rax",
            "dec ecx",
            "jnz 2b",
            kept = out(reg) kept,
            out("rax") _, out("rcx") _,
            options(nostack),
        );
    }
    kept
}

#[test]
fn the_first_run_keeps_the_red_zone() {
    fresh("the_first_run_keeps_the_red_zone", &[], || {
        assert_eq!(red_zone_words_kept(), 16);
        assert!(applied(), "{:?}", first_use_error());
        assert_eq!(red_zone_words_kept(), 16, "and the applied site");
    });
}

#[test]
fn sites_already_holding_their_code_are_left_alone() {
    fresh(
        "sites_already_holding_their_code_are_left_alone",
        &[],
        || {
            apply_on_first_use(false);
            let planned = textpoke::__private::planned_alt_code().unwrap();
            assert_eq!(planned.len(), 5, "which, moved and the three sites here");
            // As another copy of textpoke linked into this binary would have done.
            let (addr, code) = &planned[0];
            support::poke_behind_back(*addr, code);
            apply().expect("a site already holding its chosen code is not a mismatch");
            for (addr, code) in &planned {
                assert_eq!(
                    &textpoke::__private::read_code(*addr, code.len()).unwrap(),
                    code
                );
            }
            assert_eq!(which(), expected());
            assert_eq!(moved(), (42, &raw const TARGET as u64));
        },
    );
}

#[test]
fn a_resolver_still_bound_after_apply_calls_the_default() {
    fresh(
        "a_resolver_still_bound_after_apply_calls_the_default",
        &[],
        || {
            apply().unwrap();
            assert_eq!(PICK.call(4), 40 + expected());
            // Bound back to its resolver (by hand here; a call in another object than the
            // copy of textpoke that applied would stay there): it must not call itself.
            PICK.update(PICK::__textpoke_resolve).unwrap();
            assert_eq!(PICK.call(4), 41);
        },
    );
}
