//! Names of code and data from an object's own symbol table (`.symtab`), read from its file
//! with `object`, so that messages name `app::net::TRACE` or `app::net::handle+0x1f` where
//! `dladdr` sees only exported symbols, and Rust exports almost none.
//!
//! Only for messages, and only when one is displayed: never under the patch lock, never in a
//! signal handler. A file that cannot be read or parsed (deleted, stripped, replaced) just
//! gives no name.

use std::sync::{Arc, Mutex};

use object::{Object as _, ObjectSymbol as _};

/// One object file's defined, sized symbols, demangled and sorted by address.
struct Symbols {
    path: String,
    /// (address in the file, size, name)
    sorted: Vec<(u64, u64, String)>,
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
        Some(Symbols {
            path: path.to_owned(),
            sorted,
        })
    }

    /// The symbol containing file address `at`, and the offset into it.
    fn find(&self, at: u64) -> Option<(&str, u64)> {
        let i = self.sorted.partition_point(|s| s.0 <= at).checked_sub(1)?;
        let (start, size, name) = &self.sorted[i];
        (at < start + size).then(|| (name.as_str(), at - start))
    }
}

/// The last files read: messages tend to name a few objects many times.
static CACHE: Mutex<Vec<Arc<Symbols>>> = Mutex::new(Vec::new());
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
