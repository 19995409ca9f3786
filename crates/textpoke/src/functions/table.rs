//! The patchable-function table and its lazy index.
//!
//! Format `v2` (`v1` had no `unit` flag in its states): `textpoke_fn_v2` has one 8-byte entry per copy of a patchable function's site
//! (one per inlined copy, one per generic instantiation), two self-relative 32-bit offsets:
//! the function's state (`FnMeta`, signature `tpf2`) and the function's own code, or 0 where
//! it cannot be named (`impl Trait` arguments). The site itself is an ordinary static-branch
//! site of the function's key, in `textpoke_jump_v2`.

use super::FnMeta;
use crate::Result;
use crate::engine::PatchGuard;
use crate::table::{IndexCell, Table};

/// Name of the section holding patchable-function entries.
pub const FN_SECTION: &str = "textpoke_fn_v2";
/// Bytes per entry.
pub const FN_ENTRY_SIZE: usize = 8;

core::arch::global_asm!(
    ".pushsection textpoke_fn_v2,\"aR\",@progbits",
    ".popsection"
);

unsafe extern "C" {
    #[link_name = "__start_textpoke_fn_v2"]
    static FN_START: [u8; 0];
    #[link_name = "__stop_textpoke_fn_v2"]
    static FN_STOP: [u8; 0];
}

/// Every patchable function of this copy's object: each state once, with the addresses of the
/// function's code (one per generic instantiation).
pub(crate) struct FnIndex {
    /// Sorted by state address.
    pub(crate) functions: Vec<(&'static FnMeta, Vec<usize>)>,
}

impl FnIndex {
    /// The function whose code (some instantiation's) starts at `code`.
    pub(crate) fn by_code(&self, code: usize) -> Option<&'static FnMeta> {
        self.functions
            .iter()
            .find(|(_, codes)| codes.contains(&code))
            .map(|(meta, _)| *meta)
    }
}

pub(crate) static INDEX: IndexCell<Result<FnIndex>> = IndexCell::new();

/// The index, built and validated on first use.
pub(crate) fn fn_index(lock: &PatchGuard) -> Result<&'static FnIndex> {
    INDEX
        .get_or_init(lock, build)
        .as_ref()
        .map_err(Clone::clone)
}

fn build() -> Result<FnIndex> {
    let table = Table {
        name: FN_SECTION,
        entry_size: FN_ENTRY_SIZE,
        // Only the addresses of the linker-defined symbols are taken; nothing is read.
        start: (&raw const FN_START) as usize,
        stop: (&raw const FN_STOP) as usize,
    };
    let entries = table.entries()?;
    let Some(object) = &entries.object else {
        return Ok(FnIndex {
            functions: Vec::new(),
        });
    };
    let mut pairs = Vec::with_capacity(entries.count);
    for index in 0..entries.count {
        let meta = entries.field(index, 0);
        // An offset of 0 resolves to the field itself: no code recorded.
        let code_field = entries.field(index, 1);
        let no_code = code_field == table.start + index * FN_ENTRY_SIZE + 4;
        table.check_target(
            object,
            index,
            meta,
            size_of::<FnMeta>(),
            FnMeta::SIGNATURE,
            true,
        )?;
        if !no_code {
            table.check_text(object, "function", code_field, 1)?;
        }
        pairs.push((meta, (!no_code).then_some(code_field)));
    }
    pairs.sort_unstable();
    let mut functions: Vec<(&'static FnMeta, Vec<usize>)> = Vec::new();
    for (meta, code) in pairs {
        // SAFETY: validated above: an 8-aligned `FnMeta` of this copy of textpoke (its
        // signature) in the object's writable data; such states are statics.
        let meta: &'static FnMeta = unsafe { &*(meta as *const FnMeta) };
        match functions.last_mut() {
            Some((last, codes)) if std::ptr::eq(*last, meta) => codes.extend(code),
            _ => functions.push((meta, code.into_iter().collect())),
        }
    }
    for (_, codes) in &mut functions {
        codes.sort_unstable();
        codes.dedup();
    }
    Ok(FnIndex { functions })
}
