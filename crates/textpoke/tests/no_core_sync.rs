//! Without membarrier SYNC_CORE (an old kernel, or a seccomp filter), textpoke refuses to patch
//! with a clear error and writes nothing.

mod support;

use textpoke::{Error, StaticKey, static_branch_unlikely};

static KEY: StaticKey = StaticKey::new();

#[inline(never)]
fn site() -> bool {
    static_branch_unlikely!(KEY)
}

/// Makes `membarrier` fail with ENOSYS for this thread and its future children.
fn forbid_membarrier() {
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

#[test]
fn refuses_without_core_serialization() {
    // In a child, so the filter does not reach the other tests.
    let status = support::in_child(|| {
        forbid_membarrier();
        let before = textpoke::__private::read_code(KEY.sites().unwrap()[0], 5).unwrap();
        match KEY.enable() {
            Err(Error::CoreSyncUnavailable { why }) if why.contains("membarrier") => {
                let after = textpoke::__private::read_code(KEY.sites().unwrap()[0], 5).unwrap();
                if after == before && !site() && !KEY.is_enabled() {
                    0
                } else {
                    2
                }
            }
            Err(_) => 3,
            Ok(()) => 4,
        }
    });
    assert_eq!(
        status, 0,
        "child status (2: bytes changed, 3: other error, 4: patched anyway)"
    );
    // The parent is unaffected.
    KEY.enable().unwrap();
    assert!(site());
}
