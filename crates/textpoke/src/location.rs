//! Human-readable code and data addresses for error messages.

use std::fmt;
use std::sync::OnceLock;

/// An address, with the object that contains it and the nearest exported symbol where that is
/// cheap to find (`dladdr`).
///
/// The names are looked up when first asked for (displayed, or read with [`object`](Self::object)
/// or [`symbol`](Self::symbol)), not when the error is made: errors are made under the patch
/// lock, and the loader's lookups take the loader's lock, which a `dlclose` holds while it
/// waits for the patch lock.
#[derive(Clone)]
pub struct Location {
    /// The absolute address.
    pub addr: usize,
    names: OnceLock<Option<Box<Names>>>,
}

#[derive(Clone, PartialEq, Eq)]
struct Names {
    object: Option<(String, usize)>,
    symbol: Option<(String, usize)>,
}

impl PartialEq for Location {
    fn eq(&self, other: &Self) -> bool {
        self.addr == other.addr
    }
}

impl Eq for Location {}

impl Location {
    /// Describes `addr`; the names are found when first needed.
    pub fn of(addr: usize) -> Self {
        Location {
            addr,
            names: OnceLock::new(),
        }
    }

    fn names(&self) -> Option<&Names> {
        self.names
            .get_or_init(|| {
                let (object, symbol) = crate::os::describe(self.addr);
                (object.is_some() || symbol.is_some()).then(|| Box::new(Names { object, symbol }))
            })
            .as_deref()
    }

    /// Path of the loaded object containing the address, and the offset within it.
    pub fn object(&self) -> Option<(&str, usize)> {
        let (name, off) = self.names()?.object.as_ref()?;
        Some((name, *off))
    }

    /// Nearest dynamic symbol at or below the address, and the offset from it.
    pub fn symbol(&self) -> Option<(&str, usize)> {
        let (name, off) = self.names()?.symbol.as_ref()?;
        Some((name, *off))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.addr)?;
        match (self.symbol(), self.object()) {
            (Some((sym, off)), _) => write!(f, " <{sym}+{off:#x}>"),
            (None, Some((obj, off))) => write!(f, " <{obj}+{off:#x}>"),
            (None, None) => Ok(()),
        }
    }
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
