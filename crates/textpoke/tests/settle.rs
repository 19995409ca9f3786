//! `settle_threads` brings every other thread to a known point: threads inside a region are
//! moved to the same instruction of its copy, threads blocked in system calls elsewhere are
//! left alone, and a thread that cannot answer makes it fail quickly, naming the thread.
//!
//! Each case runs alone in a fresh process: the settle signal, its handler and the threads of
//! one case must not meet another's.

mod support;

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use textpoke::__private::{Move, settle_signal, settle_threads};

// Two copies of one loop. Each spins until the word at [rdi] is non-zero, counting its turns in
// its own word of the block at rdi: [rdi + 8] in `settle_spin_a`, [rdi + 16] in
// `settle_spin_b`. Both use the same encodings (a disp8 for either counter, a rel8 for the
// branch), so each instruction boundary of one is at the same offset in the other, and a thread
// moved from one to the other keeps running the same instruction with the same registers.
// `settle_spin_boundaries` lists those offsets and then the length of each copy.
core::arch::global_asm!(
    ".pushsection .text.settle_spin,\"ax\",@progbits",
    ".balign 16",
    ".globl settle_spin_a",
    ".hidden settle_spin_a",
    ".type settle_spin_a,@function",
    "settle_spin_a:",
    "lock inc qword ptr [rdi + 8]",
    "2: pause",
    "3: nop",
    "4: cmp qword ptr [rdi], 0",
    "5: je settle_spin_a",
    "6: ret",
    "7:",
    ".size settle_spin_a, 7b - settle_spin_a",
    ".balign 16",
    ".globl settle_spin_b",
    ".hidden settle_spin_b",
    ".type settle_spin_b,@function",
    "settle_spin_b:",
    "lock inc qword ptr [rdi + 16]",
    "pause",
    "nop",
    "cmp qword ptr [rdi], 0",
    "je settle_spin_b",
    "ret",
    "8:",
    ".size settle_spin_b, 8b - settle_spin_b",
    ".popsection",
    ".pushsection .rodata.settle_spin,\"a\",@progbits",
    ".balign 8",
    ".globl settle_spin_boundaries",
    ".hidden settle_spin_boundaries",
    "settle_spin_boundaries:",
    ".quad 0, 2b - settle_spin_a, 3b - settle_spin_a, 4b - settle_spin_a",
    ".quad 5b - settle_spin_a, 6b - settle_spin_a",
    ".quad 7b - settle_spin_a, 8b - settle_spin_b",
    ".popsection",
);

/// The block a spinning thread works on: a stop word and one counter per copy of the loop.
#[repr(C)]
#[derive(Default)]
struct Spin {
    stop: AtomicU64,
    in_a: AtomicU64,
    in_b: AtomicU64,
}

unsafe extern "C" {
    fn settle_spin_a(block: *const Spin);
    fn settle_spin_b(block: *const Spin);
    static settle_spin_boundaries: [u64; 8];
}

/// Instruction boundaries of the loop (offsets) and the length of each copy.
fn boundaries() -> (&'static [u64], usize, usize) {
    // SAFETY: a constant table the assembler filled in.
    let table = unsafe { &settle_spin_boundaries };
    (&table[..6], table[6] as usize, table[7] as usize)
}

fn addr_a() -> usize {
    settle_spin_a as *const () as usize
}

fn addr_b() -> usize {
    settle_spin_b as *const () as usize
}

/// Every boundary of copy `from` moved to the same boundary of copy `to`, and the region that is
/// copy `from`.
fn moves(from: usize, to: usize) -> (Vec<Move>, Vec<(usize, usize)>) {
    let (offsets, len, _) = boundaries();
    let moves = offsets
        .iter()
        .map(|&o| Move {
            from: from + o as usize,
            to: to + o as usize,
        })
        .collect();
    (moves, vec![(from, from + len)])
}

/// A thread spinning in copy A (or B) until stopped; optionally blocking the settle signal
/// first. Returns once it is in the loop.
struct Spinner {
    block: &'static Spin,
    tid: i32,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Spinner {
    fn start(in_b: bool, block_signal: bool) -> Spinner {
        let block: &'static Spin = Box::leak(Box::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("settle-spin".into())
            .spawn(move || {
                if block_signal {
                    // SAFETY: blocks one signal in this thread's own mask.
                    unsafe {
                        let mut set: libc::sigset_t = std::mem::zeroed();
                        libc::sigemptyset(&mut set);
                        libc::sigaddset(&mut set, settle_signal());
                        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                    }
                }
                // SAFETY: gettid has no preconditions.
                tx.send(unsafe { libc::gettid() }).unwrap();
                // SAFETY: the loop only touches `block`, which is leaked and so lives forever,
                // and returns once `stop` is set.
                unsafe {
                    if in_b {
                        settle_spin_b(block)
                    } else {
                        settle_spin_a(block)
                    }
                };
            })
            .unwrap();
        let tid = rx.recv().unwrap();
        let spinner = Spinner {
            block,
            tid,
            thread: Some(thread),
        };
        let counter = if in_b { &block.in_b } else { &block.in_a };
        wait_for(|| counter.load(Ordering::SeqCst) > 0, "the thread to spin");
        spinner
    }

    /// Whether it runs copy B now (and no longer copy A): B's count goes up, A's stays.
    fn runs_b(&self) -> bool {
        let a = self.block.in_a.load(Ordering::SeqCst);
        let b = self.block.in_b.load(Ordering::SeqCst);
        let start = Instant::now();
        while self.block.in_b.load(Ordering::SeqCst) == b {
            if start.elapsed() > Duration::from_secs(1) {
                return false;
            }
            std::thread::yield_now();
        }
        self.block.in_a.load(Ordering::SeqCst) == a
    }

    /// Whether it runs copy A now (and no longer copy B).
    fn runs_a(&self) -> bool {
        let a = self.block.in_a.load(Ordering::SeqCst);
        let b = self.block.in_b.load(Ordering::SeqCst);
        let start = Instant::now();
        while self.block.in_a.load(Ordering::SeqCst) == a {
            if start.elapsed() > Duration::from_secs(1) {
                return false;
            }
            std::thread::yield_now();
        }
        self.block.in_b.load(Ordering::SeqCst) == b
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.block.stop.store(1, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn wait_for(mut done: impl FnMut() -> bool, what: &str) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// The system call thread `tid` is blocked in, if any.
fn blocked_in(tid: i32) -> Option<i64> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).ok()?;
    text.split_whitespace()
        .next()?
        .parse()
        .ok()
        .filter(|&nr| nr >= 0)
}

#[test]
fn the_two_copies_are_the_same_code() {
    let (offsets, len_a, len_b) = boundaries();
    assert_eq!(len_a, len_b);
    assert_eq!(offsets.len(), 6);
    // SAFETY: both copies are `len_a` bytes of mapped code.
    let (a, b) = unsafe {
        (
            std::slice::from_raw_parts(addr_a() as *const u8, len_a),
            std::slice::from_raw_parts(addr_b() as *const u8, len_b),
        )
    };
    // Only the counter's displacement differs.
    let differ: Vec<usize> = (0..len_a).filter(|&i| a[i] != b[i]).collect();
    assert_eq!(differ, [4], "{a:02x?} vs {b:02x?}");
}

#[test]
fn the_signal_is_real_time() {
    let sig = settle_signal();
    assert!(libc::SIGRTMIN() <= sig && sig <= libc::SIGRTMAX(), "{sig}");
}

#[test]
fn a_spinning_thread_is_moved_to_the_copy() {
    support::fresh("a_spinning_thread_is_moved_to_the_copy", || {
        let spinner = Spinner::start(false, false);
        let (moves, regions) = moves(addr_a(), addr_b());
        let settled = settle_threads(&moves, &regions, Duration::from_secs(1)).unwrap();
        eprintln!("{settled:?}");
        assert_eq!(settled.moved, 1, "{settled:?}");
        assert!(settled.signalled >= 1 && settled.threads >= settled.signalled);
        assert!(spinner.runs_b(), "the thread runs the copy");
    });
}

#[test]
fn threads_blocked_in_system_calls_are_left_alone() {
    support::fresh("threads_blocked_in_system_calls_are_left_alone", || {
        let mut read_fds = [0; 2];
        let mut poll_fds = [0; 2];
        // SAFETY: valid out-arrays of two descriptors each.
        unsafe {
            assert_eq!(libc::pipe(read_fds.as_mut_ptr()), 0);
            assert_eq!(libc::pipe(poll_fds.as_mut_ptr()), 0);
        }
        let tid = || {
            // SAFETY: gettid has no preconditions.
            unsafe { libc::gettid() }
        };
        let self_tid = tid();
        let (tx, rx) = std::sync::mpsc::channel();
        let tx2 = tx.clone();
        let reader = std::thread::spawn(move || {
            tx.send(tid()).unwrap();
            let mut buf = [0u8; 4];
            // SAFETY: reads into a local buffer of the given size.
            let n = unsafe { libc::read(read_fds[0], buf.as_mut_ptr().cast(), buf.len()) };
            let errno = std::io::Error::last_os_error();
            (n, buf, errno.raw_os_error())
        });
        // poll is never restarted after a handler ran: a signal would show as EINTR.
        let poller = std::thread::spawn(move || {
            tx2.send(tid()).unwrap();
            let mut fd = libc::pollfd {
                fd: poll_fds[0],
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut fd, 1, -1) };
            let errno = std::io::Error::last_os_error();
            (n, errno.raw_os_error())
        });
        let tids = [rx.recv().unwrap(), rx.recv().unwrap()];
        for tid in tids {
            wait_for(|| blocked_in(tid).is_some(), "the thread to block");
        }
        // The harness's own threads too (its main thread waits for this test to end), so that
        // no thread has a reason to be signalled.
        wait_for(
            || {
                std::fs::read_dir("/proc/self/task").unwrap().all(|e| {
                    let tid: i32 = e.unwrap().file_name().to_str().unwrap().parse().unwrap();
                    tid == self_tid || blocked_in(tid).is_some()
                })
            },
            "every other thread to block",
        );
        let (moves, regions) = moves(addr_a(), addr_b());
        let settled = settle_threads(&moves, &regions, Duration::from_secs(1)).unwrap();
        eprintln!("{settled:?}");
        assert!(settled.threads >= 2, "{settled:?}");
        // Every other thread of this process is blocked (the harness waits for this test).
        assert_eq!(settled.signalled, 0, "{settled:?}");
        assert_eq!(settled.moved, 0);
        // SAFETY: writes from a local buffer to the pipes' write ends.
        unsafe {
            assert_eq!(libc::write(read_fds[1], b"data".as_ptr().cast(), 4), 4);
            assert_eq!(libc::write(poll_fds[1], b"x".as_ptr().cast(), 1), 1);
        }
        let (n, buf, errno) = reader.join().unwrap();
        assert_eq!((n, &buf), (4, b"data"), "read: errno {errno:?}");
        let (n, errno) = poller.join().unwrap();
        assert_eq!(n, 1, "poll was interrupted: errno {errno:?}");
    });
}

#[test]
fn a_thread_that_blocks_the_signal_is_named() {
    support::fresh("a_thread_that_blocks_the_signal_is_named", || {
        let spinner = Spinner::start(false, true);
        let (moves, regions) = moves(addr_a(), addr_b());
        let start = Instant::now();
        let err = settle_threads(&moves, &regions, Duration::from_millis(200)).unwrap_err();
        let took = start.elapsed();
        let msg = err.to_string();
        eprintln!("{msg} (after {took:?})");
        assert!(
            matches!(err, textpoke::Error::SettleFailed { .. }),
            "{err:?}"
        );
        assert!(
            msg.contains(&format!("thread {} (settle-spin)", spinner.tid)),
            "{msg}"
        );
        assert!(msg.contains("blocks"), "{msg}");
        // About 5 ms of the thread's CPU time when the machine is idle; the timeout at worst.
        assert!(took < Duration::from_secs(1), "took {took:?}");
        assert!(spinner.runs_a(), "the thread was not moved");
    });
}

#[test]
fn many_threads_are_all_moved() {
    support::fresh("many_threads_are_all_moved", || {
        let spinners: Vec<Spinner> = (0..8).map(|_| Spinner::start(false, false)).collect();
        let (moves, regions) = moves(addr_a(), addr_b());
        let settled = settle_threads(&moves, &regions, Duration::from_secs(1)).unwrap();
        eprintln!("{settled:?}");
        assert_eq!(settled.moved, 8, "{settled:?}");
        assert!(settled.signalled >= 8, "{settled:?}");
        for s in &spinners {
            assert!(s.runs_b(), "thread {} runs the copy", s.tid);
        }
    });
}

#[test]
fn a_call_after_a_timed_out_one_works() {
    support::fresh("a_call_after_a_timed_out_one_works", || {
        let spinners: Vec<Spinner> = (0..8).map(|_| Spinner::start(false, false)).collect();
        let (a_to_b, a_region) = moves(addr_a(), addr_b());
        // No time at all: some of the eight cannot have answered when it looks. Those answer
        // late, once the request is gone, or even during the next call: they must not count
        // there. (Should every thread have answered at once, try again.)
        let mut timed_out = None;
        for _ in 0..20 {
            match settle_threads(&a_to_b, &a_region, Duration::ZERO) {
                Err(e) => {
                    timed_out = Some(e);
                    break;
                }
                Ok(s) => eprintln!("no time out: {s:?}"),
            }
        }
        let err = timed_out.expect("a call with no time to wait timed out");
        eprintln!("{err}");
        // Usually "did not answer"; on a loaded machine perhaps "blocks", for a thread caught
        // in the few instructions of `pthread_create` that run with every signal blocked.
        assert!(
            matches!(err, textpoke::Error::SettleFailed { .. }),
            "{err:?}"
        );
        // Threads are now in either copy. Bring everyone back to A.
        let (b_to_a, b_region) = moves(addr_b(), addr_a());
        let settled = settle_threads(&b_to_a, &b_region, Duration::from_secs(1)).unwrap();
        eprintln!("{settled:?}");
        assert!(settled.signalled >= 8, "{settled:?}");
        assert!(settled.moved <= 8, "{settled:?}");
        for s in &spinners {
            assert!(s.runs_a(), "thread {} is back in A", s.tid);
        }
        // And all of them to B again.
        let settled = settle_threads(&a_to_b, &a_region, Duration::from_secs(1)).unwrap();
        assert_eq!(settled.moved, 8, "{settled:?}");
        for s in &spinners {
            assert!(s.runs_b(), "thread {} runs B", s.tid);
        }
    });
}

#[test]
fn a_thread_inside_a_region_but_not_at_a_move_is_reported() {
    support::fresh(
        "a_thread_inside_a_region_but_not_at_a_move_is_reported",
        || {
            let spinner = Spinner::start(false, false);
            let (_, len, _) = boundaries();
            // The region starts a byte early, so every instruction of the loop is strictly inside
            // it, and no move says where any of them goes.
            let regions = [(addr_a() - 1, addr_a() + len)];
            let err = settle_threads(&[], &regions, Duration::from_secs(1)).unwrap_err();
            let msg = err.to_string();
            eprintln!("{msg}");
            assert!(
                msg.contains(&format!("thread {} (settle-spin)", spinner.tid)),
                "{msg}"
            );
            assert!(msg.contains("not at an instruction boundary"), "{msg}");
            assert!(spinner.runs_a(), "the thread was not moved");
        },
    );
}

#[test]
fn a_foreign_handler_on_the_signal_is_refused() {
    support::fresh("a_foreign_handler_on_the_signal_is_refused", || {
        extern "C" fn theirs(_: libc::c_int) {}
        // SAFETY: installs a valid plain handler on a signal nothing else in this process uses.
        unsafe { libc::signal(settle_signal(), theirs as *const () as libc::sighandler_t) };
        let err = settle_threads(&[], &[], Duration::from_millis(100)).unwrap_err();
        assert!(
            matches!(err, textpoke::Error::SettleFailed { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("not textpoke's"), "{err}");
    });
}

/// The handler lives on in the process: a signal from elsewhere, or one carrying a stale
/// sequence number, is ignored rather than answered or acted on.
#[test]
fn stray_settle_signals_are_ignored() {
    support::fresh("stray_settle_signals_are_ignored", || {
        let spinner = Spinner::start(false, false);
        let (moves, regions) = moves(addr_a(), addr_b());
        // Installs the handler; nothing to move yet (regions elsewhere).
        settle_threads(&[], &[], Duration::from_secs(1)).unwrap();
        // A queued signal with an old sequence number, and a plain tgkill.
        let value = libc::sigval {
            // The sequence number of this process's first call, the one just made.
            sival_ptr: std::ptr::without_provenance_mut(1),
        };
        // SAFETY: sends a signal whose handler is installed to a thread of this process.
        unsafe {
            assert_eq!(
                libc::pthread_sigqueue(
                    spinner.thread.as_ref().unwrap().as_pthread_t(),
                    settle_signal(),
                    value
                ),
                0
            );
            assert_eq!(
                libc::syscall(
                    libc::SYS_tgkill,
                    libc::getpid() as libc::c_long,
                    spinner.tid as libc::c_long,
                    settle_signal() as libc::c_long
                ),
                0
            );
        }
        assert!(spinner.runs_a(), "still in A");
        let settled = settle_threads(&moves, &regions, Duration::from_secs(1)).unwrap();
        assert_eq!(settled.moved, 1, "{settled:?}");
        assert!(spinner.runs_b());
    });
}

/// A child forked after a call (and while a thread of the parent still spins) settles its own
/// threads: nothing of the parent's calls is left to wait for.
#[test]
fn a_forked_child_settles_its_own_threads() {
    support::fresh("a_forked_child_settles_its_own_threads", || {
        let parent_spinner = Spinner::start(false, false);
        let (moves, regions) = moves(addr_a(), addr_b());
        settle_threads(&moves, &regions, Duration::from_secs(1)).unwrap();
        assert!(parent_spinner.runs_b());
        let code = support::in_child(|| {
            let ok = std::panic::catch_unwind(|| {
                let spinner = Spinner::start(false, false);
                let settled = settle_threads(&moves, &regions, Duration::from_secs(1)).unwrap();
                assert_eq!(settled.moved, 1, "{settled:?}");
                assert!(spinner.runs_b(), "the child's thread runs the copy");
                // Leave without joining: `_exit` ends the spinning thread.
                std::mem::forget(spinner);
            });
            i32::from(ok.is_err())
        });
        assert_eq!(code, 0, "the child failed (see its output above)");
    });
}

// Two copies of a function that reads one byte with a raw `syscall` and then counts, in its own
// word, that it came back: [rdi] holds the descriptor, [rdi + 8] and [rdi + 16] count returns
// through copy A and copy B, the byte lands at [rdi + 24]. A thread blocked in that read has its
// return address inside copy A.
core::arch::global_asm!(
    ".pushsection .text.settle_read,\"ax\",@progbits",
    ".balign 16",
    ".globl settle_read_a",
    ".hidden settle_read_a",
    ".type settle_read_a,@function",
    "settle_read_a:",
    "push rbx",
    "2: mov rbx, rdi",
    "3: mov edi, dword ptr [rbx]",
    "4: lea rsi, [rbx + 24]",
    "5: mov edx, 1",
    "6: xor eax, eax",
    "7: syscall",
    "8: lock inc qword ptr [rbx + 8]",
    "9: pop rbx",
    "10: ret",
    "11:",
    ".size settle_read_a, 11b - settle_read_a",
    ".balign 16",
    ".globl settle_read_b",
    ".hidden settle_read_b",
    ".type settle_read_b,@function",
    "settle_read_b:",
    "push rbx",
    "mov rbx, rdi",
    "mov edi, dword ptr [rbx]",
    "lea rsi, [rbx + 24]",
    "mov edx, 1",
    "xor eax, eax",
    "syscall",
    "lock inc qword ptr [rbx + 16]",
    "pop rbx",
    "ret",
    ".size settle_read_b, . - settle_read_b",
    ".popsection",
    ".pushsection .rodata.settle_read,\"a\",@progbits",
    ".balign 8",
    ".globl settle_read_boundaries",
    ".hidden settle_read_boundaries",
    "settle_read_boundaries:",
    ".quad 0, 2b - settle_read_a, 3b - settle_read_a, 4b - settle_read_a, 5b - settle_read_a",
    ".quad 6b - settle_read_a, 7b - settle_read_a, 8b - settle_read_a, 9b - settle_read_a",
    ".quad 10b - settle_read_a, 11b - settle_read_a",
    ".popsection",
);

/// The block `settle_read_a`/`_b` work on.
#[repr(C)]
struct ReadBlock {
    fd: i64,
    in_a: AtomicU64,
    in_b: AtomicU64,
    byte: u64,
}

unsafe extern "C" {
    fn settle_read_a(block: *mut ReadBlock);
    fn settle_read_b(block: *mut ReadBlock);
    static settle_read_boundaries: [u64; 11];
}

/// A thread blocked in a system call whose return address is inside a region is signalled and
/// moved like a running one; its read is restarted in the copy (SA_RESTART), not failed.
#[test]
fn a_thread_blocked_inside_a_region_is_moved() {
    support::fresh("a_thread_blocked_inside_a_region_is_moved", || {
        // SAFETY: a constant table the assembler filled in.
        let table = unsafe { &settle_read_boundaries };
        let (offsets, len) = (&table[..10], table[10] as usize);
        let (a, b) = (
            settle_read_a as *const () as usize,
            settle_read_b as *const () as usize,
        );
        // SAFETY: both copies are `len` bytes of mapped code.
        let (code_a, code_b) = unsafe {
            (
                std::slice::from_raw_parts(a as *const u8, len),
                std::slice::from_raw_parts(b as *const u8, len),
            )
        };
        assert_eq!(
            (0..len).filter(|&i| code_a[i] != code_b[i]).count(),
            1,
            "only the counter's displacement differs"
        );
        let mut fds = [0; 2];
        // SAFETY: a valid out-array of two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let block: &'static mut ReadBlock = Box::leak(Box::new(ReadBlock {
            fd: fds[0].into(),
            in_a: AtomicU64::new(0),
            in_b: AtomicU64::new(0),
            byte: 0,
        }));
        let block_addr = block as *mut ReadBlock as usize;
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() }).unwrap();
            // SAFETY: the block is leaked, so it outlives the call, and holds a pipe's read end.
            unsafe { settle_read_a(block_addr as *mut ReadBlock) };
        });
        let tid = rx.recv().unwrap();
        wait_for(
            || blocked_in(tid) == Some(libc::SYS_read),
            "the thread to block in read",
        );
        let moves: Vec<Move> = offsets
            .iter()
            .map(|&o| Move {
                from: a + o as usize,
                to: b + o as usize,
            })
            .collect();
        let settled = settle_threads(&moves, &[(a, a + len)], Duration::from_secs(1)).unwrap();
        eprintln!("{settled:?}");
        assert!(settled.signalled >= 1, "{settled:?}");
        assert_eq!(settled.moved, 1, "{settled:?}");
        // SAFETY: writes one byte from a local buffer to the pipe's write end.
        assert_eq!(unsafe { libc::write(fds[1], b"z".as_ptr().cast(), 1) }, 1);
        reader.join().unwrap();
        // SAFETY: the reader has finished with the block.
        let block = unsafe { &*(block_addr as *const ReadBlock) };
        assert_eq!(block.in_b.load(Ordering::SeqCst), 1, "returned through B");
        assert_eq!(block.in_a.load(Ordering::SeqCst), 0, "not through A");
        assert_eq!(
            block.byte,
            u64::from(b'z'),
            "the read was completed, not failed"
        );
    });
}
