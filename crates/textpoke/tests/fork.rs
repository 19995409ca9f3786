//! A forked child toggles keys on its own, without touching its parent's code.

use textpoke::{StaticKey, static_branch_unlikely};

static KEY: StaticKey = StaticKey::new();

#[inline(never)]
fn site() -> bool {
    static_branch_unlikely!(KEY)
}

#[test]
fn child_toggles_its_own_copy() {
    // Set up everything (handler, membarrier, /proc/self/mem) in the parent first.
    KEY.enable().unwrap();
    assert!(site());

    // SAFETY: the child only calls textpoke (async-signal-safe enough after glibc's fork
    // handlers: malloc is usable, textpoke's lock is released) and then `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let ok = KEY.disable().is_ok()
            && !site()
            && KEY.enable().is_ok()
            && site()
            && KEY.disable().is_ok()
            && !site();
        // SAFETY: leaving the child without running the parent's destructors.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child died: status {status:#x}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "child could not toggle its key"
    );
    assert!(KEY.is_enabled());
    assert!(site(), "the child's patches must not reach the parent");
    KEY.disable().unwrap();
    assert!(!site());
}
