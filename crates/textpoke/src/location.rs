//! Human-readable code and data addresses for error messages.

use std::fmt;

/// An address, with the object that contains it and the nearest exported symbol where that is
/// cheap to find (`dladdr`).
#[derive(Clone, PartialEq, Eq)]
pub struct Location {
    /// The absolute address.
    pub addr: usize,
    names: Option<Box<Names>>,
}

#[derive(Clone, PartialEq, Eq)]
struct Names {
    object: Option<(String, usize)>,
    symbol: Option<(String, usize)>,
}

impl Location {
    /// Describes `addr`. Only called on error paths: it looks up the object and symbol.
    pub fn of(addr: usize) -> Self {
        let (object, symbol) = crate::os::describe(addr);
        let names =
            (object.is_some() || symbol.is_some()).then(|| Box::new(Names { object, symbol }));
        Location { addr, names }
    }

    /// Path of the loaded object containing the address, and the offset within it.
    pub fn object(&self) -> Option<(&str, usize)> {
        let (name, off) = self.names.as_ref()?.object.as_ref()?;
        Some((name, *off))
    }

    /// Nearest dynamic symbol at or below the address, and the offset from it.
    pub fn symbol(&self) -> Option<(&str, usize)> {
        let (name, off) = self.names.as_ref()?.symbol.as_ref()?;
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
