//! A table entry whose site holds exactly the expected bytes, but inside another instruction
//! (a stale entry landing on an identical NOP in an immediate), is refused when its table is
//! indexed, naming the site, its function and the instruction it lies in; nothing is written.
//!
//! Each table of this binary holds one forged entry, so every key (and every immediate) of it
//! is refused; each case runs in a fresh process, so that its change is the first of the
//! process.

mod support;

use textpoke::{Error, Immediate, StaticKey, static_branch_unlikely};

static FORGED: StaticKey = StaticKey::new();
static INNOCENT: StaticKey = StaticKey::new();
static VALUE: Immediate<u32> = Immediate::new(7);

unsafe extern "C" {
    /// `movabs rax, 0x441f0f909090; ret`: the immediate's bytes hold, at +5, the 5-byte NOP
    /// `0f 1f 44 00 00` of a disabled key's site.
    safe fn site_boundaries_nop_inside() -> u64;
    /// `movabs rcx, 0x909000000007b890; xor eax, eax; ret`: the immediate's bytes hold, at +3,
    /// `b8 07 00 00 00` (`mov eax, 7`), the site of an `Immediate<u32>` holding 7.
    safe fn site_boundaries_mov_inside() -> u64;
}

/// What the first function returns while its bytes are intact.
const NOP_INSIDE_RETURNS: u64 = 0x441f_0f90_9090;
/// Bytes of each function, for checking that nothing was written.
const NOP_INSIDE_LEN: usize = 11;
const MOV_INSIDE_LEN: usize = 13;

// Both functions with CFI, so their object's unwind table gives their bounds, as it does for
// compiled code; the bytes are spelt out so that no assembler picks another encoding.
core::arch::global_asm!(
    ".pushsection .text.site_boundaries,\"ax\",@progbits",
    ".globl site_boundaries_nop_inside",
    ".hidden site_boundaries_nop_inside",
    ".type site_boundaries_nop_inside,@function",
    "site_boundaries_nop_inside:",
    ".cfi_startproc",
    ".byte 0x48, 0xb8, 0x90, 0x90, 0x90, 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "ret",
    ".cfi_endproc",
    ".size site_boundaries_nop_inside, . - site_boundaries_nop_inside",
    ".globl site_boundaries_mov_inside",
    ".hidden site_boundaries_mov_inside",
    ".type site_boundaries_mov_inside,@function",
    "site_boundaries_mov_inside:",
    ".cfi_startproc",
    ".byte 0x48, 0xb9, 0x90, 0xb8, 0x07, 0x00, 0x00, 0x00, 0x90, 0x90",
    "xor eax, eax",
    "ret",
    ".cfi_endproc",
    ".size site_boundaries_mov_inside, . - site_boundaries_mov_inside",
    ".popsection",
    // A static-branch entry (site, target, key; an `unlikely` site) whose site is the NOP
    // inside the `movabs`, its target the `ret`.
    ".pushsection textpoke_jump_v2,\"aR\",@progbits",
    ".balign 4",
    ".long site_boundaries_nop_inside + 5 - .",
    ".long site_boundaries_nop_inside + 10 - .",
    ".long {key} - .",
    ".popsection",
    // An immediate-value entry (site, immediate, register 0 = eax, reserved) whose site is the
    // `mov eax, 7` inside the other `movabs`.
    ".pushsection textpoke_imm_v1,\"aR\",@progbits",
    ".balign 4",
    ".long site_boundaries_mov_inside + 3 - .",
    ".long {imm} - .",
    ".byte 0, 0, 0, 0",
    ".popsection",
    key = sym FORGED,
    imm = sym VALUE,
);

#[inline(never)]
fn innocent() -> bool {
    static_branch_unlikely!(INNOCENT)
}

fn code(f: unsafe extern "C" fn() -> u64, len: usize) -> Vec<u8> {
    textpoke::__private::read_code(f as usize, len).expect("readable code")
}

/// Checks that `err` refuses `table`'s site `offset` bytes into `f`, naming the site, the
/// function `name` and the instruction `insn` it lies inside (the function's first).
fn check_refusal(err: &Error, table: &str, f: usize, name: &str, offset: usize, insn: &str) {
    let Error::BadTable { table: t, why } = err else {
        panic!("expected BadTable, got {err:?}");
    };
    assert_eq!(*t, table);
    let site = f + offset;
    for part in [
        format!("site {site:#x} <{name}+{offset:#x}>"),
        format!("not on an instruction boundary of {name} ({f:#x}.."),
        "bounds from its unwind table".into(),
        format!("`{insn}` at {:#x} <{name}+0x0>", f),
    ] {
        assert!(why.contains(&part), "`{part}` missing from: {why}");
    }
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("table {table}: ")),
        "{message}"
    );
}

#[test]
fn site_inside_an_instruction_is_refused_on_the_first_toggle() {
    support::fresh(
        "site_inside_an_instruction_is_refused_on_the_first_toggle",
        || {
            let nop_inside = site_boundaries_nop_inside as unsafe extern "C" fn() -> u64;
            let before = code(nop_inside, NOP_INSIDE_LEN);
            // What the forged entry points at is what a disabled `unlikely` site holds: only
            // decoding from the function's start tells it apart.
            assert_eq!(before[5..10], [0x0f, 0x1f, 0x44, 0x00, 0x00]);
            assert_eq!(site_boundaries_nop_inside(), NOP_INSIDE_RETURNS);

            let err = FORGED.enable().unwrap_err();
            check_refusal(
                &err,
                "textpoke_jump_v2",
                nop_inside as usize,
                "site_boundaries_nop_inside",
                5,
                "mov rax,441F0F909090h",
            );
            assert_eq!(code(nop_inside, NOP_INSIDE_LEN), before, "nothing written");
            assert_eq!(site_boundaries_nop_inside(), NOP_INSIDE_RETURNS);
            assert!(!FORGED.is_enabled());

            // The whole table is refused, every later use the same way, and no other site of
            // it changes either.
            assert!(matches!(INNOCENT.enable(), Err(Error::BadTable { .. })));
            assert!(!innocent());
            assert!(matches!(
                textpoke::tables::jump_sites(),
                Err(Error::BadTable { .. })
            ));
            assert!(matches!(FORGED.enable(), Err(Error::BadTable { .. })));
            assert_eq!(code(nop_inside, NOP_INSIDE_LEN), before, "nothing written");
        },
    );
}

#[test]
fn immediate_site_inside_an_instruction_is_refused_when_indexed() {
    support::fresh(
        "immediate_site_inside_an_instruction_is_refused_when_indexed",
        || {
            let mov_inside = site_boundaries_mov_inside as unsafe extern "C" fn() -> u64;
            let before = code(mov_inside, MOV_INSIDE_LEN);
            assert_eq!(before[3..8], [0xb8, 0x07, 0x00, 0x00, 0x00]);

            // Indexed alone: a set indexes the key table first, which this binary's forged key
            // entry fails.
            let err = textpoke::tables::imm_sites().unwrap_err();
            check_refusal(
                &err,
                "textpoke_imm_v1",
                mov_inside as usize,
                "site_boundaries_mov_inside",
                3,
                "mov rcx,909000000007B890h",
            );
            assert!(matches!(VALUE.set(8), Err(Error::BadTable { .. })));
            assert_eq!(code(mov_inside, MOV_INSIDE_LEN), before, "nothing written");
            assert_eq!(site_boundaries_mov_inside(), 0);
            assert_eq!(VALUE.get(), 7);
        },
    );
}
