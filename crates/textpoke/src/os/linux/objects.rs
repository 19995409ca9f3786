//! The map of loaded objects (executable and shared libraries) and their segments, from
//! `dl_iterate_phdr`. This is what "code you own" means: a site must lie in an executable
//! segment of the object whose table declared it.

use std::ffi::CStr;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

/// One `PT_LOAD` segment, as mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// First byte.
    pub start: usize,
    /// One past the last byte (`p_memsz`).
    pub end: usize,
    /// `PF_X`.
    pub exec: bool,
    /// `PF_R`.
    pub read: bool,
    /// `PF_W`.
    pub write: bool,
}

impl Segment {
    /// Readable and executable.
    pub fn is_text(&self) -> bool {
        self.exec && self.read
    }

    /// Whether `[addr, addr + len)` lies inside this segment.
    pub fn contains(&self, addr: usize, len: usize) -> bool {
        addr >= self.start && addr.checked_add(len).is_some_and(|e| e <= self.end)
    }
}

/// A loaded object.
#[derive(Clone, Debug)]
pub struct Object {
    /// Path (the executable's own path for the main program).
    pub name: String,
    /// Load bias.
    pub base: usize,
    /// Its `PT_LOAD` segments.
    pub segments: Vec<Segment>,
}

impl Object {
    /// The readable, executable segment containing `[addr, addr + len)`, if any. textpoke
    /// reads what it patches, so execute-only text does not count.
    pub fn text_segment(&self, addr: usize, len: usize) -> Option<Segment> {
        self.segments
            .iter()
            .copied()
            .find(|s| s.is_text() && s.contains(addr, len))
    }

    /// Whether any segment contains `[addr, addr + len)`.
    pub fn contains(&self, addr: usize, len: usize) -> bool {
        self.segments.iter().any(|s| s.contains(addr, len))
    }
}

/// The loader's (loads, unloads) counts when it was made, and the map. Only used under the
/// patch lock, which is held across `fork()`, so a child never inherits this mutex locked.
type Cache = Option<((u64, u64), Arc<Vec<Object>>)>;
static CACHE: Mutex<Cache> = Mutex::new(None);

/// Frees the cached map.
pub(super) fn release() {
    drop(CACHE.lock().unwrap_or_else(|e| e.into_inner()).take());
}

/// All loaded objects, freshly enumerated.
pub fn loaded_objects() -> Vec<Object> {
    let mut out: Vec<Object> = Vec::new();
    super::loader::each_object(|o| {
        out.push(Object {
            name: o.name(),
            base: o.base(),
            segments: o
                .loads()
                .map(|(start, end, flags)| Segment {
                    start,
                    end,
                    exec: flags & libc::PF_X != 0,
                    read: flags & libc::PF_R != 0,
                    write: flags & libc::PF_W != 0,
                })
                .collect(),
        });
        ControlFlow::Continue(())
    });
    out
}

/// The map of loaded objects, enumerated again whenever the loader has loaded or unloaded an
/// object since (every time if the loader does not count them): a map that still lists an
/// unloaded object would let a static call target unmapped memory, and one that misses a new
/// object would refuse its code.
fn cached() -> Arc<Vec<Object>> {
    let generation = super::rendezvous::objects_generation();
    let mut guard = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    match &*guard {
        Some((seen, objs)) if *seen == generation && generation.0 != u64::MAX => objs.clone(),
        _ => {
            let objs = Arc::new(loaded_objects());
            *guard = Some((generation, objs.clone()));
            objs
        }
    }
}

/// The loaded object with a segment containing `[addr, addr + len)`.
pub fn object_containing(addr: usize, len: usize) -> Option<Object> {
    cached().iter().find(|o| o.contains(addr, len)).cloned()
}

/// The executable segments of every loaded object, sorted, for many lookups in one batch.
pub struct TextMap {
    segments: Vec<Segment>,
}

impl TextMap {
    /// Snapshot of the current object map.
    pub fn new() -> Self {
        let mut segments: Vec<Segment> = cached()
            .iter()
            .flat_map(|o| o.segments.iter().copied().filter(Segment::is_text))
            .collect();
        segments.sort_unstable_by_key(|s| s.start);
        TextMap { segments }
    }

    /// The executable segment containing `[addr, addr + len)`.
    pub fn find(&self, addr: usize, len: usize) -> Option<Segment> {
        let i = self.segments.partition_point(|s| s.start <= addr);
        let seg = *self.segments.get(i.checked_sub(1)?)?;
        seg.contains(addr, len).then_some(seg)
    }
}

type Named = Option<(String, usize)>;

/// Object (path, offset) and the symbol (name, offset) for `addr`: from the object file's
/// symbol table where it has one (local symbols too, demangled), else the nearest dynamic
/// symbol `dladdr` knows.
pub fn describe(addr: usize) -> (Named, Named) {
    // A fresh enumeration, not the cache: errors are described outside the patch lock too,
    // and the cache's mutex must only be taken under it (the lock is held across fork).
    describe_in(&loaded_objects(), addr)
}

/// [`describe`], with the loaded objects listed once by the caller (for many addresses).
pub fn describe_in(objects: &[Object], addr: usize) -> (Named, Named) {
    let found = objects.iter().find(|o| o.contains(addr, 1)).cloned();
    let from_file = found
        .as_ref()
        .and_then(|o| super::symbols::symbol_in_file(&o.name, o.base, addr));
    let object = found.map(|o| (o.name, addr.wrapping_sub(o.base)));
    (object, from_file.or_else(|| dynamic_symbol(addr)))
}

/// The nearest dynamic symbol at or below `addr`, from `dladdr`.
fn dynamic_symbol(addr: usize) -> Named {
    // SAFETY: `dladdr` only reads loader state and writes the provided struct.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: as above; a zero return means "no information".
    let found = unsafe { libc::dladdr(addr as *const libc::c_void, &mut info) } != 0;
    (found && !info.dli_sname.is_null()).then(|| {
        // SAFETY: `dladdr` returned a NUL-terminated name that lives as long as the object.
        let name = unsafe { CStr::from_ptr(info.dli_sname) }.to_string_lossy();
        (
            name.into_owned(),
            addr.wrapping_sub(info.dli_saddr as usize),
        )
    })
}
