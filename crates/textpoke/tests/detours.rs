//! Detours: each hazard of reference 004 built with `global_asm!`, so its shape is certain;
//! refusals name the instruction; live toggling while threads call the target, each case in a
//! fresh child process.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use textpoke::{Batch, Detour, Error};

type Unary = extern "C" fn(u64) -> u64;

// Every function: CFI (so the unwind table knows its bounds), a type and a size.
std::arch::global_asm!(
    ".text",
    // A loop head at offset 1, inside the bytes a jump at the entry overwrites.
    ".globl tp_loop_head",
    ".type tp_loop_head,@function",
    "tp_loop_head:",
    ".cfi_startproc",
    "push rbx",
    "2: inc rax",
    "cmp rax, rdi",
    "jb 2b",
    "pop rbx",
    "ret",
    ".cfi_endproc",
    ".size tp_loop_head, .-tp_loop_head",
    // Shorter than the jump.
    ".globl tp_short",
    ".type tp_short,@function",
    "tp_short:",
    ".cfi_startproc",
    "mov rax, rdi",
    "ret",
    ".cfi_endproc",
    ".size tp_short, .-tp_short",
    // An indirect call that returns inside the region.
    ".globl tp_calls_early",
    ".type tp_calls_early,@function",
    "tp_calls_early:",
    ".cfi_startproc",
    "call rsi",
    "nop dword ptr [rax]",
    "ret",
    ".cfi_endproc",
    ".size tp_calls_early, .-tp_calls_early",
    // Someone else's breakpoint in the region.
    ".globl tp_foreign_int3",
    ".type tp_foreign_int3,@function",
    "tp_foreign_int3:",
    ".cfi_startproc",
    "push rbx",
    "int3",
    "pop rbx",
    "lea rax, [rdi + 1]",
    "ret",
    ".cfi_endproc",
    ".size tp_foreign_int3, .-tp_foreign_int3",
    // The target of the live tests: x + 1, with a 1-byte first instruction, so that a thread
    // can be at the second byte, a RIP-relative load and a short branch in the region.
    ".globl tp_plus_one",
    ".type tp_plus_one,@function",
    "tp_plus_one:",
    ".cfi_startproc",
    "push rbx",
    ".cfi_adjust_cfa_offset 8",
    "mov rbx, qword ptr [rip + {one}]",
    "test rdi, rdi",
    "jz 3f",
    "3: lea rax, [rdi + rbx]",
    "pop rbx",
    ".cfi_adjust_cfa_offset -8",
    "ret",
    ".cfi_endproc",
    ".size tp_plus_one, .-tp_plus_one",
    // endbr64 first, then an instruction longer than the jump.
    ".globl tp_endbr",
    ".type tp_endbr,@function",
    "tp_endbr:",
    ".cfi_startproc",
    "endbr64",
    "movabs rax, 0x100000000",
    "add rax, rdi",
    "ret",
    ".cfi_endproc",
    ".size tp_endbr, .-tp_endbr",
    // A short branch in the region: relocated as a rel32 one.
    ".globl tp_short_branch",
    ".type tp_short_branch,@function",
    "tp_short_branch:",
    ".cfi_startproc",
    "test rdi, rdi",
    "jz 4f",
    "lea rax, [rdi + 1]",
    "ret",
    "4: mov eax, 1000",
    "ret",
    ".cfi_endproc",
    ".size tp_short_branch, .-tp_short_branch",
    // A 5-byte call at the entry: it returns to the region's end, so threads inside the callee
    // are fine, and the trampoline holds the relocated call.
    ".globl tp_call_first",
    ".type tp_call_first,@function",
    "tp_call_first:",
    ".cfi_startproc",
    "call {blocker}",
    "add rax, 1",
    "ret",
    ".cfi_endproc",
    ".size tp_call_first, .-tp_call_first",
    // Calls tp_plus_one(1) until the byte at rdi is set; returns how many results were not 2
    // (1 + 1 and 1 * 2 both are): a tight loop, so that much of its time is in the region.
    ".globl tp_call_loop",
    ".type tp_call_loop,@function",
    "tp_call_loop:",
    ".cfi_startproc",
    "push rbx",
    ".cfi_adjust_cfa_offset 8",
    "push r12",
    ".cfi_adjust_cfa_offset 8",
    "mov r12, rdi",
    "xor ebx, ebx",
    "5: mov edi, 1",
    "call tp_plus_one",
    "cmp rax, 2",
    "je 6f",
    "inc rbx",
    "6: cmp byte ptr [r12], 0",
    "je 5b",
    "mov rax, rbx",
    "pop r12",
    ".cfi_adjust_cfa_offset -8",
    "pop rbx",
    ".cfi_adjust_cfa_offset -8",
    "ret",
    ".cfi_endproc",
    ".size tp_call_loop, .-tp_call_loop",
    // Loads from its argument at offset 1, inside the region: a thread whose load waits for a
    // userfaultfd page sits there for as long as the test likes.
    ".globl tp_load_plus_one",
    ".type tp_load_plus_one,@function",
    "tp_load_plus_one:",
    ".cfi_startproc",
    "push rbx",
    ".cfi_adjust_cfa_offset 8",
    "mov rax, qword ptr [rdi]",
    "add rax, 1",
    "pop rbx",
    ".cfi_adjust_cfa_offset -8",
    "ret",
    ".cfi_endproc",
    ".size tp_load_plus_one, .-tp_load_plus_one",
    one = sym ONE,
    blocker = sym blocker,
);

/// Waits until [`RELEASE`] is set, then returns 41 (so `tp_call_first` returns 42).
#[unsafe(no_mangle)]
extern "C" fn blocker() -> u64 {
    BLOCKED.fetch_add(1, Ordering::SeqCst);
    while !RELEASE.load(Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    41
}

static BLOCKED: AtomicU64 = AtomicU64::new(0);
static RELEASE: AtomicBool = AtomicBool::new(false);

#[unsafe(no_mangle)]
static ONE: u64 = 1;

unsafe extern "C" {
    fn tp_loop_head(x: u64) -> u64;
    fn tp_short(x: u64) -> u64;
    fn tp_calls_early(x: u64) -> u64;
    fn tp_foreign_int3(x: u64) -> u64;
    fn tp_plus_one(x: u64) -> u64;
    fn tp_endbr(x: u64) -> u64;
    fn tp_short_branch(x: u64) -> u64;
    fn tp_call_first(x: u64) -> u64;
    fn tp_call_loop(stop: *const AtomicBool) -> u64;
    fn tp_load_plus_one(p: *const u64) -> u64;
}

fn addr_of(f: unsafe extern "C" fn(u64) -> u64) -> Unary {
    // SAFETY: the same function pointer type, less `unsafe`: these functions are safe to call.
    unsafe { std::mem::transmute::<unsafe extern "C" fn(u64) -> u64, Unary>(f) }
}

extern "C" fn times_two(x: u64) -> u64 {
    x.wrapping_mul(2)
}

fn refusal(target: Unary) -> String {
    // SAFETY: never enabled.
    match unsafe { Detour::new(target, times_two as Unary) } {
        Err(e @ Error::Detour { .. }) => e.to_string(),
        Err(other) => panic!("not a detour refusal: {other}"),
        Ok(d) => panic!("{d:?} was accepted"),
    }
}

#[test]
fn hazards_are_refused_naming_the_instruction() {
    let msg = refusal(addr_of(tp_loop_head));
    assert!(msg.contains("tp_loop_head") && msg.contains("jb"), "{msg}");
    let msg = refusal(addr_of(tp_short));
    assert!(msg.contains("needs 5"), "{msg}");
    let msg = refusal(addr_of(tp_calls_early));
    assert!(msg.contains("call") && msg.contains("returns to"), "{msg}");
    let msg = refusal(addr_of(tp_foreign_int3));
    assert!(msg.contains("int3"), "{msg}");
    // Not a function start.
    // SAFETY: only its address is used: it is refused, never called.
    let inside =
        unsafe { std::mem::transmute::<usize, Unary>(tp_plus_one as *const () as usize + 1) };
    let msg = refusal(inside);
    assert!(msg.contains("not a function start"), "{msg}");
}

#[test]
fn functions_textpoke_needs_are_refused() {
    type Malloc = unsafe extern "C" fn(libc::size_t) -> *mut libc::c_void;
    // SAFETY: never enabled.
    let r = unsafe { Detour::new(libc::malloc as Malloc, libc::malloc as Malloc) };
    assert!(
        matches!(&r, Err(Error::Detour { why, .. }) if why.contains("while it patches")),
        "{r:?}"
    );
}

#[test]
fn detour_enable_disable_original_and_batch() {
    let code = support::in_child(|| {
        let target = addr_of(tp_plus_one);
        // SAFETY: times_two is a fine stand-in for every caller of this test function.
        let d = unsafe { Detour::new(target, times_two as Unary) }.unwrap();
        assert_eq!(target(20), 21);
        d.enable().unwrap();
        assert_eq!(target(20), 40);
        assert_eq!((d.original())(20), 21, "the trampoline runs the original");
        d.disable().unwrap();
        assert_eq!(target(20), 21);
        Batch::new().enable_detour(&d).commit().unwrap();
        assert!(d.is_enabled());
        assert_eq!(target(7), 14);
        // A second detour of the same function is refused while this one lives.
        // SAFETY: never enabled.
        let second = unsafe { Detour::new(target, times_two as Unary) };
        assert!(matches!(&second, Err(Error::Detour { why, .. }) if why.contains("already")));
        drop(d);
        assert_eq!(target(7), 8, "dropping a detour disables it");
        // A new detour of it reuses the trampoline.
        // SAFETY: as above.
        let again = unsafe { Detour::new(target, times_two as Unary) }.unwrap();
        again.enable().unwrap();
        assert_eq!(target(3), 6);
        0
    });
    assert_eq!(code, 0);
}

#[test]
fn endbr64_stays_and_long_first_instruction() {
    let code = support::in_child(|| {
        let target = addr_of(tp_endbr);
        let before = textpoke::__private::read_code(target as usize, 4).unwrap();
        // SAFETY: as above.
        let d = unsafe { Detour::new(target, times_two as Unary) }.unwrap();
        d.enable().unwrap();
        assert_eq!(
            textpoke::__private::read_code(target as usize, 4).unwrap(),
            before
        );
        assert_eq!(target(5), 10);
        assert_eq!((d.original())(5), 0x1_0000_0005);
        0
    });
    assert_eq!(code, 0);
}

/// Threads call the target in a tight loop (much of their time inside the bytes the jump
/// overwrites) while the detour is turned on and off; every result must be the old
/// function's or the new one's, and no thread may crash.
#[test]
fn toggled_while_threads_call_it() {
    let code = support::in_child(|| {
        let target = addr_of(tp_plus_one);
        // SAFETY: as above.
        let d = unsafe { Detour::new(target, times_two as Unary) }.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let wrong = Arc::new(AtomicU64::new(0));
        let calls = Arc::new(AtomicU64::new(0));
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (stop, wrong, calls) = (stop.clone(), wrong.clone(), calls.clone());
                std::thread::spawn(move || {
                    let mut x = 1u64;
                    while !stop.load(Ordering::Relaxed) {
                        let r = target(std::hint::black_box(x));
                        if r != x + 1 && r != x * 2 {
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                        x = x % 1_000_000 + 1;
                        calls.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let tight = {
            let stop = stop.clone();
            // SAFETY: the flag outlives the loop, which only reads it.
            std::thread::spawn(move || unsafe { tp_call_loop(&*stop) })
        };
        let moved_before = textpoke::__private::threads_moved();
        for _ in 0..300 {
            d.enable().unwrap();
            d.disable().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        let tight_wrong = tight.join().unwrap();
        // Rarely any: a thread is inside the bytes only if it was preempted there when the
        // breakpoint was written (see the userfaultfd test for one that always is).
        let moved = textpoke::__private::threads_moved() - moved_before;
        eprintln!(
            "{} checked calls, {moved} threads moved out of the region",
            calls.load(Ordering::Relaxed)
        );
        i32::from(wrong.load(Ordering::Relaxed) + tight_wrong != 0)
    });
    assert_eq!(code, 0);
}

#[test]
fn a_libc_function_is_hooked_and_restored_while_threads_call_it() {
    unsafe extern "C" fn not_abs(x: libc::c_int) -> libc::c_int {
        x.wrapping_neg()
    }
    type Abs = unsafe extern "C" fn(libc::c_int) -> libc::c_int;
    let code = support::in_child(|| {
        // Through a pointer that the compiler cannot see through, so the calls are real.
        let abs: Abs = std::hint::black_box(libc::abs as Abs);
        // SAFETY: the replacement only changes results, which only this test reads.
        let d = unsafe { Detour::new(abs, not_abs as Abs) }.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let wrong = Arc::new(AtomicU64::new(0));
        let worker = {
            let (stop, wrong) = (stop.clone(), wrong.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: abs is safe to call with any int.
                    let r = unsafe { abs(std::hint::black_box(5)) };
                    if r != 5 && r != -5 {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        for _ in 0..100 {
            d.enable().unwrap();
            // SAFETY: as above, for abs and its replacement.
            unsafe {
                assert_eq!(abs(std::hint::black_box(5)), -5);
                assert_eq!((d.original())(std::hint::black_box(-5)), 5);
            }
            d.disable().unwrap();
            // SAFETY: as above.
            assert_eq!(unsafe { abs(std::hint::black_box(-5)) }, 5);
        }
        stop.store(true, Ordering::Relaxed);
        worker.join().unwrap();
        i32::from(wrong.load(Ordering::Relaxed) != 0)
    });
    assert_eq!(code, 0);
}

#[test]
fn a_short_branch_in_the_prologue_keeps_its_target() {
    let code = support::in_child(|| {
        let target = addr_of(tp_short_branch);
        // SAFETY: as above.
        let d = unsafe { Detour::new(target, times_two as Unary) }.unwrap();
        d.enable().unwrap();
        assert_eq!(target(4), 8);
        assert_eq!(
            (d.original())(0),
            1000,
            "the relocated jz reaches its target"
        );
        assert_eq!((d.original())(4), 5);
        0
    });
    assert_eq!(code, 0);
}

/// A thread blocked in a call made from the overwritten bytes returns correctly after the
/// detour is enabled, and one parked in the trampoline (through `original()`) keeps it alive
/// while the detour is dropped and made again.
#[test]
fn threads_blocked_in_a_call_from_the_region_and_in_the_trampoline_return_correctly() {
    let code = support::in_child(|| {
        let target = addr_of(tp_call_first);
        // SAFETY: as above.
        let d = unsafe { Detour::new(target, times_two as Unary) }.unwrap();
        let original = d.original();
        let in_target = std::thread::spawn(move || target(0));
        let in_trampoline = std::thread::spawn(move || original(0));
        while BLOCKED.load(Ordering::SeqCst) < 2 {
            std::thread::yield_now();
        }
        d.enable().unwrap();
        assert_eq!(target(3), 6);
        drop(d);
        for _ in 0..10 {
            // SAFETY: as above.
            let again = unsafe { Detour::new(target, times_two as Unary) }.unwrap();
            again.enable().unwrap();
            assert_eq!(
                again.original() as usize,
                original as usize,
                "the trampoline is reused"
            );
        }
        RELEASE.store(true, Ordering::SeqCst);
        assert_eq!(in_target.join().unwrap(), 42);
        assert_eq!(in_trampoline.join().unwrap(), 42);
        0
    });
    assert_eq!(code, 0);
}

#[test]
fn textpoke_and_its_trampolines_are_refused() {
    type Threads = fn() -> textpoke::Result<Vec<textpoke::ThreadInfo>>;
    let own: Threads = textpoke::threads_blocking_sigtrap;
    // SAFETY: never enabled.
    let r = unsafe { Detour::new(own, own) };
    assert!(
        matches!(&r, Err(Error::Detour { why, .. }) if why.contains("textpoke's own")),
        "{r:?}"
    );
    let code = support::in_child(|| {
        // SAFETY: as above.
        let d = unsafe { Detour::new(addr_of(tp_plus_one), times_two as Unary) }.unwrap();
        let msg = refusal(d.original());
        i32::from(!msg.contains("trampoline"))
    });
    assert_eq!(code, 0);
}

/// Memory stays flat: enabling, disabling, dropping and making detours of the same function
/// reuses its trampoline, and no code chunk is added.
#[test]
fn many_cycles_keep_memory_flat() {
    let code = support::in_child(|| {
        let target = addr_of(tp_plus_one);
        // SAFETY: as above.
        let first = unsafe { Detour::new(target, times_two as Unary) }.unwrap();
        first.enable().unwrap();
        drop(first);
        let chunks = textpoke::__private::near_chunk_count();
        for i in 0..2_000 {
            // SAFETY: as above.
            let d = unsafe { Detour::new(target, times_two as Unary) }.unwrap();
            d.enable().unwrap();
            assert_eq!(target(i), i * 2);
            d.disable().unwrap();
        }
        i32::from(textpoke::__private::near_chunk_count() != chunks)
    });
    assert_eq!(code, 0);
}

/// A userfaultfd-registered page whose first touch waits until the test fills it.
mod uffd {
    const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
    const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
    const UFFDIO_COPY: libc::c_ulong = 0xc028_aa03;
    const UFFD_USER_MODE_ONLY: libc::c_int = 1;

    /// The page and its userfaultfd.
    pub struct Page {
        pub addr: *mut u64,
        fd: libc::c_int,
    }

    // SAFETY: the page is process memory; only its address crosses threads.
    unsafe impl Send for Page {}
    // SAFETY: as above.
    unsafe impl Sync for Page {}

    impl Page {
        pub fn new() -> Page {
            // SAFETY: plain system calls on memory and descriptors this function owns; every
            // result is checked.
            unsafe {
                let fd = libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | UFFD_USER_MODE_ONLY)
                    as libc::c_int;
                assert!(fd >= 0, "userfaultfd: {}", std::io::Error::last_os_error());
                let mut api = [0xaau64, 0, 0];
                assert_eq!(
                    libc::ioctl(fd, UFFDIO_API, api.as_mut_ptr()),
                    0,
                    "UFFDIO_API"
                );
                let addr = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                assert_ne!(addr, libc::MAP_FAILED);
                // range { start, len }, mode MISSING (1), ioctls (out)
                let mut reg = [addr as u64, 4096, 1, 0];
                assert_eq!(
                    libc::ioctl(fd, UFFDIO_REGISTER, reg.as_mut_ptr()),
                    0,
                    "REGISTER"
                );
                Page {
                    addr: addr.cast(),
                    fd,
                }
            }
        }

        /// Fills the page with `value` in its first word, waking the waiting thread.
        pub fn fill(&self, value: u64) {
            let mut src = vec![0u64; 512];
            src[0] = value;
            // dst, src, len, mode, copy (out)
            let mut copy = [self.addr as u64, src.as_ptr() as u64, 4096, 0, 0];
            // SAFETY: copies our buffer into the registered, still-missing page.
            let r = unsafe { libc::ioctl(self.fd, UFFDIO_COPY, copy.as_mut_ptr()) };
            assert_eq!(r, 0, "UFFDIO_COPY: {}", std::io::Error::last_os_error());
        }
    }
}

/// Whether thread `tid` is asleep (its load waits for the page).
fn sleeping(tid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|r| r.trim_start().starts_with('S'))
        })
        .unwrap_or(false)
}

/// A thread stopped inside the overwritten bytes (its load, one instruction after the entry,
/// waits for a userfaultfd page) is moved to the same instruction of the trampoline when the
/// detour is enabled, and once the page arrives it finishes the original function there.
#[test]
fn a_thread_inside_the_region_is_moved_and_runs_on_correctly() {
    let code = support::in_child(|| {
        let page = std::sync::Arc::new(uffd::Page::new());
        let target = tp_load_plus_one as unsafe extern "C" fn(*const u64) -> u64;
        // SAFETY: the replacement reads the same argument.
        let d = unsafe { Detour::new(target, load_times_two as LoadFn) }.unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let page = page.clone();
            std::thread::spawn(move || {
                tx.send(unsafe { libc::gettid() }).unwrap();
                // SAFETY: the page is mapped; the load waits until the test fills it.
                unsafe { target(page.addr) }
            })
        };
        let tid = rx.recv().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !sleeping(tid) {
            assert!(
                std::time::Instant::now() < deadline,
                "the load never waited"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let before = textpoke::__private::threads_moved();
        d.enable().unwrap();
        let moved = textpoke::__private::threads_moved() - before;
        page.fill(41);
        let got = waiter.join().unwrap();
        // New calls run the replacement; the moved one finished the original.
        // SAFETY: the page is filled now.
        let now = unsafe { target(page.addr) };
        eprintln!("moved {moved}, the waiting call returned {got}, a new call {now}");
        i32::from(!(moved == 1 && got == 42 && now == 82))
    });
    assert_eq!(code, 0);
}

type LoadFn = unsafe extern "C" fn(*const u64) -> u64;

unsafe extern "C" fn load_times_two(p: *const u64) -> u64 {
    // SAFETY: the caller's pointer, as for the original.
    unsafe { *p * 2 }
}

/// A running thread that blocks the signal used to reach threads makes the enable fail, with
/// the function's bytes as they were, and the detour can be enabled once it unblocks it.
#[test]
fn a_thread_that_cannot_be_reached_fails_the_enable_cleanly() {
    let code = support::in_child(|| {
        let target = addr_of(tp_plus_one);
        let before = textpoke::__private::read_code(target as usize, 16).unwrap();
        // SAFETY: as above.
        let d = unsafe { Detour::new(target, times_two as Unary) }.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let blocking = Arc::new(AtomicBool::new(false));
        let spinner = {
            let (stop, blocking) = (stop.clone(), blocking.clone());
            std::thread::spawn(move || {
                // SAFETY: changes only this thread's mask, restored below.
                unsafe {
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, libc::SIGRTMAX() - 2);
                    libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                    blocking.store(true, Ordering::SeqCst);
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                    libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
                }
            })
        };
        while !blocking.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        let r = d.enable();
        let msg = format!("{r:?}");
        let unchanged = textpoke::__private::read_code(target as usize, 16).unwrap() == before;
        stop.store(true, Ordering::SeqCst);
        spinner.join().unwrap();
        eprintln!("{msg}");
        let failed = matches!(r, Err(Error::SettleFailed { .. })) && msg.contains("blocks");
        let works_after = d.enable().is_ok() && target(5) == 10;
        i32::from(!(failed && unchanged && works_after && d.is_enabled()))
    });
    assert_eq!(code, 0);
}
