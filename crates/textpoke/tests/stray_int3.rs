//! An `int3` at a registered site that textpoke did not write (a probe, a debugger) while no
//! batch is in flight is passed on, not rewound forever.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};

use textpoke::{StaticKey, static_branch_unlikely};

static KEY: StaticKey = StaticKey::new();
static PROBE_HITS: AtomicUsize = AtomicUsize::new(0);
static SITE: AtomicUsize = AtomicUsize::new(0);
static ORIGINAL: AtomicUsize = AtomicUsize::new(0);

#[inline(never)]
fn site() -> bool {
    static_branch_unlikely!(KEY)
}

/// Acts like a probe's handler: counts the hit, restores the byte, and re-executes it.
extern "C" fn probe(_: libc::c_int, _: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    PROBE_HITS.fetch_add(1, Ordering::SeqCst);
    let site = SITE.load(Ordering::SeqCst);
    let byte = [ORIGINAL.load(Ordering::SeqCst) as u8];
    // SAFETY: open/pwrite/close are async-signal-safe; the path is NUL-terminated; the ucontext
    // is the trapped thread's.
    unsafe {
        let fd = libc::open(c"/proc/self/mem".as_ptr(), libc::O_RDWR);
        libc::pwrite(fd, byte.as_ptr().cast(), 1, site as libc::off_t);
        libc::close(fd);
        let uc = ctx as *mut libc::ucontext_t;
        (*uc).uc_mcontext.gregs[libc::REG_RIP as usize] = site as i64;
    }
}

#[test]
fn foreign_breakpoint_at_a_site_is_passed_on() {
    support::install_sigtrap(probe);
    KEY.enable().unwrap();
    KEY.disable().unwrap(); // textpoke's handler installed, chaining to `probe`
    let addr = KEY.sites().unwrap()[0];
    let original = textpoke::__private::read_code(addr, 1).unwrap()[0];
    SITE.store(addr, Ordering::SeqCst);
    ORIGINAL.store(original as usize, Ordering::SeqCst);
    support::poke_behind_back(addr, &[0xcc]);
    assert!(!site());
    assert_eq!(PROBE_HITS.load(Ordering::SeqCst), 1);
    assert_eq!(
        textpoke::__private::read_code(addr, 1).unwrap()[0],
        original
    );
    let (_, rewound) = textpoke::__private::trap_counts();
    assert_eq!(rewound, 0, "a foreign breakpoint must not be rewound");
}
