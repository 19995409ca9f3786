//! Patchable functions while threads call them: replacement under load, tracers started and
//! stopped under load, a traced function in a signal handler, and one batch for 1,000
//! functions. Each test runs in a fresh process.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use textpoke::functions;

#[textpoke::patchable]
#[inline(never)]
fn value(x: u64) -> u64 {
    x + 1
}

#[inline(never)]
fn value_v2(x: u64) -> u64 {
    x + 1_000_000
}

/// Bumped at every change of phase; `PHASE % 4` is 0 (original), 1 (replacing), 2 (replaced),
/// 3 (reverting).
static PHASE: AtomicUsize = AtomicUsize::new(0);

#[test]
fn replacement_under_load_gives_the_old_or_the_new_result_never_other() {
    support::fresh(
        "replacement_under_load_gives_the_old_or_the_new_result_never_other",
        || {
            textpoke::__private::set_trap_delay(1_000);
            let stop = AtomicBool::new(false);
            let [settled, wrong, calls] = [const { AtomicUsize::new(0) }; 3];
            let mut changes = 0;
            std::thread::scope(|s| {
                for t in 0..2u64 {
                    let (stop, settled, wrong, calls) = (&stop, &settled, &wrong, &calls);
                    s.spawn(move || {
                        let mut x = t;
                        while !stop.load(Ordering::Relaxed) {
                            x = x.wrapping_add(2);
                            let before = PHASE.load(Ordering::SeqCst);
                            let got = value(x);
                            let after = PHASE.load(Ordering::SeqCst);
                            calls.fetch_add(1, Ordering::Relaxed);
                            let ok = match (before == after, before % 4) {
                                (true, 0) => got == x + 1,
                                (true, 2) => got == x + 1_000_000,
                                _ => got == x + 1 || got == x + 1_000_000,
                            };
                            if before == after && before.is_multiple_of(2) {
                                settled.fetch_add(1, Ordering::Relaxed);
                            }
                            if !ok {
                                wrong.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
                let replacement = functions::replacement!(value, value_v2).unwrap();
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(2) {
                    PHASE.fetch_add(1, Ordering::SeqCst);
                    replacement.enable().unwrap();
                    PHASE.fetch_add(1, Ordering::SeqCst);
                    std::thread::yield_now();
                    PHASE.fetch_add(1, Ordering::SeqCst);
                    replacement.disable().unwrap();
                    PHASE.fetch_add(1, Ordering::SeqCst);
                    std::thread::yield_now();
                    changes += 2;
                }
                stop.store(true, Ordering::Relaxed);
            });
            let (emulated, rewound) = textpoke::__private::trap_counts();
            eprintln!(
                "{changes} changes, {} calls ({} settled), {emulated} traps emulated, {rewound} rewound",
                calls.load(Ordering::Relaxed),
                settled.load(Ordering::Relaxed)
            );
            assert_eq!(
                wrong.load(Ordering::Relaxed),
                0,
                "a call gave neither result"
            );
            assert!(settled.load(Ordering::Relaxed) > 0);
        },
    );
}

static HOOKED: AtomicUsize = AtomicUsize::new(0);
/// Odd from the start of each `enable` to the return of the next `disable`, even otherwise.
static EPOCH: AtomicUsize = AtomicUsize::new(0);
static LATE_HOOKS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// `EPOCH` when this thread's current call began.
    static BEGAN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

#[test]
fn no_hook_runs_for_a_call_that_began_after_its_tracer_stopped() {
    support::fresh(
        "no_hook_runs_for_a_call_that_began_after_its_tracer_stopped",
        || {
            let tracer = functions::Tracer::new("functions_live::value", |_| {
                HOOKED.fetch_add(1, Ordering::Relaxed);
                // Began while stopped, and not started again since: the hook is late.
                let began = BEGAN.get();
                if began.is_multiple_of(2) && EPOCH.load(Ordering::SeqCst) == began {
                    LATE_HOOKS.fetch_add(1, Ordering::Relaxed);
                }
            })
            .unwrap();
            let stop = AtomicBool::new(false);
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        let mut x = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            BEGAN.set(EPOCH.load(Ordering::SeqCst));
                            x = value(x) & 0xffff;
                        }
                    });
                }
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(2) {
                    EPOCH.fetch_add(1, Ordering::SeqCst);
                    tracer.enable().unwrap();
                    std::thread::yield_now();
                    tracer.disable().unwrap();
                    EPOCH.fetch_add(1, Ordering::SeqCst);
                    std::thread::yield_now();
                }
                stop.store(true, Ordering::Relaxed);
            });
            assert!(
                HOOKED.load(Ordering::Relaxed) > 0,
                "hooks ran while started"
            );
            assert_eq!(LATE_HOOKS.load(Ordering::Relaxed), 0);
        },
    );
}

static IN_SIGNAL: AtomicUsize = AtomicUsize::new(0);

#[textpoke::patchable]
#[inline(never)]
fn called_from_a_signal_handler() -> u64 {
    7
}

extern "C" fn on_sigusr1(_: libc::c_int) {
    if called_from_a_signal_handler() == 7 {
        IN_SIGNAL.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn a_traced_function_runs_in_a_signal_handler() {
    support::fresh("a_traced_function_runs_in_a_signal_handler", || {
        static HOOKS: AtomicUsize = AtomicUsize::new(0);
        // SAFETY: installs a handler that only calls an async-signal-safe function (the traced
        // dispatch takes no lock and allocates nothing) and counts.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigusr1 as *const () as usize;
            assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
        }
        let _tracer = functions::trace("*::called_from_a_signal_handler", |_| {
            HOOKS.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        // Signals land in the middle of the main thread's own traced calls too.
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let stop = &stop;
            let target = rustix::thread::gettid();
            s.spawn(move || {
                for _ in 0..2_000 {
                    // SAFETY: sends a signal to a thread of this process that handles it.
                    unsafe {
                        libc::syscall(
                            libc::SYS_tgkill,
                            libc::getpid(),
                            target.as_raw_nonzero().get(),
                            libc::SIGUSR1,
                        )
                    };
                    std::hint::spin_loop();
                }
                stop.store(true, Ordering::Relaxed);
            });
            while !stop.load(Ordering::Relaxed) {
                std::hint::black_box(called_from_a_signal_handler());
            }
        });
        let (signals, hooks) = (
            IN_SIGNAL.load(Ordering::Relaxed),
            HOOKS.load(Ordering::Relaxed),
        );
        eprintln!("{signals} calls in handlers, {hooks} hooks");
        assert!(signals > 0, "the handler ran");
        assert!(
            hooks >= signals,
            "every call in a handler ran the hook: {hooks} < {signals}"
        );
    });
}

/// 1,000 patchable functions, `many::aX::bY::cZ::f`, each with its own constant.
macro_rules! many {
    ($($a:ident)*) => { $(pub mod $a { many!(@b b0 b1 b2 b3 b4 b5 b6 b7 b8 b9); })* };
    (@b $($b:ident)*) => { $(pub mod $b { many!(@c c0 c1 c2 c3 c4 c5 c6 c7 c8 c9); })* };
    (@c $($c:ident)*) => {
        $(pub mod $c {
            #[textpoke::patchable]
            #[inline(never)]
            pub fn f(x: u64) -> u64 {
                x ^ (::core::module_path!().as_ptr() as u64)
            }
        })*
    };
}

mod many {
    many!(a0 a1 a2 a3 a4 a5 a6 a7 a8 a9);

    /// Calls every one of them once.
    pub fn call_all(x: u64) -> u64 {
        macro_rules! calls {
            ($($a:ident)*) => { 0 $(^ calls!(@b $a b0 b1 b2 b3 b4 b5 b6 b7 b8 b9))* };
            (@b $a:ident $($b:ident)*) => { 0 $(^ calls!(@c $a $b c0 c1 c2 c3 c4 c5 c6 c7 c8 c9))* };
            (@c $a:ident $b:ident $($c:ident)*) => { 0 $(^ $a::$b::$c::f(x))* };
        }
        calls!(a0 a1 a2 a3 a4 a5 a6 a7 a8 a9)
    }
}

#[test]
fn one_batch_traces_a_thousand_functions() {
    support::fresh("one_batch_traces_a_thousand_functions", || {
        static HOOKS: AtomicUsize = AtomicUsize::new(0);
        let tracer = functions::Tracer::new("functions_live::many::*::f", |_| {
            HOOKS.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(tracer.functions().len(), 1000);
        let expected = many::call_all(5);
        let stats = tracer.enable().unwrap();
        assert_eq!(stats.sites, 1000, "{stats:?}");
        assert_eq!(stats.syncs, 2, "one batch, not one per function: {stats:?}");
        assert_eq!(many::call_all(5), expected);
        assert_eq!(HOOKS.load(Ordering::Relaxed), 1000);
        let stats = tracer.disable().unwrap();
        assert_eq!((stats.sites, stats.syncs), (1000, 2));
        assert_eq!(many::call_all(5), expected);
        assert_eq!(HOOKS.load(Ordering::Relaxed), 1000);
    });
}

#[textpoke::patchable]
#[inline(never)]
fn slot_f(x: u64) -> u64 {
    x + 1
}

#[textpoke::patchable]
#[inline(never)]
fn slot_g(x: u64) -> u64 {
    x + 2
}

/// A call that read its function's tracers, then waited (in a slow hook, or preempted) while
/// one of them was dropped and its slot given to a new tracer, must not run the new tracer's
/// hooks unless that one is started and traces the function.
#[test]
fn a_reused_tracer_slot_never_runs_hooks_for_calls_it_does_not_trace() {
    support::fresh(
        "a_reused_tracer_slot_never_runs_hooks_for_calls_it_does_not_trace",
        || {
            for started_on_other in [true, false] {
                static BLOCK: AtomicBool = AtomicBool::new(true);
                static INSIDE: AtomicBool = AtomicBool::new(false);
                static STRAY: AtomicUsize = AtomicUsize::new(0);
                BLOCK.store(true, Ordering::SeqCst);
                INSIDE.store(false, Ordering::SeqCst);
                // The first slot: a hook on slot_f that blocks until released.
                let slow = functions::trace("*::slot_f", |_| {
                    INSIDE.store(true, Ordering::SeqCst);
                    while BLOCK.load(Ordering::SeqCst) {
                        std::hint::spin_loop();
                    }
                })
                .unwrap();
                let a = functions::trace("*::slot_f", |_| {}).unwrap();
                let worker = std::thread::spawn(|| slot_f(1));
                while !INSIDE.load(Ordering::SeqCst) {
                    std::hint::spin_loop();
                }
                // The worker has read slot_f's tracers (both) and is in the first one's hook.
                drop(a);
                let b = if started_on_other {
                    functions::trace("*::slot_g", |_| {
                        STRAY.fetch_add(1, Ordering::SeqCst);
                    })
                    .unwrap()
                } else {
                    functions::Tracer::new("*::slot_f", |_| {
                        STRAY.fetch_add(1, Ordering::SeqCst);
                    })
                    .unwrap()
                };
                BLOCK.store(false, Ordering::SeqCst);
                assert_eq!(worker.join().unwrap(), 2);
                assert_eq!(
                    STRAY.load(Ordering::SeqCst),
                    0,
                    "a hook of a tracer that does not trace this call ran \
                     (started on another function: {started_on_other})"
                );
                drop((slow, b));
                assert_eq!(slot_g(1), 3);
            }
        },
    );
}
