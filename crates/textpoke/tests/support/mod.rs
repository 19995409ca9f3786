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
    textpoke::jump_sites()
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
        let code = child();
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
