//! AArch64 decoding with `yaxpeax-arm`: fixed 4-byte instructions, so no realignment is
//! needed, and the marked word is simply the faulting instruction.
//!
//! Each line shows its instruction as the 32-bit word an oops or `objdump` writes
//! (`d4210000`), not as bytes in memory order. PC-relative targets are shown as offsets from
//! the first word, like the offset column and like x86-64 branch targets (`b.eq -0x154`);
//! `adrp`, whose target is page-relative, keeps the decoder's `$+0x…` form.

use yaxpeax_arch::{Decoder, U8Reader};
use yaxpeax_arm::armv8::a64::{DecodeError, InstDecoder, Instruction, Opcode, Operand};

use super::{Insn, signed_hex};

/// The AArch64 `nop` instruction word (`hint #0`).
pub const NOP: u32 = 0xd503201f;

/// Whether `word` is an AArch64 NOP. That is exactly one word, [`NOP`]: the other instructions
/// of the hint space (`yield`, `bti c`, `paciasp`, `esb`, …) are not NOPs, since they act on
/// the CPUs that implement them, and the architecture has no other canonical NOP form.
pub fn is_nop(word: u32) -> bool {
    word == NOP
}

/// Decodes little-endian instruction words from `bytes` (a trailing partial word is shown as
/// `(truncated)`); `mark` is the byte offset of the faulting word, if any.
pub fn decode(bytes: &[u8], mark: Option<usize>) -> Vec<Insn> {
    let decoder = InstDecoder::default();
    bytes
        .chunks(4)
        .enumerate()
        .map(|(i, chunk)| {
            let offset = 4 * i;
            let marked = Some(offset) == mark;
            let Ok(word) = <[u8; 4]>::try_from(chunk).map(u32::from_le_bytes) else {
                return Insn {
                    offset,
                    len: chunk.len(),
                    bytes: super::hex_bytes(chunk),
                    text: "(truncated)".to_owned(),
                    is_nop: false,
                    marked,
                };
            };
            let mut reader = U8Reader::new(chunk);
            let text = match decoder.decode(&mut reader) {
                Ok(insn) => text(&insn, offset),
                Err(DecodeError::IncompleteDecoder) => "(unknown to the decoder)".to_owned(),
                Err(_) => "(bad)".to_owned(),
            };
            Insn {
                offset,
                len: 4,
                bytes: format!("{word:08x}"),
                text,
                is_nop: is_nop(word),
                marked,
            }
        })
        .collect()
}

/// The decoder's text for `insn` at `offset`, with a PC-relative `$±0x…` target replaced by the
/// target's offset from the first word.
fn text(insn: &Instruction, offset: usize) -> String {
    let text = insn.to_string();
    let relative = insn.operands.iter().find_map(|op| match op {
        Operand::PCOffset(delta) => Some(*delta),
        _ => None,
    });
    let (Some(delta), Some(at)) = (relative, text.find('$')) else {
        return text;
    };
    if insn.opcode == Opcode::ADRP {
        return text;
    }
    let end = text[at + 1..]
        .find(|c: char| !(c.is_ascii_hexdigit() || matches!(c, '+' | '-' | 'x')))
        .map_or(text.len(), |n| at + 1 + n);
    let target = (offset as i64).wrapping_add(delta);
    format!("{}{}{}", &text[..at], signed_hex(target), &text[end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    fn texts(insns: &[Insn]) -> Vec<&str> {
        insns.iter().map(|i| i.text.as_str()).collect()
    }

    #[test]
    fn reference_002_code_lines() {
        // `Code: 39402e61 39402a62 6b01005f 54fff500 (d4210000)`
        let bytes = words(&[0x39402e61, 0x39402a62, 0x6b01005f, 0x54fff500, 0xd4210000]);
        let insns = decode(&bytes, Some(16));
        assert_eq!(
            texts(&insns),
            [
                "ldrb w1, [x19, #0xb]",
                "ldrb w2, [x19, #0xa]",
                "cmp w2, w1",
                "b.eq -0x154",
                "brk #0x800"
            ]
        );
        assert_eq!(insns[4].bytes, "d4210000");
        assert!(insns[4].marked);
        assert_eq!(insns.iter().filter(|i| i.marked).count(), 1);
        // `Code: 8b040264 d63f0080 f94006a1 17ffffc9 (d4210000)`
        let bytes = words(&[0x8b040264, 0xd63f0080, 0xf94006a1, 0x17ffffc9, 0xd4210000]);
        assert_eq!(
            texts(&decode(&bytes, Some(16))),
            [
                "add x4, x19, x4",
                "blr x4",
                "ldr x1, [x21, #0x8]",
                "b -0xd0",
                "brk #0x800"
            ]
        );
    }

    #[test]
    fn nop_is_exactly_one_word() {
        let bytes = words(&[NOP, 0xd503203f, 0xd503233f, 0xd65f03c0]);
        let insns = decode(&bytes, None);
        assert_eq!(texts(&insns), ["nop", "yield", "paciasp", "ret"]);
        let nops: Vec<bool> = insns.iter().map(|i| i.is_nop).collect();
        assert_eq!(nops, [true, false, false, false]);
        assert!(insns.iter().all(|i| !i.marked));
    }

    #[test]
    fn bad_words_branches_and_adrp() {
        let bytes = words(&[0xffffffff, 0x94000010, 0xb4000040, 0x90000000]);
        let insns = decode(&bytes, None);
        assert_eq!(
            texts(&insns),
            ["(bad)", "bl 0x44", "cbz x0, 0x10", "adrp x0, $+0x0"]
        );
        let insns = decode(&[0x1f, 0x20, 0x03, 0xd5, 0x00], None);
        assert_eq!(texts(&insns), ["nop", "(truncated)"]);
        assert_eq!(insns[1].len, 1);
    }
}
