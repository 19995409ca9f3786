//! The call an alternative site makes the first time it runs, before its code is chosen.
//!
//! An `alternative!` site starts as a `jmp` to [`FIRST_USE_LEN`] bytes of entry code in front
//! of its out-of-line default:
//!
//! ```text
//! lea  rsp, [rsp - 128]     ; step over the red zone: the asm may be `nostack`
//! call first_use_stub       ; saves everything, runs the hook, restores everything
//! lea  rsp, [rsp + 128]
//! default: ...              ; then the default runs, as it always may
//! ```
//!
//! The site's `asm!` operands may live in any register (general, vector, mask) and the
//! compiler may keep flags live across it (`preserves_flags`), so the stub saves all of them
//! before it calls Rust code: general registers and flags by `push`, the extended state with
//! `xsave64` (x87, SSE, AVX, MPX and AVX-512 state, as far as XCR0 enables them; the stack is
//! grown a page at a time for it) or `fxsave64` where the OS does not support XSAVE. Once the hook has run (or while it runs
//! on another thread), the stub returns after one compare, so a site that is never rewritten
//! (the hook failed or is disarmed) costs a few cycles more than its default.

/// Bytes of entry code in front of an alternative's out-of-line default (see the module docs).
pub const FIRST_USE_LEN: usize = 18;

/// Defines the global, hidden function `$name`: it saves every register, flags and the
/// extended state, calls `$hook` (an `extern "C" fn()`, with a 64-byte-aligned stack) if the
/// one-byte flag `$armed` is 1, restores everything and returns.
///
/// Sites call it by name, so `alternative!` needs no operand of its own (operands added to the
/// user's `asm!` would have to come before theirs and would break positional ones). Like the
/// patch lock, the function is a COMDAT group with a versioned name: with two copies of
/// textpoke in one object the linker keeps one, which calls its own copy's hook.
macro_rules! save_all_and_call {
    ($name:literal if $armed:path => $hook:path) => {
        ::core::arch::global_asm!(
            concat!(".ifndef ", $name),
            concat!(".pushsection .text.", $name, ",\"axG\",@progbits,", $name, ",comdat"),
            concat!(".weak ", $name),
            concat!(".hidden ", $name),
            concat!(".type ", $name, ",@function"),
            ".balign 16",
            concat!($name, ":"),
            "pushfq",
            "cmp byte ptr [rip + {armed}], 1",
            "jne 2f",
            "cld",
            "push rax", "push rcx", "push rdx", "push rbx", "push rsi", "push rdi",
            "push r8", "push r9", "push r10", "push r11", "push rbp",
            "mov rbp, rsp",
            // OSXSAVE (CPUID.1:ECX bit 27): the OS manages XCR0 and XSAVE works.
            "mov eax, 1",
            "cpuid",
            "bt ecx, 27",
            "jnc 3f",
            // The components to save: those XCR0 enables among x87, SSE, AVX, MPX and
            // AVX-512 (bits 0..8). PKRU and AMX are left out: the hook never changes them, and
            // AMX tile data alone would take 8 KiB of stack.
            "xor ecx, ecx",
            "xgetbv",
            "movzx r9d, al",
            // The area's size: the end of the last component saved (CPUID.(0Dh, i): EAX size,
            // EBX offset in the standard format), at least the legacy area and the header.
            "mov r8d, 576",
            "mov esi, 2",
            "5:",
            "bt r9d, esi",
            "jnc 6f",
            "mov eax, 0xd",
            "mov ecx, esi",
            "cpuid",
            "add eax, ebx",
            "cmp r8d, eax",
            "cmovb r8d, eax",
            "6:",
            "inc esi",
            "cmp esi, 8",
            "jb 5b",
            "mov ebx, r9d",
            // Grow the stack a page at a time, touching each page, so that a guard page is met
            // rather than stepped over.
            "7:",
            "cmp r8, 4096",
            "jb 8f",
            "sub rsp, 4096",
            "or qword ptr [rsp], 0",
            "sub r8, 4096",
            "jmp 7b",
            "8:",
            "sub rsp, r8",
            "and rsp, -64",
            // XRSTOR faults unless the header's bytes 8..64 are zero, and XSAVE does not
            // write them.
            "xor eax, eax",
            "mov [rsp + 512], rax", "mov [rsp + 520], rax", "mov [rsp + 528], rax",
            "mov [rsp + 536], rax", "mov [rsp + 544], rax", "mov [rsp + 552], rax",
            "mov [rsp + 560], rax", "mov [rsp + 568], rax",
            // The mask stays in ebx, which the hook preserves (C ABI).
            "mov eax, ebx",
            "xor edx, edx",
            "xsave64 [rsp]",
            "call {hook}",
            "mov eax, ebx",
            "xor edx, edx",
            "xrstor64 [rsp]",
            "jmp 4f",
            "3:",
            "sub rsp, 512",
            "and rsp, -64",
            "fxsave64 [rsp]",
            "call {hook}",
            "fxrstor64 [rsp]",
            "4:",
            "mov rsp, rbp",
            "pop rbp", "pop r11", "pop r10", "pop r9", "pop r8", "pop rdi", "pop rsi",
            "pop rbx", "pop rdx", "pop rcx", "pop rax",
            "2:",
            "popfq",
            "ret",
            concat!(".size ", $name, ", . - ", $name),
            ".popsection",
            ".endif",
            armed = sym $armed,
            hook = sym $hook,
        );
    };
}
pub(crate) use save_all_and_call;
