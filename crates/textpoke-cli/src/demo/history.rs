//! What a call may legally return, given the key's toggle history around it.
//!
//! Each key has a sequence number: even while the key is stable, odd while a change is in
//! flight. The toggler only ever flips a key, so the state at even number `2m` is the initial
//! state flipped `m` times. A call that read the same even number before and after itself ran
//! entirely while the key was stable, and must have taken that state's path. Any other call
//! overlapped a transition, and either path is legal.

use std::sync::atomic::{AtomicU64, Ordering};

/// One key's history.
pub struct History {
    seq: AtomicU64,
    initial: bool,
}

impl History {
    /// A stable key in state `initial`.
    pub fn new(initial: bool) -> Self {
        History {
            seq: AtomicU64::new(0),
            initial,
        }
    }

    /// Read before and after each call.
    pub fn read(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Called just before a change to the key starts.
    pub fn begin_change(&self) {
        self.seq.fetch_add(1, Ordering::AcqRel);
    }

    /// Called just after the change is complete.
    pub fn end_change(&self) {
        self.seq.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether a call that read `before`, returned `enabled`, then read `after` is consistent.
    pub fn consistent(&self, before: u64, after: u64, enabled: bool) -> bool {
        if before != after || before % 2 == 1 {
            return true;
        }
        enabled == self.state_at(before)
    }

    /// The key's state at even sequence number `seq`.
    pub fn state_at(&self, seq: u64) -> bool {
        self.initial != ((seq / 2) % 2 == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_calls_must_match_and_overlapping_calls_may_differ() {
        let h = History::new(false);
        assert!(h.consistent(0, 0, false));
        assert!(
            !h.consistent(0, 0, true),
            "a stable disabled key cannot take the enabled path"
        );
        h.begin_change();
        let mid = h.read();
        assert!(h.consistent(mid, mid, true) && h.consistent(mid, mid, false));
        assert!(h.consistent(0, mid, true));
        h.end_change();
        let now = h.read();
        assert!(h.consistent(now, now, true));
        assert!(
            !h.consistent(now, now, false),
            "after one flip the key is enabled"
        );
    }

    #[test]
    fn initially_enabled_keys() {
        let h = History::new(true);
        assert!(h.state_at(0) && !h.state_at(2) && h.state_at(4));
    }
}
