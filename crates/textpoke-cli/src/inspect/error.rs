//! Why a file cannot be inspected at all. Anything wrong inside a readable file's tables is a
//! problem that `verify` reports, not an error.

/// A file that cannot be read as an ELF file with textpoke tables.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The file could not be opened or read.
    #[error("{file}: cannot read it: {source}")]
    Read {
        /// The file, as named on the command line.
        file: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file is not an ELF file, or its headers are damaged.
    #[error("{file}: not an ELF file ({why})")]
    NotElf {
        /// The file, as named on the command line.
        file: String,
        /// What the ELF parser refused.
        why: String,
    },
    /// An ELF file of a kind textpoke never builds: another machine, 32 bits, or an object
    /// file that is not linked yet.
    #[error(
        "{file}: {what}: textpoke's tables are read from x86-64 executables and shared objects"
    )]
    Unsupported {
        /// The file, as named on the command line.
        file: String,
        /// What kind of file it is.
        what: String,
    },
    /// A section whose contents cannot be read (they lie past the end of the file).
    #[error("{file}: section {section}: {why}")]
    Section {
        /// The file, as named on the command line.
        file: String,
        /// The section's name.
        section: String,
        /// What is wrong with it.
        why: String,
    },
}
