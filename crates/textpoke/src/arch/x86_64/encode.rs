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

/// Length of a `mov` of an immediate into register `reg` (0 to 15): `movabs r64, imm64` when
/// `wide`, else `mov r32, imm32`, with a REX prefix for `r8`-`r15` (and for every `movabs`).
pub const fn mov_imm_len(reg: u8, wide: bool) -> usize {
    if wide { 10 } else { 5 + (reg >= 8) as usize }
}

/// The bytes of `mov reg, value` in the form [`mov_imm_len`] describes: the one encoding the
/// assembler emits for these mnemonics (`B8+r`, never `C7 /0`), so a site's bytes follow from
/// its register and value alone. `None` for a register beyond `r15` or a value too wide for
/// `mov r32, imm32`.
pub fn mov_imm_code(reg: u8, value: u64, wide: bool) -> Option<Code> {
    if reg >= 16 || (!wide && value > u32::MAX as u64) {
        return None;
    }
    let mut bytes = [0u8; 10];
    let mut len = 0;
    let rex = if wide { 0x48 } else { 0x40 } | (reg >> 3);
    if rex != 0x40 {
        bytes[0] = rex;
        len = 1;
    }
    bytes[len] = 0xb8 + (reg & 7);
    let imm = value.to_le_bytes();
    let width = if wide { 8 } else { 4 };
    bytes[len + 1..len + 1 + width].copy_from_slice(&imm[..width]);
    Code::new(&bytes[..mov_imm_len(reg, wide)])
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

    #[test]
    fn mov_imm_for_every_register_decodes_as_that_mov() {
        const NAMES64: [&str; 16] = [
            "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11",
            "r12", "r13", "r14", "r15",
        ];
        const NAMES32: [&str; 16] = [
            "eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "r8d", "r9d", "r10d", "r11d",
            "r12d", "r13d", "r14d", "r15d",
        ];
        for reg in 0..16u8 {
            let code = mov_imm_code(reg, 0x1111_1111_2222_2222, true).unwrap();
            assert_eq!(code.len(), mov_imm_len(reg, true));
            assert_eq!(
                disassemble(0x1000, code.as_slice()),
                format!("mov {},1111111122222222h", NAMES64[reg as usize])
            );
            let code = mov_imm_code(reg, 0x2222_2222, false).unwrap();
            assert_eq!(code.len(), mov_imm_len(reg, false));
            assert_eq!(
                disassemble(0x1000, code.as_slice()),
                format!("mov {},22222222h", NAMES32[reg as usize])
            );
        }
        assert!(mov_imm_code(16, 0, true).is_none());
        assert!(mov_imm_code(0, 1 << 32, false).is_none());
    }
}
