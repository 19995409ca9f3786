//! Where a function of any loaded object starts and ends, as the object itself says: hooking a
//! function (a detour) must not copy or overwrite bytes of its neighbour.
//!
//! The unwind tables come first: every function a compiler emits has an FDE in `.eh_frame`,
//! which the loader keeps mapped, and `.eh_frame_hdr` (found through `PT_GNU_EH_FRAME`) holds a
//! sorted table of them, so a lookup reads memory and parses nothing up front. Hand-written
//! assembly often has no CFI; for it the object file's symbol table answers (through
//! [`super::symbols`]), if the file on disk is still the one that was loaded.
//!
//! The object's memory is read only inside a `dl_iterate_phdr` callback: glibc holds its list
//! lock (`dl_load_write_lock`) across the callback, and `dlclose` unmaps an object only while
//! holding that lock, so an object the callback is shown stays mapped until it returns. That is
//! also why the cached map of [`super::objects`] is not used: its mutex is only taken under the
//! patch lock (which is held across `fork`), while this runs with or without it; and taking a
//! `dlopen` reference to keep the object loaded would take the loader's main lock, which must
//! never be waited for under the patch lock.

use gimli::{
    BaseAddresses, EhFrame, EhFrameHdr, EhFrameOffset, NativeEndian, Pointer, UnwindSection as _,
};
use std::ops::ControlFlow;

/// Where a function's bounds came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoundsSource {
    /// Its FDE in `.eh_frame`, found through `.eh_frame_hdr`: what the unwinder itself uses.
    EhFrame,
    /// A function symbol (`STT_FUNC`) of the object's file, for code that has no unwind
    /// information.
    SymbolTable,
}

/// The bounds of one function in a loaded object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionBounds {
    /// First byte of the function (run-time address).
    pub start: usize,
    /// One past its last byte.
    pub end: usize,
    /// Where the bounds came from.
    pub source: BoundsSource,
    /// Path (or name) of the loaded object holding it, as the map of loaded objects names it.
    pub object: String,
}

/// The function of a loaded object that contains `addr`: from the object's `.eh_frame_hdr`
/// lookup table and FDEs (found through its `PT_GNU_EH_FRAME` program header, read from
/// memory), or, where no FDE covers it, from the object's symbol table (`STT_FUNC` symbols with
/// a size, read from the file with `object`, `.symtab` then `.dynsym`). `None` if no loaded
/// object's executable segment holds `addr` or neither source knows a function there.
///
/// Bounds that would leave the executable segment holding `addr` are refused, not trimmed:
/// tables that say so are damaged, and a detour must not trust any of them. Takes the loader's
/// list lock (as `dl_iterate_phdr` does), never the patch lock; not for signal handlers.
pub fn function_containing(addr: usize) -> Option<FunctionBounds> {
    let found = find(addr)?;
    let (start, end, source) = match found.fde {
        Some((start, end)) => (start, end, BoundsSource::EhFrame),
        None => {
            let (start, end) = super::symbols::function_in_file(
                &found.object,
                found.base,
                addr,
                found.build_id.as_deref(),
            )?;
            (start, end, BoundsSource::SymbolTable)
        }
    };
    within(found.text, start, end).then_some(FunctionBounds {
        start,
        end,
        source,
        object: found.object,
    })
}

/// What the loader's callback learnt about the object whose text holds the address.
struct Found {
    object: String,
    base: usize,
    /// The executable segment holding the address: `[start, end)`.
    text: (usize, usize),
    /// The bounds of the FDE covering the address, if one does and lies within `text`.
    fde: Option<(usize, usize)>,
    /// The object's GNU build ID as loaded, to check its file against.
    build_id: Option<Vec<u8>>,
}

/// Whether `[start, end)` is a non-empty range inside `text`.
fn within(text: (usize, usize), start: usize, end: usize) -> bool {
    text.0 <= start && start < end && end <= text.1
}

/// Finds the object whose readable, executable segment holds `addr` and, while the loader
/// keeps it mapped, looks up its FDE and build ID.
fn find(addr: usize) -> Option<Found> {
    let mut found = None;
    super::loader::each_object(|o| {
        let is_rx = |flags: u32| flags & libc::PF_R != 0 && flags & libc::PF_X != 0;
        let Some(text) = o
            .loads()
            .find(|&(start, end, flags)| is_rx(flags) && start <= addr && addr < end)
            .map(|(start, end, _)| (start, end))
        else {
            return ControlFlow::Continue(());
        };
        let readable: Vec<(usize, usize)> = o
            .loads()
            .filter(|&(start, end, flags)| flags & libc::PF_R != 0 && start < end)
            .map(|(start, end, _)| (start, end))
            .collect();
        let memory = Memory(&readable);
        let base = o.base();
        let fde = o
            .phdrs()
            .iter()
            .find(|p| p.p_type == libc::PT_GNU_EH_FRAME)
            .and_then(|p| {
                let hdr = base.wrapping_add(p.p_vaddr as usize);
                // SAFETY: `readable` lists this object's readable `PT_LOAD` segments, which
                // the loader maps in full (`p_memsz`, the tail zero-filled) and cannot unmap
                // while the walk visits it (see the module's docs).
                unsafe { fde_bounds(addr, hdr, p.p_memsz as usize, memory) }
            })
            .filter(|&(start, end)| within(text, start, end));
        let build_id = o
            .phdrs()
            .iter()
            .filter(|p| p.p_type == libc::PT_NOTE)
            .find_map(|p| {
                let at = base.wrapping_add(p.p_vaddr as usize);
                // SAFETY: as above.
                let notes = unsafe { memory.bytes(at, p.p_memsz as usize)? };
                build_id(notes, p.p_align)
            });
        found = Some(Found {
            object: o.name(),
            base,
            text,
            fde,
            build_id,
        });
        ControlFlow::Break(())
    });
    found
}

/// One object's readable segments, `[start, end)` each: every slice handed to gimli is cut
/// from them, so whatever the tables say, nothing outside them is read.
#[derive(Clone, Copy)]
struct Memory<'a>(&'a [(usize, usize)]);

impl Memory<'_> {
    /// The bytes from `at` to the end of the readable segment holding it.
    ///
    /// # Safety
    ///
    /// Every segment listed is mapped readable for as long as the slice (whose lifetime the
    /// caller picks) is used.
    unsafe fn rest<'m>(&self, at: usize) -> Option<&'m [u8]> {
        let &(_, end) = self.0.iter().find(|&&(s, e)| s <= at && at < e)?;
        // SAFETY: the caller's guarantee; `[at, end)` lies inside one listed segment.
        Some(unsafe { std::slice::from_raw_parts(at as *const u8, end - at) })
    }

    /// The `len` bytes at `at`, if one readable segment holds them all.
    ///
    /// # Safety
    ///
    /// As for [`rest`](Self::rest).
    unsafe fn bytes<'m>(&self, at: usize, len: usize) -> Option<&'m [u8]> {
        // SAFETY: the caller's guarantee.
        unsafe { self.rest(at) }?.get(..len)
    }

    /// The pointer-sized word at `at`.
    ///
    /// # Safety
    ///
    /// As for [`rest`](Self::rest).
    unsafe fn word(&self, at: usize) -> Option<u64> {
        // SAFETY: the caller's guarantee.
        let bytes = unsafe { self.bytes(at, 8) }?;
        Some(u64::from_ne_bytes(bytes.try_into().ok()?))
    }
}

/// The bounds of the FDE covering `addr`, through the `.eh_frame_hdr` at `hdr` (`hdr_len`
/// bytes, from its program header).
///
/// # Safety
///
/// As for [`Memory::rest`].
unsafe fn fde_bounds(
    addr: usize,
    hdr: usize,
    hdr_len: usize,
    memory: Memory<'_>,
) -> Option<(usize, usize)> {
    // A panic must not unwind out of the loader's callback (that aborts), and gimli's
    // arithmetic on damaged tables is not promised never to overflow.
    std::panic::catch_unwind(|| {
        // SAFETY: the caller's guarantee.
        let hdr_bytes = unsafe { memory.rest(hdr) }?;
        // The program header gives the table's size; where it lies, the segment still bounds it.
        let hdr_bytes = hdr_bytes.get(..hdr_len).unwrap_or(hdr_bytes);
        let bases = BaseAddresses::default().set_eh_frame_hdr(hdr as u64);
        let parsed = EhFrameHdr::new(hdr_bytes, NativeEndian)
            .parse(&bases, 8)
            .ok()?;
        let eh_frame = match parsed.eh_frame_ptr() {
            Pointer::Direct(at) => at,
            // SAFETY: the caller's guarantee.
            Pointer::Indirect(at) => unsafe { memory.word(usize::try_from(at).ok()?) }?,
        };
        let eh_frame = usize::try_from(eh_frame).ok()?;
        // `.eh_frame`'s length is written nowhere: the rest of its segment stands for it, and
        // each FDE's own length says where it ends.
        // SAFETY: the caller's guarantee.
        let frame_bytes = unsafe { memory.rest(eh_frame) }?;
        let bases = bases.set_eh_frame(eh_frame as u64);
        let mut frame = EhFrame::new(frame_bytes, NativeEndian);
        frame.set_address_size(8);
        let table = parsed.table()?;
        // The table's search gives the FDE nearest below `addr`; its offset is computed here,
        // checked, rather than by gimli's `pointer_to_offset`, which subtracts unchecked.
        let fde_at = table.lookup(addr as u64, &bases).ok()?.direct().ok()?;
        let offset = usize::try_from(fde_at.checked_sub(eh_frame as u64)?).ok()?;
        let fde = frame
            .fde_from_offset(&bases, EhFrameOffset(offset), |frame, bases, offset| {
                frame.cie_from_offset(bases, offset)
            })
            .ok()?;
        if !fde.contains(addr as u64) {
            return None;
        }
        let start = usize::try_from(fde.initial_address()).ok()?;
        let end = start.checked_add(usize::try_from(fde.len()).ok()?)?;
        Some((start, end))
    })
    .ok()
    .flatten()
}

/// The GNU build ID among the notes `data` of a `PT_NOTE` segment aligned to `align`.
fn build_id(data: &[u8], align: u64) -> Option<Vec<u8>> {
    use object::elf::{FileHeader64, NT_GNU_BUILD_ID};
    use object::read::elf::NoteIterator;
    let endian = object::Endianness::default();
    let mut notes =
        NoteIterator::<FileHeader64<object::Endianness>>::new(endian, align, data).ok()?;
    while let Ok(Some(note)) = notes.next() {
        if note.name() == b"GNU" && note.n_type(endian) == NT_GNU_BUILD_ID {
            return Some(note.desc().to_vec());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn probe(x: u64) -> u64 {
        std::hint::black_box(x).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 7
    }

    static DATA: [u8; 64] = [1; 64];

    #[test]
    fn fnmap_finds_a_rust_function_by_its_fde() {
        let f = probe as fn(u64) -> u64 as usize;
        let b = function_containing(f).expect("bounds");
        assert_eq!(b.start, f);
        assert!(b.end > b.start);
        assert_eq!(b.source, BoundsSource::EhFrame);
        assert_eq!(function_containing(b.end - 1), Some(b.clone()));
        assert_ne!(function_containing(b.end).map(|n| n.start), Some(b.start));
        let object = super::super::loaded_objects()
            .into_iter()
            .find(|o| o.text_segment(f, 1).is_some())
            .expect("object");
        assert_eq!(b.object, object.name);
    }

    #[test]
    fn fnmap_fde_and_symbol_agree_for_a_rust_function() {
        let f = probe as fn(u64) -> u64 as usize;
        let found = find(f).expect("object");
        let fde = found.fde.expect("fde");
        let sym = super::super::symbols::function_in_file(
            &found.object,
            found.base,
            f,
            found.build_id.as_deref(),
        )
        .expect("symbol");
        assert_eq!(fde, sym);
    }

    #[test]
    fn fnmap_reads_the_loaded_build_id() {
        let found = find(probe as fn(u64) -> u64 as usize).expect("object");
        let id = found
            .build_id
            .expect("a build ID (the toolchain links with one)");
        assert!(id.len() >= 8, "{id:?}");
    }

    #[test]
    fn fnmap_knows_nothing_outside_text() {
        assert_eq!(function_containing(0), None);
        assert_eq!(function_containing(1), None);
        assert_eq!(function_containing(usize::MAX), None);
        assert_eq!(function_containing(DATA.as_ptr() as usize + 8), None);
        let stack = 0u64;
        assert_eq!(function_containing(&stack as *const u64 as usize), None);
    }

    #[test]
    fn fnmap_refuses_bounds_outside_the_segment() {
        assert!(within((0x1000, 0x2000), 0x1000, 0x2000));
        assert!(!within((0x1000, 0x2000), 0x0fff, 0x1800));
        assert!(!within((0x1000, 0x2000), 0x1800, 0x2001));
        assert!(!within((0x1000, 0x2000), 0x1800, 0x1800));
    }

    #[test]
    fn fnmap_survives_damaged_tables() {
        // A fake object: one readable segment holding a header and garbage or truncated data.
        let mut buf = vec![0u8; 256];
        let region = (buf.as_ptr() as usize, buf.as_ptr() as usize + buf.len());
        let memory = Memory(std::slice::from_ref(&region));
        let patterns: [&[u8]; 5] = [
            &[],
            &[1],
            // version 1, eh_frame_ptr pcrel|sdata4, count udata4, table datarel|sdata4
            &[
                1, 0x1b, 0x03, 0x3b, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0, 0,
            ],
            &[
                1, 0x1b, 0x03, 0x3b, 4, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x80, 0xf0, 0xff, 0xff, 0xff,
            ],
            &[2, 0, 0, 0],
        ];
        for p in patterns {
            buf.fill(0xff);
            buf[..p.len()].copy_from_slice(p);
            // SAFETY: `buf` stays alive and unchanged during the call.
            let got = unsafe { fde_bounds(region.0 + 100, region.0, p.len(), memory) };
            assert_eq!(got, None, "{p:?}");
        }
        // An address outside every segment reads nothing.
        // SAFETY: nothing is read: no segment holds address 8.
        assert_eq!(unsafe { fde_bounds(8, 8, 16, memory) }, None);
    }
}
