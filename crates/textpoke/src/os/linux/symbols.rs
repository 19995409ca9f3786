//! Names of code and data from an object's own symbol table (`.symtab`), read from its file
//! with `object`, so that messages name `app::net::TRACE` or `app::net::handle+0x1f` where
//! `dladdr` sees only exported symbols, and Rust exports almost none.
//!
//! The same tables give the bounds of functions that have no unwind information (hand-written
//! assembly), for [`super::fnmap`].
//!
//! Never in a signal handler, and the cache is only ever tried, never waited for, so these may
//! run with or without the patch lock. A file that cannot be read or parsed (deleted,
//! stripped, replaced) just gives no answer.

use std::sync::{Arc, Mutex};

use object::{Object as _, ObjectSymbol as _, SymbolKind};

/// One object file's defined, sized symbols, demangled and sorted by address.
struct Symbols {
    path: String,
    /// (address in the file, size, name)
    sorted: Vec<(u64, u64, String)>,
    /// (address in the file, size) of the function symbols (`STT_FUNC`, `STT_GNU_IFUNC`):
    /// `sorted` also holds data, and a function's bounds must not come from a data symbol.
    functions: Vec<(u64, u64)>,
    /// The file's GNU build ID, to tell whether it is still the file that was loaded.
    build_id: Option<Vec<u8>>,
}

impl Symbols {
    fn read(path: &str) -> Option<Symbols> {
        let data = std::fs::read(path).ok()?;
        let file = object::File::parse(&*data).ok()?;
        let mut sorted: Vec<(u64, u64, String)> = file
            .symbols()
            .chain(file.dynamic_symbols())
            .filter(|s| s.is_definition() && s.size() > 0)
            .filter_map(|s| {
                let name = s.name().ok()?;
                Some((
                    s.address(),
                    s.size(),
                    format!("{:#}", rustc_demangle::demangle(name)),
                ))
            })
            .collect();
        sorted.sort_unstable();
        sorted.dedup_by_key(|s| s.0);
        // `.symtab` first: where both tables name an address, the stable sort keeps its entry.
        let mut functions: Vec<(u64, u64)> = file
            .symbols()
            .chain(file.dynamic_symbols())
            .filter(|s| s.is_definition() && s.size() > 0 && s.kind() == SymbolKind::Text)
            .map(|s| (s.address(), s.size()))
            .collect();
        functions.sort_by_key(|f| f.0);
        functions.dedup_by_key(|f| f.0);
        let build_id = file.build_id().ok().flatten().map(<[u8]>::to_vec);
        Some(Symbols {
            path: path.to_owned(),
            sorted,
            functions,
            build_id,
        })
    }

    /// The symbol containing file address `at`, and the offset into it.
    fn find(&self, at: u64) -> Option<(&str, u64)> {
        let i = self.sorted.partition_point(|s| s.0 <= at).checked_sub(1)?;
        let (start, size, name) = &self.sorted[i];
        // Checked: a symbol's address and size are the file's word, not a promise.
        start
            .checked_add(*size)
            .is_some_and(|end| at < end)
            .then(|| (name.as_str(), at - start))
    }

    /// The function symbol containing file address `at`: its start and end in the file.
    fn function(&self, at: u64) -> Option<(u64, u64)> {
        let i = self
            .functions
            .partition_point(|f| f.0 <= at)
            .checked_sub(1)?;
        let (start, size) = *self.functions.get(i)?;
        let end = start.checked_add(size)?;
        (at < end).then_some((start, end))
    }
}

/// The last files read: messages tend to name a few objects many times.
static CACHE: Mutex<Vec<Arc<Symbols>>> = Mutex::new(Vec::new());

/// Frees the cached symbol tables (this copy's object is being unloaded). `try_lock`, like
/// every other use: a message being named on another thread just keeps its copy.
pub(super) fn release() {
    if let Ok(mut cache) = CACHE.try_lock() {
        cache.clear();
    }
}
const CACHED_FILES: usize = 4;

fn symbols_of(path: &str) -> Option<Arc<Symbols>> {
    // `try_lock`: a child forked while another thread held it must not wait forever.
    if let Ok(cache) = CACHE.try_lock()
        && let Some(found) = cache.iter().find(|s| s.path == path)
    {
        return Some(found.clone());
    }
    let read = Arc::new(Symbols::read(path)?);
    if let Ok(mut cache) = CACHE.try_lock() {
        if cache.len() == CACHED_FILES {
            cache.remove(0);
        }
        cache.push(read.clone());
    }
    Some(read)
}

/// The symbol of object file `path`, loaded with bias `base`, that contains `addr`, and the
/// offset into it.
pub fn symbol_in_file(path: &str, base: usize, addr: usize) -> Option<(String, usize)> {
    let symbols = symbols_of(path)?;
    let (name, off) = symbols.find(addr.wrapping_sub(base) as u64)?;
    Some((name.to_owned(), off as usize))
}

/// The function symbol (`.symtab`, then `.dynsym`) of object file `path`, loaded with bias
/// `base`, that contains `addr`: its run-time start and end. With `build_id` (the loaded
/// object's), a file whose build ID differs gives nothing: a package upgrade replaces the
/// file at the path while the process still runs the old one, and its symbols would put
/// bounds in the wrong places.
pub fn function_in_file(
    path: &str,
    base: usize,
    addr: usize,
    build_id: Option<&[u8]>,
) -> Option<(usize, usize)> {
    let matches = |s: &Symbols| build_id.is_none_or(|id| s.build_id.as_deref() == Some(id));
    let mut symbols = symbols_of(path)?;
    if !matches(&symbols) {
        // The cache may hold the file as it was when first read; read it once more.
        let fresh = Arc::new(Symbols::read(path)?);
        if let Ok(mut cache) = CACHE.try_lock() {
            cache.retain(|s| s.path != path);
            cache.push(fresh.clone());
        }
        symbols = fresh;
        if !matches(&symbols) {
            return None;
        }
    }
    let (start, end) = symbols.function(addr.wrapping_sub(base) as u64)?;
    let start = usize::try_from(start).ok()?.wrapping_add(base);
    let end = usize::try_from(end).ok()?.wrapping_add(base);
    // A bias that wraps the function around the address space is odd data, not a function.
    (start <= addr && addr < end).then_some((start, end))
}
