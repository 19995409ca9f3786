//! What a call may legally return, given the history of the key or static call behind it.
//!
//! Each key or static call has a sequence number: even while it is stable, odd while a change
//! is in flight. Version `m` is what was installed by the `m`-th change (version 0 is the
//! initial state). A call that read `before` and then `after` overlapped exactly the versions
//! `before / 2 ..= ceil(after / 2)`: a call that read the same even number twice ran entirely
//! under one version, and its result must come from it. The demo only ever changes things by a
//! fixed schedule, so the version number alone says what was installed.

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};

/// One key's or static call's history.
#[derive(Default)]
pub struct History {
    seq: AtomicU64,
}

impl History {
    /// Read before and after each call.
    pub fn read(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Called just before a change starts.
    pub fn begin_change(&self) {
        self.seq.fetch_add(1, Ordering::AcqRel);
    }

    /// Called just after the change is complete.
    pub fn end_change(&self) {
        self.seq.fetch_add(1, Ordering::AcqRel);
    }

    /// The versions a call that read `before` and then `after` may have seen.
    pub fn versions(before: u64, after: u64) -> RangeInclusive<u64> {
        before / 2..=after.div_ceil(2)
    }

    /// The number of the next version (the one the change in flight, or the next, installs).
    pub fn next_version(&self) -> u64 {
        self.read() / 2 + 1
    }
}

/// Whether a key call that returned `enabled` is consistent: the key was flipped at every
/// change, starting from `initial`.
pub fn key_consistent(initial: bool, before: u64, after: u64, enabled: bool) -> bool {
    History::versions(before, after).any(|v| enabled == (initial != (v % 2 == 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_calls_must_match_and_overlapping_calls_may_differ() {
        let h = History::default();
        assert!(key_consistent(false, 0, 0, false));
        assert!(
            !key_consistent(false, 0, 0, true),
            "a stable disabled key cannot take the enabled path"
        );
        h.begin_change();
        let mid = h.read();
        assert!(key_consistent(false, mid, mid, true) && key_consistent(false, mid, mid, false));
        assert!(key_consistent(false, 0, mid, true));
        h.end_change();
        let now = h.read();
        assert!(key_consistent(false, now, now, true));
        assert!(
            !key_consistent(false, now, now, false),
            "after one flip the key is enabled"
        );
        assert!(key_consistent(true, 0, 0, true) && !key_consistent(true, 4, 4, false));
    }

    #[test]
    fn versions_seen_by_a_call() {
        assert_eq!(History::versions(4, 4), 2..=2);
        assert_eq!(History::versions(4, 5), 2..=3);
        assert_eq!(History::versions(5, 5), 2..=3);
        assert_eq!(History::versions(4, 8), 2..=4);
    }
}
