//! Typed errors. Every refusal names the site, key, table or system call involved.

use std::fmt;

use crate::location::Location;

/// Bytes found at, or expected at, a code address; displayed as hex plus a disassembly.
#[derive(Clone, PartialEq, Eq)]
pub struct CodeBytes {
    /// Address the bytes belong to (used to render relative branches).
    pub addr: usize,
    /// The raw bytes.
    pub bytes: Vec<u8>,
}

impl fmt::Display for CodeBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.bytes.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{b:02x}")?;
        }
        write!(f, " `{}`", crate::arch::disassemble(self.addr, &self.bytes))
    }
}

impl fmt::Debug for CodeBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Everything textpoke can refuse. Nothing has been written when any of these is returned,
/// except [`Error::Inconsistent`], which says exactly what is left behind.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A site does not hold the bytes its key's state implies: the code was changed behind
    /// textpoke's back, or the table is stale. The whole batch was refused.
    #[error("site {site}: expected {expected}, found {found}; batch refused, nothing written")]
    SiteMismatch {
        /// The site.
        site: Location,
        /// What textpoke expected to find.
        expected: CodeBytes,
        /// What is there.
        found: CodeBytes,
    },
    /// A table entry points outside the executable segments of the object that declared it.
    #[error("{what} {addr} (from table {table}) is not inside an executable segment of {object}")]
    OutsideText {
        /// "site" or "jump target".
        what: &'static str,
        /// The offending address.
        addr: Location,
        /// Table (section) name.
        table: &'static str,
        /// The object whose table declared it.
        object: String,
    },
    /// Two sites in a table overlap.
    #[error("sites {first} and {second} overlap (table {table})")]
    Overlap {
        /// Lower site.
        first: Location,
        /// Higher site, which starts inside the lower one.
        second: Location,
        /// Table (section) name.
        table: &'static str,
    },
    /// A table entry names something that is not a key of this textpoke version.
    #[error("table {table}, entry {index}: {addr} is not a textpoke key ({why})")]
    UnknownKey {
        /// Table (section) name.
        table: &'static str,
        /// Entry number within the table.
        index: usize,
        /// Where the entry points.
        addr: Location,
        /// Why it was rejected.
        why: &'static str,
    },
    /// A table entry carries flags this version does not know: the table was built by another
    /// textpoke version.
    #[error(
        "table {table}, entry {index}: unknown flags {flags:#x} (built by another textpoke version?)"
    )]
    UnknownFlags {
        /// Table (section) name.
        table: &'static str,
        /// Entry number.
        index: usize,
        /// The flag bits.
        flags: u32,
    },
    /// A table is malformed as a whole (size, placement).
    #[error("table {table}: {why}")]
    BadTable {
        /// Table (section) name.
        table: &'static str,
        /// What is wrong.
        why: String,
    },
    /// A jump does not fit the instruction form used at the site.
    #[error("site {site}: target {target:#x} is out of range for a {len}-byte jump")]
    OutOfRange {
        /// The site.
        site: Location,
        /// The wanted target.
        target: usize,
        /// The instruction length.
        len: usize,
    },
    /// A static call cannot be pointed at this target.
    #[error("static call {call}: target {target} is {why}")]
    BadTarget {
        /// The call's trampoline.
        call: Location,
        /// The refused target.
        target: Location,
        /// Why.
        why: &'static str,
    },
    /// An alternative site cannot be applied.
    #[error("alternative at {site}: {why}; nothing written")]
    BadAlternative {
        /// The site.
        site: Location,
        /// What is wrong.
        why: String,
    },
    /// A CPU feature name textpoke does not know.
    #[error("unknown CPU feature `{name}` (see textpoke::features::known())")]
    UnknownFeature {
        /// The name.
        name: String,
    },
    /// The feature-override environment variable is malformed.
    #[error("{var}: {why}")]
    BadOverride {
        /// The variable.
        var: &'static str,
        /// What is wrong.
        why: String,
    },
    /// Two patches in one batch touch the same bytes.
    #[error("patches at {first} and {second} overlap within one batch")]
    OverlappingPatches {
        /// Lower patch.
        first: Location,
        /// Higher patch.
        second: Location,
    },
    /// `dec()` on a key whose count is already zero.
    #[error("key {key}: reference count underflow (dec without matching inc)")]
    Underflow {
        /// The key.
        key: Location,
    },
    /// `inc()` past `i32::MAX`.
    #[error("key {key}: reference count overflow")]
    Overflow {
        /// The key.
        key: Location,
    },
    /// No method of serializing every core is available, so live patching would be unsafe.
    #[error("cannot serialize all cores ({why}); refusing to patch live code")]
    CoreSyncUnavailable {
        /// What failed.
        why: String,
    },
    /// A system call textpoke needs was refused.
    #[error("{call} failed: {errno}")]
    Syscall {
        /// The call, with its target where useful.
        call: String,
        /// The error the kernel returned.
        errno: rustix::io::Errno,
    },
    /// This copy of textpoke cannot work with the process's patcher: the copy of textpoke,
    /// in another loaded object, that serializes every batch in the process (see the crate
    /// docs on one patcher per process).
    #[error("cannot join the process's textpoke patcher in {object}: {why}")]
    Rendezvous {
        /// The object that holds the patcher.
        object: String,
        /// Why.
        why: String,
    },
    /// A patchable-function request cannot be met.
    #[error("{what}: {why}")]
    Functions {
        /// The function, pattern or address asked for.
        what: String,
        /// Why.
        why: String,
    },
    /// A function cannot be detoured: it is not a function start known to its object, its first
    /// instructions cannot be overwritten safely, or textpoke itself needs it.
    #[error("cannot detour {function}: {why}")]
    Detour {
        /// The function, by name where its object names it, and address.
        function: String,
        /// Why, naming the instruction at fault where there is one.
        why: String,
    },
    /// No free address range lies within reach of a `jmp rel32` (±2 GiB) from `near`, so
    /// textpoke cannot place code (a detour's trampoline) there.
    #[error("no free address for {len} bytes of code within ±2 GiB of {near}")]
    NoCodeSpace {
        /// The address the code must be reachable from.
        near: Location,
        /// The size of the block asked for.
        len: usize,
    },
    /// Other threads could not all be brought to a known point before code they may be running
    /// was overwritten (a thread blocks the signal used, does not answer in time, or is where no
    /// move can take it). Nothing was written past the breakpoints; the batch is rolled back.
    #[error("cannot bring every thread to a known point: {why}")]
    SettleFailed {
        /// What failed, naming the thread (id and name).
        why: String,
    },
    /// The control server could not start (see [`crate::control::serve`]).
    #[error("cannot serve textpoke control requests: {why}")]
    Control {
        /// What failed, naming the socket.
        why: String,
    },
    /// Patching failed part-way and could not be rolled back. The breakpoint handler stays
    /// armed for the affected sites, so threads remain safe, but the named site is damaged.
    #[error("patching failed at {site} and could not be rolled back: {why}")]
    Inconsistent {
        /// First affected site.
        site: Location,
        /// The underlying failure.
        why: String,
    },
}

/// Shorthand for results with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Records, in every address the error names, the key or static call it belongs to.
    pub(crate) fn name_items(mut self, item_at: impl Fn(usize) -> Option<crate::Item>) -> Self {
        let locations: Vec<&mut Location> = match &mut self {
            Error::SiteMismatch { site, .. }
            | Error::OutOfRange { site, .. }
            | Error::BadAlternative { site, .. }
            | Error::Inconsistent { site, .. } => vec![site],
            Error::OutsideText { addr, .. } => vec![addr],
            Error::Overlap { first, second, .. } | Error::OverlappingPatches { first, second } => {
                vec![first, second]
            }
            Error::BadTarget { call, .. } => vec![call],
            Error::Underflow { key } | Error::Overflow { key } => vec![key],
            _ => Vec::new(),
        };
        for location in locations {
            location.name_item(&item_at);
        }
        self
    }

    pub(crate) fn syscall(call: impl Into<String>, errno: rustix::io::Errno) -> Self {
        Error::Syscall {
            call: call.into(),
            errno,
        }
    }
}
