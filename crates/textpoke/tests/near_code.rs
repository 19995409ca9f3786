//! Code blocks allocated near an address: within `jmp rel32` reach, runnable, never writable,
//! named in /proc/self/maps, reused after free.

mod support;

use textpoke::__private::{
    NearCode, alloc_near, free_near, is_near_code, near_chunk_count, write_near,
};

/// Tests that read freed or neighbouring slots run one at a time: another test could reuse them.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `mov eax, 42; ret`
const RET_42: [u8; 6] = [0xb8, 0x2a, 0x00, 0x00, 0x00, 0xc3];
/// How far any byte of a block may lie from the address it was allocated near.
const REACH: usize = (2 << 30) - 64 * 1024;

#[inline(never)]
fn rust_function() -> u32 {
    std::hint::black_box(3)
}

/// Address of [`rust_function`].
fn rust_fn() -> usize {
    rust_function as fn() -> u32 as usize
}

fn assert_in_reach(block: NearCode, near: usize) {
    assert!(
        block.addr.abs_diff(near) <= REACH && (block.addr + block.len - 1).abs_diff(near) <= REACH,
        "block {block:x?} out of reach of {near:#x}"
    );
}

fn call(block: NearCode) -> u32 {
    assert!(is_near_code(block.addr));
    // SAFETY: the block holds `mov eax, imm32; ret`, a complete C-ABI function of this type,
    // and stays allocated for the call.
    let f: extern "C" fn() -> u32 = unsafe { std::mem::transmute(block.addr) };
    f()
}

fn read(addr: usize, len: usize) -> Vec<u8> {
    assert!(is_near_code(addr) && is_near_code(addr + len - 1));
    // SAFETY: the range lies in a chunk of the allocator, mapped readable for the life of the
    // process.
    unsafe { std::slice::from_raw_parts(addr as *const u8, len) }.to_vec()
}

#[test]
fn block_near_a_rust_function_is_in_reach_and_runs() {
    let _serial = serial();
    let near = rust_fn();
    let block = alloc_near(near, 6, &RET_42).unwrap();
    assert_eq!(block.len, 6);
    assert_in_reach(block, near);
    assert_eq!(call(block), 42);
    assert_eq!(rust_function(), 3);
    free_near(block).unwrap();
}

#[test]
fn block_near_a_libc_function_is_in_reach_and_runs() {
    let _serial = serial();
    let near = libc::getpid as unsafe extern "C" fn() -> libc::pid_t as usize;
    let block = alloc_near(near, 64, &RET_42).unwrap();
    assert_in_reach(block, near);
    assert_eq!(call(block), 42);
    free_near(block).unwrap();
}

#[test]
fn chunks_are_read_execute_only_and_named() {
    let _serial = serial();
    let block = alloc_near(rust_fn(), 16, &RET_42).unwrap();
    let maps = support::maps();
    for (start, end, perms, path) in &maps {
        assert!(
            !(perms.contains('w') && perms.contains('x')),
            "W+X mapping {start:#x}-{end:#x} {perms} {path}"
        );
    }
    let (start, end, perms, path) = maps
        .iter()
        .find(|(s, e, _, _)| (*s..*e).contains(&block.addr))
        .expect("block is mapped");
    assert_eq!(perms, "r-xp", "chunk {start:#x}-{end:#x} is {perms}");
    // Named where the kernel supports naming anonymous memory (CONFIG_ANON_VMA_NAME, 5.17+).
    if anon_names_supported() {
        assert_eq!(path, "[anon:textpoke-code]");
    } else {
        assert_eq!(path, "");
    }
    // Writing through /proc/self/mem does not change that.
    write_near(block.addr + 1, &[0x07]).unwrap();
    assert_eq!(call(block), 7);
    let maps = support::maps();
    let (_, _, perms, _) = maps
        .iter()
        .find(|(s, e, _, _)| (*s..*e).contains(&block.addr))
        .unwrap();
    assert_eq!(perms, "r-xp");
    free_near(block).unwrap();
}

/// Whether this kernel names anonymous mappings: tries it on a page of its own.
fn anon_names_supported() -> bool {
    // SAFETY: maps a fresh private anonymous page, names it and unmaps it; nothing else uses it.
    unsafe {
        let page = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(page, libc::MAP_FAILED);
        let ok = libc::prctl(
            0x53564d41,
            0 as libc::c_ulong,
            page as libc::c_ulong,
            4096 as libc::c_ulong,
            c"probe".as_ptr() as libc::c_ulong,
        ) == 0;
        libc::munmap(page, 4096);
        ok
    }
}

#[test]
fn alloc_free_cycles_do_not_grow_the_chunks() {
    let _serial = serial();
    let near = rust_fn();
    // Warm up: at least one chunk near here exists.
    let first = alloc_near(near, 64, &RET_42).unwrap();
    free_near(first).unwrap();
    let before = near_chunk_count();
    for i in 0..10_000 {
        let a = alloc_near(near, 64, &RET_42).unwrap();
        let b = alloc_near(near, 64, &[0x90, 0xc3]).unwrap();
        if i % 1000 == 0 {
            assert_eq!(call(a), 42);
        }
        free_near(a).unwrap();
        free_near(b).unwrap();
    }
    // Freed blocks are reused: not one more chunk.
    assert_eq!(near_chunk_count(), before, "chunks grew");
}

#[test]
fn write_outside_a_block_writes_nothing() {
    let _serial = serial();
    let block = alloc_near(rust_fn(), 32, &RET_42).unwrap();
    let before = read(block.addr, 48);
    // Straddles the end, past the end, before the start.
    assert!(write_near(block.addr + 30, &[0x90; 4]).is_err());
    assert!(write_near(block.addr + 32, &[0x90]).is_err());
    assert!(write_near(block.addr - 1, &[0x90; 2]).is_err());
    // Not in the allocator at all.
    assert!(write_near(rust_fn(), &[0x90]).is_err());
    assert_eq!(read(block.addr, 48), before);
    assert_eq!(rust_function(), 3);
    free_near(block).unwrap();
    // A freed block is no longer writable either.
    assert!(write_near(block.addr, &[0x90]).is_err());
}

#[test]
fn free_overwrites_with_int3() {
    let _serial = serial();
    let code: Vec<u8> = (0..40).map(|i| i as u8).collect();
    let block = alloc_near(rust_fn(), 40, &code).unwrap();
    let bytes = read(block.addr, 48);
    assert_eq!(&bytes[..40], &code[..]);
    assert!(bytes[40..].iter().all(|&b| b == 0xCC));
    free_near(block).unwrap();
    assert!(read(block.addr, 48).iter().all(|&b| b == 0xCC));
    assert!(free_near(block).is_err(), "double free refused");
}
