//! Running under valgrind: telling it that code changed.
//!
//! Valgrind never runs the program's instructions themselves. It translates them, a block at a
//! time, into code of its own, and keeps the translations in a cache. A write to code that it
//! does not see (and a `pwrite` to `/proc/self/mem` is done by the kernel, out of its sight)
//! leaves the old translations running: in every thread, for good. With `--smc-check=all` it
//! would notice, at a large cost, but that is not the default for code in a file mapping.
//! JITs solve this with valgrind's *client requests*, and so does textpoke: after every write
//! of code, [`discard_translations`] tells valgrind to drop every translation of the written
//! range, so the next run of those bytes is translated afresh from memory.
//!
//! A client request is a special sequence of instructions that does nothing on a real CPU
//! (see [`client_request`]) and that valgrind's translator recognises and turns into a call
//! into valgrind. It is to valgrind what a system call is to the kernel: an ABI of the runtime
//! the process runs on, which is why it lives here and not with textpoke's instruction
//! knowledge (nothing in this module encodes or decodes a patch site). The request is written
//! out by hand rather than taken from a crate: the crates that issue client requests either
//! build against valgrind's C headers (`crabgrind`, `valgrind-requests`: a fresh machine has
//! no `valgrind.h`) or no longer build on stable Rust (`valgrind_request`, `vgrs`).
//!
//! Natively the whole cost is one cached flag check per write (see [`running`]).

use std::sync::atomic::{AtomicU8, Ordering};

/// Request codes, from the `Vg_ClientRequest` enum of valgrind's `valgrind.h` (3.19 checked),
/// which it declares a stable ABI ("DO NOT CHANGE THE NUMERIC VALUES OF THESE ENTRIES").
/// `VG_USERREQ__RUNNING_ON_VALGRIND`: returns how many valgrinds the program runs under.
const RUNNING_ON_VALGRIND: usize = 0x1001;
/// `VG_USERREQ__DISCARD_TRANSLATIONS`: arguments (address, length); returns nothing.
const DISCARD_TRANSLATIONS: usize = 0x1002;

/// Issues client request `request` with `args`, returning valgrind's answer, or `default`
/// when not running under valgrind.
///
/// This is `VALGRIND_DO_CLIENT_REQUEST_EXPR` of `valgrind.h` for amd64 Linux: `rax` points to
/// six words (the request code, then five arguments), `rdx` holds the default result, and the
/// "special instruction preamble" `rol rdi, 3; rol rdi, 13; rol rdi, 61; rol rdi, 51` is
/// followed by `xchg rbx, rbx`, which asks for a client request (other `xchg`s after the
/// preamble mean other things to valgrind). The result comes back in `rdx`.
#[inline]
fn client_request(default: usize, request: usize, args: [usize; 5]) -> usize {
    let block: [usize; 6] = [request, args[0], args[1], args[2], args[3], args[4]];
    let result: usize;
    // SAFETY: on a real CPU, the four rotations turn `rdi` by 3 + 13 + 61 + 51 = 128 bits, two
    // whole turns, so it ends as it began; they change only CF and OF, and `asm!` assumes the
    // flags clobbered (no `preserves_flags`). `xchg rbx, rbx` changes nothing. So natively no
    // register but the flags changes, no memory is touched, `rdx` keeps `default`. Under
    // valgrind, the translator recognises the sequence and, instead of executing it, reads the
    // six words at `rax` (a live local array, valid for the whole statement) and puts the
    // request's result in `rdx`; the requests used here write no guest memory and no other
    // guest register. Nothing is pushed (`nostack`). Memory is not declared untouched (no
    // `nomem`/`readonly`), matching the header's `"memory"` clobber, so the compiler keeps the
    // block stored and keeps the request ordered after the writes it follows.
    unsafe {
        core::arch::asm!(
            "rol rdi, 3",
            "rol rdi, 13",
            "rol rdi, 61",
            "rol rdi, 51",
            "xchg rbx, rbx",
            in("rax") block.as_ptr(),
            inlateout("rdx") default => result,
            options(nostack),
        );
    }
    result
}

const UNKNOWN: u8 = 0;
const NATIVE: u8 = 1;
const VALGRIND: u8 = 2;
static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);

/// Whether this process runs under valgrind (`RUNNING_ON_VALGRIND`), asked once and cached: a
/// process cannot start or stop running under valgrind, and a forked child runs where its
/// parent did. Async-signal-safe.
pub fn running() -> bool {
    match STATE.load(Ordering::Relaxed) {
        NATIVE => false,
        VALGRIND => true,
        _ => {
            let yes = client_request(0, RUNNING_ON_VALGRIND, [0; 5]) != 0;
            // Racing first calls compute the same answer.
            STATE.store(if yes { VALGRIND } else { NATIVE }, Ordering::Relaxed);
            yes
        }
    }
}

/// Tells valgrind that `len` bytes at `addr` changed, so that no thread runs a translation made
/// from the bytes that were there before (`VALGRIND_DISCARD_TRANSLATIONS`). Natively: one
/// cached flag check.
///
/// Valgrind serializes the guest: one thread at a time runs translated code, and it hands over
/// only between translated blocks or around system calls. The request is handled by the
/// thread that makes it, while it holds that lock: every other thread is outside any
/// translation, and its next block is looked up afresh, so once this returns the new bytes are
/// what every thread runs next. Valgrind also drops direct jumps chained into the discarded
/// translations and its fast lookup cache; a translation is dropped if any of its code lies in
/// the range, wherever it starts.
pub fn discard_translations(addr: usize, len: usize) {
    if len != 0 && running() {
        client_request(0, DISCARD_TRANSLATIONS, [addr, len, 0, 0, 0]);
    }
}
