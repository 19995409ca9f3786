//! Human-readable code and data addresses for error messages.

use std::fmt;

/// An address, with the object that contains it and the nearest exported symbol where that is
/// cheap to find (`dladdr`).
#[derive(Clone, PartialEq, Eq)]
pub struct Location {
    /// The absolute address.
    pub addr: usize,
    /// Object path and offset within it, if the address lies in a loaded object.
    pub object: Option<(String, usize)>,
    /// Nearest dynamic symbol and offset from it, if any.
    pub symbol: Option<(String, usize)>,
}

impl Location {
    /// Describes `addr`. Only called on error paths: it looks up the object and symbol.
    pub fn of(addr: usize) -> Self {
        let (object, symbol) = crate::os::describe(addr);
        Location {
            addr,
            object,
            symbol,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.addr)?;
        match (&self.symbol, &self.object) {
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
