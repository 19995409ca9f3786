//! Static calls: retargeting, signatures, no-ops, far targets, tail and conditional-tail call
//! sites, bad input, and updates while other threads call.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use textpoke::{Batch, Error, StaticKey, static_branch_unlikely};

textpoke::static_call! {
    /// Arity 1 with a reference.
    static HASH: fn(&[u8]) -> u64 = len_times_3;
    /// Six arguments, references among them.
    static MIX: fn(u8, &str, u64, &[u32], i16, &mut Vec<u8>) -> usize = mix_a;
    /// No return value: may become a no-op.
    static LOG: fn(usize) = log_add;
    /// C ABI, reached from hand-written tail-call sites.
    static TAIL: extern "C" fn(u64) -> u64 = plus_one;
    /// C ABI, for a far target in libc.
    static PID: extern "C" fn() -> i32 = fake_pid;
    /// Retargeted while threads call it.
    static RACE: fn(u64) -> u64 = tag::<0>;
    /// For the bad-input test.
    static VICTIM: fn() -> u32 = one;
    /// For the bad-input test.
    static VICTIM_LOG: fn(usize) = log_add;
}

static BATCHED: StaticKey = StaticKey::new();
static VICTIM_KEY: StaticKey = StaticKey::new();

fn len_times_3(d: &[u8]) -> u64 {
    d.len() as u64 * 3
}
fn generic_len<const K: u64>(d: &[u8]) -> u64 {
    d.len() as u64 + K
}
fn mix_a(a: u8, b: &str, c: u64, d: &[u32], e: i16, out: &mut Vec<u8>) -> usize {
    out.push(a);
    a as usize + b.len() + c as usize + d.len() + e as usize
}
fn mix_b(a: u8, b: &str, c: u64, d: &[u32], e: i16, out: &mut Vec<u8>) -> usize {
    out.push(a + 1);
    (a as usize + b.len() + c as usize + d.len() + e as usize) * 100
}
static LOGGED: AtomicUsize = AtomicUsize::new(0);
fn log_add(n: usize) {
    LOGGED.fetch_add(n, Ordering::SeqCst);
}
fn log_double(n: usize) {
    LOGGED.fetch_add(2 * n, Ordering::SeqCst);
}
extern "C" fn plus_one(x: u64) -> u64 {
    x + 1
}
extern "C" fn plus_two(x: u64) -> u64 {
    x + 2
}
extern "C" fn fake_pid() -> i32 {
    -7
}
fn tag<const T: u64>(x: u64) -> u64 {
    x * 16 + T
}
fn one() -> u32 {
    1
}
fn two() -> u32 {
    2
}

#[inline(never)]
fn batched_site() -> bool {
    static_branch_unlikely!(BATCHED)
}

/// `jmp` to the trampoline: a tail call, as compilers emit.
#[unsafe(naked)]
extern "C" fn tail_site(_x: u64) -> u64 {
    core::arch::naked_asm!(concat!(
        "jmp \"",
        textpoke::__static_call_symbol!(TAIL),
        "\""
    ))
}

/// `jne` to the trampoline: a conditional tail call (reference 003). Returns `u64::MAX` when
/// `take` is zero.
#[unsafe(naked)]
extern "C" fn cond_tail_site(_x: u64, _take: u64) -> u64 {
    core::arch::naked_asm!(
        "test rsi, rsi",
        concat!("jne \"", textpoke::__static_call_symbol!(TAIL), "\""),
        "mov rax, -1",
        "ret",
    )
}

// Static calls are process-wide, so the single-threaded checks run in sequence in one test.
#[test]
fn retarget_signatures_noop_and_batches() -> Result<(), Error> {
    let _serial = support::serial();
    assert_eq!(HASH.call(b"abcd"), 12);
    HASH.update(generic_len::<100>)?;
    assert_eq!(HASH.call(b"abcd"), 104);
    HASH.update(len_times_3)?;
    assert_eq!(HASH.call(b"ab"), 6);

    let mut out = Vec::new();
    assert_eq!(
        MIX.call(1, "xy", 3, &[4, 5], 6, &mut out),
        1 + 2 + 3 + 2 + 6
    );
    MIX.update(mix_b)?;
    assert_eq!(MIX.call(1, "xy", 3, &[4, 5], 6, &mut out), 1400);
    assert_eq!(out, [1, 2]);

    LOG.call(5);
    assert_eq!(LOGGED.load(Ordering::SeqCst), 5);
    LOG.update_noop()?;
    assert!(LOG.is_noop());
    LOG.call(1000);
    assert_eq!(
        LOGGED.load(Ordering::SeqCst),
        5,
        "a no-op call does nothing"
    );
    LOG.update(log_double)?;
    assert!(!LOG.is_noop());
    LOG.call(1);
    assert_eq!(LOGGED.load(Ordering::SeqCst), 7);

    // One transaction: a key and two calls.
    let stats = Batch::new()
        .enable(&BATCHED)
        .update(&HASH, generic_len::<7>)
        .update_noop(&LOG)
        .commit()?;
    assert_eq!(stats.syncs, 2);
    assert!(batched_site() && LOG.is_noop());
    assert_eq!(HASH.call(b"a"), 8);
    Ok(())
}

#[test]
fn tail_and_conditional_tail_call_sites_follow_updates() -> Result<(), Error> {
    let _serial = support::serial();
    TAIL.update(plus_one)?;
    assert_eq!(tail_site(10), 11);
    assert_eq!(cond_tail_site(10, 1), 11);
    assert_eq!(cond_tail_site(10, 0), u64::MAX);
    TAIL.update(plus_two)?;
    assert_eq!(tail_site(10), 12);
    assert_eq!(cond_tail_site(10, 1), 12);
    assert_eq!(cond_tail_site(10, 0), u64::MAX);

    // Both shapes while the trampoline is patched under them.
    let stop = AtomicBool::new(false);
    let bad = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let r = if i.is_multiple_of(2) {
                    tail_site(i)
                } else {
                    cond_tail_site(i, 1)
                };
                if r != i + 1 && r != i + 2 {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
                if cond_tail_site(i, 0) != u64::MAX {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        });
        for n in 0..300 {
            TAIL.update(if n % 2 == 0 { plus_one } else { plus_two })
                .unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(bad.load(Ordering::Relaxed), 0);
    Ok(())
}

#[test]
fn far_target_goes_through_a_slot() -> Result<(), Error> {
    let _serial = support::serial();
    // SAFETY: getpid has no preconditions and cannot fail, so a safe pointer to it is sound.
    let getpid: extern "C" fn() -> i32 =
        unsafe { std::mem::transmute(libc::getpid as unsafe extern "C" fn() -> i32) };
    let trampoline = trampoline_of(&PID);
    let distance = (getpid as usize).abs_diff(trampoline);
    assert!(
        distance > 1 << 31,
        "libc must be out of rel32 range for this test ({distance:#x})"
    );

    assert_eq!(PID.call(), -7);
    PID.update(getpid)?;
    assert_eq!(PID.call(), std::process::id() as i32);
    let code = textpoke::__private::read_code(trampoline, 2).unwrap();
    assert_eq!(code, [0xff, 0x25], "far form: jmp [rip + slot]");
    // A second far update uses the other slot; back to near re-encodes a rel32 jump.
    PID.update(getpid)?;
    assert_eq!(PID.call(), std::process::id() as i32);
    PID.update(fake_pid)?;
    assert_eq!(PID.call(), -7);
    assert_eq!(
        textpoke::__private::read_code(trampoline, 1).unwrap(),
        [0xe9]
    );
    PID.update(getpid)?;
    assert_eq!(PID.call(), std::process::id() as i32);
    Ok(())
}

#[test]
fn bad_input_is_an_error_and_writes_nothing() {
    let _serial = support::serial();
    // A target outside every loaded object: code in an anonymous mapping.
    // SAFETY: a fresh private anonymous page, filled with `ret` and made read+exec; never
    // unmapped while the pointer is used.
    let jit: fn() -> u32 = unsafe {
        let page = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(page, libc::MAP_FAILED);
        (page as *mut u8).write_bytes(0xc3, 4096);
        assert_eq!(
            libc::mprotect(page, 4096, libc::PROT_READ | libc::PROT_EXEC),
            0
        );
        std::mem::transmute(page)
    };
    let before = support::snapshot_sites();
    match VICTIM.update(jit) {
        Err(Error::BadTarget { why, .. }) => assert!(why.contains("executable segment"), "{why}"),
        other => panic!("expected BadTarget, got {other:?}"),
    }
    assert_eq!(VICTIM.call(), 1);

    // A tampered trampoline refuses the batch, with a key in it, and nothing changes.
    let tramp = trampoline_of(&VICTIM);
    let original = textpoke::__private::read_code(tramp, 6).unwrap();
    let mut tampered = original.clone();
    tampered[5] = 0x90;
    support::poke_behind_back(tramp, &tampered);
    let err = Batch::new()
        .enable(&VICTIM_KEY)
        .update(&VICTIM, two)
        .update_noop(&VICTIM_LOG)
        .commit();
    assert!(
        matches!(err, Err(Error::SiteMismatch { ref site, .. }) if site.addr == tramp),
        "{err:?}"
    );
    let message = err.unwrap_err().to_string();
    assert!(
        message.contains(
            "(static call static_call::VICTIM, declared at crates/textpoke/tests/static_call.rs:"
        ),
        "{message}"
    );
    assert_eq!(support::snapshot_sites(), before);
    assert_eq!(textpoke::__private::read_code(tramp, 6).unwrap(), tampered);
    assert!(!VICTIM_KEY.is_enabled() && !VICTIM_LOG.is_noop());
    support::poke_behind_back(tramp, &original);
    assert_eq!(VICTIM.call(), 1);
    VICTIM.update(two).unwrap();
    assert_eq!(VICTIM.call(), 2);
}

fn trampoline_of<C: textpoke::StaticCall>(call: &C) -> usize {
    textpoke::__private::trampoline_of(call).expect("call is in the table")
}

#[test]
fn updates_while_threads_call() {
    let _serial = support::serial();
    const TARGETS: [fn(u64) -> u64; 4] = [tag::<0>, tag::<1>, tag::<2>, tag::<3>];
    let stop = AtomicBool::new(false);
    let bad = AtomicUsize::new(0);
    let calls = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let r = RACE.call(x);
                    if r / 16 != x || r % 16 > 3 {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                    x += 1;
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        for n in 0..2000 {
            RACE.update(TARGETS[n % 4]).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(bad.load(Ordering::Relaxed), 0);
    assert!(calls.load(Ordering::Relaxed) > 0);
    RACE.update(tag::<2>).unwrap();
    assert_eq!(RACE.call(1), 18);
}
