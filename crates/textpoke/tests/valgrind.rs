//! Patching under valgrind: every change must reach a thread that keeps running the sites.
//!
//! Valgrind runs translations of the guest's code, cached, so a write that it is not told about
//! (and a `pwrite` to `/proc/self/mem` is one) leaves the old code running. `scenario` toggles a
//! key, retargets static calls and sets an immediate value while a second thread runs their
//! sites (a trapped read of the immediate is emulated by writing its register in the signal
//! frame, which valgrind must hand back), and checks after every
//! change that the other thread sees it. It runs natively as an ordinary test, and
//! `under_valgrind` runs it again in a child under `valgrind --error-exitcode=99 -q` (memcheck,
//! default options), with a watchdog: once as it is, and once with `membarrier` forbidden by a
//! seccomp filter, as under a valgrind too old to know that system call (textpoke then relies
//! on discarding translations alone; natively it refuses, see `no_core_sync.rs`).

mod support;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use textpoke::{Batch, Immediate, StaticKey, imm, static_branch_likely, static_branch_unlikely};

/// Set in the child that `under_valgrind` starts: to [`PLAIN`] or [`NO_MEMBARRIER`].
const CHILD_ENV: &str = "TEXTPOKE_VALGRIND_CHILD";
const PLAIN: &str = "plain";
const NO_MEMBARRIER: &str = "no-membarrier";
/// What `scenario` prints last when every check passed.
const DONE: &str = "valgrind scenario: ok";
/// How long the child may take under valgrind before it is killed and the test fails.
const WATCHDOG: Duration = Duration::from_secs(120);
/// How long the other thread may take to finish one loop after a change.
const OBSERVE: Duration = Duration::from_secs(20);

static KEY: StaticKey = StaticKey::new();

textpoke::static_call! {
    /// A Rust-ABI call: through its trampoline.
    static CALL: fn(u64) -> u64 = tag::<0>;
    /// A C-ABI call with inline call sites: each `FAST.call` is a `call rel32` rewritten in place.
    inline static FAST: extern "C" fn(u64) -> u64 = ctag::<0>;
}

/// Each target returns `x * 8 + K`, so the value names the target that ran.
fn tag<const K: u64>(x: u64) -> u64 {
    x * 8 + K
}
extern "C" fn ctag<const K: u64>(x: u64) -> u64 {
    x * 8 + K
}
const TAGS: [fn(u64) -> u64; 4] = [tag::<0>, tag::<1>, tag::<2>, tag::<3>];
const CTAGS: [extern "C" fn(u64) -> u64; 4] = [ctag::<0>, ctag::<1>, ctag::<2>, ctag::<3>];

#[inline(never)]
fn unlikely_site() -> bool {
    static_branch_unlikely!(KEY)
}

#[inline(never)]
fn likely_site() -> bool {
    static_branch_likely!(KEY)
}

#[inline(never)]
fn fast_site(x: u64) -> u64 {
    FAST.call(x)
}

/// The immediate's values: every byte differs, so a torn read would be none of them.
const IMMS: [u64; 4] = [
    0x1111_1111_1111_1111,
    0x2222_2222_2222_2222,
    0x3333_3333_3333_3333,
    0x4444_4444_4444_4444,
];
static IMM: Immediate<u64> = Immediate::new(IMMS[0]);

/// The index of the value the immediate's site reads.
#[inline(never)]
fn imm_site() -> u64 {
    let v = imm!(IMM);
    IMMS.iter().position(|&w| w == v).map_or_else(
        || {
            BAD.store(v | 1 << 63, Ordering::SeqCst);
            0xff
        },
        |i| i as u64,
    )
}

/// What the other thread saw in its last loop: bit 0 the unlikely site, bit 1 the likely one,
/// bits 8.. the trampoline call's tag, bits 16.. the inline call's tag, bits 24.. the index of
/// the immediate's value.
static SEEN: AtomicU64 = AtomicU64::new(u64::MAX);
/// Loops the other thread has finished; bumped after `SEEN` is stored.
static LOOPS: AtomicU64 = AtomicU64::new(0);
/// A value that names no target: a call returned something no target returns.
static BAD: AtomicU64 = AtomicU64::new(0);
static STOP: AtomicBool = AtomicBool::new(false);

fn observe(x: u64) -> u64 {
    let key = unlikely_site() as u64 | ((likely_site() as u64) << 1);
    let call = CALL.call(x);
    let fast = fast_site(x);
    for v in [call, fast] {
        if v / 8 != x {
            BAD.store(v | 1 << 63, Ordering::SeqCst);
        }
    }
    key | ((call % 8) << 8) | ((fast % 8) << 16) | (imm_site() << 24)
}

fn expect(key: bool, call: usize, fast: usize, imm: usize) -> u64 {
    (key as u64 * 3) | ((call as u64) << 8) | ((fast as u64) << 16) | ((imm as u64) << 24)
}

fn describe(seen: u64) -> String {
    format!(
        "unlikely site {}, likely site {}, trampoline call target {}, inline call target {}, \
         immediate value {}",
        seen & 1 != 0,
        seen & 2 != 0,
        (seen >> 8) & 0xff,
        (seen >> 16) & 0xff,
        (seen >> 24) & 0xff
    )
}

/// Waits until the other thread has run a whole loop that began after the caller's change
/// returned, and checks what it saw.
fn check(what: &str, want: u64) -> Result<(), String> {
    // The loop that finishes first may have begun before the change; the one after it cannot.
    let start = LOOPS.load(Ordering::SeqCst);
    let deadline = Instant::now() + OBSERVE;
    while LOOPS.load(Ordering::SeqCst) < start + 2 {
        if Instant::now() > deadline {
            return Err(format!(
                "after {what}: the other thread finished no loop in {OBSERVE:?} (hung?)"
            ));
        }
        std::thread::yield_now();
    }
    let seen = SEEN.load(Ordering::SeqCst);
    if seen != want {
        return Err(format!(
            "after {what}: the other thread still runs old code: it saw {}, want {}",
            describe(seen),
            describe(want)
        ));
    }
    // This thread too.
    let mine = observe(7);
    if mine != want {
        return Err(format!(
            "after {what}: this thread saw {}, want {}",
            describe(mine),
            describe(want)
        ));
    }
    match BAD.load(Ordering::SeqCst) {
        0 => Ok(()),
        v => Err(format!(
            "after {what}: a call returned {:#x}, which no target returns",
            v & !(1 << 63)
        )),
    }
}

fn run(changes: usize) -> Result<String, String> {
    // Valgrind runs one thread at a time and takes the CPU back from a busy one only after a
    // long time slice, which the patcher would wait out after each of its system calls (a
    // `yield` is not enough: the yielding thread often takes the lock straight back). There the
    // other thread sleeps a little now and then; natively it never stops.
    let pause = textpoke::__private::running_on_valgrind();
    let worker = std::thread::spawn(move || {
        let mut x = 1u64;
        while !STOP.load(Ordering::Relaxed) {
            SEEN.store(observe(x), Ordering::SeqCst);
            let loops = LOOPS.fetch_add(1, Ordering::SeqCst);
            x = x % 1_000_000 + 1;
            if pause && loops % 256 == 255 {
                std::thread::sleep(Duration::from_micros(10));
            }
        }
    });
    let result = (|| {
        check("start", expect(false, 0, 0, 0))?;
        let (mut on, mut call, mut fast, mut imm) = (false, 0usize, 0usize, 0usize);
        let err = |what: &str, e: textpoke::Error| format!("{what}: {e}");
        // Under valgrind, whether the other thread runs while a batch is in flight is up to its
        // scheduler: it nearly always does within `changes`, and changes go on (up to ten
        // times as many) until it has, so that the handler's path is always exercised.
        let met = || textpoke::__private::trap_counts().0 > 0;
        let mut i = 0;
        while i < changes || (pause && !met() && i < changes * 10) {
            let what = match i % 5 {
                0 => {
                    on = !on;
                    if on { KEY.enable() } else { KEY.disable() }
                        .map_err(|e| err("key toggle", e))?;
                    "a key toggle"
                }
                1 => {
                    call = (call + 1 + i / 4 % 3) % 4;
                    CALL.update(TAGS[call])
                        .map_err(|e| err("trampoline retarget", e))?;
                    "a trampoline retarget"
                }
                2 => {
                    fast = (fast + 1) % 4;
                    FAST.update(CTAGS[fast])
                        .map_err(|e| err("inline retarget", e))?;
                    "an inline-site retarget"
                }
                3 => {
                    imm = (imm + 1 + i / 5 % 3) % 4;
                    IMM.set(IMMS[imm]).map_err(|e| err("immediate", e))?;
                    "an immediate's new value"
                }
                _ => {
                    on = !on;
                    call = (call + 1) % 4;
                    fast = (fast + 3) % 4;
                    imm = (imm + 1) % 4;
                    Batch::new()
                        .set(&KEY, on)
                        .update(&CALL, TAGS[call])
                        .update(&FAST, CTAGS[fast])
                        .set(&IMM, IMMS[imm])
                        .commit()
                        .map_err(|e| err("batch", e))?;
                    "a batch of all four"
                }
            };
            check(&format!("change {i} ({what})"), expect(on, call, fast, imm))?;
            i += 1;
        }
        let (emulated, rewound) = textpoke::__private::trap_counts();
        if pause && emulated == 0 {
            // The handler path is what this run is also for.
            return Err(format!(
                "under valgrind, no thread ever met a breakpoint mid-batch in {i} changes"
            ));
        }
        Ok(format!(
            "{DONE}: {i} changes seen by the other thread ({} of its loops); \
             {emulated} breakpoint traps emulated, {rewound} rewound",
            LOOPS.load(Ordering::SeqCst)
        ))
    })();
    STOP.store(true, Ordering::Relaxed);
    worker.join().map_err(|_| "the other thread panicked")?;
    result
}

/// The scenario itself: natively as an ordinary test, and in `under_valgrind`'s child.
#[test]
fn scenario() {
    let child = std::env::var(CHILD_ENV).ok();
    assert_eq!(
        textpoke::__private::running_on_valgrind(),
        child.is_some(),
        "valgrind detected exactly in the child run under it"
    );
    if child.as_deref() == Some(NO_MEMBARRIER) {
        // This thread patches; the other one starts after this, and inherits the filter.
        support::forbid_membarrier();
        // SAFETY: MEMBARRIER_CMD_QUERY (0) only reports which commands exist.
        let query = unsafe { libc::syscall(libc::SYS_membarrier, 0, 0, 0) };
        assert_eq!(
            (query, std::io::Error::last_os_error().raw_os_error()),
            (-1, Some(libc::ENOSYS)),
            "membarrier is forbidden"
        );
    }
    match run(200) {
        Ok(summary) => println!("{summary}"),
        Err(why) => panic!("{why}"),
    }
}

/// Whether `valgrind` runs at all (it is on PATH and starts).
fn valgrind_installed() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn under_valgrind() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return; // never recurse
    }
    if !valgrind_installed() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("valgrind is not installed, and CI=true: .ci/run installs it");
        }
        eprintln!("skipped: valgrind not installed");
        return;
    }
    for mode in [PLAIN, NO_MEMBARRIER] {
        let (elapsed, summary) = run_under_valgrind(mode);
        eprintln!("under valgrind ({mode}), {elapsed:.1?}: {summary}");
    }
}

/// Runs `scenario` under valgrind in `mode`; returns how long it took and its summary line.
fn run_under_valgrind(mode: &str) -> (Duration, String) {
    let exe = std::env::current_exe().expect("own path");
    let started = Instant::now();
    let mut child = Command::new("valgrind")
        .args(["--error-exitcode=99", "-q"])
        .arg(&exe)
        .args(["scenario", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, mode)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start valgrind");
    // Drain both pipes while waiting, so a chatty child never blocks on a full pipe.
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).ok();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).ok();
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for valgrind") {
            break Some(status);
        }
        if started.elapsed() > WATCHDOG {
            child.kill().ok();
            child.wait().ok();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = started.elapsed();
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    let report = format!("--- stdout\n{out}\n--- stderr\n{err}");
    let Some(status) = status else {
        panic!("under valgrind ({mode}): killed after {WATCHDOG:?} (hung)\n{report}");
    };
    assert!(
        status.success() && out.contains(DONE),
        "under valgrind ({mode}): {status} after {elapsed:.1?}\n{report}"
    );
    let summary = out.lines().find(|l| l.contains(DONE)).unwrap_or_default();
    (
        elapsed,
        summary.trim_start_matches("test scenario ... ").to_string(),
    )
}
