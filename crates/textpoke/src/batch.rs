//! Transactions over many keys and static calls.

use std::sync::{Mutex, MutexGuard};

use crate::Result;
use crate::calls::{CallCore, CallPlan, NoopCall, StaticCall};
use crate::detours::{Detour, DetourCore, DetourPlan, Function};
use crate::engine::{self, PatchStats, Poke};
use crate::functions::{FnChange, FnPlan, Replacement, Tracer};
use crate::immediates::{ImmCore, ImmPlan, ImmValue, Immediate};
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

/// Several key changes, static-call updates, immediate values and function tracers or
/// replacements applied as one batch: one validation pass, two core syncs, and either every
/// site changes or none does.
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
    imms: Vec<(&'a ImmCore, u64)>,
    detours: Vec<(&'a DetourCore, bool)>,
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

    /// Sets a key to `on` (`bool`), or an [`Immediate`] to a value of its type.
    pub fn set<S: Settable>(self, item: &'a S, value: S::Value) -> Self {
        item.__set(self, value)
    }

    /// Sets the key whose state is `key` (a change by name).
    pub(crate) fn set_key(mut self, key: &'a KeyCore, on: bool) -> Self {
        self.changes.push((key, on));
        self
    }

    /// Sets the immediate whose state is `imm` to `bits` (a change by name).
    pub(crate) fn set_imm(mut self, imm: &'a ImmCore, bits: u64) -> Self {
        self.imms.push((imm, bits));
        self
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

    /// Turns a [`Detour`] on in this batch. Threads already inside the instructions it
    /// overwrites are moved out before they change.
    pub fn enable_detour<F: Function>(mut self, detour: &'a Detour<F>) -> Self {
        self.detours.push((detour.core(), true));
        self
    }

    /// Turns a [`Detour`] off in this batch.
    pub fn disable_detour<F: Function>(mut self, detour: &'a Detour<F>) -> Self {
        self.detours.push((detour.core(), false));
        self
    }

    /// Applies every change as one batch: every site of every key and immediate, every
    /// trampoline and every detour, or none of them. A key, call, immediate or detour named
    /// more than once gets its last change.
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
        let imms = ImmPlan::new(&self.imms);
        let mut detours = DetourPlan::default();
        let result = keys
            .pokes(lock, &mut pokes)
            .and_then(|()| imms.pokes(lock, &mut pokes))
            .and_then(|()| CallPlan::new(lock, &self.calls, &mut pokes))
            .and_then(|calls| {
                detours.add(&self.detours, &mut pokes);
                engine::patch_settling(lock, &mut pokes, detours.settle())
                    .map(|stats| (calls, stats))
            });
        match result {
            Ok((calls, stats)) => {
                keys.commit();
                imms.commit(lock);
                calls.commit(held, released);
                DetourPlan::commit(&self.detours);
                Ok(stats)
            }
            Err(e) => {
                keys.abort();
                Err(e.name_items(|addr| {
                    crate::keys::item_at(lock, addr)
                        .or_else(|| crate::calls::item_at(lock, addr))
                        .or_else(|| crate::immediates::item_at(lock, addr))
                }))
            }
        }
    }
}

mod sealed {
    pub trait Sealed {}
}

/// What [`Batch::set`] sets: a [`StaticKey`] (to a `bool`) or an [`Immediate`] (to a value of
/// its type). Sealed.
pub trait Settable: sealed::Sealed {
    /// The type of the value it is set to.
    type Value;
    #[doc(hidden)]
    fn __set<'a>(&'a self, batch: Batch<'a>, value: Self::Value) -> Batch<'a>;
}

impl<const I: bool> sealed::Sealed for StaticKey<I> {}
impl<const I: bool> Settable for StaticKey<I> {
    type Value = bool;
    fn __set<'a>(&'a self, batch: Batch<'a>, on: bool) -> Batch<'a> {
        if on {
            batch.enable(self)
        } else {
            batch.disable(self)
        }
    }
}

impl<T: ImmValue> sealed::Sealed for Immediate<T> {}
impl<T: ImmValue> Settable for Immediate<T> {
    type Value = T;
    fn __set<'a>(&'a self, mut batch: Batch<'a>, value: T) -> Batch<'a> {
        batch.imms.push((self.core(), Immediate::bits(value)));
        batch
    }
}
