//! Immediate values: constants that live in the code as the immediate operand of a `mov` at
//! every read site, rewritten live (the kernel's `runtime_const`, once `imv_read`). This folder
//! owns the API, the `imm!` site, its table format (`table`) and its planning.

pub(crate) mod table;

use std::marker::PhantomData;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use crate::arch::{Insn, mov_imm_code, mov_imm_len};
use crate::engine::{PatchGuard, Poke};
use crate::{Error, Item, Location, Result};
use table::{IMM_SECTION, ImmSite, imm_index};

/// Signature stored in every immediate, checked when a table entry names it.
const IMM_MAGIC: u32 = u32::from_le_bytes(*b"tpi1");

/// The part of an immediate the tables see; identical for every value type. Holds no
/// interior mutability, so a `const` operand of a site's `asm!` can read `initial` at compile
/// time: the current value is kept by this copy of textpoke instead ([`Current`]).
#[repr(C, align(8))]
pub(crate) struct ImmCore {
    magic: u32,
    /// Bytes of the immediate at every site: 4 (`mov r32, imm32`) or 8 (`movabs r64, imm64`).
    width: u8,
    /// The value's type, for tools that show or parse it: [`ImmValue::__KIND`] and its size
    /// in bytes (zero in immediates built before they were recorded), then a reserved zero.
    kind: [u8; 2],
    _reserved: u8,
    /// The value every site is built with: the value's bytes, zero-extended.
    initial: u64,
    /// Where the immediate was declared (its `Immediate::new`).
    declared: &'static std::panic::Location<'static>,
}

impl ImmCore {
    pub(crate) fn addr(&self) -> usize {
        self as *const Self as usize
    }

    /// The immediate, for messages.
    pub(crate) fn item(&self) -> Item {
        Item::new("immediate", self.addr(), self.declared, None)
    }

    /// Whether sites hold a 64-bit immediate; `None` for a width no version writes.
    pub(crate) fn wide(&self) -> Option<bool> {
        match self.width {
            4 => Some(false),
            8 => Some(true),
            _ => None,
        }
    }

    /// Offset and value of the signature table validation looks for.
    pub(crate) const SIGNATURE: (usize, u32) = (std::mem::offset_of!(ImmCore, magic), IMM_MAGIC);

    /// The value the sites hold now (the last one committed).
    fn current(&self) -> u64 {
        Current::find(self.addr()).map_or(self.initial, |c| c.value.load(Ordering::Acquire))
    }
}

/// The value of one immediate this copy has set (the immediates themselves are read-only), in
/// an append-only list read without a lock: a lock that another thread held at `fork` would
/// stay held in the child. Written under the patch lock, once a batch has been written.
struct Current {
    imm: usize,
    value: AtomicU64,
    /// The node appended before this one; never changed once published.
    next: *mut Current,
}

static CURRENT: AtomicPtr<Current> = AtomicPtr::new(std::ptr::null_mut());

impl Current {
    fn find(imm: usize) -> Option<&'static Current> {
        let mut p = CURRENT.load(Ordering::Acquire);
        // SAFETY: every published node is a leaked box, complete before it was published
        // (Release, paired with the Acquire above), and freed only by `release`.
        while let Some(node) = unsafe { p.as_ref() } {
            if node.imm == imm {
                return Some(node);
            }
            p = node.next;
        }
        None
    }

    /// Records `value` as the value of the immediate at `imm`.
    fn record(_lock: &PatchGuard, imm: usize, value: u64) {
        match Current::find(imm) {
            Some(node) => node.value.store(value, Ordering::Release),
            None => {
                let node = Box::new(Current {
                    imm,
                    value: AtomicU64::new(value),
                    next: CURRENT.load(Ordering::Acquire),
                });
                // The lock makes this the only writer, so no node appended meanwhile is lost.
                CURRENT.store(Box::into_raw(node), Ordering::Release);
            }
        }
    }
}

/// Frees the current values.
///
/// # Safety
///
/// None of this copy's code runs again (its object is being unloaded).
pub(crate) unsafe fn release() {
    let mut p = CURRENT.swap(std::ptr::null_mut(), Ordering::AcqRel);
    while !p.is_null() {
        // SAFETY: `p` is a node leaked by `record`, unreachable now, and (the caller's
        // guarantee) no `find` still reads it.
        let node = unsafe { Box::from_raw(p) };
        p = node.next;
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A type an [`Immediate`] can hold: `u8` to `u64`, `i8` to `i64`, `usize`, `isize` and
/// `bool`. Values of up to 32 bits are read with `mov r32, imm32`, wider ones with
/// `movabs r64, imm64`.
pub trait ImmValue: Copy + Send + Sync + 'static + sealed::Sealed {
    /// The value in a site's register: the low bytes are the value's.
    #[doc(hidden)]
    fn __from_bits(bits: u64) -> Self;
    /// How the value's bits read: recorded in the immediate for tools.
    #[doc(hidden)]
    const __KIND: ImmKind;
}

/// How an immediate's bits read as a value.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ImmKind {
    /// Recorded by no version: read as unsigned.
    Unknown = 0,
    /// An unsigned integer.
    Unsigned = 1,
    /// A signed integer (two's complement).
    Signed = 2,
    /// `bool`.
    Bool = 3,
}

impl ImmKind {
    /// The kind an immediate recorded as this byte (an unknown byte reads as unsigned).
    pub fn from_byte(byte: u8) -> Self {
        match byte {
            1 => ImmKind::Unsigned,
            2 => ImmKind::Signed,
            3 => ImmKind::Bool,
            _ => ImmKind::Unknown,
        }
    }
}

macro_rules! imm_values {
    ($kind:ident: $($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl ImmValue for $t {
            const __KIND: ImmKind = ImmKind::$kind;
            #[inline(always)]
            fn __from_bits(bits: u64) -> Self {
                // Truncation: the register holds the value's bytes, zero-extended.
                bits as $t
            }
        }
    )*};
}
imm_values!(Unsigned: u8, u16, u32, u64, usize);
imm_values!(Signed: i8, i16, i32, i64, isize);

impl sealed::Sealed for bool {}
impl ImmValue for bool {
    const __KIND: ImmKind = ImmKind::Bool;
    #[inline(always)]
    fn __from_bits(bits: u64) -> Self {
        bits != 0
    }
}

/// A value's bytes, zero-extended to 64 bits, computable in a `const fn` (which cannot call
/// trait methods); x86-64 is little-endian, so they are its numeric value for unsigned types.
#[repr(C)]
union Raw<T: Copy> {
    value: T,
    bits: u64,
}

const fn bits_of<T: ImmValue>(value: T) -> u64 {
    let mut raw = Raw { bits: 0 };
    raw.value = value;
    // SAFETY: all 8 bytes are initialized (zeroed, then the value's own written over the low
    // ones: every `ImmValue` is at most 8 bytes, without padding).
    unsafe { raw.bits }
}

/// A constant compiled into the code as the immediate operand of a `mov` at every read site,
/// and rewritten, live, at every site by [`set`](Self::set).
///
/// Read it with [`imm!`](crate::imm): each read is one `mov` of the immediate into a register,
/// as cheap as a constant the compiler cannot fold, with no memory load. The value given to
/// `new` is the one the sites are built with, so every read is right from the first
/// instruction the process runs. Declare immediates as `static`s; `imm!` takes their path.
///
/// `set` rewrites every site in one batch, with the breakpoint protocol: a thread reading
/// meanwhile gets the old value or the new one, never a mix of their bytes.
///
/// ```
/// use textpoke::{Immediate, imm};
///
/// static LIMIT: Immediate<u32> = Immediate::new(100);
///
/// fn over_limit(n: u32) -> bool {
///     n > imm!(LIMIT)
/// }
///
/// assert!(!over_limit(90));
/// LIMIT.set(50)?;
/// assert!(over_limit(90));
/// assert_eq!(LIMIT.get(), 50);
/// # Ok::<(), textpoke::Error>(())
/// ```
#[repr(transparent)]
pub struct Immediate<T: ImmValue> {
    core: ImmCore,
    _value: PhantomData<fn() -> T>,
}

impl<T: ImmValue> Immediate<T> {
    /// An immediate whose sites are built holding `value`. Where it is called is recorded, so
    /// that messages about its sites say where it was declared.
    #[track_caller]
    pub const fn new(value: T) -> Self {
        Immediate {
            core: ImmCore {
                magic: IMM_MAGIC,
                width: if size_of::<T>() > 4 { 8 } else { 4 },
                kind: [T::__KIND as u8, size_of::<T>() as u8],
                _reserved: 0,
                initial: bits_of(value),
                declared: std::panic::Location::caller(),
            },
            _value: PhantomData,
        }
    }

    pub(crate) fn core(&self) -> &ImmCore {
        &self.core
    }

    /// The value the sites were built with.
    pub const fn initial(&self) -> T {
        let raw = Raw {
            bits: self.core.initial,
        };
        // SAFETY: `initial` holds the bytes of a `T` (see `new`), zero-extended.
        unsafe { raw.value }
    }

    /// The value the sites hold: the last one set, once its `set` has returned.
    pub fn get(&self) -> T {
        T::__from_bits(self.core.current())
    }

    /// Rewrites every site to read `value`, as one batch. Safe while other threads read it.
    pub fn set(&self, value: T) -> Result<()> {
        crate::Batch::new().set(self, value).commit().map(drop)
    }

    /// Addresses of this immediate's read sites (validating the table on first use).
    pub fn sites(&self) -> Result<Vec<usize>> {
        let lock = crate::engine::lock()?;
        let index = imm_index(&lock)?;
        Ok(index
            .sites_of(self.core.addr())
            .iter()
            .map(|s| s.addr)
            .collect())
    }

    /// The value's bits as a site holds them.
    pub(crate) fn bits(value: T) -> u64 {
        bits_of(value)
    }
}

/// For `imm!`: the immediate's compile-time value as its sites hold it.
#[doc(hidden)]
pub const fn initial_bits<T: ImmValue>(imm: &Immediate<T>) -> u64 {
    imm.core.initial
}

/// For `imm!`: whether its sites are `movabs r64, imm64` rather than `mov r32, imm32`.
#[doc(hidden)]
pub const fn is_wide<T: ImmValue>(_imm: &Immediate<T>) -> bool {
    size_of::<T>() > 4
}

/// For `imm!`: the value a site's register holds.
#[doc(hidden)]
#[inline(always)]
pub fn from_bits<T: ImmValue>(_imm: &Immediate<T>, bits: u64) -> T {
    T::__from_bits(bits)
}

/// Reads an [`Immediate`]: one `mov` of its current value into a register, at a site recorded
/// in the `textpoke_imm_v1` table. Takes the path of a `static` `Immediate`.
///
/// ```
/// use textpoke::{Batch, Immediate, StaticKey, imm};
///
/// static SAMPLE_SHIFT: Immediate<u32> = Immediate::new(10);
/// static TRACE: StaticKey = StaticKey::new();
///
/// fn sampled(counter: u64) -> bool {
///     counter & ((1 << imm!(SAMPLE_SHIFT)) - 1) == 0 // `mov reg, imm32`: no load
/// }
///
/// assert!(!sampled(16));
/// SAMPLE_SHIFT.set(4)?; // every site rewritten, live-safe
/// assert!(sampled(16));
/// Batch::new().set(&SAMPLE_SHIFT, 6).enable(&TRACE).commit()?;
/// assert_eq!(imm!(SAMPLE_SHIFT), 6);
/// # Ok::<(), textpoke::Error>(())
/// ```
#[macro_export]
macro_rules! imm {
    ($imm:path) => {
        $crate::__arch_imm!($imm)
    };
}

/// What a thread meeting `site` mid-batch is given while its immediate becomes `value`.
fn insn(site: &ImmSite, value: u64) -> Insn {
    Insn::MovImm {
        reg: site.reg,
        value,
        len: mov_imm_len(site.reg, site.wide) as u8,
    }
}

/// Builds the poke that moves `site` from value `from` to `to`.
fn poke(site: &ImmSite, from: u64, to: u64) -> Result<Poke> {
    let code = |value: u64| {
        mov_imm_code(site.reg, value, site.wide).ok_or_else(|| Error::BadTable {
            table: IMM_SECTION,
            why: format!(
                "site {}: value {value:#x} does not fit its `mov`",
                Location::of(site.addr)
            ),
        })
    };
    Poke::between(site.addr, from, to, code, |value| insn(site, value))
}

/// One immediate of this copy's object, as the registry lists it.
pub(crate) struct ImmRow {
    pub(crate) core: &'static ImmCore,
    pub(crate) sites: usize,
}

impl ImmRow {
    pub(crate) fn declared(&self) -> &'static std::panic::Location<'static> {
        self.core.declared
    }

    /// Its type and size in bytes, as recorded (size 0: not recorded).
    pub(crate) fn kind(&self) -> (ImmKind, usize) {
        (
            ImmKind::from_byte(self.core.kind[0]),
            usize::from(self.core.kind[1]),
        )
    }

    /// The value's bits now.
    pub(crate) fn bits(&self) -> u64 {
        self.core.current()
    }

    /// Bytes of the immediate at every site: 4 or 8.
    pub(crate) fn width(&self) -> usize {
        usize::from(self.core.width)
    }
}

/// Every immediate with sites in this copy's object, in address order.
pub(crate) fn rows(lock: &PatchGuard) -> Result<Vec<ImmRow>> {
    let mut out: Vec<ImmRow> = Vec::new();
    for site in imm_index(lock)?.all() {
        match out.last_mut() {
            Some(row) if row.core.addr() == site.imm => row.sites += 1,
            // SAFETY: validation checked that every entry's immediate is an `ImmCore` of this
            // copy of textpoke (its signature) in the object's data, and immediates are statics.
            _ => out.push(ImmRow {
                core: unsafe { &*(site.imm as *const ImmCore) },
                sites: 1,
            }),
        }
    }
    Ok(out)
}

/// The immediate whose site is at `addr`, if the index is built and has one (an error path
/// does not build it).
pub(crate) fn item_at(_lock: &PatchGuard, addr: usize) -> Option<Item> {
    let imm = table::INDEX.peek()?.as_ref().ok()?.owner(addr)?;
    // SAFETY: validation checked that every entry's immediate is an `ImmCore` of this copy of
    // textpoke (its signature) in the object's data, and immediates are statics.
    Some(unsafe { &*(imm as *const ImmCore) }.item())
}

/// Immediate changes planned in one batch: (immediate, value now, value wanted); `commit`
/// records the new values once the batch is written.
pub(crate) struct ImmPlan<'a> {
    changes: Vec<(&'a ImmCore, u64, u64)>,
}

impl<'a> ImmPlan<'a> {
    /// Plans setting each immediate to its wanted value (last word wins for a repeated one).
    /// The caller holds the patch lock.
    pub(crate) fn new(wanted: &[(&'a ImmCore, u64)]) -> Self {
        let mut changes: Vec<(&'a ImmCore, u64, u64)> = Vec::with_capacity(wanted.len());
        for &(imm, to) in wanted.iter().rev() {
            if !changes.iter().any(|(i, _, _)| std::ptr::eq(*i, imm)) {
                changes.push((imm, imm.current(), to));
            }
        }
        ImmPlan { changes }
    }

    pub(crate) fn pokes(&self, lock: &PatchGuard, pokes: &mut Vec<Poke>) -> Result<()> {
        if self.changes.is_empty() {
            return Ok(());
        }
        let index = imm_index(lock)?;
        for &(imm, from, to) in &self.changes {
            for site in index.sites_of(imm.addr()) {
                pokes.push(poke(site, from, to)?);
            }
        }
        Ok(())
    }

    pub(crate) fn commit(self, lock: &PatchGuard) {
        for (imm, _, to) in self.changes {
            Current::record(lock, imm.addr(), to);
        }
    }
}
