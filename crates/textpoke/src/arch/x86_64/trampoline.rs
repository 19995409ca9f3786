//! Static-call trampolines.
//!
//! A trampoline is 24 bytes, 8-aligned:
//!
//! ```text
//! +0   e9 rel32 cc     jmp target          (near form)
//!      ff 25 disp32    jmp [rip + slot]    (far form: a target beyond rel32 range)
//!      c3 cc cc cc cc  ret                 (no-op form)
//!      cc              padding
//! +8   slot 0          absolute target for the far form
//! +16  slot 1          the other slot, so a far update never rewrites the slot in use
//! ```
//!
//! Only the first 6 bytes are ever executed; they are patched with the breakpoint protocol. A
//! far update first fills the slot not in use (no thread reads it), then points the jump at it.

use super::Insn;
use crate::engine::Code;

/// Bytes of a trampoline that are patched as an instruction.
pub const TRAMPOLINE_PATCH_LEN: usize = 6;
/// Whole trampoline, slots included.
pub const TRAMPOLINE_LEN: usize = 24;
const SLOT_OFFSET: [usize; 2] = [8, 16];

/// How a trampoline reaches its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrampolineForm {
    /// `ret`: the call does nothing.
    Ret,
    /// `jmp rel32`.
    Near(usize),
    /// `jmp [rip + slot]`, with the target stored in slot 0 or 1.
    Far {
        /// The target.
        target: usize,
        /// Which slot holds it.
        slot: u8,
    },
}

impl TrampolineForm {
    /// The form that reaches `target` (`None`: no-op) from `tramp`; a far target uses the slot
    /// other than `busy_slot`.
    pub fn to(tramp: usize, target: Option<usize>, busy_slot: Option<u8>) -> Self {
        let Some(target) = target else {
            return TrampolineForm::Ret;
        };
        if rel32(tramp + 5, target).is_some() {
            TrampolineForm::Near(target)
        } else {
            TrampolineForm::Far {
                target,
                slot: busy_slot.map_or(0, |s| 1 - s),
            }
        }
    }

    /// The first [`TRAMPOLINE_PATCH_LEN`] bytes for this form; `None` for a near form whose
    /// target is out of range.
    pub fn code(self, tramp: usize) -> Option<Code> {
        let bytes = match self {
            TrampolineForm::Ret => [0xc3, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc],
            TrampolineForm::Near(target) => {
                let r = rel32(tramp + 5, target)?.to_le_bytes();
                [0xe9, r[0], r[1], r[2], r[3], 0xcc]
            }
            TrampolineForm::Far { slot, .. } => {
                let disp = (SLOT_OFFSET[slot as usize] - TRAMPOLINE_PATCH_LEN) as u32;
                let d = disp.to_le_bytes();
                [0xff, 0x25, d[0], d[1], d[2], d[3]]
            }
        };
        Code::new(&bytes)
    }

    /// The slot this form reads, with the value it must hold.
    pub fn slot(self, tramp: usize) -> Option<(usize, u8, [u8; 8])> {
        match self {
            TrampolineForm::Far { target, slot } => Some((
                tramp + SLOT_OFFSET[slot as usize],
                slot,
                (target as u64).to_le_bytes(),
            )),
            _ => None,
        }
    }

    /// What a thread that meets the trampoline mid-batch is given.
    pub fn insn(self) -> Insn {
        match self {
            TrampolineForm::Ret => Insn::Ret,
            TrampolineForm::Near(target) | TrampolineForm::Far { target, .. } => {
                Insn::Jmp { target }
            }
        }
    }
}

fn rel32(next: usize, target: usize) -> Option<i32> {
    i32::try_from((target as i64).wrapping_sub(next as i64)).ok()
}

/// Emits a trampoline named `$sym` (a string literal, from `__static_call_symbol!`) that
/// initially jumps to `$target`, and its 12-byte table entry: trampoline, call state (`$core`),
/// initial target. Used by `static_call!` only.
#[doc(hidden)]
#[macro_export]
macro_rules! __arch_static_call_trampoline {
    ($sym:expr, $core:path, $target:path) => {
        $crate::__private::static_call_must_be_declared_outside_functions!(
            ".pushsection .text.textpoke_trampoline,\"ax\",@progbits",
            ".p2align 3",
            concat!(".globl \"", $sym, "\""),
            concat!(".hidden \"", $sym, "\""),
            concat!(".type \"", $sym, "\",@function"),
            concat!("\"", $sym, "\":"),
            // Unwind information: unwinders and debuggers step through the jump, and textpoke
            // finds the trampoline's bounds in the unwind table (a symbol-table lookup would
            // read the object's file).
            ".cfi_startproc",
            ".byte 0xe9",
            concat!(".long {target} - (\"", $sym, "\" + 5)"),
            ".byte 0xcc, 0xcc, 0xcc",
            ".quad 0",
            ".quad 0",
            ".cfi_endproc",
            concat!(".size \"", $sym, "\", 24"),
            ".popsection",
            ".pushsection textpoke_call_v2,\"aR\",@progbits",
            ".balign 4",
            concat!(".long \"", $sym, "\" - ."),
            ".long {core} - .",
            ".long {target} - .",
            ".popsection",
            core = sym $core,
            target = sym $target,
        );
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::disassemble;

    #[test]
    fn forms_encode_as_documented() {
        let t = 0x10_0000;
        let near = TrampolineForm::to(t, Some(t + 0x100), None);
        assert_eq!(near, TrampolineForm::Near(t + 0x100));
        assert_eq!(
            disassemble(t, &near.code(t).unwrap().as_slice()[..5]),
            "jmp 0000000000100100h"
        );

        let far_target = t + (1 << 33);
        let far = TrampolineForm::to(t, Some(far_target), None);
        assert_eq!(
            far,
            TrampolineForm::Far {
                target: far_target,
                slot: 0
            }
        );
        assert_eq!(
            disassemble(t, far.code(t).unwrap().as_slice()),
            "jmp qword ptr [100008h]"
        );
        assert_eq!(
            far.slot(t),
            Some((t + 8, 0, (far_target as u64).to_le_bytes()))
        );
        let other = TrampolineForm::to(t, Some(far_target + 16), Some(0));
        assert_eq!(
            disassemble(t, other.code(t).unwrap().as_slice()),
            "jmp qword ptr [100010h]"
        );

        let ret = TrampolineForm::to(t, None, Some(1));
        assert_eq!(disassemble(t, &ret.code(t).unwrap().as_slice()[..1]), "ret");
        assert_eq!(ret.insn(), Insn::Ret);
        assert_eq!(far.insn(), Insn::Jmp { target: far_target });
    }
}
