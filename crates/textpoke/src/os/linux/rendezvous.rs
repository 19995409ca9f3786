//! How copies of textpoke in one process find each other: an ELF note in every object that
//! carries a copy, found through the program headers `dl_iterate_phdr` lists for every loaded
//! object. No symbol lookup is involved, so it works for executables that export nothing and
//! for plugins loaded `RTLD_LOCAL`.
//!
//! The note (section `.note.textpoke`, retained, so the linker puts it in a `PT_NOTE` segment)
//! has the name `textpoke`, the type [`NOTE_TYPE`] and an 8-byte descriptor: the rendezvous
//! version (`u32`), then a 32-bit offset, relative to its own field, to the copy's anchor (a
//! versioned table the engine defines). This module knows nothing of what the anchor holds.

use std::ffi::{CStr, CString};
use std::ops::ControlFlow;

/// Type of textpoke's note.
pub const NOTE_TYPE: u32 = 0x7470_0001;
const NOTE_NAME: &[u8] = b"textpoke\0";
/// glibc's `RTLD_NODELETE` (`<bits/dlfcn.h>`), which the `libc` crate does not define for Linux.
const RTLD_NODELETE: libc::c_int = 0x1000;

/// Emits this copy's note, pointing at `$anchor` (a `static`) with rendezvous version
/// `$version`.
macro_rules! rendezvous_note {
    ($anchor:path, $version:literal) => {
        ::core::arch::global_asm!(
            ".pushsection .note.textpoke,\"aR\",@note",
            ".balign 4",
            ".long 9",
            ".long 8",
            ".long 0x74700001",
            ".asciz \"textpoke\"",
            ".balign 4",
            concat!(".long ", $version),
            ".long {anchor} - .",
            ".popsection",
            anchor = sym $anchor,
        );
    };
}
pub(crate) use rendezvous_note;

/// The first textpoke note in load order (the executable first, then shared objects as they
/// were loaded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendezvous {
    /// Path of the object that carries it (the executable's for the main program).
    pub object: String,
    /// Whether that object is the main program (never unloaded).
    pub main: bool,
    /// The rendezvous version the note declares.
    pub version: u32,
    /// Address of the anchor it points to.
    pub anchor: usize,
}

/// Finds the first textpoke note of any loaded object.
pub fn first_rendezvous() -> Option<Rendezvous> {
    scan_notes(true).pop()
}

/// Every loaded object's textpoke note, in load order: one per copy of textpoke in the
/// process (the executable's first, then plugins as they were loaded).
pub fn all_rendezvous() -> Vec<Rendezvous> {
    scan_notes(false)
}

fn scan_notes(first_only: bool) -> Vec<Rendezvous> {
    let mut found = Vec::new();
    super::loader::each_object(|o| {
        for ph in o.phdrs().iter().filter(|p| p.p_type == libc::PT_NOTE) {
            let start = o.base().wrapping_add(ph.p_vaddr as usize);
            let align = (ph.p_align as usize).max(4);
            // SAFETY: a PT_NOTE segment lies inside a loaded segment of the object, mapped
            // readable for `p_memsz` bytes while the walk visits it.
            if let Some((version, anchor)) = unsafe { find_note(start, ph.p_memsz as usize, align) }
            {
                found.push(Rendezvous {
                    object: o.name(),
                    main: o.main(),
                    version,
                    anchor,
                });
                // One copy per object answers for it: two copies in one object share its
                // tables.
                return if first_only {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                };
            }
        }
        ControlFlow::Continue(())
    });
    found
}

/// Walks the notes in `[start, start + len)`; returns the version and anchor of textpoke's.
///
/// # Safety
///
/// The range must be mapped and readable.
unsafe fn find_note(start: usize, len: usize, align: usize) -> Option<(u32, usize)> {
    let read = |at: usize| -> u32 {
        // SAFETY: callers check `at + 4 <= end`; notes are 4-aligned.
        unsafe { (at as *const u32).read_unaligned() }
    };
    let round = |n: usize| n.div_ceil(align) * align;
    let end = start.checked_add(len)?;
    let mut at = start;
    while at.checked_add(12)? <= end {
        let (namesz, descsz, kind) = (read(at) as usize, read(at + 4) as usize, read(at + 8));
        let name = at + 12;
        let desc = name.checked_add(round(namesz))?;
        let next = desc.checked_add(round(descsz))?;
        if next > end {
            return None;
        }
        if kind == NOTE_TYPE && namesz == NOTE_NAME.len() && descsz >= 8 {
            // SAFETY: `[name, name + namesz)` lies inside the segment (checked above).
            let found = unsafe { std::slice::from_raw_parts(name as *const u8, namesz) };
            if found == NOTE_NAME {
                let offset = read(desc + 4) as i32;
                return Some((read(desc), (desc + 4).wrapping_add_signed(offset as isize)));
            }
        }
        at = next;
    }
    None
}

/// Makes the object containing `addr` permanent (`RTLD_NODELETE`), unless it is the main
/// program, which is never unloaded. Returns false if the object is gone or going. Takes the
/// dynamic loader's lock: never call it under the patch lock (a `dlclose` waits for the patch
/// lock inside the loader's lock).
pub fn pin_object_of(addr: usize) -> bool {
    // The reference is deliberately leaked: with RTLD_NODELETE the object stays for good.
    in_main_program(addr)
        || open_object_of(addr, RTLD_NODELETE)
            .map(ObjectRef::into_raw)
            .is_some()
}

/// A new reference (`dlopen(RTLD_NOLOAD | extra)`) on the loaded object that holds `addr`;
/// `None` if no object holds it or the object is going away. It is checked to be the object
/// that holds `addr` once referenced, not one loaded under the same name after it went.
fn open_object_of(addr: usize, extra: libc::c_int) -> Option<ObjectRef> {
    let (name, base) = dl_object_of(addr)?;
    let cname = CString::new(name.clone()).ok()?;
    // SAFETY: RTLD_NOLOAD never loads anything: it takes a reference to an object that is
    // already loaded, or returns null.
    let handle =
        unsafe { libc::dlopen(cname.as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_LAZY | extra) };
    let held = std::ptr::NonNull::new(handle).map(ObjectRef)?;
    (dl_object_of(addr) == Some((name, base))).then_some(held)
}

/// The path and base of the object containing `addr`, from the loader (`dladdr`).
fn dl_object_of(addr: usize) -> Option<(String, usize)> {
    // SAFETY: `dladdr` only reads loader state and fills the struct.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: as above; zero means "not in any object".
    if unsafe { libc::dladdr(addr as *const libc::c_void, &mut info) } == 0
        || info.dli_fname.is_null()
    {
        return None;
    }
    // SAFETY: `dladdr` returned a NUL-terminated path owned by the loader.
    let name = unsafe { CStr::from_ptr(info.dli_fname) }
        .to_string_lossy()
        .into_owned();
    Some((name, info.dli_fbase as usize))
}

/// Keeps the object holding `addr` loaded while the result lives: `Some(None)` for the main
/// program (never unloaded), `None` when no object holds it any more or it is going away.
/// Takes the loader's lock: never call it under the patch lock.
pub fn hold_object_at(addr: usize) -> Option<Option<ObjectRef>> {
    if in_main_program(addr) {
        return Some(None);
    }
    open_object_of(addr, 0).map(Some)
}

/// Whether `addr` lies in a segment of the main program.
pub fn in_main_program(addr: usize) -> bool {
    let mut inside = false;
    super::loader::each_object(|o| {
        inside = o.loads().any(|(start, end, _)| start <= addr && addr < end);
        ControlFlow::Break(()) // the main program is listed first: stop there
    });
    inside
}

/// The loader's counts of objects loaded and unloaded so far: when they change, any map of
/// the loaded objects is stale.
pub fn objects_generation() -> (u64, u64) {
    let mut out = (u64::MAX, u64::MAX);
    super::loader::each_object(|o| {
        if let Some(counts) = o.generation() {
            out = counts;
        }
        ControlFlow::Break(())
    });
    out
}

/// A reference on a loaded object that keeps it loaded (`dlopen(RTLD_NOLOAD)`); released with
/// `dlclose` on drop. Take and drop it outside the patch lock (see [`pin_object_of`]).
#[derive(Debug)]
pub struct ObjectRef(std::ptr::NonNull<libc::c_void>);

// SAFETY: a loader handle may be closed from any thread.
unsafe impl Send for ObjectRef {}
// SAFETY: as above; it is never used but to be closed.
unsafe impl Sync for ObjectRef {}

impl ObjectRef {
    /// The handle, to store; [`from_raw`](Self::from_raw) takes it back.
    pub fn into_raw(self) -> *mut libc::c_void {
        let p = self.0.as_ptr();
        std::mem::forget(self);
        p
    }

    /// Takes back a handle from [`into_raw`](Self::into_raw); `None` for null.
    ///
    /// # Safety
    ///
    /// `p` is null or came from `into_raw`, and is taken back once.
    pub unsafe fn from_raw(p: *mut libc::c_void) -> Option<Self> {
        std::ptr::NonNull::new(p).map(ObjectRef)
    }
}

impl Drop for ObjectRef {
    fn drop(&mut self) {
        // SAFETY: the handle came from `dlopen` and is closed once.
        unsafe { libc::dlclose(self.0.as_ptr()) };
    }
}

/// A reference on the object holding `target`, so that it stays loaded while something
/// (a static call) points into it. `Ok(None)` when none is needed: the target is in the main
/// program, in the same object as `home`, or in no object at all (callers refuse that
/// themselves). `Err(())` when the object is going away. Takes the loader's lock: never call
/// it under the patch lock.
pub fn hold_object_of(target: usize, home: usize) -> Result<Option<ObjectRef>, ()> {
    let Some((_, base)) = dl_object_of(target) else {
        return Ok(None);
    };
    if in_main_program(target) || dl_object_of(home).is_some_and(|(_, b)| b == base) {
        return Ok(None);
    }
    open_object_of(target, 0).map(Some).ok_or(())
}
