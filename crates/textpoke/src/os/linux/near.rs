//! Executable code placed near an address, never writable.
//!
//! Detours need small pieces of code (relocated prologue bytes and a jump back, or a
//! `jmp [rip+0]; .quad target` stub) within reach of a `jmp rel32` from the hooked function.
//! This module hands out such blocks from 64 KiB chunks of anonymous private memory that are
//! mapped `PROT_READ | PROT_EXEC` from the start and never change protection: every byte is
//! written through `/proc/self/mem` ([`super::mem::write_code`]), so no mapping is ever
//! writable and executable (design invariant 6). Each chunk is named `textpoke-code` in
//! `/proc/self/maps` where the kernel supports naming anonymous mappings.
//!
//! A chunk is placed by reading `/proc/self/maps`, listing the free gaps within reach and
//! trying the chunk-aligned address closest to the wanted one in each gap, nearest first, with
//! `MAP_FIXED_NOREPLACE` (so a mapping another thread made meanwhile is never replaced). When the
//! maps cannot be read, addresses are probed in steps outward from the wanted one.
//!
//! Chunks are never unmapped; freed blocks are filled with `int3` and reused, so the number of
//! chunks stays bounded by the peak number of live blocks. Unused bytes of a chunk are `int3`
//! too, so a stray jump anywhere into a chunk traps instead of running stale code.
//!
//! The allocator state is behind a mutex and must not be used from a signal handler, except
//! [`is_near_code`], which reads a lock-free, append-only table of chunk addresses.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};

use crate::{Error, Location, Result};

/// Size (and alignment) of one chunk of code pages.
const CHUNK: usize = 64 * 1024;
/// Granularity of blocks inside a chunk.
const SLOT: usize = 16;
/// Slots per chunk.
const SLOTS: usize = CHUNK / SLOT;
/// The largest block [`alloc_near`] hands out.
const MAX_BLOCK: usize = 256;
/// How far from the wanted address any byte of a block may lie.
const REACH: usize = (2 << 30) - 64 * 1024;
/// At most this many chunks (64 MiB of code: at least 262,144 blocks of the largest size).
const MAX_CHUNKS: usize = 1024;
/// No chunk is placed below this address (keeps code away from null-ish pointers, and clear of
/// `vm.mmap_min_addr`).
const LOW_LIMIT: usize = 1 << 20;
/// With 4-level paging, user addresses end at 2^47 minus one page; 5-level paging only hands
/// out higher addresses to callers that ask for them, which this allocator does only when the
/// wanted address is itself up there.
const HIGH_LIMIT_47: usize = (1 << 47) - 4096;
/// Room kept free below the main thread's stack (the kernel keeps at least this much between
/// the stack and the mmap area), so the stack can grow.
const STACK_ROOM: usize = 128 << 20;
/// Room preferably kept free above the `brk` heap, so `malloc`'s main arena can grow in place.
const HEAP_ROOM: usize = 64 << 20;
/// Step between probed addresses when `/proc/self/maps` cannot be read.
const PROBE_STEP: usize = 1 << 20;
/// The name chunks carry in `/proc/self/maps` (`[anon:textpoke-code]`).
const NAME: &[u8] = b"textpoke-code\0";
/// `prctl` option naming a range of anonymous memory (Linux 5.17, `CONFIG_ANON_VMA_NAME`).
const PR_SET_VMA: libc::c_int = 0x53564d41;
/// `PR_SET_VMA` sub-option: set the anonymous mapping's name.
const PR_SET_VMA_ANON_NAME: libc::c_ulong = 0;

/// A block of executable code this process allocated near some address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NearCode {
    /// First byte of the block.
    pub addr: usize,
    /// Its length in bytes, as asked of [`alloc_near`].
    pub len: usize,
}

/// Base addresses of the chunks, append-only: entry `i` is valid once `CHUNK_COUNT > i`.
/// Read without locks by [`is_near_code`].
static CHUNK_BASES: [AtomicUsize; MAX_CHUNKS] = [const { AtomicUsize::new(0) }; MAX_CHUNKS];
/// Number of valid entries in [`CHUNK_BASES`]; written only under [`STATE`]'s lock.
static CHUNK_COUNT: AtomicUsize = AtomicUsize::new(0);

/// The allocator: which slots of each chunk are taken, and which blocks are live.
struct State {
    /// Per chunk, in the order of [`CHUNK_BASES`].
    chunks: Vec<Slots>,
    /// Live blocks: address to length as asked.
    blocks: BTreeMap<usize, usize>,
}

/// Slot usage of one chunk.
struct Slots {
    base: usize,
    used: [u64; SLOTS / 64],
    free: usize,
}

impl Slots {
    fn new(base: usize) -> Self {
        Slots {
            base,
            used: [0; SLOTS / 64],
            free: SLOTS,
        }
    }

    fn is_used(&self, slot: usize) -> bool {
        self.used[slot / 64] & (1 << (slot % 64)) != 0
    }

    fn mark(&mut self, first: usize, n: usize, used: bool) {
        for slot in first..first + n {
            if used {
                self.used[slot / 64] |= 1 << (slot % 64);
            } else {
                self.used[slot / 64] &= !(1 << (slot % 64));
            }
        }
        if used {
            self.free -= n;
        } else {
            self.free += n;
        }
    }

    /// First run of `n` free slots whose bytes all lie within `lo..=hi`.
    fn find(&self, n: usize, lo: usize, hi: usize) -> Option<usize> {
        if self.free < n {
            return None;
        }
        // First slot whose start is >= lo, last slot (exclusive) whose end - 1 is <= hi.
        let first = lo.saturating_sub(self.base).div_ceil(SLOT);
        let end = match hi.checked_sub(self.base) {
            Some(off) => ((off + 1) / SLOT).min(SLOTS),
            None => return None,
        };
        let mut run = 0;
        for slot in first..end {
            if self.is_used(slot) {
                run = 0;
            } else {
                run += 1;
                if run == n {
                    return Some(slot + 1 - n);
                }
            }
        }
        None
    }
}

static STATE: Mutex<State> = Mutex::new(State {
    chunks: Vec::new(),
    blocks: BTreeMap::new(),
});

fn state() -> std::sync::MutexGuard<'static, State> {
    // The state is consistent between statements that can fail: a panic elsewhere while the
    // lock was held leaves nothing half-done.
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Lowest and highest address a byte of a block for `near` may have.
fn reach(near: usize) -> (usize, usize) {
    (near.saturating_sub(REACH), near.saturating_add(REACH))
}

fn bad_request(near: usize, len: usize, why: impl Into<String>) -> Error {
    Error::Functions {
        what: format!("{len}-byte code block near {near:#x}"),
        why: why.into(),
    }
}

/// Allocates `len` bytes (`len <= 256`; rounded up to 16-byte slots) of executable code whose
/// every byte lies within ±(2 GiB − 64 KiB) of `near`, and fills them with `code`
/// (`code.len() <= len`, the rest `int3`, 0xCC).
///
/// The bytes are written through `/proc/self/mem`, never through a writable mapping: the pages
/// are mapped `PROT_READ | PROT_EXEC` from the start (anonymous, private) and never change
/// protection. Pages are shared between allocations: blocks come from 64 KiB chunks, each
/// placed as close to `near` as a free range allows and named `textpoke-code` in
/// `/proc/self/maps` where the kernel supports it.
///
/// Returns [`Error::NoCodeSpace`] when no place within reach can be found, [`Error::Syscall`]
/// when a system call fails, and [`Error::Functions`] when `len` is 0 or above 256 or `code`
/// is longer than `len`.
pub fn alloc_near(near: usize, len: usize, code: &[u8]) -> Result<NearCode> {
    if len == 0 || len > MAX_BLOCK {
        return Err(bad_request(
            near,
            len,
            format!("a code block holds 1 to {MAX_BLOCK} bytes"),
        ));
    }
    if code.len() > len {
        return Err(bad_request(
            near,
            len,
            format!("{} bytes of code do not fit", code.len()),
        ));
    }
    let slots = len.div_ceil(SLOT);
    let (lo, hi) = reach(near);
    let mut state = state();

    let found = state
        .chunks
        .iter()
        .enumerate()
        .find_map(|(i, chunk)| chunk.find(slots, lo, hi).map(|slot| (i, slot)));
    let (index, slot) = match found {
        Some(found) => found,
        None => {
            if state.chunks.len() >= MAX_CHUNKS {
                return Err(Error::NoCodeSpace {
                    near: Location::of(near),
                    len,
                });
            }
            let base = map_chunk_near(near, len)?;
            let index = state.chunks.len();
            CHUNK_BASES[index].store(base, Ordering::Relaxed);
            // Publishes the base to lock-free readers of `is_near_code`.
            CHUNK_COUNT.store(index + 1, Ordering::Release);
            state.chunks.push(Slots::new(base));
            let slot = state.chunks[index]
                .find(slots, lo, hi)
                .ok_or(Error::NoCodeSpace {
                    near: Location::of(near),
                    len,
                })?;
            (index, slot)
        }
    };

    let addr = state.chunks[index].base + slot * SLOT;
    let mut bytes = [0xCC_u8; MAX_BLOCK];
    bytes[..code.len()].copy_from_slice(code);
    super::mem::write_code(addr, &bytes[..slots * SLOT])?;
    state.chunks[index].mark(slot, slots, true);
    state.blocks.insert(addr, len);
    Ok(NearCode { addr, len })
}

/// Returns a block to the allocator.
///
/// The caller promises (this is not checked) that no thread executes the block or will return
/// into it. Its bytes are overwritten with `int3` (through `/proc/self/mem`) before its slots can
/// be reused, so a stray jump into a freed block traps instead of running stale code.
///
/// Returns [`Error::Functions`] if `block` is not a live block of this allocator (nothing is
/// changed), and [`Error::Syscall`] if the overwrite fails (the block then stays allocated).
pub fn free_near(block: NearCode) -> Result<()> {
    let mut state = state();
    if state.blocks.get(&block.addr) != Some(&block.len) {
        return Err(Error::Functions {
            what: format!("code block {:#x} ({} bytes)", block.addr, block.len),
            why: "is not a live block of textpoke's code allocator; nothing freed".into(),
        });
    }
    let slots = block.len.div_ceil(SLOT);
    super::mem::write_code(block.addr, &[0xCC; MAX_BLOCK][..slots * SLOT])?;
    state.blocks.remove(&block.addr);
    if let Some(chunk) = state
        .chunks
        .iter_mut()
        .find(|c| (c.base..c.base + CHUNK).contains(&block.addr))
    {
        chunk.mark((block.addr - chunk.base) / SLOT, slots, false);
    }
    Ok(())
}

/// Overwrites bytes of an allocated block (through `/proc/self/mem`).
///
/// `addr..addr + bytes.len()` must lie inside one live block this allocator returned; otherwise
/// returns [`Error::Functions`] and writes nothing.
pub fn write_near(addr: usize, bytes: &[u8]) -> Result<()> {
    let state = state();
    let end = addr.checked_add(bytes.len());
    let inside = match (state.blocks.range(..=addr).next_back(), end) {
        (Some((&start, &len)), Some(end)) => addr >= start && end <= start + len,
        _ => false,
    };
    if !inside {
        return Err(Error::Functions {
            what: format!("write of {} bytes at {addr:#x}", bytes.len()),
            why: "is not inside a live block of textpoke's code allocator; nothing written".into(),
        });
    }
    // The lock stays held, so the block cannot be freed and reused meanwhile.
    super::mem::write_code(addr, bytes)
}

/// Whether `addr` lies inside a chunk of this allocator (allocated block or not).
///
/// Lock-free and async-signal-safe: it reads only an append-only table of atomics.
pub fn is_near_code(addr: usize) -> bool {
    let count = CHUNK_COUNT.load(Ordering::Acquire);
    CHUNK_BASES[..count.min(MAX_CHUNKS)].iter().any(|base| {
        let base = base.load(Ordering::Relaxed);
        addr.wrapping_sub(base) < CHUNK
    })
}

/// Number of chunks this allocator has mapped (for tests: it must stay bounded).
#[doc(hidden)]
pub fn chunk_count() -> usize {
    CHUNK_COUNT.load(Ordering::Acquire)
}

/// One mapping from `/proc/self/maps`.
struct Mapped {
    start: usize,
    end: usize,
    stack: bool,
    heap: bool,
}

fn read_maps() -> Option<Vec<Mapped>> {
    let text = std::fs::read_to_string("/proc/self/maps").ok()?;
    let mut maps = Vec::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (start, end) = parts.next()?.split_once('-')?;
        let start = usize::from_str_radix(start, 16).ok()?;
        let end = usize::from_str_radix(end, 16).ok()?;
        let name = parts.nth(4).unwrap_or("");
        maps.push(Mapped {
            start,
            end,
            stack: name == "[stack]",
            heap: name == "[heap]",
        });
    }
    maps.sort_by_key(|m| m.start);
    Some(maps)
}

/// Chunk-aligned addresses, nearest to `near` first, where a whole chunk lies within reach of
/// `near` and, per `maps`, in a free range. With `polite`, also keeps clear of the room the
/// `brk` heap grows into.
fn candidates(near: usize, maps: &[Mapped], polite: bool) -> Vec<usize> {
    let (lo, hi) = reach(near);
    let top = if near < HIGH_LIMIT_47 {
        HIGH_LIMIT_47
    } else {
        usize::MAX
    };
    // Chunks start in lo_start..=hi_start.
    let lo_start = lo.max(LOW_LIMIT).next_multiple_of(CHUNK);
    let Some(hi_start) = hi.min(top).checked_sub(CHUNK - 1) else {
        return Vec::new();
    };
    let hi_start = hi_start / CHUNK * CHUNK;
    if lo_start > hi_start {
        return Vec::new();
    }

    // Taken ranges, with the room kept for the stack (and, politely, the heap).
    let mut taken: Vec<(usize, usize)> = Vec::with_capacity(maps.len() + 2);
    for m in maps {
        let start = if m.stack {
            m.start.saturating_sub(STACK_ROOM)
        } else {
            m.start
        };
        let end = if m.heap && polite {
            m.end.saturating_add(HEAP_ROOM)
        } else {
            m.end
        };
        taken.push((start, end));
    }
    taken.sort_unstable();

    let mut out = Vec::new();
    let mut gap_start = 0usize;
    let mut consider = |gap_start: usize, gap_end: usize| {
        // Chunk starts c with gap_start <= c and c + CHUNK <= gap_end, within lo_start..=hi_start.
        let first = gap_start.next_multiple_of(CHUNK).max(lo_start);
        let Some(last) = gap_end.checked_sub(CHUNK) else {
            return;
        };
        let last = (last / CHUNK * CHUNK).min(hi_start);
        if first > last {
            return;
        }
        let best = (near / CHUNK * CHUNK).clamp(first, last);
        out.push(best);
        // The neighbour on the other side of `near` too, in case `best` is taken by a race.
        if best + CHUNK <= last {
            out.push(best + CHUNK);
        }
    };
    for &(start, end) in &taken {
        if start > gap_start {
            consider(gap_start, start);
        }
        gap_start = gap_start.max(end);
    }
    consider(gap_start, usize::MAX);
    out.sort_by_key(|&c| distance(near, c));
    out.dedup();
    out
}

/// Distance from `near` to the farthest byte of a chunk at `base`.
fn distance(near: usize, base: usize) -> usize {
    let end = base + CHUNK - 1;
    near.abs_diff(base).max(near.abs_diff(end))
}

/// Addresses probed, nearest first, when `/proc/self/maps` cannot be read.
fn probe_candidates(near: usize) -> Vec<usize> {
    let (lo, hi) = reach(near);
    let top = if near < HIGH_LIMIT_47 {
        HIGH_LIMIT_47
    } else {
        usize::MAX
    };
    let centre = near / CHUNK * CHUNK;
    let mut out = Vec::new();
    let mut step = 0;
    while step <= REACH {
        for c in [centre.checked_add(step), centre.checked_sub(step)]
            .into_iter()
            .flatten()
        {
            if c >= lo.max(LOW_LIMIT) && c <= hi.min(top).saturating_sub(CHUNK - 1) {
                out.push(c);
            }
        }
        step += PROBE_STEP;
    }
    out.dedup();
    out
}

/// Maps, names and fills one chunk within reach of `near`; returns its base.
fn map_chunk_near(near: usize, len: usize) -> Result<usize> {
    let rounds: Vec<Vec<usize>> = match read_maps() {
        Some(maps) => vec![
            candidates(near, &maps, true),
            candidates(near, &maps, false),
        ],
        None => vec![probe_candidates(near)],
    };
    let mut tried = std::collections::HashSet::new();
    for round in rounds {
        for base in round {
            if !tried.insert(base) {
                continue;
            }
            if try_map(base)? {
                return prepare(base);
            }
        }
    }
    // A mapping made by another thread may have raced with the maps we read; one more look.
    if let Some(maps) = read_maps() {
        for base in candidates(near, &maps, false) {
            if tried.contains(&base) {
                continue;
            }
            if try_map(base)? {
                return prepare(base);
            }
        }
    }
    Err(Error::NoCodeSpace {
        near: Location::of(near),
        len,
    })
}

/// Names the chunk just mapped at `base` and fills it with `int3`; unmaps it again if the fill
/// fails.
fn prepare(base: usize) -> Result<usize> {
    name_chunk(base);
    match super::mem::write_code(base, &[0xCC; CHUNK]) {
        Ok(()) => Ok(base),
        Err(e) => {
            // SAFETY: `base..base + CHUNK` is the mapping this module just made; it was never
            // handed out or published, so nothing refers to it.
            let _ = unsafe { rustix::mm::munmap(base as *mut c_void, CHUNK) };
            Err(e)
        }
    }
}

/// Maps a chunk at exactly `base`, read and execute only. `Ok(false)` when that place is not
/// available (taken, or refused for this address).
fn try_map(base: usize) -> Result<bool> {
    // SAFETY: `MAP_FIXED_NOREPLACE` never replaces an existing mapping: the call either maps
    // fresh anonymous pages at `base` or fails with EEXIST, so no memory anyone uses is touched.
    // Kernels before 4.17 ignore the flag and treat `base` as a hint; that case is handled below.
    let mapped = unsafe {
        rustix::mm::mmap_anonymous(
            base as *mut c_void,
            CHUNK,
            ProtFlags::READ | ProtFlags::EXEC,
            MapFlags::PRIVATE | MapFlags::FIXED_NOREPLACE,
        )
    };
    match mapped {
        Ok(ptr) if ptr as usize == base => Ok(true),
        Ok(ptr) => {
            // An old kernel placed it elsewhere: give it back and try the next place.
            // SAFETY: `ptr..ptr + CHUNK` is the mapping just made, which nothing else knows of.
            unsafe { rustix::mm::munmap(ptr, CHUNK) }
                .map_err(|e| Error::syscall(format!("munmap({:#x})", ptr as usize), e))?;
            Ok(false)
        }
        // Taken (EEXIST), refused for this address (EPERM/EACCES below mmap_min_addr, ENOMEM
        // past the address space or the map count limit, EINVAL for an address the kernel
        // does not accept): try elsewhere.
        Err(Errno::EXIST | Errno::PERM | Errno::ACCESS | Errno::NOMEM | Errno::INVAL) => Ok(false),
        Err(e) => Err(Error::syscall(
            format!("mmap({base:#x}, {CHUNK:#x}, PROT_READ|PROT_EXEC)"),
            e,
        )),
    }
}

/// Names the chunk at `base` `textpoke-code` in `/proc/self/maps`. Naming is cosmetic: any
/// failure (EINVAL on kernels without `CONFIG_ANON_VMA_NAME`, EPERM under a seccomp filter) is
/// ignored and the mapping simply stays unnamed.
fn name_chunk(base: usize) {
    // SAFETY: PR_SET_VMA_ANON_NAME only reads the NUL-terminated name (a static) and records it
    // for the anonymous mapping `base..base + CHUNK`, which this module just made. Every argument
    // is passed as the unsigned long the kernel reads.
    unsafe {
        libc::prctl(
            PR_SET_VMA,
            PR_SET_VMA_ANON_NAME,
            base as libc::c_ulong,
            CHUNK as libc::c_ulong,
            NAME.as_ptr() as libc::c_ulong,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tests that read freed or neighbouring slots run one at a time: another test could reuse them.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `mov eax, 42; ret`
    const RET_42: [u8; 6] = [0xb8, 0x2a, 0x00, 0x00, 0x00, 0xc3];

    #[inline(never)]
    extern "C" fn here() -> u32 {
        7
    }

    fn here_addr() -> usize {
        here as extern "C" fn() -> u32 as usize
    }

    fn read(addr: usize, len: usize) -> Vec<u8> {
        assert!(is_near_code(addr) && is_near_code(addr + len - 1));
        // SAFETY: the range lies inside a chunk, mapped readable for the life of the process;
        // the bytes change only through /proc/self/mem, never through a Rust reference.
        unsafe { std::slice::from_raw_parts(addr as *const u8, len) }.to_vec()
    }

    fn call(addr: usize) -> u32 {
        // SAFETY: the block at `addr` holds `mov eax, imm32; ret`, a complete function of this
        // type with the C ABI, and stays allocated for the call.
        let f: extern "C" fn() -> u32 = unsafe { std::mem::transmute(addr) };
        f()
    }

    #[test]
    fn near_block_is_in_reach_and_runs() {
        let _serial = serial();
        let near = here_addr();
        let block = alloc_near(near, 16, &RET_42).unwrap();
        assert!(block.addr.abs_diff(near) <= REACH);
        assert!((block.addr + 15).abs_diff(near) <= REACH);
        assert_eq!(block.addr % SLOT, 0);
        assert!(is_near_code(block.addr));
        assert!(is_near_code(block.addr + 15));
        assert!(!is_near_code(near));
        assert_eq!(call(block.addr), 42);
        assert_eq!(here(), 7);
        free_near(block).unwrap();
    }

    #[test]
    fn near_rejects_bad_sizes() {
        let _serial = serial();
        let near = here_addr();
        assert!(alloc_near(near, 0, &[]).is_err());
        assert!(alloc_near(near, MAX_BLOCK + 1, &[]).is_err());
        assert!(alloc_near(near, 4, &RET_42).is_err());
    }

    #[test]
    fn near_pads_with_int3_and_free_overwrites() {
        let _serial = serial();
        let block = alloc_near(here_addr(), 20, &RET_42).unwrap();
        let bytes = read(block.addr, 32);
        assert_eq!(&bytes[..6], &RET_42);
        assert!(bytes[6..].iter().all(|&b| b == 0xCC));
        free_near(block).unwrap();
        assert!(read(block.addr, 32).iter().all(|&b| b == 0xCC));
        // Freed twice, or never allocated: refused.
        assert!(free_near(block).is_err());
    }

    #[test]
    fn near_write_outside_a_block_is_refused() {
        let _serial = serial();
        let block = alloc_near(here_addr(), 32, &RET_42).unwrap();
        let before = read(block.addr, 48);
        assert!(write_near(block.addr + 30, &[0x90; 4]).is_err());
        assert!(write_near(block.addr.wrapping_sub(1), &[0x90]).is_err());
        assert!(write_near(usize::MAX, &[0x90]).is_err());
        assert_eq!(read(block.addr, 48), before);
        write_near(block.addr + 1, &[0x07]).unwrap();
        assert_eq!(call(block.addr), 7);
        free_near(block).unwrap();
    }

    #[test]
    fn near_no_space_is_an_error() {
        let _serial = serial();
        let before = chunk_count();
        // Kernel addresses: nothing within reach can be mapped.
        let err = alloc_near(0xffff_8000_0000_0000, 16, &RET_42).unwrap_err();
        assert!(matches!(err, Error::NoCodeSpace { len: 16, .. }), "{err}");
        assert!(
            err.to_string()
                .contains("within ±2 GiB of 0xffff800000000000")
        );
        assert_eq!(chunk_count(), before);
    }

    #[test]
    fn near_candidates_stay_in_reach_and_out_of_the_way() {
        let _serial = serial();
        let near = 0x5555_5555_0000;
        let maps = [
            Mapped {
                start: near - CHUNK,
                end: near + 4 * CHUNK,
                stack: false,
                heap: false,
            },
            Mapped {
                start: near + 4 * CHUNK,
                end: near + 8 * CHUNK,
                stack: false,
                heap: true,
            },
        ];
        let all = candidates(near, &maps, false);
        assert!(!all.is_empty());
        for &c in &all {
            assert_eq!(c % CHUNK, 0);
            assert!(distance(near, c) <= REACH, "{c:#x}");
            assert!(maps.iter().all(|m| c + CHUNK <= m.start || c >= m.end));
        }
        // Nearest first: right below the first mapping, or right above the heap.
        assert_eq!(all[0], near - 2 * CHUNK);
        let polite = candidates(near, &maps, true);
        assert!(
            polite
                .iter()
                .all(|&c| !(near + 8 * CHUNK..near + 8 * CHUNK + HEAP_ROOM).contains(&c))
        );
        // Near the bottom of the address space: nothing below LOW_LIMIT.
        assert!(
            candidates(0x20_0000, &[], false)
                .iter()
                .all(|&c| c >= LOW_LIMIT)
        );
        assert!(
            probe_candidates(near)
                .iter()
                .all(|&c| distance(near, c) <= REACH)
        );
    }
}
