//! The demo's static calls: 4 calls retargeted by a fixed schedule among 8 targets, so that
//! every returned value says which target produced it. Two go through their trampolines (Rust
//! ABI); two are C-ABI calls with inline call sites, retargeted in place.

/// Number of static calls.
pub const CALLS: usize = 4;
/// Number of distinct targets.
pub const TARGETS: u64 = 8;

fn target<const I: u64>(x: u64) -> u64 {
    x * 16 + I
}

extern "C" fn c_target<const I: u64>(x: u64) -> u64 {
    x * 16 + I
}

/// What target `t` returns for `x`.
pub fn expected(x: u64, t: u64) -> u64 {
    x * 16 + t
}

const C_TARGET_FNS: [extern "C" fn(u64) -> u64; TARGETS as usize] = [
    c_target::<0>,
    c_target::<1>,
    c_target::<2>,
    c_target::<3>,
    c_target::<4>,
    c_target::<5>,
    c_target::<6>,
    c_target::<7>,
];

const TARGET_FNS: [fn(u64) -> u64; TARGETS as usize] = [
    target::<0>,
    target::<1>,
    target::<2>,
    target::<3>,
    target::<4>,
    target::<5>,
    target::<6>,
    target::<7>,
];

textpoke::static_call! {
    static CALL0: fn(u64) -> u64 = target::<0>;
    static CALL1: fn(u64) -> u64 = target::<1>;
    inline static CALL2: extern "C" fn(u64) -> u64 = c_target::<2>;
    inline static CALL3: extern "C" fn(u64) -> u64 = c_target::<3>;
}

/// The target of call `c` at version `v` (version 0 is the compiled-in one). Every update moves
/// to a different target.
pub fn scheduled(c: usize, v: u64) -> u64 {
    (c as u64 + v * 3) % TARGETS
}

/// Calls static call `c`.
pub fn call(c: usize, x: u64) -> u64 {
    match c {
        0 => CALL0.call(x),
        1 => CALL1.call(x),
        2 => CALL2.call(x),
        _ => CALL3.call(x),
    }
}

/// Adds "retarget call `c` to its version `v`" to `batch`.
pub fn update(batch: textpoke::Batch<'_>, c: usize, v: u64) -> textpoke::Batch<'_> {
    let t = scheduled(c, v) as usize;
    match c {
        0 => batch.update(&CALL0, TARGET_FNS[t]),
        1 => batch.update(&CALL1, TARGET_FNS[t]),
        2 => batch.update(&CALL2, C_TARGET_FNS[t]),
        _ => batch.update(&CALL3, C_TARGET_FNS[t]),
    }
}

/// Puts every call back on its version-0 target, so each run starts from a known schedule.
pub fn reset() -> textpoke::Result<()> {
    (0..CALLS)
        .fold(textpoke::Batch::new(), |b, c| update(b, c, 0))
        .commit()
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_always_changes_target_and_starts_at_the_compiled_one() {
        reset().unwrap();
        for c in 0..CALLS {
            assert_eq!(call(c, 1), expected(1, scheduled(c, 0)));
            for v in 0..32 {
                assert_ne!(scheduled(c, v), scheduled(c, v + 1));
            }
        }
    }
}
