//! Relocation of x86-64 code that is moved: an alternative's replacement copied over the
//! original, or prologue bytes copied out to a trampoline.
//!
//! [`relocate`] decodes the block at the address it was assembled for and writes it out for a
//! new address. Every position-dependent operand keeps what it points at:
//!
//! - relative branches: `call rel32`, `jmp rel8/rel32`, `jcc rel8/rel32`, `loop`/`loope`/
//!   `loopne`/`jecxz`/`jrcxz` (rel8 only) and `xbegin rel32`;
//! - RIP-relative memory operands (`lea rax, [rip+x]`, `mov eax, [rip+x]`,
//!   `cmp byte [rip+x], 0`, `jmp [rip+x]`, ...) and EIP-relative ones (`67` prefix).
//!
//! A target inside the block, including the block's end, moves with the block (this is the
//! kernel's `need_reloc()` rule in `apply_relocation()`): a branch to the end of a replacement
//! lands after the relocated replacement, where the padding or the jump back follows. A target
//! inside the block that is not an instruction boundary is refused, since the instruction it
//! points into may change.
//!
//! # Encodings
//!
//! An instruction whose form does not change is copied byte for byte and only its displacement
//! field is rewritten, so prefixes (branch hints, `bnd`, redundant REX) survive and every other
//! instruction keeps its exact bytes. The one change of form is widening: a `jmp rel8` or
//! `jcc rel8` whose target is out of rel8 reach from the new place becomes `jmp rel32` or
//! `jcc rel32`, encoded by iced-x86's [`Encoder`], and the block grows by 3 or 4 bytes for each.
//! Widening is repeated until every remaining rel8 branch fits (sizes only grow, so this ends).
//! Nothing is ever shortened: the result is at least as long as the input, and callers check
//! its length against the space they have.
//!
//! Nothing else is rewritten. `loop`, `jrcxz` and friends have no rel32 form, and a target out
//! of ±2 GiB would need an absolute jump through memory; both are an
//! [`RelocateError::OutOfRange`] instead. This is why iced-x86's `BlockEncoder` is not used:
//! while it fixes branches, it silently turns a far `jcc`/`jmp`/`loop` into a branch over a
//! `jmp [rip+pointer]` with an appended 8-byte pointer, and a far RIP-relative operand into an
//! EIP-relative one; with `DONT_FIX_BRANCHES` it cannot widen rel8 at all. It also re-encodes
//! every instruction from its decoded form instead of keeping the bytes, and only treats
//! instruction starts, not the block's end, as inside the block.
//!
//! Finally the result is decoded again and every instruction is checked to resolve to the
//! intended target; a mismatch is an [`RelocateError::Encode`], never wrong code.

use iced_x86::{Code, Decoder, DecoderOptions, Encoder, Instruction, OpKind, Register};

/// Why a block of code cannot be moved. Each variant names the offset, within the original
/// block, of the instruction at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelocateError {
    /// The bytes at `offset` are not a valid x86-64 instruction, or the block ends inside one.
    #[error("cannot relocate code: no valid x86-64 instruction at offset {offset}")]
    Undecodable {
        /// Offset of the undecodable instruction in the block.
        offset: usize,
    },
    /// The instruction at `offset` cannot reach `target` from its new address: a rel32 branch
    /// or RIP-relative operand beyond ±2 GiB, or a `loop`/`jrcxz` beyond rel8.
    #[error(
        "cannot relocate code: instruction at offset {offset} cannot reach {target:#x} from its new address"
    )]
    OutOfRange {
        /// Offset of the instruction in the original block.
        offset: usize,
        /// The address it must reach from its new place (moved along if inside the block).
        target: usize,
    },
    /// The instruction at `offset` refers to `target`, which is inside the block but not on an
    /// instruction boundary, so where it moves to is not defined.
    #[error(
        "cannot relocate code: instruction at offset {offset} refers to {target:#x}, inside an instruction of the block"
    )]
    MidInstruction {
        /// Offset of the referring instruction in the original block.
        offset: usize,
        /// The address it refers to in the original block.
        target: usize,
    },
    /// The instruction at `offset` has a form relocation does not support (`xbegin rel16`), or
    /// could not be re-encoded correctly.
    #[error("cannot relocate code: instruction at offset {offset}: {why}")]
    Encode {
        /// Offset of the instruction in the original block.
        offset: usize,
        /// What went wrong.
        why: String,
    },
}

/// Re-encodes `code`, which was assembled to run at `from`, so that it runs at `to`.
///
/// Every relative `call`/`jmp`/`jcc`/`loop`/`jrcxz`/`xbegin` and every RIP- or EIP-relative
/// memory operand keeps its absolute target, except targets in `[from, from + code.len()]`
/// (the end included), which move with the block to the corresponding instruction boundary of
/// the result. `jmp rel8` and `jcc rel8` are widened to rel32 where needed, so the result may
/// be longer than `code` (never shorter); all other instructions keep their bytes, with only
/// displacement fields rewritten. See the [module documentation](self) for the rules.
///
/// # Errors
///
/// [`RelocateError`], naming the offset of the instruction at fault: undecodable bytes,
/// a target out of reach from `to`, a reference into the middle of an instruction of the
/// block, or an unsupported form. Nothing is returned half-relocated.
pub fn relocate(code: &[u8], from: usize, to: usize) -> Result<Vec<u8>, RelocateError> {
    relocate_mapped(code, from, to).map(|(out, _)| out)
}

/// Relocated code, and where each instruction boundary of the original went: (offset in the
/// original, offset in the copy).
pub type Relocated = (Vec<u8>, Vec<(usize, usize)>);

/// [`relocate`], also giving where each instruction went: `(offset in code, offset in the
/// result)` for every instruction boundary, the block's end included, in order. A thread
/// stopped at an instruction of the original can be moved to the same instruction of the copy.
pub fn relocate_mapped(code: &[u8], from: usize, to: usize) -> Result<Relocated, RelocateError> {
    let (from, to) = (from as u64, to as u64);
    let items = decode(code, from)?;

    // Lay out the block, widening rel8 jmp/jcc until every remaining rel8 branch fits.
    let mut wide = vec![false; items.len()];
    let starts = loop {
        let starts = layout(&items, &wide);
        let mut grew = false;
        for (i, item) in items.iter().enumerate() {
            if let Fixup::Branch {
                size: 1,
                widen: Some(_),
                target,
                ..
            } = item.fixup
                && !wide[i]
            {
                let next = to.wrapping_add(starts[i] as u64 + item.len as u64);
                if i8::try_from(disp(target.resolve(to, &starts), next)).is_err() {
                    wide[i] = true;
                    grew = true;
                }
            }
        }
        if !grew {
            break starts;
        }
    };

    let new_len = starts[items.len()];
    let mut out = Vec::with_capacity(new_len);
    let mut encoder = Encoder::new(64);
    for (i, item) in items.iter().enumerate() {
        let bytes = &code[item.offset..item.offset + item.len];
        let ip = to.wrapping_add(starts[i] as u64);
        let out_of_range = |target: u64| RelocateError::OutOfRange {
            offset: item.offset,
            target: target as usize,
        };
        match item.fixup {
            Fixup::None => out.extend_from_slice(bytes),
            Fixup::Branch {
                field,
                size,
                widen,
                target,
            } => {
                let target = target.resolve(to, &starts);
                if let (true, Some((near, near_len))) = (wide[i], widen) {
                    let next = ip.wrapping_add(near_len as u64);
                    if i32::try_from(disp(target, next)).is_err() {
                        return Err(out_of_range(target));
                    }
                    let mut insn = item.insn;
                    insn.set_code(near);
                    insn.set_near_branch64(target);
                    let len = encoder
                        .encode(&insn, ip)
                        .map_err(|e| item.encode_error(e.to_string()))?;
                    if len != near_len {
                        return Err(item.encode_error(format!(
                            "widened branch is {len} bytes, expected {near_len}"
                        )));
                    }
                    out.extend_from_slice(&encoder.take_buffer());
                } else {
                    let d = disp(target, ip.wrapping_add(item.len as u64));
                    let start = out.len();
                    out.extend_from_slice(bytes);
                    let field = &mut out[start + field..start + field + size];
                    match size {
                        1 => field.copy_from_slice(
                            &i8::try_from(d)
                                .map_err(|_| out_of_range(target))?
                                .to_le_bytes(),
                        ),
                        _ => field.copy_from_slice(
                            &i32::try_from(d)
                                .map_err(|_| out_of_range(target))?
                                .to_le_bytes(),
                        ),
                    }
                }
            }
            Fixup::Memory { field, eip, target } => {
                let target = target.resolve(to, &starts);
                let next = ip.wrapping_add(item.len as u64);
                let d = if eip {
                    // EIP-relative addresses wrap at 4 GiB: any target below 4 GiB is
                    // reachable from anywhere, and no other target is.
                    if target > u64::from(u32::MAX) {
                        return Err(out_of_range(target));
                    }
                    (target as u32).wrapping_sub(next as u32).to_le_bytes()
                } else {
                    i32::try_from(disp(target, next))
                        .map_err(|_| out_of_range(target))?
                        .to_le_bytes()
                };
                let start = out.len();
                out.extend_from_slice(bytes);
                out[start + field..start + field + 4].copy_from_slice(&d);
            }
        }
    }
    verify(&items, &wide, &starts, &out, to)?;
    let map = items
        .iter()
        .map(|item| item.offset)
        .chain([code.len()])
        .zip(starts.iter().copied())
        .collect();
    Ok((out, map))
}

/// One decoded instruction of the original block.
struct Item {
    /// Offset in the original block.
    offset: usize,
    len: usize,
    insn: Instruction,
    fixup: Fixup,
}

impl Item {
    fn encode_error(&self, why: String) -> RelocateError {
        RelocateError::Encode {
            offset: self.offset,
            why,
        }
    }
}

/// What must be rewritten when an instruction moves.
#[derive(Clone, Copy)]
enum Fixup {
    /// Nothing: the bytes are copied as they are.
    None,
    /// A relative branch whose displacement is `size` (1 or 4) bytes at `field`. `widen` is the
    /// rel32 form and its length, for `jmp rel8` and `jcc rel8`.
    Branch {
        field: usize,
        size: usize,
        widen: Option<(Code, usize)>,
        target: Target,
    },
    /// A RIP- (or, with `eip`, EIP-) relative memory operand whose disp32 is at `field`.
    Memory {
        field: usize,
        eip: bool,
        target: Target,
    },
}

/// Where a position-dependent operand points.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// An address outside the block, which stays where it is.
    Absolute(u64),
    /// The start of the block's instruction with this index, or the block's end if it is the
    /// number of instructions; it moves with the block.
    Boundary(usize),
}

impl Target {
    /// The address this target has when the block starts at `to` laid out as `starts`.
    fn resolve(self, to: u64, starts: &[usize]) -> u64 {
        match self {
            Target::Absolute(addr) => addr,
            Target::Boundary(k) => to.wrapping_add(starts[k] as u64),
        }
    }
}

/// The signed distance from `next` (the end of the referring instruction) to `target`.
fn disp(target: u64, next: u64) -> i64 {
    target.wrapping_sub(next) as i64
}

/// Decodes `code` at `from` and classifies each instruction's position-dependent operand.
fn decode(code: &[u8], from: u64) -> Result<Vec<Item>, RelocateError> {
    let mut decoder = Decoder::with_ip(64, code, from, DecoderOptions::NONE);
    let mut decoded = Vec::new();
    while decoder.can_decode() {
        let offset = decoder.position();
        let insn = decoder.decode();
        if insn.is_invalid() {
            return Err(RelocateError::Undecodable { offset });
        }
        decoded.push((offset, insn, decoder.get_constant_offsets(&insn)));
    }
    let starts: Vec<usize> = decoded
        .iter()
        .map(|(offset, ..)| *offset)
        .chain([code.len()])
        .collect();
    // Inside the block means `from..=from + len`, wrapping like the instruction pointer does.
    let target_of = |offset: usize, addr: u64| match addr.wrapping_sub(from) {
        off if off <= code.len() as u64 => starts
            .binary_search(&(off as usize))
            .map(Target::Boundary)
            .map_err(|_| RelocateError::MidInstruction {
                offset,
                target: addr as usize,
            }),
        _ => Ok(Target::Absolute(addr)),
    };

    let mut items = Vec::with_capacity(decoded.len());
    for (offset, insn, consts) in decoded {
        let unsupported = |why: String| RelocateError::Encode { offset, why };
        let is_branch = insn.op_kinds().any(|kind| {
            matches!(
                kind,
                OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
            )
        });
        let fixup = if is_branch {
            let target = target_of(offset, insn.near_branch_target())?;
            let (field, size) = (consts.immediate_offset(), consts.immediate_size());
            if !matches!(size, 1 | 4) || field + size > insn.len() {
                let why = format!(
                    "`{:?}` has a {size}-byte branch displacement, which is not supported",
                    insn.code()
                );
                return Err(unsupported(why));
            }
            let near = insn.code().as_near_branch();
            let widen = if size == 1 && near != insn.code() {
                let mut wide = insn;
                wide.set_code(near);
                wide.set_near_branch64(0);
                let len = Encoder::new(64)
                    .encode(&wide, 0)
                    .map_err(|e| unsupported(e.to_string()))?;
                Some((near, len))
            } else {
                None
            };
            Fixup::Branch {
                field,
                size,
                widen,
                target,
            }
        } else if insn.is_ip_rel_memory_operand() {
            let target = target_of(offset, insn.ip_rel_memory_address())?;
            let field = consts.displacement_offset();
            if consts.displacement_size() != 4 || field + 4 > insn.len() {
                return Err(unsupported(
                    "IP-relative operand without a 4-byte displacement".to_string(),
                ));
            }
            Fixup::Memory {
                field,
                eip: insn.memory_base() == Register::EIP,
                target,
            }
        } else {
            Fixup::None
        };
        items.push(Item {
            offset,
            len: insn.len(),
            insn,
            fixup,
        });
    }
    Ok(items)
}

/// Offsets of every instruction in the new block, and the new length last.
fn layout(items: &[Item], wide: &[bool]) -> Vec<usize> {
    let mut starts = Vec::with_capacity(items.len() + 1);
    let mut at = 0;
    for (item, &wide) in items.iter().zip(wide) {
        starts.push(at);
        at += match item.fixup {
            Fixup::Branch {
                widen: Some((_, near_len)),
                ..
            } if wide => near_len,
            _ => item.len,
        };
    }
    starts.push(at);
    starts
}

/// Decodes the relocated block at `to` and checks that every instruction is where the layout
/// put it, has the intended form, and resolves to the intended target.
fn verify(
    items: &[Item],
    wide: &[bool],
    starts: &[usize],
    out: &[u8],
    to: u64,
) -> Result<(), RelocateError> {
    let mut decoder = Decoder::with_ip(64, out, to, DecoderOptions::NONE);
    for (i, item) in items.iter().enumerate() {
        let fail = |what: &str| Err(item.encode_error(format!("relocated instruction {what}")));
        if decoder.position() != starts[i] || !decoder.can_decode() {
            return fail("is not where the layout put it");
        }
        let insn = decoder.decode();
        let expected_code = match item.fixup {
            Fixup::Branch {
                widen: Some((near, _)),
                ..
            } if wide[i] => near,
            _ => item.insn.code(),
        };
        if insn.is_invalid() || insn.code() != expected_code || decoder.position() != starts[i + 1]
        {
            return fail("does not decode as intended");
        }
        let ok = match item.fixup {
            Fixup::None => true,
            Fixup::Branch { target, .. } => insn.near_branch_target() == target.resolve(to, starts),
            Fixup::Memory { target, .. } => {
                insn.is_ip_rel_memory_operand()
                    && insn.ip_rel_memory_address() == target.resolve(to, starts)
            }
        };
        if !ok {
            return fail("does not reach its target");
        }
    }
    if decoder.position() != out.len() {
        return Err(RelocateError::Encode {
            offset: 0,
            why: "relocated block has trailing bytes".to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::Mnemonic;
    use proptest::prelude::*;

    const FROM: usize = 0x5555_0000_1000;

    fn le32(x: i64) -> [u8; 4] {
        i32::try_from(x)
            .expect("test displacement fits rel32")
            .to_le_bytes()
    }

    /// Every instruction of `code` at `ip`: (offset, instruction, resolved target if any).
    fn insns(code: &[u8], ip: usize) -> Vec<(usize, Instruction, Option<u64>)> {
        let mut decoder = Decoder::with_ip(64, code, ip as u64, DecoderOptions::NONE);
        let mut all = Vec::new();
        while decoder.can_decode() {
            let offset = decoder.position();
            let insn = decoder.decode();
            assert!(
                !insn.is_invalid(),
                "invalid instruction at {offset} in {code:02x?}"
            );
            all.push((offset, insn, resolved(&insn)));
        }
        all
    }

    fn resolved(insn: &Instruction) -> Option<u64> {
        if insn.op_kinds().any(|k| k == OpKind::NearBranch64) {
            Some(insn.near_branch_target())
        } else if insn.is_ip_rel_memory_operand() {
            Some(insn.ip_rel_memory_address())
        } else {
            None
        }
    }

    fn targets(code: &[u8], ip: usize) -> Vec<Option<u64>> {
        insns(code, ip).into_iter().map(|(_, _, t)| t).collect()
    }

    /// Relocates `code` from `FROM` to `to` and checks that every external target is kept.
    fn moved(code: &[u8], to: usize) -> Vec<u8> {
        let out = relocate(code, FROM, to).expect("relocates");
        assert_eq!(
            targets(&out, to),
            targets(code, FROM),
            "targets of {out:02x?}"
        );
        out
    }

    #[test]
    fn call_rel32_keeps_its_target() {
        let code = [&[0xe8][..], &le32(0x1234)].concat();
        for to in [FROM + 0x10, FROM - 0x7000_0000, FROM + 0x7fff_0000] {
            let out = moved(&code, to);
            assert_eq!(out.len(), 5);
            assert_eq!(out[0], 0xe8);
        }
    }

    #[test]
    fn jmp_rel8_stays_short_within_reach() {
        // jmp short +0x40, moved 0x10 bytes forward: the displacement shrinks to 0x30.
        assert_eq!(moved(&[0xeb, 0x40], FROM + 0x10), [0xeb, 0x30]);
        assert_eq!(moved(&[0xeb, 0x40], FROM - 0x3f), [0xeb, 0x7f]);
    }

    #[test]
    fn jmp_rel8_is_widened_when_out_of_reach() {
        // jmp short +0x40 moved 0x40 back would need rel8 0x80: it becomes rel32 0x7d.
        let out = moved(&[0xeb, 0x40], FROM - 0x40);
        assert_eq!(out, [0xe9, 0x7d, 0, 0, 0]);
        let out = moved(&[0xeb, 0x40], FROM + 0x1000_0000);
        assert_eq!((out.len(), out[0]), (5, 0xe9));
    }

    #[test]
    fn jcc_rel8_is_widened_and_keeps_its_condition() {
        for cc in 0..16u8 {
            let code = [0x70 + cc, 0x10];
            let out = moved(&code, FROM + 0x2000);
            assert_eq!(out.len(), 6);
            assert_eq!(out[..2], [0x0f, 0x80 + cc]);
            assert_eq!(
                insns(&out, FROM + 0x2000)[0].1.code(),
                insns(&code, FROM)[0].1.code().as_near_branch()
            );
        }
    }

    #[test]
    fn jcc_rel32_and_prefixes_are_kept() {
        // ds (branch hint) je rel32; bnd call rel32; bnd jmp rel32; rex.w jmp rel8 in reach.
        let code = [
            &[0x3e, 0x0f, 0x84][..],
            &le32(-0x100),
            &[0xf2, 0xe8],
            &le32(0x5000),
            &[0xf2, 0xe9],
            &le32(-0x5000),
            &[0x48, 0xeb, 0x10],
        ]
        .concat();
        let out = moved(&code, FROM + 0x4000_0000);
        assert_eq!(
            out.len(),
            code.len() + 2,
            "only the rel8 jmp is widened (dropping its REX)"
        );
        assert_eq!((out[0], out[7], out[13]), (0x3e, 0xf2, 0xf2));
        let out = moved(&code, FROM + 4);
        assert_eq!(out.len(), code.len());
        assert_eq!(out[out.len() - 3..], [0x48, 0xeb, 0x0c]);
    }

    #[test]
    fn bnd_and_hint_prefixes_survive_widening() {
        let out = moved(&[0x3e, 0x74, 0x10], FROM + 0x1000);
        assert_eq!(out[..3], [0x3e, 0x0f, 0x84]);
        let out = moved(&[0xf2, 0xeb, 0x10], FROM + 0x1000);
        assert_eq!(out[..2], [0xf2, 0xe9]);
    }

    #[test]
    fn rel32_reach_is_exactly_plus_minus_2_gib() {
        // jmp rel32 at offset 1, target T outside; new displacement = T - (to + 6).
        let code = [&[0x90, 0xe9][..], &le32(0x100)].concat();
        let target = FROM + 6 + 0x100;
        let max = target - 6 - i32::MAX as usize;
        assert!(relocate(&code, FROM, max).is_ok());
        assert_eq!(
            relocate(&code, FROM, max - 1),
            Err(RelocateError::OutOfRange { offset: 1, target })
        );
        let min = target - 6 + (1 << 31);
        assert!(relocate(&code, FROM, min).is_ok());
        assert_eq!(
            relocate(&code, FROM, min + 1),
            Err(RelocateError::OutOfRange { offset: 1, target })
        );
    }

    #[test]
    fn widened_branch_out_of_reach_is_an_error_not_a_trampoline() {
        let code = [0x90, 0x90, 0x74, 0x10];
        assert_eq!(
            relocate(&code, FROM, FROM + (3 << 30)),
            Err(RelocateError::OutOfRange {
                offset: 2,
                target: FROM + 0x14
            })
        );
        let code = [&[0x90, 0xe8][..], &le32(0x100)].concat();
        assert!(matches!(
            relocate(&code, FROM, FROM - (5 << 30)),
            Err(RelocateError::OutOfRange { offset: 1, .. })
        ));
    }

    #[test]
    fn loop_and_jrcxz_are_never_widened() {
        for op in [0xe0, 0xe1, 0xe2, 0xe3] {
            assert_eq!(moved(&[op, 0x10], FROM + 0x10), [op, 0x00]);
            assert_eq!(
                relocate(&[0x90, op, 0x10], FROM, FROM + 0x1000),
                Err(RelocateError::OutOfRange {
                    offset: 1,
                    target: FROM + 0x13
                })
            );
        }
        // jecxz (67 e3) keeps its address-size prefix.
        assert_eq!(moved(&[0x67, 0xe3, 0x10], FROM + 0x10), [0x67, 0xe3, 0x00]);
    }

    #[test]
    fn loop_inside_the_block_moves_with_it() {
        // 0: dec rax; 3: loop 0; 5: jrcxz 5 (itself).
        let code = [0x48, 0xff, 0xc8, 0xe2, 0xfb, 0xe3, 0xfe];
        assert_eq!(relocate(&code, FROM, 0x1000).unwrap(), code);
        assert_eq!(relocate(&code, FROM, FROM + (1 << 40)).unwrap(), code);
    }

    #[test]
    fn loop_pushed_out_of_reach_by_widening_is_an_error() {
        // 0: loop end; 2..82: 40 × jmp short +0x7f (external); 82: end.
        let mut code = vec![0xe2, 80];
        for _ in 0..40 {
            code.extend([0xeb, 0x7f]);
        }
        assert!(
            relocate(&code, FROM, FROM + 1).is_ok(),
            "nothing widens when barely moved"
        );
        assert!(matches!(
            relocate(&code, FROM, FROM + 0x10_0000),
            Err(RelocateError::OutOfRange { offset: 0, .. })
        ));
    }

    #[test]
    fn in_block_targets_follow_the_block_and_its_widening() {
        // 0: jmp short ext (widened, +3); 2: je 6; 4: nop; 5: nop; 6: jmp short 0; 8: jne 10 (end).
        let code = [0xeb, 0x70, 0x74, 0x02, 0x90, 0x90, 0xeb, 0xf8, 0x75, 0x00];
        let to = FROM + 0x1000_0000;
        let out = relocate(&code, FROM, to).unwrap();
        assert_eq!(out.len(), code.len() + 3);
        let t = |off: usize| Some(to as u64 + off as u64);
        assert_eq!(
            targets(&out, to),
            [Some(FROM as u64 + 0x72), t(9), None, None, t(0), t(13)]
        );
    }

    #[test]
    fn target_inside_an_instruction_is_refused() {
        // jmp short 3, into the middle of `add rax, rbx`.
        let code = [0xeb, 0x01, 0x48, 0x01, 0xd8];
        assert_eq!(
            relocate(&code, FROM, FROM + 8),
            Err(RelocateError::MidInstruction {
                offset: 0,
                target: FROM + 3
            })
        );
        // lea rax, [rip - 6]: into its own displacement.
        let code = [&[0x48, 0x8d, 0x05][..], &le32(-4)].concat();
        assert_eq!(
            relocate(&code, FROM, FROM + 8),
            Err(RelocateError::MidInstruction {
                offset: 0,
                target: FROM + 3
            })
        );
    }

    #[test]
    fn rip_relative_operands_keep_their_target() {
        let forms: [&[u8]; 6] = [
            &[0x48, 0x8d, 0x05],       // lea rax, [rip+d]
            &[0x8b, 0x05],             // mov eax, [rip+d]
            &[0x80, 0x3d],             // cmp byte [rip+d], 0x7f (immediate after the displacement)
            &[0xc7, 0x05],             // mov dword [rip+d], 0x11223344
            &[0xff, 0x25],             // jmp qword [rip+d]
            &[0xc4, 0xe2, 0x7d, 0x58], // vpbroadcastd ymm0, [rip+d] (VEX)
        ];
        let imms: [&[u8]; 6] = [&[], &[], &[0x7f], &[0x44, 0x33, 0x22, 0x11], &[], &[]];
        for (form, imm) in forms.iter().zip(imms) {
            let code = if form[0] == 0xc4 {
                [&form[..], &[0x05], &le32(-0x2000_0000), imm].concat()
            } else {
                [&form[..], &le32(-0x2000_0000), imm].concat()
            };
            for to in [FROM + 0x1000, FROM - 0x5000_0000, FROM + 0x5000_0000] {
                let out = moved(&code, to);
                let field = code.len() - imm.len() - 4;
                assert_eq!(
                    (out.len(), &out[..field], &out[field + 4..]),
                    (code.len(), &code[..field], &code[field + 4..])
                );
            }
            assert!(matches!(
                relocate(&code, FROM, FROM + 0x6000_1000),
                Err(RelocateError::OutOfRange { offset: 0, .. })
            ));
        }
    }

    #[test]
    fn eip_relative_operand_reaches_low_memory_from_anywhere() {
        // mov eax, [eip+d] with a target below 4 GiB.
        let from = 0x4000_0000;
        let code = [&[0x67, 0x8b, 0x05][..], &le32(0x100)].concat();
        for to in [0x1000, 0xffff_0000, 0x7fff_1234_0000] {
            let out = relocate(&code, from, to).unwrap();
            assert_eq!(targets(&out, to), [Some(0x4000_0107)]);
            assert_eq!(out[..3], code[..3]);
        }
    }

    #[test]
    fn rip_relative_reference_to_the_block_moves_with_it() {
        // 0: jmp short ext (widened, +3); 2: lea rax, [rip+0] (the block's end, 9).
        let code = [&[0xeb, 0x70, 0x48, 0x8d, 0x05][..], &le32(0)].concat();
        let to = FROM - 0x1000_0000;
        let out = relocate(&code, FROM, to).unwrap();
        assert_eq!(
            targets(&out, to),
            [Some(FROM as u64 + 0x72), Some(to as u64 + 12)]
        );
    }

    #[test]
    fn xbegin_rel32_is_relocated_rel16_is_refused() {
        let code = [&[0xc7, 0xf8][..], &le32(0x40)].concat();
        assert_eq!(moved(&code, FROM + 0x1234_5678).len(), 6);
        let rel16 = [0x90, 0x66, 0xc7, 0xf8, 0x40, 0x00];
        assert!(matches!(
            relocate(&rel16, FROM, FROM),
            Err(RelocateError::Encode { offset: 1, .. })
        ));
    }

    #[test]
    fn other_instructions_keep_their_bytes() {
        let plain: &[&[u8]] = &[
            &[0x48, 0x01, 0xd8],                               // add rax, rbx
            &[0x48, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8],             // mov rax, imm64
            &[0xc5, 0xfd, 0x6f, 0xc1],                         // vmovdqa ymm0, ymm1
            &[0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0, 0, 0, 0], // long nop
            &[0xf3, 0x90],                                     // pause
            &[0x26, 0x48, 0x8b, 0x04, 0x25, 0x10, 0, 0, 0],    // es mov rax, [0x10] (absolute)
            &[0xff, 0xd0],                                     // call rax
            &[0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0, 0, 0],    // mov rax, fs:[0x28]
            &[0x62, 0xf1, 0x7c, 0x48, 0x10, 0x44, 0x24, 0x01], // vmovups zmm0, [rsp+0x40] (disp8*N)
            &[0xc3],                                           // ret
        ];
        let mut code = vec![0xeb, 0x70]; // widened, so everything after it moves by 3
        for p in plain {
            code.extend_from_slice(p);
        }
        let out = moved(&code, FROM + 0x100_0000);
        assert_eq!(out[5..], code[2..]);
        assert_eq!(
            insns(&out, FROM)
                .iter()
                .map(|(_, i, _)| i.mnemonic())
                .next(),
            Some(Mnemonic::Jmp)
        );
    }

    #[test]
    fn relocating_in_place_is_the_identity() {
        let code = [
            &[0xeb, 0x70, 0x74, 0x00, 0xe2, 0xfc, 0x48, 0x8d, 0x05][..],
            &le32(-9),
            &[0xe8],
            &le32(7),
        ]
        .concat();
        assert_eq!(relocate(&code, FROM, FROM).unwrap(), code);
    }

    #[test]
    fn undecodable_bytes_are_refused() {
        assert_eq!(
            relocate(&[0x90, 0x06], FROM, FROM),
            Err(RelocateError::Undecodable { offset: 1 })
        );
        assert_eq!(
            relocate(&[0x90, 0xe8, 0x00], FROM, FROM),
            Err(RelocateError::Undecodable { offset: 1 })
        );
        assert_eq!(relocate(&[], FROM, 0), Ok(Vec::new()));
    }

    #[test]
    fn errors_name_the_offset() {
        let err = relocate(&[0x90, 0xe2, 0x10], FROM, 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot relocate code: instruction at offset 1 cannot reach {:#x} from its new address",
                FROM + 0x13
            )
        );
    }

    // ---- property tests ------------------------------------------------------------------

    /// What the oracle saw, for the coverage check.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    enum Seen {
        Ok,
        OutOfRange,
        Mid,
        Undecodable,
        Unsupported,
    }

    /// Upper bound on how much widening one rel8 branch adds (`3e 74` -> `3e 0f 84`).
    const MAX_GROWTH: i128 = 4;

    fn is_widenable(insn: &Instruction) -> bool {
        insn.code().as_near_branch() != insn.code()
    }

    fn field_fits(d: i128, rel8: bool) -> bool {
        if rel8 {
            i8::try_from(d).is_ok()
        } else {
            i32::try_from(d).is_ok()
        }
    }

    /// Relocates `code` from `from` to `to` and checks the result against an independent
    /// reading of the original: `Ok` code must decode to the same instructions (a rel8
    /// jmp/jcc possibly widened) with the same external targets and in-block targets moved to
    /// the same instruction boundary of the new block, and other bytes unchanged; an error
    /// must be the one the original calls for, and `OutOfRange` must be possible for some
    /// layout the widening could produce. Addresses must not wrap.
    fn check(code: &[u8], from: usize, to: usize) -> Result<Seen, TestCaseError> {
        let result = relocate(code, from, to);
        let mut decoder = Decoder::with_ip(64, code, from as u64, DecoderOptions::NONE);
        let mut orig = Vec::new();
        while decoder.can_decode() {
            let offset = decoder.position();
            let insn = decoder.decode();
            if insn.is_invalid() {
                prop_assert_eq!(result, Err(RelocateError::Undecodable { offset }));
                return Ok(Seen::Undecodable);
            }
            orig.push((
                offset,
                insn,
                resolved(&insn),
                decoder.get_constant_offsets(&insn),
            ));
        }
        let starts: Vec<usize> = orig.iter().map(|o| o.0).chain([code.len()]).collect();
        // Some(Ok(k)): boundary k of the block; Some(Err(())): inside an instruction.
        let inside = |t: u64| {
            let off = t as i128 - from as i128;
            (0..=code.len() as i128)
                .contains(&off)
                .then(|| starts.binary_search(&(off as usize)).map_err(|_| ()))
        };
        for (offset, insn, target, consts) in &orig {
            if let Some(t) = target
                && inside(*t) == Some(Err(()))
            {
                prop_assert_eq!(
                    result,
                    Err(RelocateError::MidInstruction {
                        offset: *offset,
                        target: *t as usize
                    })
                );
                return Ok(Seen::Mid);
            }
            if insn.op_kinds().any(|k| k == OpKind::NearBranch64) && consts.immediate_size() == 2 {
                prop_assert!(
                    matches!(&result, Err(RelocateError::Encode { offset: o, .. }) if o == offset),
                    "expected an Encode error at {}",
                    offset
                );
                return Ok(Seen::Unsupported);
            }
        }
        match result {
            Ok(out) => {
                let new = insns(&out, to);
                prop_assert_eq!(new.len(), orig.len());
                let new_starts: Vec<usize> = new.iter().map(|n| n.0).chain([out.len()]).collect();
                for (i, ((offset, insn, target, consts), (_, new_insn, new_target))) in
                    orig.iter().zip(&new).enumerate()
                {
                    let (old_bytes, new_bytes) = (
                        &code[*offset..starts[i + 1]],
                        &out[new_starts[i]..new_starts[i + 1]],
                    );
                    let Some(t) = target else {
                        prop_assert_eq!(old_bytes, new_bytes);
                        continue;
                    };
                    let expected = match inside(*t) {
                        Some(Ok(k)) => (to + new_starts[k]) as u64,
                        _ => *t,
                    };
                    prop_assert_eq!(
                        *new_target,
                        Some(expected),
                        "instruction {} of {:02x?} -> {:02x?}",
                        i,
                        code,
                        out
                    );
                    if new_insn.code() == insn.code() {
                        // Same form: only the displacement field may differ.
                        let (at, size) = if consts.has_displacement() {
                            (consts.displacement_offset(), consts.displacement_size())
                        } else {
                            (consts.immediate_offset(), consts.immediate_size())
                        };
                        prop_assert_eq!(new_bytes.len(), old_bytes.len());
                        prop_assert_eq!(&new_bytes[..at], &old_bytes[..at]);
                        prop_assert_eq!(&new_bytes[at + size..], &old_bytes[at + size..]);
                    } else {
                        prop_assert!(is_widenable(insn) && consts.immediate_size() == 1);
                        prop_assert_eq!(new_insn.code(), insn.code().as_near_branch());
                    }
                }
                Ok(Seen::Ok)
            }
            Err(RelocateError::OutOfRange { offset, target: _ }) => {
                let i = starts
                    .binary_search(&offset)
                    .expect("OutOfRange names an instruction");
                let (_, insn, target, consts) = &orig[i];
                let t = target.expect("OutOfRange names an instruction with a target");
                let is_branch = insn.op_kinds().any(|k| k == OpKind::NearBranch64);
                let widenable = is_branch && is_widenable(insn) && consts.immediate_size() == 1;
                let rel8 = is_branch && consts.immediate_size() == 1 && !widenable;
                let growth = |range: std::ops::Range<usize>| {
                    MAX_GROWTH
                        * orig[range]
                            .iter()
                            .filter(|o| is_widenable(&o.1) && o.3.immediate_size() == 1)
                            .count() as i128
                };
                let len = (starts[i + 1] - starts[i]) as i128;
                // The displacement the instruction would need, over every layout widening allows.
                let (lo, hi) = match inside(t) {
                    Some(Ok(k)) if k > i => {
                        let d = (starts[k] - starts[i + 1]) as i128;
                        (d, d + growth(i + 1..k))
                    }
                    Some(Ok(k)) => {
                        let d = starts[k] as i128 - starts[i + 1] as i128;
                        (d - growth(k..i + 1), d)
                    }
                    _ => {
                        let next = to as i128 + starts[i] as i128 + len;
                        let own = if widenable { MAX_GROWTH } else { 0 };
                        (t as i128 - next - growth(0..i) - own, t as i128 - next)
                    }
                };
                let eip = !is_branch && insn.memory_base() == Register::EIP;
                prop_assert!(!eip, "EIP-relative operands reach any 32-bit target");
                prop_assert!(
                    !(field_fits(lo, rel8) && field_fits(hi, rel8)),
                    "OutOfRange at {} though every layout reaches it: {:02x?} {:#x} -> {:#x}",
                    offset,
                    code,
                    from,
                    to
                );
                Ok(Seen::OutOfRange)
            }
            Err(e) => Err(TestCaseError::fail(format!(
                "unexpected {e:?} for {code:02x?} {from:#x} -> {to:#x}"
            ))),
        }
    }

    /// Instruction forms the generator assembles by hand.
    #[derive(Debug, Clone, Copy)]
    enum Form {
        Call,
        Jmp8,
        Jmp32,
        Jcc8(u8),
        Jcc32(u8),
        Loop,
        Jrcxz,
        Xbegin,
        /// (opcode bytes before disp32, immediate length)
        RipRel(usize),
        Plain(usize),
    }

    const RIP_FORMS: [(&[u8], usize); 5] = [
        (&[0x48, 0x8d, 0x05], 0),
        (&[0x8b, 0x05], 0),
        (&[0x80, 0x3d], 1),
        (&[0xc7, 0x05], 4),
        (&[0xff, 0x25], 0),
    ];
    const PLAIN: [&[u8]; 5] = [
        &[0x48, 0x01, 0xd8],
        &[0x90],
        &[0x48, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8],
        &[0xc5, 0xfd, 0x6f, 0xc1],
        &[0xf3, 0x90],
    ];

    impl Form {
        fn len(self) -> usize {
            match self {
                Form::Jmp8 | Form::Jcc8(_) | Form::Loop | Form::Jrcxz => 2,
                Form::Call | Form::Jmp32 => 5,
                Form::Jcc32(_) | Form::Xbegin => 6,
                Form::RipRel(k) => RIP_FORMS[k].0.len() + 4 + RIP_FORMS[k].1,
                Form::Plain(k) => PLAIN[k].len(),
            }
        }

        fn rel8(self) -> bool {
            self.len() == 2
        }
    }

    /// Where a generated instruction points.
    #[derive(Debug, Clone, Copy)]
    enum Aim {
        /// Instruction boundary `k % (n + 1)` of the block.
        Boundary(usize),
        /// One byte past the start of instruction `k % n` (inside it if it is longer than 1).
        Mid(usize),
        /// Outside the block; rel8 forms pick a reachable address outside it.
        External(i32),
    }

    fn form() -> impl Strategy<Value = Form> {
        prop_oneof![
            2 => Just(Form::Call),
            3 => Just(Form::Jmp8),
            2 => Just(Form::Jmp32),
            3 => (0..16u8).prop_map(Form::Jcc8),
            2 => (0..16u8).prop_map(Form::Jcc32),
            1 => Just(Form::Loop),
            1 => Just(Form::Jrcxz),
            1 => Just(Form::Xbegin),
            3 => (0..RIP_FORMS.len()).prop_map(Form::RipRel),
            3 => (0..PLAIN.len()).prop_map(Form::Plain),
        ]
    }

    fn aim() -> impl Strategy<Value = Aim> {
        prop_oneof![
            6 => any::<usize>().prop_map(Aim::Boundary),
            1 => any::<usize>().prop_map(Aim::Mid),
            8 => any::<i32>().prop_map(Aim::External),
        ]
    }

    /// The distance between the old and the new place: close, within reach, around the
    /// ±2 GiB limit, or far beyond it.
    fn shift() -> impl Strategy<Value = i64> {
        prop_oneof![
            -300i64..300,
            -(1i64 << 30)..(1 << 30),
            ((1i64 << 31) - (1 << 16))..((1 << 31) + (1 << 16)),
            (-(1i64 << 31) - (1 << 16))..(-(1 << 31) + (1 << 16)),
            (1i64 << 32)..(1 << 40),
            -(1i64 << 40)..-(1 << 32),
        ]
    }

    /// Assembles `block` at `from`.
    fn assemble(block: &[(Form, Aim)], from: usize) -> Vec<u8> {
        let n = block.len();
        let starts: Vec<usize> = block
            .iter()
            .scan(0, |at, (f, _)| Some(std::mem::replace(at, *at + f.len())))
            .collect();
        let len: usize = block.iter().map(|(f, _)| f.len()).sum();
        let boundary = |k: usize| if k < n { starts[k] } else { len };
        let mut code = Vec::with_capacity(len);
        for (i, &(form, aim)) in block.iter().enumerate() {
            let end = starts[i] + form.len();
            let target: i64 = match aim {
                Aim::Boundary(k) => boundary(k % (n + 1)) as i64,
                Aim::Mid(k) => starts[k % n] as i64 + 1,
                // rel8: a reachable offset before the block, or after it.
                Aim::External(r) if form.rel8() && r % 2 == 0 => {
                    end as i64 - 128 + (r.unsigned_abs() as i64 % (128 - end as i64))
                }
                Aim::External(r) if form.rel8() => {
                    len as i64 + 1 + (r.unsigned_abs() as i64 % (end as i64 + 127 - len as i64))
                }
                Aim::External(r) => end as i64 + r as i64,
            };
            let d = target - end as i64;
            // Only rel32 forms can reach far; in-block targets always fit rel8 (blocks are small).
            let d8 = || i8::try_from(d).map(|d| d as u8).unwrap_or(0);
            let d32 = || i32::try_from(d).unwrap_or(0).to_le_bytes();
            match form {
                Form::Call => code.extend([&[0xe8][..], &d32()].concat()),
                Form::Jmp8 => code.extend([0xeb, d8()]),
                Form::Jmp32 => code.extend([&[0xe9][..], &d32()].concat()),
                Form::Jcc8(cc) => code.extend([0x70 + cc, d8()]),
                Form::Jcc32(cc) => code.extend([&[0x0f, 0x80 + cc][..], &d32()].concat()),
                Form::Loop => code.extend([0xe2, d8()]),
                Form::Jrcxz => code.extend([0xe3, d8()]),
                Form::Xbegin => code.extend([&[0xc7, 0xf8][..], &d32()].concat()),
                Form::RipRel(k) => {
                    code.extend_from_slice(RIP_FORMS[k].0);
                    code.extend(d32());
                    code.extend(std::iter::repeat_n(0x5a, RIP_FORMS[k].1));
                }
                Form::Plain(k) => code.extend_from_slice(PLAIN[k]),
            }
        }
        debug_assert_eq!(code.len(), len);
        let _ = from;
        code
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        /// Random blocks of branches, RIP-relative operands and plain instructions, moved by
        /// random distances: targets are kept or moved with the block, or the error is right.
        #[test]
        fn relocated_code_reaches_the_same_targets(
            block in proptest::collection::vec((form(), aim()), 1..8),
            from in (1usize << 41)..(1 << 44),
            shift in shift(),
        ) {
            let code = assemble(&block, from);
            let to = (from as i64 + shift) as usize;
            let seen = check(&code, from, to)?;
            if !matches!(seen, Seen::Mid) {
                prop_assert_eq!(relocate(&code, from, from), Ok(code.clone()), "moving nowhere changes nothing");
            }
        }

        /// Arbitrary bytes never make relocation panic, and whatever it returns is right.
        #[test]
        fn arbitrary_bytes_are_relocated_or_refused(
            code in proptest::collection::vec(any::<u8>(), 0..24),
            from in (1usize << 41)..(1 << 44),
            shift in shift(),
        ) {
            check(&code, from, (from as i64 + shift) as usize)?;
        }
    }

    /// The generator reaches every outcome often enough to mean something.
    #[test]
    fn generator_covers_every_outcome() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let strategy = (
            proptest::collection::vec((form(), aim()), 1..8),
            (1usize << 41)..(1 << 44),
            shift(),
        );
        let mut counts = std::collections::HashMap::new();
        for _ in 0..256 {
            let (block, from, shift) = strategy.new_tree(&mut runner).unwrap().current();
            let code = assemble(&block, from);
            let seen = check(&code, from, (from as i64 + shift) as usize).unwrap();
            *counts.entry(seen).or_insert(0) += 1;
        }
        for seen in [Seen::Ok, Seen::OutOfRange, Seen::Mid] {
            assert!(counts.get(&seen).copied().unwrap_or(0) >= 20, "{counts:?}");
        }
    }
}
