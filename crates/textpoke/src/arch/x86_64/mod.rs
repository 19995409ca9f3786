//! x86-64: encodings, the int3 protocol's breakpoint, and emulation of patched instructions.

mod boundaries;
mod emulate;
mod encode;
mod first_use;
mod nop;
mod prologue;
mod relocate;
mod trampoline;

pub use boundaries::{instruction_starts, lands_on_end};
pub use emulate::{GPRS, Insn, Regs, WireInsn, condition_holds, emulate};
pub use encode::{
    CALL_LEN, JUMP_LABEL_LEN, call_code, disassemble, jump_label_code, mov_imm_code, mov_imm_len,
};
pub use first_use::FIRST_USE_LEN;
pub(crate) use first_use::save_all_and_call;
pub use nop::{fill_padding, is_nop, nop_len};
pub use prologue::{Prologue, analyze_prologue};
pub use relocate::{relocate, relocate_mapped};
pub use trampoline::{TRAMPOLINE_LEN, TRAMPOLINE_PATCH_LEN, TrampolineForm};

/// The breakpoint written over the first byte of every site while a batch is in flight.
pub const BREAKPOINT: &[u8] = &[0xcc];

/// Address of the instruction whose breakpoint trapped, given the saved program counter.
/// `int3` reports the address after itself.
#[inline]
pub fn trap_address(pc: usize) -> usize {
    pc.wrapping_sub(BREAKPOINT.len())
}

/// Emits one static-branch site. Used by the public `static_branch_*` macros only.
///
/// The site is a 5-byte `jmp rel32` (forced to its long form so it can always be patched to and
/// from a 5-byte NOP) or `nopl 0x0(%rax,%rax,1)`, chosen at compile time from the key's
/// initial state. The 12-byte table entry holds three position-relative 32-bit offsets: the
/// site, the jump target, and the key with bit 0 set for `likely` sites. Keys are 8-byte
/// aligned, so the low bits are free. The section is allocated, read-only and retained.
#[doc(hidden)]
#[macro_export]
macro_rules! __arch_static_branch {
    ($key:path, $likely:literal) => {
        'textpoke_site: {
            // SAFETY: the asm only emits a NOP or a jump to the label block and a table entry
            // in a non-executable section; it touches no registers, memory, stack or flags.
            unsafe {
                ::core::arch::asm!(
                    "2:",
                    ".if {jmp}",
                    ".byte 0xe9",
                    ".long {target} - (2b + 5)",
                    ".else",
                    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
                    ".endif",
                    ".pushsection textpoke_jump_v2,\"aR\",@progbits",
                    ".balign 4",
                    ".long 2b - .",
                    ".long {target} - .",
                    ".long {key} + {flags} - .",
                    ".popsection",
                    target = label { break 'textpoke_site !$likely },
                    key = sym $key,
                    jmp = const ($crate::__private::initial_state(&$key) != $likely) as u8,
                    flags = const $likely as u8,
                    options(nomem, nostack, preserves_flags),
                );
            }
            $likely
        }
    };
}

/// Calls static call `$core` from an inline site emitted here, with up to six integer-class
/// arguments in the C ABI's registers (pairs of register name and `u64` value). The site is a
/// `call rel32` to `$target` (the compiled-in target), recorded in `textpoke_callsite_v2` as
/// two self-relative offsets: the site and the call's state. Evaluates to `rax`. Used by
/// `static_call!` only.
#[doc(hidden)]
#[macro_export]
macro_rules! __arch_inline_call {
    ($core:path, $target:path, $($reg:tt = $val:expr),*) => {{
        let ret: u64;
        // SAFETY: the site calls, with the C ABI, a function of the static call's declared
        // C-ABI signature (the compiled-in target, one passed to `update`, or the trampoline,
        // which jumps to one or returns at once for a `()` call); every register the C ABI lets
        // it change is declared clobbered, and the stack is not marked `nostack`, so it is
        // aligned for a call and no red-zone data is live.
        unsafe {
            ::core::arch::asm!(
                "2:",
                ".byte 0xe8",
                ".long {target} - (2b + 5)",
                ".pushsection textpoke_callsite_v2,\"aR\",@progbits",
                ".balign 4",
                ".long 2b - .",
                ".long {core} - .",
                ".popsection",
                target = sym $target,
                core = sym $core,
                $(in($reg) $val,)*
                lateout("rax") ret,
                clobber_abi("C"),
            );
        }
        ret
    }};
}

/// Emits an alternative site. Used by `alternative!` only.
///
/// The default is assembled out of line, behind the first-use entry (`lea`, `call
/// textpoke_alt_first_use_v1`, `lea`: `FIRST_USE_LEN` bytes) and followed by a jump back; the
/// site itself starts as a `jmp` to the entry, padded with `int3` to the default's length. So
/// before `apply` no thread ever executes a site byte but the first instruction, and `apply`
/// can replace the whole site with the breakpoint protocol even while threads run it. Each candidate gets a table entry (see
/// `table::alt`), the default last, with an empty feature name.
///
/// With `check` first, a candidate longer than the site fails to assemble (see
/// [`__arch_alternative_fits!`](crate::__arch_alternative_fits)); without it, the entry is
/// emitted as a stale table would hold it, and `apply` refuses it.
#[doc(hidden)]
#[macro_export]
macro_rules! __arch_alternative {
    (check $($rest:tt)*) => {
        $crate::__arch_alternative!(@emit check $($rest)*)
    };
    ([$($rest:tt)*] $($more:tt)*) => {
        $crate::__arch_alternative!(@emit unchecked [$($rest)*] $($more)*)
    };
    (@emit $check:ident [$($default:literal),*] $([$feature:literal: $($code:literal),*])* ; $($operands:tt)*) => {
        ::core::arch::asm!(
            ".pushsection .text.textpoke_alt_default,\"ax\",@progbits",
            ".hidden textpoke_alt_first_use_v1",
            "7774:",
            ".byte 0x48, 0x8d, 0x64, 0x24, 0x80",
            ".byte 0xe8",
            ".long textpoke_alt_first_use_v1 - (. + 4)",
            ".byte 0x48, 0x8d, 0xa4, 0x24, 0x80, 0x00, 0x00, 0x00",
            "7770:",
            $($default,)*
            "7771:",
            ".byte 0xe9",
            ".long 7772f - (. + 4)",
            ".popsection",
            "7773:",
            ".byte 0xe9",
            ".long 7774b - (7773b + 5)",
            ".skip -(((7771b - 7770b) - 5) > 0) * ((7771b - 7770b) - 5), 0xcc",
            "7772:",
            $(
                ".pushsection .rodata.textpoke_alt_code,\"a\",@progbits",
                "7780:",
                $($code,)*
                "7781:",
                $crate::__arch_alternative_fits!($check $feature),
                ".popsection",
                ".pushsection .rodata.textpoke_alt_names,\"a\",@progbits",
                "7790:",
                concat!(".asciz \"", $feature, "\""),
                ".popsection",
                ".pushsection textpoke_alt_v1,\"aR\",@progbits",
                ".balign 4",
                ".long 7773b - .",
                ".long 7770b - .",
                ".long 7780b - .",
                ".long 7790b - .",
                ".short 7771b - 7770b",
                ".short 7781b - 7780b",
                ".popsection",
            )*
            ".pushsection .rodata.textpoke_alt_names,\"a\",@progbits",
            "7790:",
            ".asciz \"\"",
            ".popsection",
            ".pushsection textpoke_alt_v1,\"aR\",@progbits",
            ".balign 4",
            ".long 7773b - .",
            ".long 7770b - .",
            ".long 7770b - .",
            ".long 7790b - .",
            ".short 7771b - 7770b",
            ".short 7771b - 7770b",
            ".popsection",
            $($operands)*
        )
    };
}

/// An assembler line that fails to assemble when the candidate just emitted (labels 7780 to
/// 7781) is longer than its site: the default (7770 to 7771), and at least a jump. The
/// assembler knows both lengths, so this is a build error, naming the feature, in the line it
/// quotes. A negative `.skip` is the error (comparisons are -1 when true, so the product is 1
/// when both hold); otherwise it emits nothing. `unchecked`: an empty line.
#[doc(hidden)]
#[macro_export]
macro_rules! __arch_alternative_fits {
    (check $feature:literal) => {
        concat!(
            ".skip -(((7781b-7780b)>(7771b-7770b))*((7781b-7780b)>5)),0 # the `",
            $feature,
            "` replacement is longer than its site"
        )
    };
    (unchecked $feature:literal) => {
        ""
    };
}

/// Records a patchable function's state `$meta`, and its code `$code` where it can be named,
/// in `textpoke_fn_v2` (see `functions::table`). Emits no instruction. Used by
/// `#[patchable]` only.
#[doc(hidden)]
#[macro_export]
macro_rules! __patchable_record {
    ($meta:path) => {
        // SAFETY: the asm only emits a table entry in a non-executable section.
        unsafe {
            ::core::arch::asm!(
                ".pushsection textpoke_fn_v2,\"aR\",@progbits",
                ".balign 4",
                ".long {meta} - .",
                ".long 0",
                ".popsection",
                meta = sym $meta,
                options(nomem, nostack, preserves_flags),
            )
        }
    };
    ($meta:path, $code:path) => {
        // SAFETY: the asm only emits a table entry in a non-executable section.
        unsafe {
            ::core::arch::asm!(
                ".pushsection textpoke_fn_v2,\"aR\",@progbits",
                ".balign 4",
                ".long {meta} - .",
                ".long {code} - .",
                ".popsection",
                meta = sym $meta,
                code = sym $code,
                options(nomem, nostack, preserves_flags),
            )
        }
    };
}

/// Emits one immediate-value read site. Used by the public `imm!` macro only (and, with an
/// explicit register named in its 64- and 32-bit forms, by tests of every register).
///
/// The site is `mov r32, imm32` (values of up to 32 bits) or `movabs r64, imm64`, holding the
/// immediate's compile-time value, into a register the compiler picks. The 12-byte table entry
/// holds the site and the immediate as position-relative 32-bit offsets, then the register's
/// number, found by the assembler comparing the register's name (so the table says which
/// register the bytes must name, and validation checks it), then three zero bytes. The section
/// is allocated, read-only and retained. Not `pure`: the compiler must not hoist a read out of
/// a loop, or the loop would never see a new value.
#[doc(hidden)]
#[macro_export]
macro_rules! __arch_imm {
    ($imm:path) => {
        $crate::__arch_imm!(@emit $imm, reg, "{0}", "{0:e}")
    };
    ($imm:path, $r64:tt, $r32:tt) => {
        $crate::__arch_imm!(@emit $imm, $r64, $r64, $r32)
    };
    (@emit $imm:path, $spec:tt, $r64:tt, $r32:tt) => {{
        let bits: u64;
        // SAFETY: the asm writes only `bits` (with a `mov` of a constant) and emits a table
        // entry in a non-executable section; it touches no other register, memory, stack or
        // flags.
        unsafe {
            ::core::arch::asm!(
                "2:",
                ".if {wide}",
                concat!("movabs ", $r64, ", {bits}"),
                ".else",
                concat!("mov ", $r32, ", {bits}"),
                ".endif",
                ".pushsection textpoke_imm_v1,\"aR\",@progbits",
                ".balign 4",
                ".long 2b - .",
                ".long {imm} - .",
                $crate::__arch_reg_number!($r64),
                ".byte 0, 0, 0",
                ".popsection",
                out($spec) bits,
                imm = sym $imm,
                wide = const $crate::__private::imm_is_wide(&$imm) as u8,
                bits = const $crate::__private::imm_initial_bits(&$imm),
                options(nomem, nostack, preserves_flags),
            );
        }
        $crate::__private::imm_from_bits(&$imm, bits)
    }};
}

/// Assembler lines that emit the number (0 to 15) of the 64-bit register named `$r64`.
#[doc(hidden)]
#[macro_export]
macro_rules! __arch_reg_number {
    ($r64:literal) => {
        $crate::__arch_reg_number!(@each $r64, rax 0, rcx 1, rdx 2, rbx 3, rsp 4, rbp 5, rsi 6,
            rdi 7, r8 8, r9 9, r10 10, r11 11, r12 12, r13 13, r14 14, r15 15)
    };
    (@each $r64:literal, $($name:ident $n:literal),*) => {
        concat!($(".ifc ", $r64, ",", stringify!($name), "\n.byte ", $n, "\n.endif\n",)*)
    };
}
