//! Transactions over many keys.

use crate::Result;
use crate::engine::PatchStats;
use crate::key::{KeyCore, StaticKey, set_keys};

/// Several key changes applied as one batch: one validation pass, three core syncs, and either
/// every site changes or none does.
///
/// ```
/// use textpoke::{Batch, StaticKey};
///
/// static A: StaticKey = StaticKey::new();
/// static B: StaticKey<true> = StaticKey::new();
///
/// Batch::new().enable(&A).disable(&B).commit()?;
/// assert!(A.is_enabled() && !B.is_enabled());
/// # Ok::<(), textpoke::Error>(())
/// ```
#[derive(Default)]
#[must_use = "a batch does nothing until committed"]
pub struct Batch<'a> {
    changes: Vec<(&'a KeyCore, bool)>,
}

impl<'a> Batch<'a> {
    /// An empty batch.
    pub fn new() -> Self {
        Batch::default()
    }

    /// Enables `key` (count 0 → 1; an enabled key keeps its count).
    pub fn enable<const I: bool>(mut self, key: &'a StaticKey<I>) -> Self {
        self.changes.push((key.core(), true));
        self
    }

    /// Disables `key` (count → 0).
    pub fn disable<const I: bool>(mut self, key: &'a StaticKey<I>) -> Self {
        self.changes.push((key.core(), false));
        self
    }

    /// Sets `key` to `on`.
    pub fn set<const I: bool>(self, key: &'a StaticKey<I>, on: bool) -> Self {
        if on {
            self.enable(key)
        } else {
            self.disable(key)
        }
    }

    /// Applies every change. If a key appears more than once, its last change wins.
    pub fn commit(self) -> Result<PatchStats> {
        set_keys(&self.changes)
    }
}
