//! Walking the loaded objects with `dl_iterate_phdr`, in one place. An object is described
//! only while the loader holds its list lock (it cannot be unmapped meanwhile), so nothing of
//! a [`Loaded`] may be kept past the visit that was given it.

use std::ffi::CStr;
use std::ops::ControlFlow;

/// One loaded object, valid during one call of an [`each_object`] visitor.
pub(super) struct Loaded<'a> {
    info: &'a libc::dl_phdr_info,
    size: usize,
    /// Its place in load order: 0 is the main program.
    pub(super) index: usize,
}

impl Loaded<'_> {
    /// Load bias.
    pub(super) fn base(&self) -> usize {
        self.info.dlpi_addr as usize
    }

    /// Whether it is the main program (listed first).
    pub(super) fn main(&self) -> bool {
        self.index == 0
    }

    /// Its program headers (none if the loader gave none).
    pub(super) fn phdrs(&self) -> &[libc::Elf64_Phdr] {
        if self.info.dlpi_phdr.is_null() {
            return &[];
        }
        // SAFETY: `dl_iterate_phdr` passes `dlpi_phnum` mapped headers, which stay mapped while
        // the visit (and so this borrow of `self`) lasts.
        unsafe {
            std::slice::from_raw_parts(self.info.dlpi_phdr, usize::from(self.info.dlpi_phnum))
        }
    }

    /// Its path: the executable's own for the main program (the loader names it `""`).
    pub(super) fn name(&self) -> String {
        let name = self.info.dlpi_name;
        // SAFETY: `dl_iterate_phdr` passes a null or NUL-terminated name; it is only read when
        // not null.
        if name.is_null() || unsafe { *name } == 0 {
            if self.main() {
                std::fs::read_link("/proc/self/exe")
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| "<main program>".into())
            } else {
                "<anonymous object>".into()
            }
        } else {
            // SAFETY: as above: a non-null name is NUL-terminated.
            unsafe { CStr::from_ptr(name) }
                .to_string_lossy()
                .into_owned()
        }
    }

    /// The loader's counts of objects loaded and unloaded so far, where its struct has them.
    pub(super) fn generation(&self) -> Option<(u64, u64)> {
        // Read only when the loader's struct has them: an older one ends before them.
        if self.size >= std::mem::offset_of!(libc::dl_phdr_info, dlpi_subs) + 8 {
            Some((self.info.dlpi_adds, self.info.dlpi_subs))
        } else {
            None
        }
    }

    /// Its `PT_LOAD` segments: (start, end, `p_flags`), run-time addresses. The load bias may
    /// wrap (prelinked objects, the vDSO on old kernels).
    pub(super) fn loads(&self) -> impl Iterator<Item = (usize, usize, u32)> + '_ {
        let base = self.base();
        self.phdrs()
            .iter()
            .filter(|p| p.p_type == libc::PT_LOAD)
            .map(move |p| {
                let start = base.wrapping_add(p.p_vaddr as usize);
                (start, start.wrapping_add(p.p_memsz as usize), p.p_flags)
            })
    }
}

/// Calls `visit` for each loaded object, in load order (the main program first), until it
/// breaks. Takes the loader's list lock for the walk: `visit` must not load or unload objects.
pub(super) fn each_object(mut visit: impl FnMut(&Loaded<'_>) -> ControlFlow<()>) {
    struct Walk<'v> {
        visit: &'v mut dyn FnMut(&Loaded<'_>) -> ControlFlow<()>,
        index: usize,
    }
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: `dl_iterate_phdr` passes a valid `dl_phdr_info` for the call, and `data` is
        // the `Walk` below, used by nothing else meanwhile.
        let (info, walk) = unsafe { (&*info, &mut *(data as *mut Walk<'_>)) };
        let loaded = Loaded {
            info,
            size,
            index: walk.index,
        };
        walk.index += 1;
        match (walk.visit)(&loaded) {
            ControlFlow::Continue(()) => 0,
            ControlFlow::Break(()) => 1,
        }
    }
    let mut walk = Walk {
        visit: &mut visit,
        index: 0,
    };
    // SAFETY: the callback matches the expected signature and only uses `data` as the `Walk`,
    // which outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(each), &mut walk as *mut Walk<'_> as *mut _) };
}
