//! A short run of instruction bytes, small enough to live inline in a patch descriptor.

/// Longest instruction sequence one patch may replace.
pub const MAX_CODE: usize = 32;

/// Up to [`MAX_CODE`] bytes of machine code. Its layout is part of the `v1` rendezvous (see
/// [`Poke`](super::Poke)).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(C)]
pub struct Code {
    len: u8,
    bytes: [u8; MAX_CODE],
}

impl Code {
    /// Copies `bytes`; `None` if longer than [`MAX_CODE`].
    pub const fn new(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > MAX_CODE {
            return None;
        }
        let mut out = [0u8; MAX_CODE];
        let mut i = 0;
        while i < bytes.len() {
            out[i] = bytes[i];
            i += 1;
        }
        Some(Code {
            len: bytes.len() as u8,
            bytes: out,
        })
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }
}
