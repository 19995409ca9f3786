//! The function map: a function's bounds, from the unwind tables of the object that holds it,
//! or from its symbol table where the code has no unwind information, for Rust code, assembly
//! and the C library alike; and nothing for what is not code.

use textpoke::__private::{BoundsSource, FunctionBounds, function_containing};

// Two 32-byte functions side by side: the first with CFI and no symbol size (so only its FDE
// can give its end), the second with a sized function symbol and no CFI (so the table's
// search lands on the first one's FDE, which must not be taken for it).
core::arch::global_asm!(
    ".pushsection .text.textpoke_fnmap_test,\"ax\",@progbits",
    ".p2align 4",
    ".globl textpoke_fnmap_with_cfi",
    "textpoke_fnmap_with_cfi:",
    ".cfi_startproc",
    "xor eax, eax",
    ".fill 29, 1, 0x90",
    "ret",
    ".cfi_endproc",
    ".globl textpoke_fnmap_without_cfi",
    ".type textpoke_fnmap_without_cfi, @function",
    "textpoke_fnmap_without_cfi:",
    "mov eax, 1",
    ".fill 26, 1, 0x90",
    "ret",
    ".size textpoke_fnmap_without_cfi, . - textpoke_fnmap_without_cfi",
    // Padding that no table claims.
    ".fill 16, 1, 0xcc",
    ".popsection",
);

unsafe extern "C" {
    fn textpoke_fnmap_with_cfi() -> u32;
    fn textpoke_fnmap_without_cfi() -> u32;
}

#[inline(never)]
fn rust_function(x: u64) -> u64 {
    let mut acc = std::hint::black_box(x);
    for i in 0..std::hint::black_box(8) {
        acc = acc.rotate_left(7) ^ i;
    }
    acc
}

static DATA: [u64; 8] = [7; 8];

fn bounds(addr: usize) -> FunctionBounds {
    function_containing(addr).unwrap_or_else(|| panic!("no function holds {addr:#x}"))
}

#[test]
fn a_rust_function_is_found_by_its_fde() {
    let f = rust_function as fn(u64) -> u64 as usize;
    assert_eq!(rust_function(1), std::hint::black_box(rust_function)(1));
    let b = bounds(f);
    assert_eq!(b.start, f);
    assert!(b.end > b.start, "{b:?}");
    assert_eq!(b.source, BoundsSource::EhFrame);
    assert_eq!(bounds(f + (b.end - f) / 2), b);
    assert_eq!(bounds(b.end - 1), b);
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    assert_eq!(b.object, exe.display().to_string());
}

#[test]
fn an_assembly_function_with_cfi_has_exact_bounds() {
    let f = textpoke_fnmap_with_cfi as unsafe extern "C" fn() -> u32 as usize;
    // SAFETY: the function only clears `eax` and returns.
    assert_eq!(unsafe { textpoke_fnmap_with_cfi() }, 0);
    let b = bounds(f);
    assert_eq!(
        (b.start, b.end, b.source),
        (f, f + 32, BoundsSource::EhFrame)
    );
    assert_eq!(bounds(f + 17), b);
    assert_eq!(bounds(f + 31), b);
}

#[test]
fn an_assembly_function_without_cfi_is_found_by_its_symbol() {
    let f = textpoke_fnmap_without_cfi as unsafe extern "C" fn() -> u32 as usize;
    // SAFETY: the function only sets `eax` and returns.
    assert_eq!(unsafe { textpoke_fnmap_without_cfi() }, 1);
    let b = bounds(f);
    assert_eq!(
        (b.start, b.end, b.source),
        (f, f + 32, BoundsSource::SymbolTable)
    );
    assert_eq!(bounds(f + 31), b);
    // The padding after it is claimed by neither table.
    assert_eq!(function_containing(f + 32), None);
    assert_eq!(function_containing(f + 47), None);
}

#[test]
fn c_library_functions_are_found_at_their_start() {
    for (name, f) in [
        ("getaddrinfo", libc::getaddrinfo as *const () as usize),
        ("write", libc::write as *const () as usize),
    ] {
        let b = bounds(f);
        assert_eq!(b.start, f, "{name}: {b:?}");
        assert!(b.end > b.start, "{name}: {b:?}");
        assert!(b.object.contains("libc"), "{name}: {b:?}");
        assert_eq!(bounds(b.end - 1), b, "{name}");
    }
}

#[test]
fn data_and_null_are_not_functions() {
    assert_eq!(function_containing(0), None);
    assert_eq!(function_containing(1), None);
    assert_eq!(function_containing(DATA.as_ptr() as usize + 8), None);
    let on_stack = 0u8;
    assert_eq!(function_containing(&on_stack as *const u8 as usize), None);
    let on_heap = Box::new(0u64);
    assert_eq!(function_containing(&*on_heap as *const u64 as usize), None);
}
