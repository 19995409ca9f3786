//! Transactions over many keys and static calls.

use std::sync::{Mutex, MutexGuard};

use crate::Result;
use crate::calls::{CallCore, CallPlan, NoopCall, StaticCall};
use crate::engine::{self, PatchStats, Poke};
use crate::functions::{FnChange, FnPlan, Replacement, Tracer};
use crate::keys::{KeyCore, KeyPlan, StaticKey};

/// Pokes of the batch being built, reused across batches (only touched under the patch lock):
/// a fresh vector per batch would fault in fresh pages for large batches.
pub(crate) fn pokes_scratch() -> MutexGuard<'static, Vec<Poke>> {
    POKES.lock().unwrap_or_else(|e| e.into_inner())
}

static POKES: Mutex<Vec<Poke>> = Mutex::new(Vec::new());

/// Frees the scratch vector (this copy's object is being unloaded).
pub(crate) fn release() {
    drop(std::mem::take(&mut *pokes_scratch()));
}

/// Several key changes, static-call updates and function tracers or replacements applied as
/// one batch: one validation pass, two
/// core syncs, and either every site changes or none does.
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
    calls: Vec<(&'a CallCore, Option<usize>)>,
    functions: Vec<FnChange<'a>>,
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

    /// Points static call `call` at `f`, which must have the call's declared signature.
    pub fn update<C: StaticCall>(mut self, call: &'a C, f: C::Fn) -> Self {
        self.calls.push((call.__core(), Some(C::__addr(f))));
        self
    }

    /// Makes static call `call` a no-op.
    pub fn update_noop<C: NoopCall>(mut self, call: &'a C) -> Self {
        self.calls.push((call.__core(), None));
        self
    }

    /// Starts `tracer` (its hooks run on every function it matched).
    pub fn start_tracer(mut self, tracer: &'a Tracer) -> Self {
        self.functions.push(FnChange::Tracer(tracer, true));
        self
    }

    /// Stops `tracer`.
    pub fn stop_tracer(mut self, tracer: &'a Tracer) -> Self {
        self.functions.push(FnChange::Tracer(tracer, false));
        self
    }

    /// Installs `replacement`: later calls of its function run the replacement.
    pub fn replace(mut self, replacement: &'a Replacement) -> Self {
        self.functions
            .push(FnChange::Replacement(replacement, true));
        self
    }

    /// Removes `replacement`, if it is the one installed on its function.
    pub fn revert(mut self, replacement: &'a Replacement) -> Self {
        self.functions
            .push(FnChange::Replacement(replacement, false));
        self
    }

    /// Applies every change as one batch: every site of every key and every trampoline, or
    /// none of them. A key or call named more than once gets its last change.
    pub fn commit(mut self) -> Result<PatchStats> {
        // Functions' states change first (a site that jumps finds them); their keys follow in
        // this batch.
        let mut fn_keys = Vec::new();
        let functions = std::mem::take(&mut self.functions);
        let plan = (!functions.is_empty()).then(|| FnPlan::new(&functions, &mut fn_keys));
        let mut batch = self;
        for (key, on) in fn_keys {
            batch = batch.set(key, on);
        }
        // References on targets' objects are taken and dropped outside the patch lock: the
        // loader's lock is taken inside it by a `dlclose` that waits for a batch.
        let result = crate::calls::hold_targets(&batch.calls).and_then(|mut held| {
            let mut released = Vec::new();
            let lock = crate::engine::lock()?;
            let result = batch.commit_held(&lock, &mut held, &mut released);
            drop(lock);
            drop(released);
            drop(held);
            result
        });
        if let (Err(_), Some(plan)) = (&result, plan) {
            plan.abort();
        }
        result
    }

    /// `commit`, for a caller that already holds the patch lock, and whose call targets lie in
    /// the calls' own objects.
    pub(crate) fn commit_locked(self, lock: &crate::engine::PatchGuard) -> Result<PatchStats> {
        let mut released = Vec::new();
        let result = self.commit_held(lock, &mut Vec::new(), &mut released);
        debug_assert!(released.is_empty());
        result
    }

    fn commit_held(
        self,
        lock: &crate::engine::PatchGuard,
        held: &mut crate::calls::Held<'a>,
        released: &mut Vec<crate::os::ObjectRef>,
    ) -> Result<PatchStats> {
        let mut pokes = pokes_scratch();
        pokes.clear();
        let keys = KeyPlan::new(&self.changes);
        let result = keys
            .pokes(lock, &mut pokes)
            .and_then(|()| CallPlan::new(lock, &self.calls, &mut pokes))
            .and_then(|calls| engine::patch(lock, &mut pokes).map(|stats| (calls, stats)));
        match result {
            Ok((calls, stats)) => {
                keys.commit();
                calls.commit(held, released);
                Ok(stats)
            }
            Err(e) => {
                keys.abort();
                Err(e.name_items(|addr| {
                    crate::keys::item_at(lock, addr).or_else(|| crate::calls::item_at(lock, addr))
                }))
            }
        }
    }
}
