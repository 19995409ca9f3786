//! The rules every capability's table follows: their format rules and validation, and the
//! lazily built index cell. Each capability owns its table format (`keys::table`,
//! `calls::table`, `alternatives::table`); nothing here knows any of them.
//!
//! Every table is a retained, allocated, read-only section whose name carries its format
//! version, so a binary never mixes formats. Entries are made of 32-bit offsets, each relative
//! to its own field's address: position-relative, so they need no dynamic relocation, and never
//! written. Indexes built from them live on the heap. A table that fails validation fails every
//! later use the same way.

mod boundary;

use std::sync::atomic::{AtomicPtr, Ordering};

use crate::engine::PatchGuard;
use crate::os::{self, Object};
use crate::{Error, Location, Result};

/// A table's index, built under the patch lock on first use and freed when the object that
/// holds this copy of textpoke is unloaded (a `OnceLock` cannot be emptied).
pub(crate) struct IndexCell<T> {
    ptr: AtomicPtr<T>,
}

impl<T> IndexCell<T> {
    pub const fn new() -> Self {
        IndexCell {
            ptr: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// The index, built by `build` if this is the first use. The lock makes the builder unique.
    pub fn get_or_init(&'static self, _lock: &PatchGuard, build: impl FnOnce() -> T) -> &'static T {
        let mut p = self.ptr.load(Ordering::Acquire);
        if p.is_null() {
            p = Box::into_raw(Box::new(build()));
            self.ptr.store(p, Ordering::Release);
        }
        // SAFETY: a stored pointer is a leaked box, freed only by `release`.
        unsafe { &*p }
    }

    /// The index, if it was built. For teardown at unload, and for naming what an error's
    /// addresses belong to under the patch lock: it is freed by [`release`](Self::release)
    /// alone, at this copy's unload, when no code of the copy runs any more.
    pub fn peek(&self) -> Option<&T> {
        // SAFETY: a stored pointer is a leaked box, freed only by `release`.
        unsafe { self.ptr.load(Ordering::Acquire).as_ref() }
    }

    /// Frees the index.
    ///
    /// # Safety
    ///
    /// No reference returned by `get_or_init` is used again (the object is being unloaded).
    pub unsafe fn release(&self) {
        let p = self.ptr.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if !p.is_null() {
            // SAFETY: the caller's guarantee; `p` came from `Box::into_raw`.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

/// A table section's bounds and entry size.
pub(crate) struct Table {
    pub name: &'static str,
    pub entry_size: usize,
    pub start: usize,
    pub stop: usize,
}

/// A validated table's entries, with the object that declared them.
pub(crate) struct Entries {
    pub object: Option<Object>,
    pub count: usize,
    start: usize,
    entry_size: usize,
}

impl Table {
    /// Checks the section's size and finds the object that contains it.
    pub fn entries(&self) -> Result<Entries> {
        let bad = |why: String| Error::BadTable {
            table: self.name,
            why,
        };
        let len = self
            .stop
            .checked_sub(self.start)
            .ok_or_else(|| bad("end before start".into()))?;
        if len % self.entry_size != 0 {
            return Err(bad(format!(
                "size {len} is not a multiple of {}",
                self.entry_size
            )));
        }
        let object =
            if len == 0 {
                None
            } else {
                Some(os::object_containing(self.start, len).ok_or_else(|| {
                    bad(format!("{:#x} is not inside any loaded object", self.start))
                })?)
            };
        Ok(Entries {
            object,
            count: len / self.entry_size,
            start: self.start,
            entry_size: self.entry_size,
        })
    }

    /// Checks that `[addr, addr + len)` lies in an executable segment of `object`.
    pub fn check_text(
        &self,
        object: &Object,
        what: &'static str,
        addr: usize,
        len: usize,
    ) -> Result<()> {
        match object.text_segment(addr, len) {
            Some(_) => Ok(()),
            None => Err(Error::OutsideText {
                what,
                addr: Location::of(addr),
                table: self.name,
                object: object.name.clone(),
            }),
        }
    }

    /// Checks that entry `index` points at a live textpoke object of `size` bytes whose
    /// signature (a `u32` at `magic_offset`) is `magic`, in a readable segment of `object`,
    /// and a writable one if `writable` (an object that is never written, a `static` without
    /// interior mutability, may be placed in a read-only segment).
    pub fn check_target(
        &self,
        object: &Object,
        index: usize,
        addr: usize,
        size: usize,
        (magic_offset, magic): (usize, u32),
        writable: bool,
    ) -> Result<()> {
        let reject = |why| Error::UnknownKey {
            table: self.name,
            index,
            addr: Location::of(addr),
            why,
        };
        if !addr.is_multiple_of(8) {
            return Err(reject("misaligned"));
        }
        let Some(seg) = object.segments.iter().find(|s| s.contains(addr, size)) else {
            return Err(reject("outside the declaring object's segments"));
        };
        if !seg.read {
            return Err(reject("not in a readable segment"));
        }
        if writable && !seg.write {
            return Err(reject("not in a readable, writable segment"));
        }
        // SAFETY: `addr` is 8-aligned and `size` bytes of it lie in a mapped, readable segment
        // of the object; the signature is read as plain data.
        let found = unsafe { std::ptr::read_volatile((addr + magic_offset) as *const u32) };
        if found != magic {
            return Err(reject(
                "no textpoke signature there (stale or foreign table?)",
            ));
        }
        Ok(())
    }

    /// Refuses overlaps among `sorted` sites (with their extents), and sites that do not start
    /// an instruction of their function (see [`boundary`]). Every table's sites pass here once,
    /// sorted, after each was checked to lie in the table's object's text.
    pub fn check_overlaps(&self, sorted: &[(usize, usize)]) -> Result<()> {
        for pair in sorted.windows(2) {
            if pair[0].0 == pair[1].0 {
                return Err(Error::BadTable {
                    table: self.name,
                    why: format!(
                        "site {} is listed by two entries: identical code folding merged two \
                         functions with sites (link with --icf=none or --icf=safe)",
                        Location::of(pair[0].0)
                    ),
                });
            }
            if pair[0].0 + pair[0].1 > pair[1].0 {
                return Err(Error::Overlap {
                    first: Location::of(pair[0].0),
                    second: Location::of(pair[1].0),
                    table: self.name,
                });
            }
        }
        boundary::check(self, sorted)
    }
}

impl Entries {
    /// The `u16` at byte `offset` of entry `index`.
    pub fn half(&self, index: usize, offset: usize) -> u16 {
        let at = self.start + index * self.entry_size + offset;
        // SAFETY: `at` is a 2-aligned field inside the table section (callers pass offsets of
        // their format's `u16` fields), bounded as above.
        unsafe { (at as *const u16).read() }
    }

    /// Field `n` (a 32-bit self-relative offset) of entry `index`, resolved to an address.
    pub fn field(&self, index: usize, n: usize) -> usize {
        let at = self.start + index * self.entry_size + 4 * n;
        // SAFETY: `at` is a 4-aligned field inside the table section, which the linker bounded
        // by the start/stop symbols (its size was checked to be whole entries).
        let off = unsafe { (at as *const i32).read() };
        at.wrapping_add_signed(off as isize)
    }
}
