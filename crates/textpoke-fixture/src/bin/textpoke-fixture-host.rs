//! A host program without textpoke of its own (like a Python or Node process loading extension
//! modules): it loads copies of the plugin, so the first plugin's copy becomes the process's
//! patcher. Run by this crate's tests; exits non-zero with a message on the first failure.
//!
//! Scenario: a user SIGTRAP handler is installed first; three copies are loaded and patch; the
//! first is the patcher for all; closing it leaves it loaded (it is permanent); the others
//! keep patching while a thread runs their sites; closing them unloads them; the user's `int3`
//! and `raise(SIGTRAP)` reach the user's handler exactly once throughout.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use textpoke_fixture::Plugin;

static TRAPS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn count(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    TRAPS.fetch_add(1, Ordering::SeqCst);
}

fn check(ok: bool, what: &str) -> Result<(), String> {
    if ok { Ok(()) } else { Err(what.to_string()) }
}

fn user_traps(when: &str) -> Result<(), String> {
    let before = TRAPS.load(Ordering::SeqCst);
    // SAFETY: a SIGTRAP handler that returns is installed.
    unsafe { core::arch::asm!("int3") };
    check(
        TRAPS.load(Ordering::SeqCst) == before + 1,
        &format!("int3 {when}"),
    )?;
    // SAFETY: as above.
    unsafe { libc::raise(libc::SIGTRAP) };
    check(
        TRAPS.load(Ordering::SeqCst) == before + 2,
        &format!("raise(SIGTRAP) {when}"),
    )
}

fn mapped(p: &Plugin) -> bool {
    let path = p.path().display().to_string();
    std::fs::read_to_string("/proc/self/maps")
        .map(|m| m.lines().any(|l| l.ends_with(&path)))
        .unwrap_or(false)
}

fn run() -> Result<(), String> {
    // SAFETY: installs a counting SA_SIGINFO handler for SIGTRAP.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = count as extern "C" fn(_, _, _) as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        check(
            libc::sigaction(libc::SIGTRAP, &sa, std::ptr::null_mut()) == 0,
            "sigaction",
        )?;
    }
    user_traps("before any plugin")?;
    let first = Plugin::load(100)?;
    let (id, is_self) = first.patcher();
    check(id != 0 && is_self, "the first plugin's copy is the patcher")?;
    let others = [Plugin::load(101)?, Plugin::load(102)?];
    for p in &others {
        check(p.patcher() == (id, false), "later plugins join the first")?;
    }
    first.set(0, true)?;
    others[0].set(1, true)?;
    others[1].retarget(3)?;
    check(first.run(0) == 8 && others[0].run(1) == 8, "plugin sites")?;
    check(others[1].call(1) == 4, "plugin static call")?;
    user_traps("after three plugins patched")?;
    let path = first.path().to_path_buf();
    drop(first);
    check(
        std::fs::read_to_string("/proc/self/maps")
            .unwrap_or_default()
            .contains(&path.display().to_string()),
        "the patcher's object stays loaded after dlclose",
    )?;
    user_traps("after dlclose of the patcher's plugin")?;
    // The others keep patching through it while a thread runs their sites.
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| -> Result<(), String> {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                std::hint::black_box((others[0].run(2), others[1].call(1)));
            }
        });
        for i in 0..2000 {
            others[0].set(2, i % 2 == 0)?;
            others[1].retarget(1 + i % 3)?;
        }
        stop.store(true, Ordering::Relaxed);
        Ok(())
    })?;
    user_traps("after the others patched with the patcher's plugin closed")?;
    let [a, b] = others;
    drop(a);
    check(mapped(&b), "the other plugin is still loaded")?;
    drop(b);
    user_traps("after every plugin was closed")?;
    // A new copy joins the same patcher.
    let again = Plugin::load(103)?;
    check(
        again.patcher() == (id, false),
        "a new plugin joins the same patcher",
    )?;
    again.set(3, true)?;
    check(again.run(3) == 8, "new plugin's sites")?;
    user_traps("at the end")
}

fn main() {
    match run() {
        Ok(()) => println!("host: all checks passed"),
        Err(e) => {
            eprintln!("host: {e}");
            std::process::exit(1);
        }
    }
}
