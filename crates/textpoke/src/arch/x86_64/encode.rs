//! Encodings of the instructions textpoke writes, and disassembly for messages.

use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};

use crate::engine::Code;

/// Length of a static-branch site: `jmp rel32` or a 5-byte NOP.
pub const JUMP_LABEL_LEN: usize = 5;

/// `nopl 0x0(%rax,%rax,1)`, the 5-byte NOP recommended by the optimization manuals.
const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];

/// Length of a `call rel32` site.
pub const CALL_LEN: usize = 5;

/// The bytes of a static-branch site at `site`: `jmp target` when `jump`, else a NOP.
/// `None` when `target` is out of rel32 range (the caller names the site in its error).
pub fn jump_label_code(site: usize, target: usize, jump: bool) -> Option<Code> {
    if !jump {
        return Code::new(&NOP5);
    }
    rel32_code(0xe9, site, target)
}

/// `call target` at `site`; `None` when `target` is out of rel32 range.
pub fn call_code(site: usize, target: usize) -> Option<Code> {
    rel32_code(0xe8, site, target)
}

/// A 5-byte `opcode rel32` at `site` reaching `target`.
fn rel32_code(opcode: u8, site: usize, target: usize) -> Option<Code> {
    let rel = (target as i64).wrapping_sub(site as i64 + 5);
    let r = i32::try_from(rel).ok()?.to_le_bytes();
    Code::new(&[opcode, r[0], r[1], r[2], r[3]])
}

/// Intel-syntax text of the instructions in `bytes`, as if they sat at `addr`.
pub fn disassemble(addr: usize, bytes: &[u8]) -> String {
    let mut decoder = Decoder::with_ip(64, bytes, addr as u64, DecoderOptions::NONE);
    let mut formatter = IntelFormatter::new();
    let mut out = String::new();
    for insn in &mut decoder {
        if !out.is_empty() {
            out.push_str("; ");
        }
        if insn.is_invalid() {
            out.push_str("(bad)");
            break;
        }
        formatter.format(&insn, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_encodes_rel32_from_end_of_instruction() {
        let code = jump_label_code(0x1000, 0x1100, true).unwrap();
        assert_eq!(code.as_slice(), &[0xe9, 0xfb, 0x00, 0x00, 0x00]);
        assert_eq!(
            disassemble(0x1000, code.as_slice()),
            "jmp 0000000000001100h"
        );
    }

    #[test]
    fn backward_jump_and_range_limit() {
        let code = jump_label_code(0x1000, 0x0f00, true).unwrap();
        assert_eq!(code.as_slice(), &[0xe9, 0xfb, 0xfe, 0xff, 0xff]);
        assert!(jump_label_code(0x1000, 0x1000 + (1usize << 31) + 5, true).is_none());
        assert!(jump_label_code(0x1000, 0x1000 + (1usize << 31) + 4, true).is_some());
    }

    #[test]
    fn call_encodes_rel32() {
        let code = call_code(0x1000, 0x2000).unwrap();
        assert_eq!(
            disassemble(0x1000, code.as_slice()),
            "call 0000000000002000h"
        );
        assert!(call_code(0x1000, 0x1000 + (1usize << 32)).is_none());
    }

    #[test]
    fn nop_is_the_canonical_five_byte_form() {
        let code = jump_label_code(0x1000, 0x2000, false).unwrap();
        assert_eq!(disassemble(0x1000, code.as_slice()), "nop [rax+rax]");
    }
}
