//! Another signal's handler that runs sites while the interrupted thread runs them too, and
//! another thread patches them: a timer's handler must never land on top of textpoke's SIGTRAP
//! handler with SIGTRAP blocked (the kernel would kill the process at the next breakpoint).

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

textpoke::static_call! {
    static CALL: fn(u64) -> u64 = plus_one;
}

fn plus_one(x: u64) -> u64 {
    x + 1
}
fn plus_two(x: u64) -> u64 {
    x + 2
}

static IN_HANDLER: AtomicU64 = AtomicU64::new(0);
static BAD: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_alarm(_: libc::c_int) {
    let r = CALL.call(1);
    if r != 2 && r != 3 {
        BAD.fetch_add(1, Ordering::Relaxed);
    }
    IN_HANDLER.fetch_add(1, Ordering::Relaxed);
}

fn sigalrm_set() -> libc::sigset_t {
    // SAFETY: building a sigset in a local.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGALRM);
        set
    }
}

#[test]
fn timer_handler_runs_a_static_call_being_retargeted() {
    support::fresh("timer_handler_runs_a_static_call_being_retargeted", || {
        // SAFETY: installs a plain handler for SIGALRM, with an empty mask (as timer users do).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_alarm as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            assert_eq!(libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut()), 0);
        }
        let stop = AtomicBool::new(false);
        let set = sigalrm_set();
        // The patching thread must not take the alarms: block SIGALRM while it is spawned.
        // SAFETY: changes this thread's mask only.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    CALL.update(plus_two).unwrap();
                    CALL.update(plus_one).unwrap();
                }
            });
            // SAFETY: as above.
            unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
            // A 20 µs interval timer, delivered to this (the only unblocked) thread.
            let every = libc::timeval {
                tv_sec: 0,
                tv_usec: 20,
            };
            let timer = libc::itimerval {
                it_interval: every,
                it_value: every,
            };
            // SAFETY: arms the process's real-time interval timer.
            assert_eq!(
                unsafe { libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut()) },
                0
            );
            let start = Instant::now();
            let mut calls = 0u64;
            while start.elapsed() < Duration::from_secs(2) {
                let r = CALL.call(10);
                assert!(r == 11 || r == 12, "{r}");
                calls += 1;
            }
            let off: libc::itimerval = unsafe { std::mem::zeroed() };
            // SAFETY: disarms the timer.
            unsafe { libc::setitimer(libc::ITIMER_REAL, &off, std::ptr::null_mut()) };
            stop.store(true, Ordering::Relaxed);
            eprintln!(
                "{calls} calls, {} in the alarm handler, {} traps emulated",
                IN_HANDLER.load(Ordering::Relaxed),
                textpoke::__private::trap_counts().0
            );
        });
        assert_eq!(BAD.load(Ordering::Relaxed), 0);
        assert!(IN_HANDLER.load(Ordering::Relaxed) > 1000, "the timer ran");
    });
}
