//! Patchable functions: every shape the attribute takes, tracers with filters, several at
//! once, the recursion guard, exits on every path, the profiler, replacement, and one batch
//! for many functions. Each test runs in a fresh process (tracers are process-wide).

mod support;

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use textpoke::functions::{self, Entry, Exit};

#[textpoke::patchable]
pub fn add(a: u32, b: u32) -> u32 {
    a + b
}

pub fn add_v2(a: u32, b: u32) -> u32 {
    a * b
}

#[textpoke::patchable]
fn generic<T: Copy + Into<u64>>(x: T) -> u64 {
    x.into() + 1
}

fn generic_v2(x: u8) -> u64 {
    u64::from(x) + 100
}

#[textpoke::patchable]
unsafe fn raw_read(p: *const u32) -> u32 {
    // SAFETY: the caller passes a valid pointer.
    unsafe { *p }
}

#[textpoke::patchable]
extern "C" fn c_abi(x: i64) -> i64 {
    x - 1
}

#[textpoke::patchable]
fn pattern_args((a, b): (u32, u32), _: u8, mut c: u32) -> u32 {
    c += 1;
    a + b + c
}

#[textpoke::patchable]
fn takes_impl(x: impl Into<u64>) -> u64 {
    x.into()
}

#[derive(Debug)]
pub struct Counter {
    n: u32,
}

#[textpoke::patchable]
impl Counter {
    pub fn new() -> Self {
        Counter { n: 0 }
    }

    pub fn get(&self) -> u32 {
        self.n
    }

    pub fn bump(&mut self) -> u32 {
        self.n += 1;
        self.n
    }

    pub fn into_inner(self) -> u32 {
        self.n
    }
}

struct Lonely;

impl Lonely {
    #[textpoke::patchable]
    fn method(&self, x: u32) -> u32 {
        x + 7
    }
}

#[textpoke::patchable]
fn fails(fail: bool) -> Result<u32, String> {
    let v: u32 = if fail { Err("bad".to_string())? } else { 1 };
    Ok(v)
}

#[textpoke::patchable]
fn panics() {
    panic!("on purpose");
}

#[textpoke::patchable]
#[inline(always)]
fn inlined(x: u32) -> u32 {
    x ^ 0x5a
}

#[inline(never)]
fn inlined_caller_one(x: u32) -> u32 {
    inlined(x) + 1
}

#[inline(never)]
fn inlined_caller_two(x: u32) -> u32 {
    inlined(x) + 2
}

#[textpoke::patchable]
fn recursive(n: u32) -> u32 {
    if n == 0 { 0 } else { 1 + recursive(n - 1) }
}

/// Calls `add` from inside its own hook: the recursion guard must keep it untraced.
#[textpoke::patchable]
fn hook_helper() -> u32 {
    add(1, 1)
}

fn names(seen: &Mutex<Vec<String>>) -> Vec<String> {
    std::mem::take(&mut *seen.lock().unwrap())
}

#[test]
fn every_shape_behaves_and_is_listed() {
    support::fresh("every_shape_behaves_and_is_listed", || {
        // Run each once untraced (also instantiates the generics).
        assert_eq!(add(2, 3), 5);
        assert_eq!(generic(1u8), 2);
        assert_eq!(generic(1u32), 2);
        let v = 9;
        // SAFETY: a valid pointer.
        assert_eq!(unsafe { raw_read(&v) }, 9);
        assert_eq!(c_abi(3), 2);
        assert_eq!(pattern_args((1, 2), 0, 3), 7);
        assert_eq!(takes_impl(5u8), 5);
        let mut c = Counter::new();
        assert_eq!(c.bump(), 1);
        assert_eq!(c.get(), 1);
        assert_eq!(Lonely.method(1), 8);

        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let tracer = functions::trace("functions::*", move |f: &Entry| {
            s.lock().unwrap().push(f.name().to_string());
        })
        .unwrap();
        assert_eq!(add(2, 3), 5);
        assert_eq!(generic(1u8) + generic(1u32), 4);
        // SAFETY: a valid pointer.
        assert_eq!(unsafe { raw_read(&v) }, 9);
        assert_eq!(c_abi(3), 2);
        assert_eq!(pattern_args((1, 2), 0, 3), 7);
        assert_eq!(takes_impl(5u8), 5);
        let mut c = Counter::new();
        assert_eq!(c.bump(), 1);
        assert_eq!(c.get(), 1);
        assert_eq!(c.into_inner(), 1);
        assert_eq!(Lonely.method(1), 8);
        assert_eq!(
            names(&seen),
            [
                "functions::add",
                "functions::generic",
                "functions::generic",
                "functions::raw_read",
                "functions::c_abi",
                "functions::pattern_args",
                "functions::takes_impl",
                "functions::Counter::new",
                "functions::Counter::bump",
                "functions::Counter::get",
                "functions::Counter::into_inner",
                "functions::method",
            ]
        );
        let listed = functions::list("*").unwrap();
        let generic_info = listed
            .iter()
            .find(|f| f.name == "functions::generic")
            .unwrap();
        assert!(
            generic_info.sites >= 2,
            "one site per instantiation: {generic_info:?}"
        );
        assert!(listed.iter().all(|f| f.tracers == 1), "{listed:?}");
        assert_eq!(generic_info.file, file!());
        drop(tracer);
        assert!(functions::list("*").unwrap().iter().all(|f| f.tracers == 0));
        assert_eq!(add(2, 3), 5);
        assert!(names(&seen).is_empty(), "untraced again");
    });
}

#[test]
fn every_inlined_copy_has_its_own_site_and_is_traced() {
    support::fresh("every_inlined_copy_has_its_own_site_and_is_traced", || {
        static HOOKS: AtomicUsize = AtomicUsize::new(0);
        assert_eq!(
            inlined_caller_one(1) + inlined_caller_two(1),
            0x5b + 1 + 0x5b + 2
        );
        let info = &functions::list("functions::inlined").unwrap()[0];
        // Both callers' copies, and the out-of-line one the table names.
        assert!(info.sites >= 3, "{info:?}");
        let _t = functions::trace("functions::inlined", |_| {
            HOOKS.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(
            inlined_caller_one(1) + inlined_caller_two(1),
            0x5b + 1 + 0x5b + 2
        );
        assert_eq!(
            HOOKS.load(Ordering::Relaxed),
            2,
            "both inlined copies are traced"
        );
    });
}

#[test]
fn filters_overlap_and_each_tracer_sees_its_own() {
    support::fresh("filters_overlap_and_each_tracer_sees_its_own", || {
        static ALL: AtomicUsize = AtomicUsize::new(0);
        static ADDS: AtomicUsize = AtomicUsize::new(0);
        let all = functions::trace("*", |_| {
            ALL.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        let adds = functions::trace("functions::ad?", |f| {
            assert_eq!(f.name(), "functions::add");
            ADDS.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(adds.functions(), ["functions::add"]);
        add(1, 1);
        c_abi(1);
        assert_eq!(
            (ALL.load(Ordering::Relaxed), ADDS.load(Ordering::Relaxed)),
            (2, 1)
        );
        drop(all);
        add(1, 1);
        c_abi(1);
        assert_eq!(
            (ALL.load(Ordering::Relaxed), ADDS.load(Ordering::Relaxed)),
            (2, 2)
        );
        adds.disable().unwrap();
        add(1, 1);
        assert_eq!(ADDS.load(Ordering::Relaxed), 2);
    });
}

#[test]
fn a_hook_that_calls_a_traced_function_is_not_reentered() {
    support::fresh(
        "a_hook_that_calls_a_traced_function_is_not_reentered",
        || {
            static HOOKS: AtomicUsize = AtomicUsize::new(0);
            let _t = functions::trace("functions::*", |_| {
                HOOKS.fetch_add(1, Ordering::Relaxed);
                // Traced functions, called from the hook: they run, untraced.
                assert_eq!(hook_helper(), 2);
            })
            .unwrap();
            assert_eq!(add(2, 2), 4);
            assert_eq!(HOOKS.load(Ordering::Relaxed), 1, "one call, one hook");
            // Recursion outside hooks is traced at every level.
            assert_eq!(recursive(3), 3);
            assert_eq!(HOOKS.load(Ordering::Relaxed), 5);
        },
    );
}

#[test]
fn exits_are_seen_on_every_path() {
    support::fresh("exits_are_seen_on_every_path", || {
        let exits = std::sync::Arc::new(Mutex::new(Vec::new()));
        // No `[...]` classes in the glob syntax: that filter matched nothing.
        let none = functions::trace_calls("functions::[fp]*", |_| {}, |_| {}).unwrap();
        assert!(none.functions().is_empty());
        drop(none);
        let e = exits.clone();
        let _t = functions::trace_calls(
            "functions::*a*s",
            |_| {},
            move |x: &Exit| e.lock().unwrap().push((x.name(), x.unwinding())),
        )
        .unwrap();
        assert_eq!(fails(false), Ok(1));
        assert_eq!(fails(true), Err("bad".to_string()));
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        assert!(std::panic::catch_unwind(panics).is_err());
        std::panic::set_hook(hook);
        assert_eq!(
            *exits.lock().unwrap(),
            [
                ("functions::fails", false),
                ("functions::fails", false),
                ("functions::panics", true),
            ]
        );
    });
}

#[test]
fn the_profiler_counts_calls_and_time() {
    support::fresh("the_profiler_counts_calls_and_time", || {
        let profile = functions::profile("functions::add").unwrap();
        for i in 0..10 {
            add(i, i);
        }
        let report = profile.report();
        assert_eq!(report.len(), 1);
        assert_eq!(report[0].name, "functions::add");
        assert_eq!(report[0].calls, 10);
        assert!(report[0].max <= report[0].total);
        profile.tracer().disable().unwrap();
        add(1, 1);
    });
}

#[test]
fn replacement_is_type_checked_combines_with_tracing_and_reverts() {
    support::fresh(
        "replacement_is_type_checked_combines_with_tracing_and_reverts",
        || {
            let patch = functions::replace!(add, add_v2).unwrap();
            assert_eq!(patch.name(), "functions::add");
            assert_eq!(add(3, 4), 12);
            assert!(functions::list("functions::add").unwrap()[0].replaced);
            static TRACED: AtomicUsize = AtomicUsize::new(0);
            let tracer = functions::trace("functions::add", |_| {
                TRACED.fetch_add(1, Ordering::Relaxed);
            })
            .unwrap();
            assert_eq!(add(3, 4), 12, "traced and still replaced");
            assert_eq!(TRACED.load(Ordering::Relaxed), 1);
            patch.disable().unwrap();
            assert_eq!(add(3, 4), 7, "traced, no longer replaced");
            assert_eq!(TRACED.load(Ordering::Relaxed), 2);
            drop(tracer);

            // One instantiation of a generic function, not the others.
            // Dropped at once: a replacement stays installed until reverted.
            let _ = functions::replace!(generic::<u8>, generic_v2).unwrap();
            assert_eq!((generic(1u8), generic(1u32)), (101, 2));
            assert_eq!(functions::revert("functions::gen*").unwrap(), 1);
            assert_eq!((generic(1u8), generic(1u32)), (2, 2));

            // Methods, and a function of another object or not patchable, are refused by name.
            fn not_patchable(a: u32, b: u32) -> u32 {
                a - b
            }
            let err = functions::replace!(not_patchable, add_v2).err().unwrap();
            assert!(
                err.to_string().contains("not a patchable function"),
                "{err}"
            );
            let m = functions::replace!(Counter::get, |_: &Counter| 42).unwrap();
            assert_eq!(Counter::new().get(), 42);
            m.disable().unwrap();
            assert_eq!(Counter::new().get(), 0);
        },
    );
}
