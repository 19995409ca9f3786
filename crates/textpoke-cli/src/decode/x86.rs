//! x86-64 decoding with `iced-x86`, realigned on the marked byte as `scripts/decodecode`
//! does.
//!
//! An oops `Code:` line starts at an arbitrary address before the faulting instruction, so
//! its first bytes may be the tail of an instruction, and decoding from byte 0 can drift and
//! swallow the faulting instruction into a wrong one. The mark is the only boundary known
//! for certain. So:
//!
//! - the marked instruction and everything after it are decoded from the marked byte;
//! - for the bytes before it, the first start offset `s` (trying 0, 1, 2, …) is taken from
//!   which every instruction decodes validly and the last one ends exactly on the marked byte.
//!   Bytes before `s` are shown as one `(skipped)` line (the tail of an instruction that began
//!   before the line); if no start offset lands on the mark, the whole prefix is. (Which starts land on the mark is found in one backward pass, one
//!   decode per byte, so a long prefix costs no more than decoding it.)
//!
//! With no mark, decoding simply starts at byte 0. The NOP column comes from the project's
//! one classifier, [`textpoke::insn::is_nop`].

use iced_x86::{
    Decoder, DecoderError, DecoderOptions, Formatter, GasFormatter, Instruction, IntelFormatter,
    OpKind, SymbolResolver, SymbolResult,
};

use super::{Insn, Syntax, hex_bytes, signed_hex};

/// The text of leading bytes that are not decoded: they end an instruction that began before
/// the line, so they are not instructions of their own.
pub const SKIPPED: &str = "(skipped)";

/// Decodes `bytes`, whose byte at offset `mark` (if any) starts the faulting instruction, into
/// instructions covering every byte. Branch targets are shown as offsets from byte 0.
pub fn decode(bytes: &[u8], mark: Option<usize>, syntax: Syntax) -> Vec<Insn> {
    let mut formatter = formatter(syntax);
    let mut out = Vec::new();
    let mark = mark.filter(|&m| m < bytes.len());
    let from = match mark {
        Some(m) => {
            let start = start_before(bytes, m);
            let decoded_from = start.unwrap_or(m);
            if decoded_from > 0 {
                out.push(bad(bytes, 0, decoded_from, SKIPPED));
            }
            decoded_from
        }
        None => 0,
    };
    let mut decoder = Decoder::with_ip(64, &bytes[from..], from as u64, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    while decoder.can_decode() {
        let offset = from + decoder.position();
        decoder.decode_out(&mut insn);
        let left = bytes.len() - offset;
        let line = if insn.is_invalid() {
            // Like objdump: an invalid byte is one `(bad)` line, and decoding resumes at the
            // next byte; an instruction cut off by the end of the code takes what is left.
            if decoder.last_error() == DecoderError::NoMoreBytes {
                bad(bytes, offset, left, "(truncated)")
            } else {
                bad(bytes, offset, 1, "(bad)")
            }
        } else {
            let len = insn.len().clamp(1, left);
            let code = &bytes[offset..offset + len];
            let mut text = String::new();
            formatter.format(&insn, &mut text);
            Insn {
                offset,
                len,
                bytes: hex_bytes(code),
                text,
                is_nop: textpoke::insn::is_nop(code),
                marked: false,
            }
        };
        decoder.set_position(offset - from + line.len).ok();
        out.push(line);
    }
    for line in &mut out {
        line.marked = Some(line.offset) == mark;
    }
    out
}

/// The first start offset before `mark` from which `bytes` decodes, instruction by
/// instruction and all valid, to end exactly at `mark`; `Some(mark)` if `mark` is 0.
///
/// One backward pass: `lands[i]` says whether decoding from `i` lands on the mark, which is
/// true if the instruction at `i` is valid, ends at or before the mark, and `lands` holds where
/// it ends.
fn start_before(bytes: &[u8], mark: usize) -> Option<usize> {
    let prefix = &bytes[..mark];
    let mut lands = vec![false; mark + 1];
    lands[mark] = true;
    let mut decoder = Decoder::new(64, prefix, DecoderOptions::NONE);
    for i in (0..mark).rev() {
        if decoder.set_position(i).is_err() {
            continue;
        }
        let insn = decoder.decode();
        // A decode running past the prefix is invalid (no more bytes), so `i + len <= mark`.
        lands[i] = !insn.is_invalid() && lands.get(i + insn.len()).copied().unwrap_or(false);
    }
    lands.iter().position(|&l| l)
}

/// A line for bytes that are not an instruction.
fn bad(bytes: &[u8], offset: usize, len: usize, text: &str) -> Insn {
    Insn {
        offset,
        len,
        bytes: hex_bytes(&bytes[offset..offset + len]),
        text: text.to_owned(),
        is_nop: false,
        marked: false,
    }
}

/// An iced formatter for `syntax`: every number in lower-case `0x` hex as objdump writes them, no branch size or leading zeros,
/// RIP-relative operands as `[rip+0x10]`, and branch targets before byte 0 as `-0x56`.
fn formatter(syntax: Syntax) -> Box<dyn Formatter> {
    let resolver: Box<dyn SymbolResolver> = Box::new(NegativeTargets);
    let mut f: Box<dyn Formatter> = match syntax {
        Syntax::Intel => Box::new(IntelFormatter::with_options(Some(resolver), None)),
        Syntax::Att => Box::new(GasFormatter::with_options(Some(resolver), None)),
    };
    let o = f.options_mut();
    o.set_hex_prefix("0x");
    o.set_hex_suffix("");
    o.set_uppercase_hex(false);
    o.set_small_hex_numbers_in_decimal(false);
    o.set_branch_leading_zeros(false);
    o.set_show_branch_size(false);
    o.set_rip_relative_addresses(true);
    f
}

/// Shows branch targets before the start of the code (which would wrap to huge unsigned
/// addresses, as the code is decoded at address 0) as negative offsets.
struct NegativeTargets;

impl SymbolResolver for NegativeTargets {
    fn symbol(
        &mut self,
        instruction: &Instruction,
        _operand: u32,
        instruction_operand: Option<u32>,
        address: u64,
        _address_size: u32,
    ) -> Option<SymbolResult<'_>> {
        let kind = instruction.op_kind(instruction_operand?);
        let branch = matches!(
            kind,
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
        );
        let target = address as i64;
        (branch && target < 0).then(|| SymbolResult::with_string(address, signed_hex(target)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Code: line of reference 004 (an x86-64 `__d_lookup` oops), faulting byte at 0x2b.
    const OOPS_004: [u8; 64] = [
        0xf6, 0x43, 0x04, 0x10, 0x75, 0x06, 0xf0, 0xff, 0x03, 0x48, 0x89, 0xd8, 0xfe, 0x43, 0x08,
        0xeb, 0x31, 0xfe, 0x43, 0x08, 0x48, 0x8b, 0x45, 0xd0, 0x48, 0x8b, 0x00, 0x48, 0x89, 0x45,
        0xd0, 0x48, 0x8b, 0x45, 0xd0, 0x48, 0x85, 0xc0, 0x74, 0x18, 0x48, 0x89, 0xc2, 0x48, 0x8b,
        0x00, 0x48, 0x8d, 0x5a, 0xe8, 0x44, 0x39, 0x73, 0x30, 0x0f, 0x18, 0x08, 0x75, 0xd9, 0xe9,
        0x6a, 0xff, 0xff, 0xff,
    ];

    fn texts(insns: &[Insn]) -> Vec<(usize, &str)> {
        insns.iter().map(|i| (i.offset, i.text.as_str())).collect()
    }

    #[test]
    fn reference_004_marked_instruction() {
        let insns = decode(&OOPS_004, Some(0x2b), Syntax::Intel);
        let marked: Vec<_> = insns.iter().filter(|i| i.marked).collect();
        assert_eq!(marked.len(), 1);
        assert_eq!(marked[0].offset, 0x2b);
        assert_eq!(marked[0].bytes, "48 8b 00");
        assert_eq!(marked[0].text, "mov rax,[rax]");
        let prefetch = insns.iter().find(|i| i.bytes == "0f 18 08").unwrap();
        assert_eq!(prefetch.text, "prefetcht0 [rax]");
        assert!(!prefetch.is_nop);
        assert!(insns.iter().all(|i| !i.is_nop));
        // Every byte is covered once, in order.
        let mut at = 0;
        for i in &insns {
            assert_eq!(i.offset, at);
            at += i.len;
        }
        assert_eq!(at, OOPS_004.len());
        assert_eq!(insns.first().unwrap().text, "test byte ptr [rbx+0x4],0x10");
        assert_eq!(insns.last().unwrap().text, "jmp -0x56");
    }

    #[test]
    fn att_syntax() {
        let insns = decode(&OOPS_004, Some(0x2b), Syntax::Att);
        let marked = insns.iter().find(|i| i.marked).unwrap();
        assert_eq!(marked.text, "mov (%rax),%rax");
    }

    #[test]
    fn realigns_a_prefix_that_starts_mid_instruction() {
        // `d0` is the last byte of an instruction cut off by the start of the line. From byte
        // 0, `d0 48 89` reads as `ror byte ptr [rax-0x77],1` and then `c2 48 8b` as
        // `ret 0x8b48`, which swallows the marked byte. From byte 1 the chain lands on it.
        let bytes = [0xd0, 0x48, 0x89, 0xc2, 0x48, 0x8b, 0x00, 0xc3];
        let insns = decode(&bytes, Some(4), Syntax::Intel);
        assert_eq!(
            texts(&insns),
            [
                (0, SKIPPED),
                (1, "mov rdx,rax"),
                (4, "mov rax,[rax]"),
                (7, "ret")
            ]
        );
        assert!(insns[2].marked);
        assert_eq!(insns.iter().filter(|i| i.marked).count(), 1);
        // Without the mark, decoding starts at 0 and drifts.
        let plain = decode(&bytes, None, Syntax::Intel);
        assert_eq!(plain[0].text, "ror byte ptr [rax-0x77],0x1");
        assert_eq!(plain[1].text, "ret 0x8b48");
        assert!(plain.iter().all(|i| !i.marked));
    }

    #[test]
    fn unreachable_mark_shows_the_prefix_as_bad() {
        // `e8` wants 4 more bytes: no start in the prefix ends exactly on the mark.
        let bytes = [0xe8, 0x90, 0xc3];
        let insns = decode(&bytes, Some(1), Syntax::Intel);
        assert_eq!(
            texts(&insns),
            [(0, SKIPPED), (1, "nop"), (2, "ret")],
            "{insns:?}"
        );
        assert!(insns[1].marked && insns[1].is_nop);
        // A skipped head: neither `ff ff` nor `ff 90 ..` decodes; from 2 the chain lands.
        let insns = decode(&[0xff, 0xff, 0x90, 0x90], Some(3), Syntax::Intel);
        assert_eq!(texts(&insns), [(0, SKIPPED), (2, "nop"), (3, "nop")]);
    }

    #[test]
    fn truncated_and_invalid() {
        let insns = decode(&[0x90, 0xe8, 0x00], None, Syntax::Intel);
        assert_eq!(texts(&insns), [(0, "nop"), (1, "(truncated)")]);
        assert_eq!(insns[1].len, 2);
        // `06` (push es) does not exist in 64-bit mode: one `(bad)` byte, then on.
        let insns = decode(&[0x06, 0x90], None, Syntax::Intel);
        assert_eq!(texts(&insns), [(0, "(bad)"), (1, "nop")]);
        assert_eq!(insns[0].len, 1);
    }

    #[test]
    fn nop_column_uses_the_one_classifier() {
        let bytes = [
            0x0f, 0x1f, 0x44, 0x00, 0x00, // nop dword [rax+rax]
            0xf3, 0x90, // pause: not a NOP
            0x41, 0x90, // xchg r8d, eax: not a NOP
            0x66, 0x90, // NOP
            0x87, 0xc0, // xchg eax, eax: zero-extends, not a NOP
            0x90,
        ];
        let insns = decode(&bytes, None, Syntax::Intel);
        let nops: Vec<_> = insns.iter().map(|i| (i.offset, i.is_nop)).collect();
        assert_eq!(
            nops,
            [
                (0, true),
                (5, false),
                (7, false),
                (9, true),
                (11, false),
                (13, true)
            ]
        );
        assert_eq!(insns[1].text, "pause");
    }

    #[test]
    fn rip_relative_and_branches() {
        // call +0; mov rax, [rip+0x10]; jmp back to 0.
        let bytes = [
            0xe8, 0x00, 0x00, 0x00, 0x00, 0x48, 0x8b, 0x05, 0x10, 0x00, 0x00, 0x00, 0xeb, 0xf2,
        ];
        let insns = decode(&bytes, None, Syntax::Intel);
        assert_eq!(
            texts(&insns),
            [(0, "call 0x5"), (5, "mov rax,[rip+0x10]"), (12, "jmp 0x0")]
        );
    }
}
