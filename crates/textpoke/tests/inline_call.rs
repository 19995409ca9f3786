//! Static calls with inline call sites: `call rel32` instructions that textpoke emits itself and
//! retargets directly, falling back to the trampoline for far targets and no-ops.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use textpoke::Error;

textpoke::static_call! {
    /// Six integer-class arguments of different widths.
    inline static FAST: extern "C" fn(u64, u32, bool, *const u8, usize, i16) -> u64 = fast_a;
    /// May become a no-op.
    inline static FAST_LOG: extern "C" fn(u64) = fast_log;
    /// For a far target.
    inline static FAST_PID: extern "C" fn() -> i32 = fake_pid;
    /// Retargeted while threads call it.
    inline static FAST_RACE: extern "C" fn(u64) -> u64 = tag0;
}

extern "C" fn fast_a(a: u64, b: u32, c: bool, d: *const u8, e: usize, f: i16) -> u64 {
    a + b as u64 + c as u64 + (d as usize % 2) as u64 + e as u64 + (f as i64 + 1000) as u64
}
extern "C" fn fast_b(a: u64, b: u32, c: bool, d: *const u8, e: usize, f: i16) -> u64 {
    fast_a(a, b, c, d, e, f) * 10
}
static LOGGED: AtomicUsize = AtomicUsize::new(0);
extern "C" fn fast_log(n: u64) {
    LOGGED.fetch_add(n as usize, Ordering::SeqCst);
}
extern "C" fn fake_pid() -> i32 {
    -9
}
extern "C" fn tag0(x: u64) -> u64 {
    x * 4
}
extern "C" fn tag1(x: u64) -> u64 {
    x * 4 + 1
}

#[inline(never)]
fn fast(a: u64) -> u64 {
    FAST.call(a, 2, true, std::ptr::null(), 3, -1000)
}

/// Where each inline site of `call` currently calls.
fn site_targets<C: textpoke::StaticCall>(call: &C) -> Vec<usize> {
    textpoke::__private::inline_sites_of(call)
        .unwrap()
        .into_iter()
        .map(|site| {
            let code = textpoke::__private::read_code(site, 5).unwrap();
            assert_eq!(code[0], 0xe8, "an inline site is a call rel32");
            let rel = i32::from_le_bytes([code[1], code[2], code[3], code[4]]);
            (site + 5).wrapping_add_signed(rel as isize)
        })
        .collect()
}

#[test]
fn inline_sites_call_the_target_directly() -> Result<(), Error> {
    let _serial = support::serial();
    assert_eq!(fast(1), 7, "1 + 2 + true + (null % 2) + 3 + (-1000 + 1000)");
    let targets = site_targets(&FAST);
    assert!(!targets.is_empty());
    assert!(
        targets.iter().all(|&t| t == fast_a as *const () as usize),
        "compiled-in target, directly"
    );

    FAST.update(fast_b)?;
    assert_eq!(fast(1), 70);
    assert!(
        site_targets(&FAST)
            .iter()
            .all(|&t| t == fast_b as *const () as usize)
    );

    FAST_LOG.call(3);
    assert_eq!(LOGGED.load(Ordering::SeqCst), 3);
    FAST_LOG.update_noop()?;
    let tramp = textpoke::__private::trampoline_of(&FAST_LOG)?;
    assert!(
        site_targets(&FAST_LOG).iter().all(|&t| t == tramp),
        "no-op goes through the trampoline's ret"
    );
    FAST_LOG.call(100);
    assert_eq!(LOGGED.load(Ordering::SeqCst), 3);
    FAST_LOG.update(fast_log)?;
    FAST_LOG.call(1);
    assert_eq!(LOGGED.load(Ordering::SeqCst), 4);
    Ok(())
}

#[test]
fn far_targets_go_through_the_trampoline() -> Result<(), Error> {
    let _serial = support::serial();
    // SAFETY: getpid has no preconditions and cannot fail, so a safe pointer to it is sound.
    let getpid: extern "C" fn() -> i32 =
        unsafe { std::mem::transmute(libc::getpid as unsafe extern "C" fn() -> i32) };
    let tramp = textpoke::__private::trampoline_of(&FAST_PID)?;
    assert!(
        (getpid as usize).abs_diff(tramp) > 1 << 31,
        "libc must be far for this test"
    );
    assert_eq!(FAST_PID.call(), -9);
    FAST_PID.update(getpid)?;
    assert_eq!(FAST_PID.call(), std::process::id() as i32);
    assert!(site_targets(&FAST_PID).iter().all(|&t| t == tramp));
    FAST_PID.update(fake_pid)?;
    assert_eq!(FAST_PID.call(), -9);
    assert!(
        site_targets(&FAST_PID)
            .iter()
            .all(|&t| t == fake_pid as *const () as usize)
    );
    Ok(())
}

#[test]
fn inline_sites_are_retargeted_while_threads_call_them() {
    let _serial = support::serial();
    let stop = AtomicBool::new(false);
    let bad = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let r = FAST_RACE.call(x);
                    if r / 4 != x || r % 4 > 1 {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                    x += 1;
                }
            });
        }
        for n in 0..1000 {
            FAST_RACE
                .update(if n % 2 == 0 { tag1 } else { tag0 })
                .unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(bad.load(Ordering::Relaxed), 0);
    assert_eq!(FAST_RACE.call(5), 20);
}
