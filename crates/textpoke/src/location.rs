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
    item: Option<Box<Item>>,
}

/// What an address belongs to: a key or a static call, as the build recorded it.
///
/// Where it was declared is recorded at compile time (a key's `StaticKey::new()` and a
/// `static_call!` are `#[track_caller]`), and so is a static call's Rust path. A key's path is
/// read from its object's symbol table when first displayed, so a stripped binary shows only
/// where it was declared.
#[derive(Clone)]
pub struct Item {
    /// `"key"` or `"static call"`.
    pub kind: &'static str,
    /// Address of the key, or of the static call's state.
    pub addr: usize,
    /// Where it was declared.
    pub declared: &'static std::panic::Location<'static>,
    recorded: Option<&'static str>,
    found: OnceLock<Option<String>>,
}

impl Item {
    pub(crate) fn new(
        kind: &'static str,
        addr: usize,
        declared: &'static std::panic::Location<'static>,
        recorded: Option<&'static str>,
    ) -> Self {
        Item {
            kind,
            addr,
            declared,
            recorded,
            found: OnceLock::new(),
        }
    }

    /// Its Rust path (`app::net::TRACE`), if the build recorded it or the symbol table has it.
    pub fn name(&self) -> Option<&str> {
        self.recorded.or_else(|| {
            self.found
                .get_or_init(|| match crate::os::describe(self.addr).1 {
                    Some((name, 0)) => Some(name),
                    _ => None,
                })
                .as_deref()
        })
    }
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{} {name}", self.kind)?,
            None => write!(f, "{} at {:#x}", self.kind, self.addr)?,
        }
        write!(f, ", declared at {}", self.declared)
    }
}

impl fmt::Debug for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
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
            item: None,
        }
    }

    /// Describes `addr`, which belongs to `item`.
    pub(crate) fn in_item(addr: usize, item: Item) -> Self {
        Location {
            item: Some(Box::new(item)),
            ..Location::of(addr)
        }
    }

    /// The key or static call the address belongs to, where textpoke knows it.
    pub fn item(&self) -> Option<&Item> {
        self.item.as_deref()
    }

    /// Records the item the address belongs to, unless one is known already.
    pub(crate) fn name_item(&mut self, item_at: &impl Fn(usize) -> Option<Item>) {
        if self.item.is_none() {
            self.item = item_at(self.addr).map(Box::new);
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
        }?;
        match &self.item {
            Some(item) => write!(f, " ({item})"),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
