//! Emulation of a patched instruction for a thread that hit the breakpoint mid-batch.
//!
//! Runs inside the SIGTRAP handler: no allocation, no locks, no panics.

/// The instruction a site is becoming, as the trap handler must emulate it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insn {
    /// A NOP of `len` bytes: continue after it.
    Nop {
        /// Length of the NOP.
        len: u8,
    },
    /// `jmp target`.
    Jmp {
        /// Destination.
        target: usize,
    },
    /// `call target`, `len` bytes long (the return address is the next instruction).
    Call {
        /// Destination.
        target: usize,
        /// Length of the call instruction.
        len: u8,
    },
    /// `jcc target` with condition code `cc` (the low nibble of the opcode).
    Jcc {
        /// Condition code, 0 (`o`) to 15 (`g`).
        cc: u8,
        /// Destination when the condition holds.
        target: usize,
        /// Length of the instruction (fall-through distance).
        len: u8,
    },
    /// `ret`.
    Ret,
    /// `mov` of an immediate into general register `reg` (0 `rax` to 15 `r15`, in encoding
    /// order), `len` bytes long.
    MovImm {
        /// Destination register number.
        reg: u8,
        /// The whole register's value afterwards (a 32-bit `mov` has zero-extended its
        /// immediate).
        value: u64,
        /// Length of the instruction.
        len: u8,
    },
}

/// An [`Insn`] (or none) in the frozen layout of the `v1` rendezvous: a copy of textpoke in a
/// plugin hands its batches to the process's patcher, which may be another version. Never
/// change a field or a kind's number; a new kind gets a new number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct WireInsn {
    kind: u8,
    len: u8,
    cc: u8,
    _reserved: [u8; 5],
    target: usize,
}

const WIRE_NONE: u8 = 0;
const WIRE_NOP: u8 = 1;
const WIRE_JMP: u8 = 2;
const WIRE_CALL: u8 = 3;
const WIRE_JCC: u8 = 4;
const WIRE_RET: u8 = 5;
/// `cc` holds the register, `target` the value.
const WIRE_MOV_IMM: u8 = 6;

impl WireInsn {
    /// No instruction: the poke is data that no thread executes.
    pub const NONE: WireInsn = WireInsn::raw(WIRE_NONE, 0, 0, 0);

    const fn raw(kind: u8, len: u8, cc: u8, target: usize) -> Self {
        WireInsn {
            kind,
            len,
            cc,
            _reserved: [0; 5],
            target,
        }
    }

    /// The wire form of `insn`.
    pub const fn of(insn: Option<Insn>) -> Self {
        match insn {
            None => Self::NONE,
            Some(Insn::Nop { len }) => Self::raw(WIRE_NOP, len, 0, 0),
            Some(Insn::Jmp { target }) => Self::raw(WIRE_JMP, 0, 0, target),
            Some(Insn::Call { target, len }) => Self::raw(WIRE_CALL, len, 0, target),
            Some(Insn::Jcc { cc, target, len }) => Self::raw(WIRE_JCC, len, cc, target),
            Some(Insn::Ret) => Self::raw(WIRE_RET, 0, 0, 0),
            Some(Insn::MovImm { reg, value, len }) => {
                Self::raw(WIRE_MOV_IMM, len, reg, value as usize)
            }
        }
    }

    /// Whether this names an instruction (a kind this version knows or not).
    pub fn is_some(&self) -> bool {
        self.kind != WIRE_NONE
    }

    /// The instruction; `Err(kind)` for a kind this version does not know.
    pub fn get(&self) -> Result<Option<Insn>, u8> {
        Ok(Some(match self.kind {
            WIRE_NONE => return Ok(None),
            WIRE_NOP => Insn::Nop { len: self.len },
            WIRE_JMP => Insn::Jmp {
                target: self.target,
            },
            WIRE_CALL => Insn::Call {
                target: self.target,
                len: self.len,
            },
            WIRE_JCC if self.cc < 16 => Insn::Jcc {
                cc: self.cc,
                target: self.target,
                len: self.len,
            },
            WIRE_RET => Insn::Ret,
            WIRE_MOV_IMM if (self.cc as usize) < GPRS => Insn::MovImm {
                reg: self.cc,
                value: self.target as u64,
                len: self.len,
            },
            other => return Err(other),
        }))
    }
}

/// Number of general registers.
pub const GPRS: usize = 16;
/// `rsp`'s number in [`Regs::gpr`].
const RSP: usize = 4;

/// The registers of a trapped thread that emulation reads or changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Regs {
    /// Saved `rip`.
    pub pc: usize,
    /// Saved `rflags`.
    pub flags: u64,
    /// Saved general registers in encoding order (`rax`, `rcx`, `rdx`, `rbx`, `rsp`, `rbp`,
    /// `rsi`, `rdi`, `r8` to `r15`): the numbers instructions name them by.
    pub gpr: [u64; GPRS],
}

impl Regs {
    /// A thread at `pc` with stack pointer `sp`, `flags`, and every other register zero.
    pub fn new(pc: usize, sp: usize, flags: u64) -> Self {
        let mut gpr = [0; GPRS];
        gpr[RSP] = sp as u64;
        Regs { pc, flags, gpr }
    }

    /// Saved `rsp`.
    pub fn sp(&self) -> usize {
        self.gpr[RSP] as usize
    }

    fn set_sp(&mut self, sp: usize) {
        self.gpr[RSP] = sp as u64;
    }
}

const CF: u64 = 1 << 0;
const PF: u64 = 1 << 2;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;

/// Whether condition `cc` (0..=15, as encoded in `Jcc`/`SETcc`) holds for `flags`.
pub fn condition_holds(cc: u8, flags: u64) -> bool {
    let set = |bit: u64| flags & bit != 0;
    let base = match cc >> 1 {
        0 => set(OF),
        1 => set(CF),
        2 => set(ZF),
        3 => set(CF) || set(ZF),
        4 => set(SF),
        5 => set(PF),
        6 => set(SF) != set(OF),
        _ => set(ZF) || set(SF) != set(OF),
    };
    // Odd condition codes are the negations of the even ones.
    base != (cc & 1 == 1)
}

/// Makes `regs` look as if the thread had executed `insn` at `addr`.
///
/// # Safety
///
/// `regs` must be the saved state of a thread stopped at `addr`; for `Call` and `Ret` its stack
/// pointer must be valid for the push or pop the real instruction would do.
pub unsafe fn emulate(insn: Insn, addr: usize, regs: &mut Regs) {
    match insn {
        Insn::Nop { len } => regs.pc = addr + len as usize,
        Insn::Jmp { target } => regs.pc = target,
        Insn::Call { target, len } => {
            regs.set_sp(regs.sp() - 8);
            // SAFETY: the caller guarantees the stack is valid for the push `call` would do.
            unsafe { (regs.sp() as *mut usize).write(addr + len as usize) };
            regs.pc = target;
        }
        Insn::Jcc { cc, target, len } => {
            regs.pc = if condition_holds(cc, regs.flags) {
                target
            } else {
                addr + len as usize
            };
        }
        Insn::Ret => {
            // SAFETY: the caller guarantees the stack holds the return address `ret` would pop.
            regs.pc = unsafe { (regs.sp() as *const usize).read() };
            regs.set_sp(regs.sp() + 8);
        }
        Insn::MovImm { reg, value, len } => {
            // A register number the wire form let through is below GPRS; the mask keeps a
            // hand-made `Insn` from indexing out of bounds (no panic in a signal handler).
            regs.gpr[reg as usize % GPRS] = value;
            regs.pc = addr + len as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a real `jcc` on the CPU with the given flags and reports whether it was taken.
    fn hardware_taken(cc: u8, flags: u64) -> bool {
        let mut taken: u64 = 0;
        // Builds `setcc al` for condition `cc` after loading `flags` with popfq. The set of
        // loadable flags (CF PF ZF SF OF) is what Jcc reads.
        macro_rules! setcc {
            ($($n:literal => $ins:literal),*) => {
                match cc {
                    $($n => {
                        // SAFETY: pushes and pops a balanced value on the stack and writes only
                        // the named output register.
                        unsafe {
                            core::arch::asm!(
                                "pushfq",
                                "push {f}",
                                "popfq",
                                concat!($ins, " {t:l}"),
                                "popfq",
                                f = in(reg) flags,
                                t = inout(reg) taken,
                            );
                        }
                    })*
                    _ => unreachable!(),
                }
            };
        }
        setcc!(0 => "seto", 1 => "setno", 2 => "setb", 3 => "setae", 4 => "sete", 5 => "setne",
               6 => "setbe", 7 => "seta", 8 => "sets", 9 => "setns", 10 => "setp", 11 => "setnp",
               12 => "setl", 13 => "setge", 14 => "setle", 15 => "setg");
        taken & 0xff != 0
    }

    /// Every combination of the flags Jcc reads, over the always-set bits (IF, bit 1).
    fn flag_combinations() -> impl Iterator<Item = u64> {
        let bits = [CF, PF, ZF, SF, OF];
        (0..32u32).map(move |combo| {
            bits.iter()
                .enumerate()
                .filter(|(i, _)| combo & (1 << i) != 0)
                .fold(0x202u64, |acc, (_, b)| acc | b)
        })
    }

    #[test]
    fn every_condition_matches_the_cpu_for_every_flag_combination() {
        for cc in 0..16u8 {
            let (mut seen_true, mut seen_false) = (false, false);
            for flags in flag_combinations() {
                let want = hardware_taken(cc, flags);
                assert_eq!(condition_holds(cc, flags), want, "cc {cc} flags {flags:#x}");
                seen_true |= want;
                seen_false |= !want;
            }
            assert!(seen_true && seen_false, "cc {cc} must be tested both ways");
        }
    }

    #[test]
    fn jcc_emulation_for_every_condition_both_ways() {
        for cc in 0..16u8 {
            let mut outcomes = [false; 2];
            for flags in flag_combinations() {
                let mut regs = Regs::new(0x2001, 0x7000, flags);
                let jcc = Insn::Jcc {
                    cc,
                    target: 0x9000,
                    len: 6,
                };
                // SAFETY: Jcc touches no memory.
                unsafe { emulate(jcc, 0x2000, &mut regs) };
                let taken = hardware_taken(cc, flags);
                assert_eq!(
                    regs.pc,
                    if taken { 0x9000 } else { 0x2006 },
                    "cc {cc} flags {flags:#x}"
                );
                assert_eq!(
                    (regs.sp(), regs.flags),
                    (0x7000, flags),
                    "Jcc changes only rip"
                );
                outcomes[taken as usize] = true;
            }
            assert_eq!(outcomes, [true, true], "cc {cc} emulated both ways");
        }
    }

    #[test]
    fn jcc_emulation_takes_or_falls_through() {
        let mut regs = Regs::new(0x1001, 0, ZF);
        let je = Insn::Jcc {
            cc: 4,
            target: 0x5000,
            len: 6,
        };
        // SAFETY: Jcc touches no memory.
        unsafe { emulate(je, 0x1000, &mut regs) };
        assert_eq!(regs.pc, 0x5000);
        regs.flags = 0;
        // SAFETY: as above.
        unsafe { emulate(je, 0x1000, &mut regs) };
        assert_eq!(regs.pc, 0x1006);
    }

    #[test]
    fn call_pushes_return_address_and_ret_pops_it() {
        let mut stack = [0usize; 4];
        let top = stack.as_mut_ptr() as usize + 4 * 8;
        let mut regs = Regs::new(0x1001, top, 0);
        let call = Insn::Call {
            target: 0x9000,
            len: 5,
        };
        // SAFETY: `stack` has room for the push, and the pop reads what was pushed.
        unsafe { emulate(call, 0x1000, &mut regs) };
        assert_eq!((regs.pc, regs.sp(), stack[3]), (0x9000, top - 8, 0x1005));
        // SAFETY: as above.
        unsafe { emulate(Insn::Ret, 0x9000, &mut regs) };
        assert_eq!((regs.pc, regs.sp()), (0x1005, top));
    }

    #[test]
    fn nop_and_jmp() {
        let mut regs = Regs::new(0x1001, 0, 0);
        // SAFETY: neither touches memory.
        unsafe { emulate(Insn::Nop { len: 5 }, 0x1000, &mut regs) };
        assert_eq!(regs.pc, 0x1005);
        // SAFETY: as above.
        unsafe { emulate(Insn::Jmp { target: 0x42 }, 0x1000, &mut regs) };
        assert_eq!(regs.pc, 0x42);
    }

    #[test]
    fn mov_imm_writes_every_register_and_only_it() {
        for reg in 0..GPRS as u8 {
            for (value, len) in [(0x2222_2222u64, 5u8), (0x1111_1111_2222_2222, 10)] {
                let mut regs = Regs::new(0x1001, 0x7000, 0x202);
                for (i, r) in regs.gpr.iter_mut().enumerate() {
                    *r = 0xdead_0000 + i as u64;
                }
                let before = regs;
                // SAFETY: MovImm touches no memory.
                unsafe { emulate(Insn::MovImm { reg, value, len }, 0x1000, &mut regs) };
                assert_eq!(regs.pc, 0x1000 + len as usize, "reg {reg}");
                assert_eq!(regs.flags, before.flags, "mov leaves the flags");
                for i in 0..GPRS {
                    let want = if i == reg as usize {
                        value
                    } else {
                        before.gpr[i]
                    };
                    assert_eq!(regs.gpr[i], want, "reg {reg}, register {i}");
                }
            }
        }
    }

    #[test]
    fn mov_imm_survives_the_wire_form() {
        for reg in 0..GPRS as u8 {
            let insn = Insn::MovImm {
                reg,
                value: u64::MAX - reg as u64,
                len: 10,
            };
            assert_eq!(WireInsn::of(Some(insn)).get(), Ok(Some(insn)));
        }
        let bad = WireInsn::raw(WIRE_MOV_IMM, 5, GPRS as u8, 0);
        assert_eq!(
            bad.get(),
            Err(WIRE_MOV_IMM),
            "a register beyond r15 is refused"
        );
    }
}
