//! Whether a function's first bytes may be overwritten with a `jmp rel32`, and which.
//!
//! A detour writes a 5-byte jump over the first instructions of a function that was not built
//! for it. Reference 004 lists what makes that unsafe, and each is checked here by decoding the
//! whole function from its start (iced-x86), not only the bytes to be overwritten:
//!
//! - the function must hold the jump: its bytes from the patch point on are at least 5;
//! - no branch anywhere in the function may land inside the overwritten instructions other than
//!   on their first byte ("a loop head near the top"), or it would land inside the jump;
//! - no call (nor `syscall`, `int`) may end inside them: a thread in the callee, or blocked in
//!   the system call, would return into the middle of the jump, and a return address cannot be
//!   found reliably on another thread's stack, so such prologues are refused rather than fixed;
//! - an `int3` there belongs to someone else (a debugger, another patcher): refused.
//!
//! `endbr64` stays at the entry (the patch point is after it), so indirect calls keep landing
//! on it under CET. Whether the instructions can be relocated is the relocator's to say, once
//! the copy's address is known.

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind};

use super::encode::disassemble;

/// Bytes of the jump written at the patch point.
pub const DETOUR_JUMP_LEN: usize = 5;

/// `endbr64`.
const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];

/// The instructions a detour overwrites, found safe to overwrite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prologue {
    /// Where the jump goes: the function's entry, or just after its `endbr64`.
    pub site: usize,
    /// The whole instructions the jump covers, in their current bytes (at least
    /// [`DETOUR_JUMP_LEN`], the last one possibly only partly overwritten).
    pub bytes: Vec<u8>,
    /// Offsets of their starts in `bytes`, the first being 0.
    pub boundaries: Vec<usize>,
}

/// Why a function's first instructions may not be overwritten. Addresses are absolute;
/// instructions are named with their disassembly.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrologueError {
    /// The function has fewer bytes after the patch point than the jump needs.
    #[error("the function is {len} bytes long from {site:#x}; the jump needs {DETOUR_JUMP_LEN}")]
    TooShort {
        /// Patch point.
        site: usize,
        /// Bytes from the patch point to the function's end.
        len: usize,
    },
    /// Bytes that do not decode as an instruction.
    #[error("no valid instruction at {at:#x}")]
    Undecodable {
        /// Where decoding failed.
        at: usize,
    },
    /// A branch lands inside the overwritten instructions, after their first byte.
    #[error("`{insn}` at {at:#x} branches to {target:#x}, inside the bytes the jump overwrites")]
    BranchIntoRegion {
        /// The branch.
        at: usize,
        /// Its disassembly.
        insn: String,
        /// Where it lands.
        target: usize,
    },
    /// A call or system call inside the overwritten instructions returns inside them.
    #[error(
        "`{insn}` at {at:#x} returns to {ret:#x}, inside the bytes the jump overwrites: a thread in \
         it would return into the jump"
    )]
    ReturnIntoRegion {
        /// The call.
        at: usize,
        /// Its disassembly.
        insn: String,
        /// Its return address.
        ret: usize,
    },
    /// A breakpoint that is not textpoke's lies in the overwritten instructions.
    #[error("`int3` at {at:#x}, in the bytes the jump overwrites, belongs to someone else")]
    ForeignBreakpoint {
        /// The breakpoint.
        at: usize,
    },
}

/// Decides which instructions of the function `code` (its whole bytes, at `start`) a jump at
/// its entry overwrites, and whether that is safe (see the [module docs](self)).
pub fn analyze_prologue(code: &[u8], start: usize) -> Result<Prologue, PrologueError> {
    let skip = if code.starts_with(&ENDBR64) {
        ENDBR64.len()
    } else {
        0
    };
    let site = start + skip;
    let body = &code[skip..];
    if body.len() < DETOUR_JUMP_LEN {
        return Err(PrologueError::TooShort {
            site,
            len: body.len(),
        });
    }
    let insns = decode_all(code, start)?;
    // The instructions from the patch point that the jump covers.
    let mut boundaries = Vec::new();
    let mut covered = 0;
    for insn in insns.iter().filter(|i| i.ip() as usize >= site) {
        if covered >= DETOUR_JUMP_LEN {
            break;
        }
        boundaries.push(covered);
        covered += insn.len();
    }
    if covered < DETOUR_JUMP_LEN {
        return Err(PrologueError::TooShort { site, len: covered });
    }
    let end = site + covered;
    let inside = |addr: usize| addr > site && addr < end;
    for insn in &insns {
        let at = insn.ip() as usize;
        let text = || disassemble(at, &code[at - start..at - start + insn.len()]);
        if has_near_branch(insn) && inside(insn.near_branch_target() as usize) {
            return Err(PrologueError::BranchIntoRegion {
                at,
                insn: text(),
                target: insn.near_branch_target() as usize,
            });
        }
        if !(site..end).contains(&at) {
            continue;
        }
        if insn.mnemonic() == Mnemonic::Int3 {
            return Err(PrologueError::ForeignBreakpoint { at });
        }
        let returns_here = matches!(
            insn.mnemonic(),
            Mnemonic::Call
                | Mnemonic::Syscall
                | Mnemonic::Sysenter
                | Mnemonic::Int
                | Mnemonic::Into
                | Mnemonic::Int1
        );
        let ret = insn.next_ip() as usize;
        if returns_here && inside(ret) {
            return Err(PrologueError::ReturnIntoRegion {
                at,
                insn: text(),
                ret,
            });
        }
    }
    Ok(Prologue {
        site,
        bytes: body[..covered].to_vec(),
        boundaries,
    })
}

/// Every instruction of the function, in order.
fn decode_all(code: &[u8], start: usize) -> Result<Vec<Instruction>, PrologueError> {
    let mut decoder = Decoder::with_ip(64, code, start as u64, DecoderOptions::NONE);
    let mut out = Vec::new();
    while decoder.can_decode() {
        let insn = decoder.decode();
        if insn.is_invalid() {
            return Err(PrologueError::Undecodable {
                at: insn.ip() as usize,
            });
        }
        out.push(insn);
    }
    Ok(out)
}

fn has_near_branch(insn: &Instruction) -> bool {
    insn.op_kinds().any(|k| {
        matches!(
            k,
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: usize = 0x40_0000;

    #[test]
    fn covers_whole_instructions_from_the_entry() {
        // push rbp; mov rbp, rsp; sub rsp, 0x20; ... ; ret
        let code = [
            0x55, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xec, 0x20, 0x31, 0xc0, 0xc9, 0xc3,
        ];
        let p = analyze_prologue(&code, AT).unwrap();
        assert_eq!(p.site, AT);
        assert_eq!(p.bytes, code[..8]);
        assert_eq!(p.boundaries, [0, 1, 4]);
    }

    #[test]
    fn endbr64_stays_at_the_entry() {
        let mut code = ENDBR64.to_vec();
        code.extend([0x48, 0x81, 0xec, 0, 1, 0, 0, 0xc3]); // sub rsp, 0x100; ret
        let p = analyze_prologue(&code, AT).unwrap();
        assert_eq!(p.site, AT + 4);
        assert_eq!(p.boundaries, [0]);
        assert_eq!(p.bytes.len(), 7);
    }

    #[test]
    fn too_short_functions_are_refused() {
        // xor eax, eax; ret
        assert_eq!(
            analyze_prologue(&[0x31, 0xc0, 0xc3], AT),
            Err(PrologueError::TooShort { site: AT, len: 3 })
        );
        // endbr64; xor eax, eax; inc eax; ret: 5 bytes after the endbr64, but the last
        // instruction... is whole: accepted.
        let mut code = ENDBR64.to_vec();
        code.extend([0x31, 0xc0, 0xff, 0xc0, 0xc3]);
        assert!(analyze_prologue(&code, AT).is_ok());
        code.pop();
        assert!(matches!(
            analyze_prologue(&code, AT),
            Err(PrologueError::TooShort { .. })
        ));
    }

    #[test]
    fn a_loop_head_inside_the_region_is_refused() {
        // top: push rbx (1) ; inc eax (2) ; cmp eax, 10 (3) ; jne top+1 (2) ; pop rbx ; ret
        let code = [0x53, 0xff, 0xc0, 0x83, 0xf8, 0x0a, 0x75, 0xf9, 0x5b, 0xc3];
        match analyze_prologue(&code, AT) {
            Err(PrologueError::BranchIntoRegion { at, target, insn }) => {
                assert_eq!((at, target), (AT + 6, AT + 1));
                assert!(insn.starts_with("jne"), "{insn}");
            }
            other => panic!("{other:?}"),
        }
        // The same loop to the first byte is fine.
        let code = [0x53, 0xff, 0xc0, 0x83, 0xf8, 0x0a, 0x75, 0xf8, 0x5b, 0xc3];
        assert!(analyze_prologue(&code, AT).is_ok());
    }

    #[test]
    fn calls_returning_inside_are_refused_and_others_not() {
        // call rax (2) ; nop3 (3) ; ret
        let code = [0xff, 0xd0, 0x0f, 0x1f, 0x00, 0xc3];
        assert!(matches!(
            analyze_prologue(&code, AT),
            Err(PrologueError::ReturnIntoRegion { at: AT, ret, .. }) if ret == AT + 2
        ));
        // syscall (2) ; nop3 ; ret
        let code = [0x0f, 0x05, 0x0f, 0x1f, 0x00, 0xc3];
        assert!(matches!(
            analyze_prologue(&code, AT),
            Err(PrologueError::ReturnIntoRegion { .. })
        ));
        // call rel32 (5): returns to the region's end, which is fine.
        let code = [0xe8, 0, 0, 0, 0, 0xc3];
        assert!(analyze_prologue(&code, AT).is_ok());
    }

    #[test]
    fn foreign_int3_and_bad_bytes_are_refused() {
        let code = [0x55, 0xcc, 0x48, 0x89, 0xe5, 0xc3];
        assert_eq!(
            analyze_prologue(&code, AT),
            Err(PrologueError::ForeignBreakpoint { at: AT + 1 })
        );
        // 0x06 is invalid in 64-bit mode.
        let code = [0x55, 0x48, 0x89, 0xe5, 0x06, 0xc3];
        assert!(matches!(
            analyze_prologue(&code, AT),
            Err(PrologueError::Undecodable { at }) if at == AT + 4
        ));
    }
}
