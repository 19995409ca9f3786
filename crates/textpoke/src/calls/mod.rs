//! Static calls: direct calls whose target can be changed while threads are calling them.
//!
//! Each static call has a trampoline: 24 bytes of text whose first instruction is a patchable
//! `jmp` to the current target. Callers call the trampoline directly, so the compiler is free to
//! emit `call`, tail `jmp` or conditional tail `jcc` to it: none of those sites is ever patched,
//! only the trampoline, with the same breakpoint protocol as static keys.

pub(crate) mod table;

use std::sync::atomic::{AtomicPtr, AtomicU8, AtomicUsize, Ordering};

use crate::arch::{CALL_LEN, Insn, TRAMPOLINE_PATCH_LEN, TrampolineForm, call_code};
use crate::engine::PatchGuard;
use crate::engine::{Code, Poke};
use crate::os::{ObjectRef, TextMap};
use crate::{Error, Item, Location, Result};
use table::{CallSite, call_index};

const CALL_MAGIC: u32 = u32::from_le_bytes(*b"tpc2");
/// `CallCore::target` while the trampoline still holds its compiled-in target.
const INITIAL: usize = 0;
/// `CallCore::target` while the call is a no-op.
const NOOP: usize = 1;
/// `CallCore::slot` while the trampoline does not use a far slot.
const NO_SLOT: u8 = u8::MAX;

/// The state of one static call. Part of the `static_call!` expansion; not for direct use.
#[doc(hidden)]
#[repr(C, align(8))]
pub struct CallCore {
    target: AtomicUsize,
    magic: u32,
    slot: AtomicU8,
    /// A reference on the object the target lies in, when that is another shared object: it
    /// stays loaded while the call points into it (see [`hold_targets`]).
    held: AtomicPtr<libc::c_void>,
    /// The call's Rust path.
    name: &'static str,
    /// Where it was declared (its `static_call!`).
    declared: &'static std::panic::Location<'static>,
}

impl CallCore {
    /// A call named `name` that still has its compiled-in target; where it is made is
    /// recorded as where the call was declared.
    #[track_caller]
    pub const fn new(name: &'static str) -> Self {
        CallCore {
            target: AtomicUsize::new(INITIAL),
            magic: CALL_MAGIC,
            slot: AtomicU8::new(NO_SLOT),
            held: AtomicPtr::new(std::ptr::null_mut()),
            name,
            declared: std::panic::Location::caller(),
        }
    }

    /// The call, for messages.
    pub(crate) fn item(&self) -> Item {
        Item::new("static call", self.addr(), self.declared, Some(self.name))
    }

    /// Offset and value of the signature table validation looks for.
    pub(crate) const SIGNATURE: (usize, u32) = (std::mem::offset_of!(CallCore, magic), CALL_MAGIC);

    fn addr(&self) -> usize {
        self as *const Self as usize
    }

    /// Whether the call is currently a no-op.
    pub fn is_noop(&self) -> bool {
        self.target.load(Ordering::Acquire) == NOOP
    }

    /// Whether the call has been retargeted to a function other than `initial`, its
    /// compiled-in target.
    pub fn bound_away_from(&self, initial: usize) -> bool {
        !matches!(self.target.load(Ordering::Acquire), t if t == INITIAL || t == NOOP || t == initial)
    }

    /// The trampoline's current form.
    fn form(&self, site: &CallSite) -> TrampolineForm {
        match self.target.load(Ordering::Acquire) {
            INITIAL => TrampolineForm::Near(site.initial),
            NOOP => TrampolineForm::Ret,
            target => match self.slot.load(Ordering::Acquire) {
                NO_SLOT => TrampolineForm::Near(target),
                slot => TrampolineForm::Far { target, slot },
            },
        }
    }

    fn store(&self, form: TrampolineForm) {
        let (target, slot) = match form {
            TrampolineForm::Ret => (NOOP, NO_SLOT),
            TrampolineForm::Near(t) => (t, NO_SLOT),
            TrampolineForm::Far { target, slot } => (target, slot),
        };
        self.slot.store(slot, Ordering::Release);
        self.target.store(target, Ordering::Release);
    }
}

/// A static call declared with [`static_call!`](crate::static_call). Implemented by the macro;
/// [`Batch::update`](crate::Batch::update) takes any of them.
pub trait StaticCall: Sync + 'static {
    /// The declared function-pointer type: `update` accepts exactly this signature.
    type Fn: Copy;
    #[doc(hidden)]
    fn __core(&self) -> &CallCore;
    #[doc(hidden)]
    fn __addr(f: Self::Fn) -> usize;
}

/// A static call whose function returns `()`, which may therefore become a no-op.
pub trait NoopCall: StaticCall {}

/// A value passed in one integer register of the C ABI, for inline call sites.
///
/// # Safety
///
/// `into_reg` must produce what the C ABI puts in a register for this type (the low bits
/// matter; the rest may be anything).
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be passed to an `inline` static call",
    label = "not an integer-class argument",
    note = "an `inline` static call passes each argument in one integer register of the C ABI: \
            integers, `bool`, raw pointers and references; declare the call without `inline` \
            to pass other types"
)]
pub unsafe trait CArg {
    /// The register's value.
    fn into_reg(self) -> u64;
}

/// A value returned in `rax` by the C ABI, for inline call sites.
///
/// # Safety
///
/// `from_reg` must read the value the C ABI returns in `rax` for this type.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be returned from an `inline` static call",
    label = "not an integer-class result",
    note = "an `inline` static call returns in `rax`: integers, `bool`, raw pointers or `()`; \
            declare the call without `inline` to return other types"
)]
pub unsafe trait CRet {
    /// The value, from `rax`.
    fn from_reg(rax: u64) -> Self;
}

macro_rules! c_integers {
    ($($t:ty),*) => {$(
        // SAFETY: integers travel in the low bits of one register.
        unsafe impl CArg for $t {
            fn into_reg(self) -> u64 {
                self as u64
            }
        }
        // SAFETY: integers are returned in the low bits of `rax`.
        unsafe impl CRet for $t {
            fn from_reg(rax: u64) -> Self {
                rax as $t
            }
        }
    )*};
}
c_integers!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);

// SAFETY: `bool` travels as 0 or 1 in the low byte.
unsafe impl CArg for bool {
    fn into_reg(self) -> u64 {
        self as u64
    }
}
// SAFETY: `bool` is returned as 0 or 1 in `al`.
unsafe impl CRet for bool {
    fn from_reg(rax: u64) -> Self {
        rax as u8 != 0
    }
}
// SAFETY: nothing is returned.
unsafe impl CRet for () {
    fn from_reg(_: u64) {}
}
// SAFETY: thin pointers and references travel as addresses in one register.
unsafe impl<T> CArg for *const T {
    fn into_reg(self) -> u64 {
        self as usize as u64
    }
}
// SAFETY: as above.
unsafe impl<T> CArg for *mut T {
    fn into_reg(self) -> u64 {
        self as usize as u64
    }
}
// SAFETY: as above.
unsafe impl<T> CArg for &T {
    fn into_reg(self) -> u64 {
        self as *const T as usize as u64
    }
}
// SAFETY: as above.
unsafe impl<T> CArg for &mut T {
    fn into_reg(self) -> u64 {
        self as *mut T as usize as u64
    }
}
// SAFETY: thin pointers are returned as addresses in `rax`.
unsafe impl<T> CRet for *const T {
    fn from_reg(rax: u64) -> Self {
        rax as usize as *const T
    }
}
// SAFETY: as above.
unsafe impl<T> CRet for *mut T {
    fn from_reg(rax: u64) -> Self {
        rax as usize as *mut T
    }
}

/// Retargets planned in one batch, to be recorded once the batch is written.
pub(crate) struct CallPlan<'a> {
    changes: Vec<(&'a CallCore, TrampolineForm)>,
}

impl<'a> CallPlan<'a> {
    /// Validates every retarget in `wanted` (`None`: no-op; last word wins for a repeated call)
    /// and adds its pokes to `pokes`.
    pub(crate) fn new(
        lock: &PatchGuard,
        wanted: &[(&'a CallCore, Option<usize>)],
        pokes: &mut Vec<Poke>,
    ) -> Result<Self> {
        let mut changes: Vec<(&'a CallCore, TrampolineForm)> = Vec::new();
        if wanted.is_empty() {
            return Ok(CallPlan { changes });
        }
        let index = call_index(lock)?;
        let text = TextMap::new();
        let mut unique: Vec<(&'a CallCore, Option<usize>)> = Vec::with_capacity(wanted.len());
        for &(core, target) in wanted {
            match unique.iter_mut().find(|(c, _)| std::ptr::eq(*c, core)) {
                Some(slot) => slot.1 = target,
                None => unique.push((core, target)),
            }
        }
        for (core, target) in unique {
            let site = index.find(core.addr()).ok_or_else(|| Error::BadTable {
                table: table::CALL_SECTION,
                why: format!(
                    "static call {} has no trampoline in this object's table",
                    Location::of(core.addr())
                ),
            })?;
            let tramp = site.trampoline;
            if let Some(t) = target {
                check_target(&text, tramp, t)?;
            }
            let from = core.form(site);
            let busy = match from {
                TrampolineForm::Far { slot, .. } => Some(slot),
                _ => None,
            };
            let to = TrampolineForm::to(tramp, target, busy);
            if from == to {
                continue;
            }
            if let Some((addr, _, bytes)) = to.slot(tramp) {
                // SAFETY: the slot lies inside the trampoline, which table validation placed in
                // an executable, mapped segment; it is read as plain data.
                let old = unsafe { std::slice::from_raw_parts(addr as *const u8, bytes.len()) };
                pokes.push(Poke::data(
                    addr,
                    Code::new(old).expect("8 bytes fit"),
                    Code::new(&bytes).expect("8 bytes fit"),
                ));
            }
            let code = |form: TrampolineForm| {
                form.code(tramp).ok_or_else(|| Error::OutOfRange {
                    site: Location::of(tramp),
                    target: target.unwrap_or(0),
                    len: TRAMPOLINE_PATCH_LEN,
                })
            };
            pokes.push(Poke::code(
                tramp,
                code(from)?,
                code(to)?,
                to.insn(),
                from.insn(),
            ));
            for site in index.inline_sites(core.addr()) {
                let (old, new) = (site_target(site, from, tramp), site_target(site, to, tramp));
                if old != new {
                    pokes.push(inline_poke(site, old, new)?);
                }
            }
            changes.push((core, to));
        }
        Ok(CallPlan { changes })
    }

    /// Records the new targets after the batch was written, with the references that keep
    /// their objects loaded (from `held`; a call without one holds none). The references they
    /// replace are added to `released`, for the caller to drop outside the patch lock.
    pub(crate) fn commit(self, held: &mut Held, released: &mut Vec<ObjectRef>) {
        for (core, form) in self.changes {
            core.store(form);
            let new = held
                .iter_mut()
                .find(|(c, _)| std::ptr::eq(*c, core))
                .and_then(|(_, r)| r.take())
                .map_or(std::ptr::null_mut(), ObjectRef::into_raw);
            // SAFETY: `held` only ever stores handles from `into_raw`, each taken back once.
            released.extend(unsafe { ObjectRef::from_raw(core.held.swap(new, Ordering::AcqRel)) });
        }
    }
}

/// References that keep static-call targets' objects loaded, per call, taken before a batch.
pub(crate) type Held<'a> = Vec<(&'a CallCore, Option<ObjectRef>)>;

/// Takes a reference on the object of every target in `wanted` that lies in another shared
/// object than its call's, so it cannot be unloaded while a call points into it. Runs outside
/// the patch lock (it takes the loader's). A target whose object is being unloaded is refused.
pub(crate) fn hold_targets<'a>(wanted: &[(&'a CallCore, Option<usize>)]) -> Result<Held<'a>> {
    let mut held: Held<'a> = Vec::new();
    for &(core, target) in wanted {
        let Some(target) = target else { continue };
        let r = crate::os::hold_object_of(target, core.addr()).map_err(|()| Error::BadTarget {
            call: Location::of(core.addr()),
            target: Location::of(target),
            why: "in a shared object that is being unloaded",
        })?;
        held.retain(|(c, _)| !std::ptr::eq(*c, core));
        held.push((core, r));
    }
    Ok(held)
}

/// Drops the references this copy's static calls hold on other objects (this copy's object is
/// being unloaded, and its calls with it).
pub(crate) fn release_held() {
    for core in table::cores() {
        // SAFETY: the table validated `core` as a `CallCore` of this object, which is still
        // mapped; `held` only stores handles from `into_raw`.
        let core = unsafe { &*(core as *const CallCore) };
        drop(unsafe {
            ObjectRef::from_raw(core.held.swap(std::ptr::null_mut(), Ordering::AcqRel))
        });
    }
}

/// Address of `call`'s trampoline (validating the call table on first use).
pub fn trampoline_of<C: StaticCall>(call: &C) -> Result<usize> {
    let lock = crate::engine::lock()?;
    let core = call.__core().addr();
    call_index(&lock)?
        .find(core)
        .map(|site| site.trampoline)
        .ok_or_else(|| Error::BadTable {
            table: table::CALL_SECTION,
            why: format!("static call {} is not in the table", Location::of(core)),
        })
}

/// Where an inline call site calls for a trampoline in `form`: the target itself when a
/// `call rel32` reaches it, otherwise the trampoline (far targets, no-op).
fn site_target(site: usize, form: TrampolineForm, tramp: usize) -> usize {
    match form {
        TrampolineForm::Near(t) | TrampolineForm::Far { target: t, .. }
            if call_code(site, t).is_some() =>
        {
            t
        }
        _ => tramp,
    }
}

/// Retargets the `call rel32` at `site` from `old` to `new`.
fn inline_poke(site: usize, old: usize, new: usize) -> Result<Poke> {
    let code = |target| {
        call_code(site, target).ok_or_else(|| Error::OutOfRange {
            site: Location::of(site),
            target,
            len: CALL_LEN,
        })
    };
    Ok(Poke::code(
        site,
        code(old)?,
        code(new)?,
        Insn::Call {
            target: new,
            len: CALL_LEN as u8,
        },
        Insn::Call {
            target: old,
            len: CALL_LEN as u8,
        },
    ))
}

/// Addresses of `call`'s inline call sites (validating the call tables on first use).
pub fn inline_sites_of<C: StaticCall>(call: &C) -> Result<Vec<usize>> {
    let lock = crate::engine::lock()?;
    Ok(call_index(&lock)?
        .inline_sites(call.__core().addr())
        .collect())
}

/// A target must be code in a loaded object, and not the trampoline itself.
fn check_target(text: &TextMap, tramp: usize, target: usize) -> Result<()> {
    let why = if target == tramp {
        "the trampoline itself (an endless loop)"
    } else if text.find(target, 1).is_none() {
        "not inside an executable segment of any loaded object"
    } else {
        return Ok(());
    };
    Err(Error::BadTarget {
        call: Location::of(tramp),
        target: Location::of(target),
        why,
    })
}

/// Declares static calls: direct calls that can be retargeted while threads are calling them.
///
/// ```
/// textpoke::static_call! {
///     /// The hash used everywhere.
///     pub static HASH: fn(&[u8]) -> u64 = fnv;
///     static LOG: fn(&str) = print_it; // no return type: may become a no-op
/// }
///
///
/// fn fnv(data: &[u8]) -> u64 {
///     data.iter().fold(0xcbf29ce484222325, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3))
/// }
/// fn sum(data: &[u8]) -> u64 {
///     data.iter().map(|&b| b as u64).sum()
/// }
/// fn print_it(s: &str) {
///     println!("{s}");
/// }
///
/// # fn main() -> Result<(), textpoke::Error> {
/// assert_eq!(HASH.call(b"ab"), fnv(b"ab")); // a direct call through the trampoline
/// HASH.update(sum)?; // safe while other threads call HASH
/// assert_eq!(HASH.call(b"ab"), 195);
/// LOG.update_noop()?; // the call now returns at once
/// LOG.call("not printed");
/// # Ok(())
/// # }
/// ```
///
/// `update` takes only a function of the declared signature:
///
/// ```compile_fail,E0308
/// textpoke::static_call! { static HASH: fn(&[u8]) -> u64 = a; }
/// fn a(_: &[u8]) -> u64 { 0 }
/// fn b(_: &[u8]) -> u32 { 0 }
/// fn main() {
///     HASH.update(b).unwrap();
/// }
/// ```
///
/// Use the macro at module level (it emits the trampoline with `global_asm!`).
///
/// **Inline call sites.** A C-ABI static call with up to six integer-class arguments
/// (integers, `bool`, raw pointers, references) and an integer-class, pointer or `()` result
/// can be declared `inline`. Each `call()` then emits its own `call rel32` to the current
/// target, recorded in the `textpoke_callsite_v2` table (never found by scanning code), and
/// `update` retargets every such site directly, in the same batch as the trampoline. Far
/// targets and no-ops are reached through the trampoline.
///
/// ```
/// textpoke::static_call! {
///     inline static FAST: extern "C" fn(u64, *const u8) -> u64 = first;
/// }
/// extern "C" fn first(x: u64, _: *const u8) -> u64 { x + 1 }
/// extern "C" fn second(x: u64, _: *const u8) -> u64 { x + 2 }
///
/// fn main() -> Result<(), textpoke::Error> {
///     assert_eq!(FAST.call(1, std::ptr::null()), 2); // `call first`, no trampoline
///     FAST.update(second)?;                          // now `call second`
///     assert_eq!(FAST.call(1, std::ptr::null()), 3);
///     Ok(())
/// }
/// ```
///
/// Signatures take up to 12 arguments, references included, in the Rust ABI or, written
/// `extern "C" fn(...)`, the C ABI. Generic functions work through their instantiations
/// (`HASH.update(hash_with::<Fx>)`). An `unsafe` function of the signature, such as a C
/// library's, is taken by `update_unsafe`, whose caller vouches that every call is safe:
///
/// ```
/// unsafe extern "C" {
///     fn labs(x: i64) -> i64; // the C library's
/// }
/// textpoke::static_call! {
///     static ABS: extern "C" fn(i64) -> i64 = wrapping_abs;
/// }
/// extern "C" fn wrapping_abs(x: i64) -> i64 { x.wrapping_abs() }
///
/// fn main() -> Result<(), textpoke::Error> {
///     // SAFETY: `labs` is safe for every argument but `i64::MIN`, which this program never
///     // passes.
///     unsafe { ABS.update_unsafe(labs)? };
///     assert_eq!(ABS.call(-5), 5);
///     Ok(())
/// }
/// ```
///
/// More arguments fail to build with a message saying so (12; 6 for `inline` calls):
///
/// ```compile_fail
/// textpoke::static_call! {
///     inline static WIDE: extern "C" fn(u64, u64, u64, u64, u64, u64, u64) = seven;
/// }
/// extern "C" fn seven(_: u64, _: u64, _: u64, _: u64, _: u64, _: u64, _: u64) {}
/// fn main() {}
/// ```
///
/// and so does an `inline` call of a type that does not travel in one register:
///
/// ```compile_fail,E0277
/// textpoke::static_call! {
///     inline static HALF: extern "C" fn(f64) -> u64 = half;
/// }
/// extern "C" fn half(_: f64) -> u64 { 0 }
/// fn main() { HALF.call(0.5); }
/// ```
///
/// A static call is an item of its module (its trampoline is module-level assembly): declared
/// inside a function, it fails to build with `non-statement macro in statement position:
/// ::textpoke::__private::static_call_must_be_declared_outside_functions`, at the macro call.
///
/// ```compile_fail
/// fn one() -> u32 { 1 }
/// fn main() {
///     textpoke::static_call! { static ONE: fn() -> u32 = one; }
///     assert_eq!(ONE.call(), 1);
/// }
/// ```
///
/// **Trampoline symbols.** Each static call's trampoline is a hidden symbol named after the
/// static's module path and the source file the macro is invoked in, as rustc was given it:
/// `textpoke_trampoline::mycrate::net::HASH<src/net.rs>`. It reads as it is in `nm`, `perf` and
/// gdb (`break textpoke_trampoline::mycrate::net::HASH<src/net.rs>`). The file tells apart
/// crates whose paths coincide: a package's `src/lib.rs` and `src/main.rs` (two crates of one
/// name) may both declare `pub static HASH`, and two semver-incompatible versions of a crate
/// can be linked into one program (cargo names a registry crate's files by the path of its copy,
/// `.../hash-2.0.0/src/lib.rs`). What still cannot link (`duplicate symbol`) is one source file
/// compiled as a module of two crates of one name, such as `mod shared;` in both `src/lib.rs`
/// and `src/main.rs`, when that file declares a static call. A source path containing `{`, `}`
/// or `"` cannot be written in the trampoline's assembly and fails to compile.
#[macro_export]
macro_rules! static_call {
    () => {};
    (
        $(#[$attr:meta])* $vis:vis inline static $name:ident:
            extern "C" fn($($arg:ty),* $(,)?) -> $ret:ty = $init:path;
        $($rest:tt)*
    ) => {
        $crate::__static_call!([$(#[$attr])*] $vis $name ["C"] [$($arg),*] [$ret] $init, inline);
        $crate::static_call!($($rest)*);
    };
    (
        $(#[$attr:meta])* $vis:vis inline static $name:ident:
            extern "C" fn($($arg:ty),* $(,)?) = $init:path;
        $($rest:tt)*
    ) => {
        $crate::__static_call!([$(#[$attr])*] $vis $name ["C"] [$($arg),*] [()] $init, inline);
        $crate::__static_call_noop!($name);
        $crate::static_call!($($rest)*);
    };
    (
        $(#[$attr:meta])* $vis:vis static $name:ident:
            $(extern $abi:literal)? fn($($arg:ty),* $(,)?) -> $ret:ty = $init:path;
        $($rest:tt)*
    ) => {
        $crate::__static_call!([$(#[$attr])*] $vis $name [$($abi)?] [$($arg),*] [$ret] $init);
        $crate::static_call!($($rest)*);
    };
    (
        $(#[$attr:meta])* $vis:vis static $name:ident:
            $(extern $abi:literal)? fn($($arg:ty),* $(,)?) = $init:path;
        $($rest:tt)*
    ) => {
        $crate::__static_call!([$(#[$attr])*] $vis $name [$($abi)?] [$($arg),*] [()] $init);
        $crate::__static_call_noop!($name);
        $crate::static_call!($($rest)*);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_noop {
    ($name:ident) => {
        impl $crate::NoopCall for $name {}
        impl $name {
            /// Makes the call a no-op, like the kernel's `static_call_cond` with a NULL target.
            /// Safe while other threads call it.
            pub fn update_noop(&self) -> $crate::Result<()> {
                $crate::Batch::new().update_noop(self).commit().map(drop)
            }
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __static_call {
    ([$($attr:tt)*] $vis:vis $name:ident [$($abi:literal)?] [$($arg:ty),*] [$ret:ty] $init:path $(, $inline:ident)?) => {
        $($attr)*
        #[allow(non_camel_case_types)]
        #[repr(transparent)]
        $vis struct $name {
            __core: $crate::__private::CallCore,
        }

        $($attr)*
        $vis static $name: $name = $name {
            __core: $crate::__private::CallCore::new(concat!(module_path!(), "::", stringify!($name))),
        };

        $crate::__arch_static_call_trampoline!(
            $crate::__static_call_symbol!($name),
            $name,
            $init
        );

        const _: () = {
            $crate::__static_call_extern!([$($abi)?] $name [$($arg),*] $ret);

            impl $crate::StaticCall for $name {
                type Fn = $(extern $abi)? fn($($arg),*) -> $ret;
                fn __core(&self) -> &$crate::__private::CallCore {
                    &self.__core
                }
                fn __addr(f: Self::Fn) -> usize {
                    f as usize
                }
            }

            impl $name {
                $crate::__static_call_method!(
                    $($inline $name $init)? [] [a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 a10 a11]
                    ["rdi" "rsi" "rdx" "rcx" "r8" "r9"] [$($arg),*] $ret
                );

                /// Retargets every caller to `f`. Safe while other threads call it.
                pub fn update(&self, f: $(extern $abi)? fn($($arg),*) -> $ret) -> $crate::Result<()> {
                    $crate::Batch::new().update(self, f).commit().map(drop)
                }

                /// Retargets every caller to `f`, an `unsafe` function of the declared
                /// signature (a C library's, such as `libc::labs`).
                ///
                /// # Safety
                ///
                /// Calling `f` must be safe for every call the program makes through this
                /// static call, with whatever arguments it passes.
                pub unsafe fn update_unsafe(
                    &self,
                    f: unsafe $(extern $abi)? fn($($arg),*) -> $ret,
                ) -> $crate::Result<()> {
                    // SAFETY: an `unsafe fn` pointer and a safe one of the same signature and
                    // ABI have the same representation; the caller vouches that every call
                    // made through this static call is safe.
                    let f: $(extern $abi)? fn($($arg),*) -> $ret = unsafe { ::core::mem::transmute(f) };
                    self.update(f)
                }

                /// Whether the call is currently a no-op.
                pub fn is_noop(&self) -> bool {
                    self.__core.is_noop()
                }
            }
        };
    };
}

/// The name of static call `$name`'s trampoline symbol, a string literal:
/// `textpoke_trampoline::<module path>::<name><<source file>>`, for instance
/// `textpoke_trampoline::mycrate::net::HASH<src/net.rs>`.
///
/// The module path alone is not unique in a program: a package's `src/lib.rs` and
/// `src/main.rs` are two crates of one name, and two semver-incompatible versions of a crate
/// have the same name and modules. `file!()`, the source file the outermost macro was invoked
/// in, as rustc was given it, tells them apart: cargo names a workspace's sources relative to
/// its root (`src/main.rs`, `hash-v1/src/lib.rs`) and other packages by the absolute path of
/// their copy, which holds the version for registry crates
/// (`.../index.crates.io-.../hash-2.0.0/src/lib.rs`). The name stays readable in `nm`,
/// `perf` and gdb (`break textpoke_trampoline::mycrate::HASH<src/main.rs>`), and has no `@`,
/// which linkers read as a symbol version.
#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_symbol {
    ($name:ident) => {
        concat!(
            "textpoke_trampoline::",
            module_path!(),
            "::",
            stringify!($name),
            "<",
            file!(),
            ">"
        )
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_extern {
    ([] $name:ident [$($arg:ty),*] $ret:ty) => {
        $crate::__static_call_extern!(["Rust"] $name [$($arg),*] $ret);
    };
    ([$abi:literal] $name:ident [$($arg:ty),*] $ret:ty) => {
        unsafe extern $abi {
            #[link_name = $crate::__static_call_symbol!($name)]
            fn __textpoke_trampoline($(_: $arg),*) -> $ret;
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_method {
    ([$($p:ident: $t:ty = $r:tt),*] [$($unused:ident)*] [$($unused_r:tt)*] [] $ret:ty) => {
        /// Calls the current target: a direct call to the trampoline, which jumps to it.
        #[inline(always)]
        pub fn call(&self, $($p: $t),*) -> $ret {
            // SAFETY: the trampoline jumps, with every argument register and the stack
            // untouched, to a function of exactly this signature and ABI: the compiled-in
            // target or one passed to `update`, both type-checked against it; or it returns at
            // once, which only no-op-capable calls (returning `()`) allow.
            unsafe { __textpoke_trampoline($($p),*) }
        }
    };
    (inline $name:ident $init:path [$($p:ident: $t:ty = $r:tt),*] [$($unused:ident)*] [$($unused_r:tt)*] [] $ret:ty) => {
        /// Calls the current target from an inline site: a direct `call` that textpoke
        /// retargets itself, so no trampoline is in the way while the target is in range.
        #[inline(always)]
        pub fn call(&self, $($p: $t),*) -> $ret {
            let rax = $crate::__arch_inline_call!(
                $name, $init, $($r = $crate::__private::CArg::into_reg($p)),*
            );
            <$ret as $crate::__private::CRet>::from_reg(rax)
        }
    };
    (inline $name:ident $init:path [$($p:ident: $t:ty = $r:tt),*] [$n:ident $($ns:ident)*] [$r0:tt $($rs:tt)*] [$t0:ty $(, $ts:ty)*] $ret:ty) => {
        $crate::__static_call_method!(
            inline $name $init [$($p: $t = $r,)* $n: $t0 = $r0] [$($ns)*] [$($rs)*] [$($ts),*] $ret
        );
    };
    ([$($p:ident: $t:ty = $r:tt),*] [$n:ident $($ns:ident)*] [$($rs:tt)*] [$t0:ty $(, $ts:ty)*] $ret:ty) => {
        $crate::__static_call_method!(
            [$($p: $t = $r,)* $n: $t0 = _] [$($ns)*] [] [$($ts),*] $ret
        );
    };
    (inline $name:ident $init:path [$($p:ident: $t:ty = $r:tt),*] [$($ns:ident)*] [] [$t0:ty $(, $ts:ty)*] $ret:ty) => {
        ::core::compile_error!(
            "textpoke::static_call!: an `inline` static call takes at most 6 arguments (one C-ABI \
             register each); declare it without `inline` to pass more"
        );
    };
    ([$($p:ident: $t:ty = $r:tt),*] [] [$($rs:tt)*] [$t0:ty $(, $ts:ty)*] $ret:ty) => {
        ::core::compile_error!("textpoke::static_call!: a static call takes at most 12 arguments");
    };
}

/// The static call that `addr` belongs to (its state, trampoline or an inline call site), if
/// the index is built and has one (an error path does not build it).
/// One static call of this copy's object, as the registry lists it.
pub(crate) struct CallRow {
    pub(crate) name: &'static str,
    pub(crate) declared: &'static std::panic::Location<'static>,
    /// Its trampoline and inline call sites.
    pub(crate) sites: usize,
    /// Where it calls now; `None` while it is a no-op.
    pub(crate) target: Option<usize>,
}

/// Every static call of this copy's object, in address order.
pub(crate) fn rows(lock: &PatchGuard) -> Result<Vec<CallRow>> {
    let index = table::call_index(lock)?;
    Ok(index
        .calls()
        .iter()
        .map(|site| {
            // SAFETY: validation checked that every entry's state is a `CallCore` of this copy
            // of textpoke (its signature) in the object's data, and calls are statics.
            let core = unsafe { &*(site.core as *const CallCore) };
            let target = match core.target.load(Ordering::Acquire) {
                INITIAL => Some(site.initial),
                NOOP => None,
                t => Some(t),
            };
            CallRow {
                name: core.name,
                declared: core.declared,
                sites: 1 + index.inline_sites(site.core).count(),
                target,
            }
        })
        .collect())
}

pub(crate) fn item_at(_lock: &PatchGuard, addr: usize) -> Option<Item> {
    let core = table::INDEX.peek()?.as_ref().ok()?.owner(addr)?;
    // SAFETY: validation checked that every entry's state is a `CallCore` of this copy of
    // textpoke (its signature) in the object's data, and static calls are statics.
    Some(unsafe { &*(core as *const CallCore) }.item())
}
