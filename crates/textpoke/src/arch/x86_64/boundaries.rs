//! Where a function's instructions start, decoded from its first byte (iced-x86).
//!
//! A table names each site by address only. A stale or damaged entry can name bytes that look
//! exactly right (a 5-byte NOP inside another instruction's immediate) but that no thread ever
//! executes as an instruction; x86 code can only be told apart from such bytes by decoding the
//! whole function from its start.
//!
//! The bytes decoded are the ones in memory, which other tools may have changed since the link:
//! a debugger's or a uprobe's `int3` over the first byte of a longer instruction, or a hook's
//! `jmp` over a function's first instructions (a detour, textpoke's own included). The rest of
//! such an instruction then decodes as other instructions, so what follows says nothing
//! reliable, and decoding stops being evidence there.

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind};

/// `endbr64`: a hook at the entry goes after it, so the jump is then the second instruction.
const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];

/// The address of every instruction of the function `code` (its whole bytes, at `start`),
/// decoded in order from its first byte, ascending.
///
/// `Err(at)` when decoding says nothing reliable from `at` on (whatever it found before `at`
/// still holds, so decoding `code` only up to `at` then succeeds): the bytes at `at` do not
/// decode (data in text, a function end that cuts an instruction), or `at` follows an `int3`,
/// or follows a first instruction (after `endbr64`) that jumps out of the function, as a
/// breakpoint or a hook written over a longer instruction leaves it.
pub fn instruction_starts(code: &[u8], start: usize) -> Result<Vec<usize>, usize> {
    let end = start + code.len();
    let mut decoder = Decoder::with_ip(64, code, start as u64, DecoderOptions::NONE);
    let mut starts = Vec::new();
    let mut insn = Instruction::default();
    while decoder.can_decode() {
        let at = start + decoder.position();
        decoder.decode_out(&mut insn);
        if insn.is_invalid() {
            return Err(at);
        }
        starts.push(at);
        let first = at == start || (at == start + ENDBR64.len() && code.starts_with(&ENDBR64));
        let written_over = insn.mnemonic() == Mnemonic::Int3
            || (first && insn.mnemonic() == Mnemonic::Jmp && !jumps_within(&insn, start, end));
        if written_over && decoder.can_decode() {
            return Err(insn.next_ip() as usize);
        }
    }
    Ok(starts)
}

/// Whether decoding `code` (at `start`, an instruction boundary), one instruction after another,
/// lands exactly on its end, `start + code.len()`: whether that address is an instruction
/// boundary as seen from `start`. Nothing about the bytes is trusted or doubted here: an `int3`
/// or a jump is just an instruction.
pub fn lands_on_end(code: &[u8], start: usize) -> bool {
    let mut decoder = Decoder::with_ip(64, code, start as u64, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    while decoder.can_decode() {
        decoder.decode_out(&mut insn);
        // A last instruction cut by the end does not decode either.
        if insn.is_invalid() {
            return false;
        }
    }
    true
}

/// Whether `insn` is a direct branch to `[start, end)`: a compiler's jump to a block of the
/// function (as a rotated loop's entry is), not a hook's.
fn jumps_within(insn: &Instruction, start: usize, end: usize) -> bool {
    matches!(
        insn.op0_kind(),
        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
    ) && (start..end).contains(&(insn.near_branch_target() as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: usize = 0x40_0000;

    #[test]
    fn boundaries_every_instruction_from_the_start() {
        // push rbp; movabs rax, 0x441f0f909090; nop5; pop rbp; ret
        let code = [
            0x55, 0x48, 0xb8, 0x90, 0x90, 0x90, 0x0f, 0x1f, 0x44, 0x00, 0x00, 0x0f, 0x1f, 0x44,
            0x00, 0x00, 0x5d, 0xc3,
        ];
        assert_eq!(
            instruction_starts(&code, AT),
            Ok(vec![AT, AT + 1, AT + 11, AT + 16, AT + 17])
        );
        assert_eq!(instruction_starts(&[], AT), Ok(vec![]));
    }

    #[test]
    fn boundaries_stop_at_bytes_that_do_not_decode() {
        // nop; (0x06 is invalid in 64-bit mode); ret
        assert_eq!(instruction_starts(&[0x90, 0x06, 0xc3], AT), Err(AT + 1));
        assert_eq!(instruction_starts(&[0x90], AT), Ok(vec![AT]));
        // A function end that cuts `mov eax, imm32`.
        assert_eq!(instruction_starts(&[0x90, 0xb8, 1, 2], AT), Err(AT + 1));
    }

    #[test]
    fn boundaries_stop_after_a_breakpoint() {
        // nop; int3 (over what was `mov eax, 1`: its other bytes follow); ret
        let code = [0x90, 0xcc, 0x01, 0x00, 0x00, 0x00, 0xc3];
        assert_eq!(instruction_starts(&code, AT), Err(AT + 2));
        // What came before still decodes, the `int3` included.
        assert_eq!(instruction_starts(&code[..2], AT), Ok(vec![AT, AT + 1]));
    }

    #[test]
    fn boundaries_land_on_the_end_only_between_instructions() {
        assert!(lands_on_end(&[], AT));
        // int3 padding, then `push rbp; movabs rax, ...`
        let code = [
            0xcc, 0xcc, 0x55, 0x48, 0xb8, 0x90, 0x90, 0x90, 0x0f, 0x1f, 0x44, 0, 0,
        ];
        assert!(lands_on_end(&code[..3], AT));
        assert!(lands_on_end(&code, AT));
        assert!(!lands_on_end(&code[..8], AT), "inside the movabs");
        assert!(!lands_on_end(&[0x90, 0x06], AT), "bytes that do not decode");
    }

    #[test]
    fn boundaries_stop_after_a_hook_at_the_entry_but_not_a_compilers_jump() {
        // jmp far away (a hook over `sub rsp, 0x100`, whose tail follows); ret
        let hooked = [0xe9, 0x00, 0x10, 0x00, 0x00, 0x01, 0x00, 0x00, 0xc3];
        assert_eq!(instruction_starts(&hooked, AT), Err(AT + 5));
        let mut after_endbr = ENDBR64.to_vec();
        after_endbr.extend(hooked);
        assert_eq!(instruction_starts(&after_endbr, AT), Err(AT + 9));
        // jmp rel8 to the `ret` of the function itself; nop; ret
        let rotated = [0xeb, 0x01, 0x90, 0xc3];
        assert_eq!(
            instruction_starts(&rotated, AT),
            Ok(vec![AT, AT + 2, AT + 3])
        );
        // A jump out of the function later on is an ordinary tail call.
        let tail = [0x90, 0xe9, 0x00, 0x10, 0x00, 0x00, 0x90];
        assert_eq!(instruction_starts(&tail, AT), Ok(vec![AT, AT + 1, AT + 6]));
        // An indirect jump at the entry is a hook's too.
        let indirect = [0xff, 0x25, 0, 0, 0, 0, 0x90];
        assert_eq!(instruction_starts(&indirect, AT), Err(AT + 6));
    }
}
