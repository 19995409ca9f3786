//! The machine code around sites: instruction boundaries, decoded (iced-x86) from the start
//! of the function that holds a site, and the bytes each kind of site is built with.
//!
//! Holding the right bytes is not enough: a stale entry can land on an identical 5-byte NOP
//! inside another instruction's immediate. Only decoding the function from its first byte tells
//! an instruction from such bytes.

use std::collections::HashMap;

use iced_x86::{Decoder, DecoderOptions, Formatter as _, Instruction, IntelFormatter};

use super::elf::Image;
use super::symbols::Bounds;

/// `call rel32`.
pub const CALL: u8 = 0xe8;
/// `int3`, which pads sites.
pub const INT3: u8 = 0xcc;

// Sites' bytes come from the library's own encoders: what the runtime expects to find.

/// The 5-byte NOP every disabled static-branch site holds.
pub fn nop5() -> Vec<u8> {
    textpoke::insn::jump_label(0, 0, false).unwrap_or_default()
}

/// `jmp target` at `at`; `None` when out of `rel32` reach.
pub fn jmp(at: u64, target: u64) -> Option<Vec<u8>> {
    textpoke::insn::jump_label(at as usize, target as usize, true)
}

/// `call target` at `at`; `None` when out of `rel32` reach.
pub fn call(at: u64, target: u64) -> Option<Vec<u8>> {
    textpoke::insn::call_rel32(at as usize, target as usize)
}

/// Where the `jmp rel32` or `call rel32` at `at` goes, if `bytes` is one.
pub fn rel32_target(opcode: u8, at: u64, bytes: &[u8]) -> Option<u64> {
    match bytes {
        [op, a, b, c, d, ..] if *op == opcode => {
            let rel = i32::from_le_bytes([*a, *b, *c, *d]);
            Some(at.wrapping_add(5).wrapping_add_signed(rel.into()))
        }
        _ => None,
    }
}

/// The `mov` an immediate-value site is built with, holding `value`; `None` for a register
/// beyond `r15`.
pub fn mov_imm(reg: u8, wide: bool, value: u64) -> Option<Vec<u8>> {
    textpoke::insn::mov_imm(reg, value, wide)
}

/// `bytes` as hex, space-separated.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// `bytes` at `addr` for messages: hex, and what they decode to.
pub fn show(addr: u64, bytes: &[u8]) -> String {
    format!("`{}` = `{}`", hex(bytes), disassemble(addr, bytes))
}

/// `bytes` at `addr` as Intel-syntax instructions separated by `; `, numbers in `0x` hex as
/// objdump writes them; `(bad)` where they stop decoding.
pub fn disassemble(addr: u64, bytes: &[u8]) -> String {
    let mut formatter = IntelFormatter::new();
    let o = formatter.options_mut();
    o.set_hex_prefix("0x");
    o.set_hex_suffix("");
    o.set_uppercase_hex(false);
    o.set_branch_leading_zeros(false);
    o.set_show_branch_size(false);
    let mut out = Vec::new();
    for insn in Decoder::with_ip(64, bytes, addr, DecoderOptions::NONE) {
        if insn.is_invalid() {
            out.push("(bad)".to_owned());
            break;
        }
        let mut text = String::new();
        formatter.format(&insn, &mut text);
        out.push(text);
    }
    out.join("; ")
}

/// Where an address stands among its function's instructions.
pub enum Boundary {
    /// It starts an instruction of the function.
    Start(Bounds),
    /// It lies inside the instruction at `insn` (with its bytes).
    Inside {
        /// The function.
        bounds: Bounds,
        /// The instruction's address.
        insn: u64,
        /// Its bytes.
        bytes: Vec<u8>,
    },
    /// Nothing can be said: no symbol or unwind entry covers it, or its function's bytes
    /// before it do not decode.
    Unknown,
}

/// A function's instruction starts, decoded from its first byte. Decoding stops being evidence
/// at the first bytes that do not decode (data in text): sites past `known_end` are not judged.
struct Decoded {
    starts: Vec<u64>,
    known_end: u64,
}

/// Decodes functions on demand, each once.
pub struct Functions<'a> {
    image: &'a Image,
    decoded: HashMap<u64, Decoded>,
}

impl<'a> Functions<'a> {
    /// Nothing decoded yet.
    pub fn new(image: &'a Image) -> Self {
        Functions {
            image,
            decoded: HashMap::new(),
        }
    }

    /// Where `addr` stands in the function that contains it.
    pub fn boundary(&mut self, addr: u64) -> Boundary {
        let Some(bounds) = self.image.symbols.function_containing(addr) else {
            return Boundary::Unknown;
        };
        let image = self.image;
        let decoded = self.decoded.entry(bounds.start).or_insert_with(|| {
            match image.bytes(bounds.start, bounds.end - bounds.start) {
                Some(code) => decode(code, bounds.start),
                None => Decoded {
                    starts: Vec::new(),
                    known_end: bounds.start,
                },
            }
        });
        if addr >= decoded.known_end {
            return Boundary::Unknown;
        }
        let k = decoded.starts.partition_point(|&s| s <= addr);
        let Some(&insn) = k.checked_sub(1).and_then(|i| decoded.starts.get(i)) else {
            return Boundary::Unknown;
        };
        if insn == addr {
            return Boundary::Start(bounds);
        }
        let next = decoded.starts.get(k).copied().unwrap_or(decoded.known_end);
        Boundary::Inside {
            bytes: self
                .image
                .bytes(insn, next - insn)
                .map(<[u8]>::to_vec)
                .unwrap_or_default(),
            bounds,
            insn,
        }
    }
}

fn decode(code: &[u8], start: u64) -> Decoded {
    let mut decoder = Decoder::with_ip(64, code, start, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    let mut starts = Vec::new();
    while decoder.can_decode() {
        let at = start + decoder.position() as u64;
        decoder.decode_out(&mut insn);
        if insn.is_invalid() {
            return Decoded {
                starts,
                known_end: at,
            };
        }
        starts.push(at);
    }
    Decoded {
        starts,
        known_end: start + code.len() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `jmp rel32`.
    const JMP: u8 = 0xe9;

    #[test]
    fn rel32_round_trips() {
        let code = jmp(0x1000, 0x900).unwrap();
        assert_eq!(rel32_target(JMP, 0x1000, &code), Some(0x900));
        assert_eq!(rel32_target(CALL, 0x1000, &code), None);
        assert_eq!(jmp(0, 1 << 40), None);
        assert_eq!(
            rel32_target(CALL, 0x1000, &call(0x1000, 0x2000).unwrap()),
            Some(0x2000)
        );
    }

    #[test]
    fn mov_imm_matches_the_assembler() {
        // mov eax, 0x2a; mov r9d, 0x2a; movabs rcx, 0x2a; movabs r15, 0x2a (as GNU as emits).
        let mov = |reg, wide| mov_imm(reg, wide, 42).unwrap();
        assert_eq!(mov(0, false), [0xb8, 42, 0, 0, 0]);
        assert_eq!(mov(9, false), [0x41, 0xb9, 42, 0, 0, 0]);
        assert_eq!(mov(1, true), [0x48, 0xb9, 42, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(mov(15, true), [0x49, 0xbf, 42, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(mov_imm(16, true, 42), None);
    }

    #[test]
    fn decoding_finds_starts_and_stops_at_bad_bytes() {
        // push rbp; movabs rax, imm (holding a NOP5 at +5); nop5; then a byte that does not
        // decode in 64-bit mode.
        let code = [
            0x55, 0x48, 0xb8, 0x90, 0x90, 0x90, 0x0f, 0x1f, 0x44, 0x00, 0x00, 0x0f, 0x1f, 0x44,
            0x00, 0x00, 0x06,
        ];
        let d = decode(&code, 0x100);
        assert_eq!(d.starts, [0x100, 0x101, 0x10b]);
        assert_eq!(d.known_end, 0x110);
    }

    #[test]
    fn disassembly_reads_like_objdump() {
        let jump = jmp(0x1000, 0x1234).unwrap();
        assert_eq!(disassemble(0x1000, &jump), "jmp 0x1234");
        assert_eq!(show(0, &nop5()[..2]), "`0f 1f` = `(bad)`");
        assert_eq!(disassemble(0, &[0x90, 0xc3]), "nop; ret");
    }
}
