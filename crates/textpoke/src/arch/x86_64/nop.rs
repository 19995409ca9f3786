//! The one NOP classifier: which byte sequences are canonical x86-64 NOPs.
//!
//! Accepted: `90`; `66 90`; and `0f 1f /0` (`nop r/m`) with any addressing form, optionally
//! preceded by any number of `66` prefixes and one `2e` (CS) prefix, as assemblers pad. Every
//! other byte sequence is refused, including lookalikes that are not NOPs at all: `f3 90`
//! (PAUSE, reference 000), `41 90` (`xchg r8d, eax`), `87 c0` (`xchg eax, eax`, which
//! zero-extends `rax`), `8d 76 00` (`lea esi, [rsi]`, same), `0f 1f /r` with `r != 0`
//! (reserved), and any NOP with REX, REP, LOCK or other segment prefixes. Refusing a rare real
//! NOP is always safe for textpoke; accepting a lookalike is not.

use iced_x86::{Decoder, DecoderOptions, Mnemonic};

/// Length of the canonical NOP at the start of `bytes`, or `None` if `bytes` does not start
/// with one.
pub fn nop_len(bytes: &[u8]) -> Option<usize> {
    let (mut i, mut op66, mut cs) = (0, 0usize, false);
    while let Some(&b) = bytes.get(i) {
        match b {
            0x66 => op66 += 1,
            0x2e if !cs => cs = true,
            _ => break,
        }
        i += 1;
    }
    let len = match (bytes.get(i)?, bytes.get(i + 1)) {
        (0x90, _) if !cs && op66 <= 1 => i + 1,
        (0x0f, Some(0x1f)) => {
            // ModRM.reg must be 0: `0f 1f /1`..`/7` are reserved encodings, not NOPs.
            if (bytes.get(i + 2)? >> 3) & 7 != 0 {
                return None;
            }
            let mut decoder = Decoder::new(64, bytes, DecoderOptions::NONE);
            let insn = decoder.decode();
            if insn.is_invalid() || insn.mnemonic() != Mnemonic::Nop {
                return None;
            }
            insn.len()
        }
        _ => return None,
    };
    Some(len)
}

/// The NOP of each length 1..=8 that padding uses (the optimization manuals' forms).
const PADDING_NOPS: [&[u8]; 8] = [
    &[0x90],
    &[0x66, 0x90],
    &[0x0f, 0x1f, 0x00],
    &[0x0f, 0x1f, 0x40, 0x00],
    &[0x0f, 0x1f, 0x44, 0x00, 0x00],
    &[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00],
    &[0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00],
    &[0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
];

/// Fills `buf` with padding that does nothing, cheapest to execute first: one NOP when it fits
/// in eight bytes, otherwise a jump over the rest, filled with `int3` (as the kernel's
/// `optimize_nops` does: one taken jump beats a run of NOPs).
pub fn fill_padding(buf: &mut [u8]) {
    let len = buf.len();
    if len == 0 {
        return;
    }
    if len <= PADDING_NOPS.len() {
        buf.copy_from_slice(PADDING_NOPS[len - 1]);
        return;
    }
    buf.fill(0xcc);
    if len - 2 <= i8::MAX as usize {
        buf[0] = 0xeb;
        buf[1] = (len - 2) as u8;
    } else {
        let rel = u32::try_from(len - 5).unwrap_or(u32::MAX).to_le_bytes();
        buf[0] = 0xe9;
        buf[1..5].copy_from_slice(&rel);
    }
}

/// Whether `bytes` is exactly one canonical NOP.
pub fn is_nop(bytes: &[u8]) -> bool {
    nop_len(bytes) == Some(bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every form compilers and assemblers emit, from 1 to 15 bytes.
    const ACCEPTED: &[&[u8]] = &[
        &[0x90],
        &[0x66, 0x90],
        &[0x0f, 0x1f, 0x00],
        &[0x0f, 0x1f, 0x40, 0x00],
        &[0x0f, 0x1f, 0x44, 0x00, 0x00],
        &[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00],
        &[0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00],
        &[0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
        &[0x66, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
        &[0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
        &[
            0x66, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00,
        ],
        &[
            0x66, 0x66, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00,
        ],
        &[
            0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00,
            0x00,
        ],
        // Register forms.
        &[0x0f, 0x1f, 0xc0],
        &[0x66, 0x0f, 0x1f, 0xc0],
        // Other addressing forms of `0f 1f /0`.
        &[0x0f, 0x1f, 0x04, 0x24],
        &[0x0f, 0x1f, 0x05, 0x00, 0x00, 0x00, 0x00],
    ];

    /// Lookalikes that are not NOPs, or not canonical ones.
    const REJECTED: &[&[u8]] = &[
        &[0xf3, 0x90],       // pause (reference 000)
        &[0xf2, 0x90],       // repne-prefixed
        &[0x41, 0x90],       // xchg r8d, eax
        &[0x48, 0x90],       // REX.W: not a form we emit
        &[0x87, 0xc0],       // xchg eax, eax: zero-extends rax
        &[0x89, 0xc0],       // mov eax, eax: same
        &[0x8d, 0x76, 0x00], // lea esi, [rsi+0]: same
        &[0x8d, 0x74, 0x26, 0x00],
        &[0x66, 0x66, 0x90],             // not canonical
        &[0x2e, 0x90],                   // segment prefix on 90
        &[0x0f, 0x1f, 0x48, 0x00],       // 0f 1f /1: reserved
        &[0x0f, 0x18, 0x00],             // prefetchnta [rax]
        &[0x0f, 0x0d, 0x00],             // prefetch
        &[0x0f, 0x1e, 0xfa],             // not 0f 1f
        &[0xf3, 0x0f, 0x1e, 0xfa],       // endbr64
        &[0xf0, 0x0f, 0x1f, 0x00],       // lock: #UD
        &[0x41, 0x0f, 0x1f, 0x00],       // REX prefix
        &[0x3e, 0x0f, 0x1f, 0x00],       // DS prefix
        &[0x0f, 0x1f],                   // truncated
        &[0x0f, 0x1f, 0x80, 0x00, 0x00], // truncated displacement
        &[0xcc],
        &[0xe9, 0x00, 0x00, 0x00, 0x00],
        &[],
    ];

    #[test]
    fn accepts_every_canonical_form() {
        for form in ACCEPTED {
            assert_eq!(nop_len(form), Some(form.len()), "{form:02x?}");
            assert!(is_nop(form), "{form:02x?}");
            let mut followed = form.to_vec();
            followed.extend([0xc3, 0xcc]);
            assert_eq!(nop_len(&followed), Some(form.len()), "{form:02x?} then ret");
            assert!(!is_nop(&followed));
        }
    }

    #[test]
    fn rejects_every_lookalike() {
        for form in REJECTED {
            assert!(!is_nop(form), "{form:02x?} must not be a NOP");
            // A lookalike never hides a shorter NOP at its start that would let a caller
            // treat its first byte(s) as padding.
            if let Some(len) = nop_len(form) {
                panic!("{form:02x?} starts with a {len}-byte NOP");
            }
        }
    }

    #[test]
    fn padding_is_one_nop_or_a_jump_over_int3() {
        for len in 0..300usize {
            let mut buf = vec![0u8; len];
            fill_padding(&mut buf);
            if len == 0 {
                continue;
            }
            if len <= 8 {
                assert!(is_nop(&buf), "{len}: {buf:02x?}");
                continue;
            }
            let mut decoder = Decoder::with_ip(64, &buf, 0x1000, DecoderOptions::NONE);
            let jump = decoder.decode();
            assert_eq!(jump.mnemonic(), Mnemonic::Jmp, "{len}");
            assert_eq!(
                jump.near_branch_target(),
                0x1000 + len as u64,
                "{len}: jumps to the end"
            );
            assert!(buf[jump.len()..].iter().all(|&b| b == 0xcc), "{len}");
        }
    }

    #[test]
    fn pause_is_not_a_two_byte_nop() {
        assert_eq!(nop_len(&[0xf3, 0x90]), None);
        assert_eq!(nop_len(&[0x66, 0x90]), Some(2));
    }
}
