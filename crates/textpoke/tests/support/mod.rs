//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::{Seek, SeekFrom, Write};

/// Writes `bytes` at `addr` through /proc/self/mem, behind textpoke's back.
pub fn poke_behind_back(addr: usize, bytes: &[u8]) {
    let mut mem = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/mem")
        .expect("open /proc/self/mem");
    mem.seek(SeekFrom::Start(addr as u64)).expect("seek");
    mem.write_all(bytes).expect("write");
}

/// The bytes of every static-branch site in this binary.
pub fn snapshot_sites() -> Vec<(usize, Vec<u8>)> {
    textpoke::tables::jump_sites()
        .expect("table validates")
        .iter()
        .map(|s| (s.addr, textpoke::__private::read_code(s.addr, 5).unwrap()))
        .collect()
}

/// `/proc/self/maps` lines: (start, end, perms, path).
pub fn maps() -> Vec<(usize, usize, String, String)> {
    std::fs::read_to_string("/proc/self/maps")
        .expect("read maps")
        .lines()
        .map(|line| {
            let mut parts = line.split_whitespace();
            let range = parts.next().unwrap();
            let perms = parts.next().unwrap().to_string();
            let path = parts.nth(3).unwrap_or("").to_string();
            let (a, b) = range.split_once('-').unwrap();
            (
                usize::from_str_radix(a, 16).unwrap(),
                usize::from_str_radix(b, 16).unwrap(),
                perms,
                path,
            )
        })
        .collect()
}

/// Runs `child` in a forked child process and returns its exit status (its return value), or
/// panics if it died. The child must only do async-signal-safe-enough work: glibc's fork
/// handlers make malloc usable, and textpoke releases its lock in the child.
pub fn in_child(child: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child runs `child` and leaves with `_exit`, never returning into the harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // A panic must end the child, not just its only thread (other threads it started
        // would keep it alive, and the parent would wait forever).
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(101);
        // SAFETY: leaving the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child died: status {status:#x}");
    libc::WEXITSTATUS(status)
}

/// Serializes tests in one binary that need the process to themselves.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Installs `handler` as the SA_SIGINFO SIGTRAP handler and returns what it replaced.
pub fn install_sigtrap(
    handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void),
) -> libc::sigaction {
    // SAFETY: installs a valid handler with an empty mask; `old` receives the previous one.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        let mut old: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(libc::SIGTRAP, &sa, &mut old), 0);
        old
    }
}

/// Runs test `name` of this test binary alone in a fresh process (the same binary, run again
/// with `--exact name`), so that one crash cannot hide another and no earlier test's state
/// leaks in; `body` runs only there. Fails with the child's output if it fails or dies.
pub fn fresh(name: &str, body: impl FnOnce()) {
    fresh_env(name, &[], body);
}

/// Runs `rounds` times [`fresh`] for test `name`; the rounds run in the parent only (a fresh
/// child runs `body` once).
pub fn fresh_rounds(name: &str, rounds: usize, body: impl Fn()) {
    for _ in 0..rounds {
        fresh(name, &body);
        if std::env::var_os("TEXTPOKE_FRESH_CHILD").is_some() {
            return;
        }
    }
}

/// Runs `body` while `runners` threads call `site` in a loop, and `others` more threads each
/// call `other` in a loop (toggling keys, say); they all stop when `body` returns.
pub fn while_busy<R>(
    runners: usize,
    site: fn() -> bool,
    others: usize,
    other: fn(),
    body: impl FnOnce() -> R,
) -> R {
    let stop = std::sync::atomic::AtomicBool::new(false);
    let running = || !stop.load(std::sync::atomic::Ordering::Relaxed);
    std::thread::scope(|s| {
        for _ in 0..runners {
            s.spawn(|| {
                while running() {
                    std::hint::black_box(site());
                }
            });
        }
        for _ in 0..others {
            s.spawn(|| {
                while running() {
                    other();
                }
            });
        }
        let r = body();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        r
    })
}

/// A SIGTRAP handler that counts, installed before anything else in a test process.
pub mod counting_trap {
    use std::sync::atomic::{AtomicUsize, Ordering};

    static COUNT: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn count(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
        COUNT.fetch_add(1, Ordering::SeqCst);
    }

    /// Installs it.
    pub fn install() {
        super::install_sigtrap(count);
    }

    /// Traps it has seen.
    pub fn count_so_far() -> usize {
        COUNT.load(Ordering::SeqCst)
    }

    /// Runs a user `int3` and a `raise(SIGTRAP)`, and checks each reached the handler once.
    pub fn check_both_reach_it(when: &str) {
        let before = count_so_far();
        // SAFETY: a SIGTRAP handler that returns is installed, so execution continues.
        unsafe { core::arch::asm!("int3") };
        assert_eq!(count_so_far(), before + 1, "user int3 {when}");
        // SAFETY: as above.
        unsafe { libc::raise(libc::SIGTRAP) };
        assert_eq!(count_so_far(), before + 2, "raise(SIGTRAP) {when}");
    }
}

/// Makes `membarrier` fail with ENOSYS for this thread and its future children.
pub fn forbid_membarrier() {
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let filter = [
        // seccomp_data.nr is at offset 0; this test only runs on x86_64.
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        jeq(libc::SYS_membarrier as u32, 0, 1),
        stmt(
            libc::BPF_RET | libc::BPF_K,
            SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut _,
    };
    // SAFETY: a valid filter program that outlives the calls; affects only this process.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const _
            ),
            0
        );
    }
}

/// This process's resident set size, in KiB.
pub fn rss_kib() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .expect("read /proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// As [`fresh`], with `env` set in the fresh process (it is there from its first
/// instruction: for what textpoke reads at load); returns the child's standard error (`None`
/// in the child, after `body`).
pub fn fresh_env(name: &str, env: &[(&str, &str)], body: impl FnOnce()) -> Option<String> {
    const VAR: &str = "TEXTPOKE_FRESH_CHILD";
    if std::env::var_os(VAR).is_some_and(|v| v == name) {
        body();
        return None;
    }
    let out = std::process::Command::new(std::env::current_exe().expect("current exe"))
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(VAR, name)
        .envs(env.iter().copied())
        .output()
        .expect("run the test binary again");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{name} in a fresh process: {}\n--- stdout\n{}\n--- stderr\n{stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "{name} did not run in the fresh process"
    );
    Some(stderr)
}
