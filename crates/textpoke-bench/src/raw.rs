//! `raw`: the raw costs that bound a textpoke toggle, measured in one run.
//!
//! A toggle is three core serializations (`membarrier(PRIVATE_EXPEDITED_SYNC_CORE)`), a few
//! `pwrite`s to `/proc/self/mem`, and, for a thread that meets a breakpoint mid-batch, one
//! SIGTRAP round trip. This measures each of them on its own, every repetition timed
//! individually, and reports medians:
//!
//! - `membarrier_idle_us`: SYNC_CORE with no other thread of this benchmark running;
//! - `membarrier_busy_us`: the same while one thread spins in user space on another CPU;
//! - `membarrier_trapping_us`: the same while that thread executes `int3` over and over, with a
//!   SIGTRAP handler that just returns (the trap storm a busy thread meets during a batch);
//! - `pwrite_mem_us` / `pwrite_mem_4k_us`: a 1-byte / 4096-byte `pwrite` to `/proc/self/mem`
//!   over this binary's own code, writing back the bytes that are already there;
//! - `sigtrap_round_trip_us`: one `int3` in the measuring thread, handler included.
//!
//! The measuring thread is pinned to one CPU and the spinning or trapping thread to another
//! (when there is one). The SIGTRAP disposition in place before is restored at the end.
//!
//! The code rewrites read bytes and write the same bytes back, so they change nothing, provided
//! nothing else patches that code between the read and the write: nothing does in the `raw`
//! subcommand, and the test takes the crate's serial lock, as every test that patches does.

use std::arch::asm;
use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rustix::thread::{MembarrierCommand, membarrier, membarrier_query};
use serde::Serialize;

use crate::affinity::{self, CpuMask, Placement, RestoreAffinity};
use crate::{BenchError, Result, stats};

/// Options of the `raw` subcommand.
#[derive(Clone, Debug, clap::Args)]
pub struct RawArgs {
    /// Individually timed repetitions of each operation; every figure is their median.
    #[arg(long, default_value_t = 1001)]
    pub samples: usize,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The raw costs, each the median over `samples` individually timed repetitions.
#[derive(Clone, Debug, Serialize)]
pub struct RawRow {
    /// `membarrier(PRIVATE_EXPEDITED_SYNC_CORE)` with no other thread of ours running, in µs.
    pub membarrier_idle_us: f64,
    /// The same while one thread spins in user space on another CPU, in µs.
    pub membarrier_busy_us: f64,
    /// The same while that thread executes `int3` in a loop (handler returns at once), in µs.
    pub membarrier_trapping_us: f64,
    /// A 1-byte `pwrite` to `/proc/self/mem` rewriting a byte of our own code, in µs.
    pub pwrite_mem_us: f64,
    /// A 4096-byte `pwrite` to `/proc/self/mem` rewriting one page of our own code, in µs.
    pub pwrite_mem_4k_us: f64,
    /// One `int3` with a SIGTRAP handler that returns at once, timed around the instruction
    /// in the thread that executes it, in µs.
    pub sigtrap_round_trip_us: f64,
    /// Timed repetitions behind each median.
    pub samples: usize,
    /// Machine facts for reading the numbers: CPUs, pinning, kernel, build.
    pub note: String,
}

/// Length of the page-sized rewrite.
const PAGE_SPAN: usize = 4096;

/// Measures every raw cost once.
pub fn run(args: &RawArgs) -> Result<RawRow> {
    let samples = args.samples;
    if samples == 0 {
        return Err(BenchError::new("--samples must be at least 1"));
    }
    let warmup = (samples / 10).clamp(1, 100);
    register_sync_core()?;

    let saved = affinity::current()?;
    let _restore = RestoreAffinity(saved);
    let cpus = saved.cpus();
    let placement = Placement::over(&cpus)?;
    CpuMask::only(placement.main).apply()?;
    let other_cpu = placement.busy_cpu(0);

    // Alone: membarrier, then the code rewrites, then int3.
    let membarrier_idle_us = time_each(samples, warmup, sync_core)?;
    let mem = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/proc/self/mem")
        .map_err(|e| BenchError::new(format!("opening /proc/self/mem read-write: {e}")))?;
    let target = black_box(pwrite_target as fn(u64) -> u64) as usize;
    let pwrite_mem_us = time_rewrites(&mem, target, 1, samples, warmup)?;
    let page = target & !(PAGE_SPAN - 1);
    let pwrite_mem_4k_us = time_rewrites(&mem, page, PAGE_SPAN, samples, warmup)?;

    let handler = TrapHandler::install()?;
    let sigtrap_round_trip_us = time_each(samples, warmup, || {
        handler.trap();
        Ok(())
    })?;

    // Beside another thread: spinning, then trapping.
    let (membarrier_busy_us, spins, _) =
        with_other_thread(other_cpu, spin, || time_each(samples, warmup, sync_core))?;
    let (membarrier_trapping_us, traps, trapping_window_us) = with_other_thread(
        other_cpu,
        |stop| {
            sigtrap_unblocked()?;
            let mut traps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                handler.trap();
                traps += 1;
            }
            Ok(traps)
        },
        || time_each(samples, warmup, sync_core),
    )?;
    // The trapping thread has been joined: no `int3` of ours can meet the old disposition.
    drop(handler);

    Ok(RawRow {
        membarrier_idle_us,
        membarrier_busy_us,
        membarrier_trapping_us,
        pwrite_mem_us,
        pwrite_mem_4k_us,
        sigtrap_round_trip_us,
        samples,
        note: note(
            &cpus,
            &placement,
            other_cpu,
            (samples, warmup),
            spins,
            (traps, trapping_window_us),
        ),
    })
}

fn note(
    cpus: &[usize],
    placement: &Placement,
    other_cpu: usize,
    (samples, warmup): (usize, usize),
    spins: u64,
    (traps, window_us): (u64, f64),
) -> String {
    let uname = rustix::system::uname();
    let mut note = format!(
        "{} CPU(s) allowed {cpus:?}; kernel {} {}; ",
        cpus.len(),
        uname.release().to_string_lossy(),
        uname.machine().to_string_lossy(),
    );
    if other_cpu == placement.main {
        note.push_str(&format!(
            "ONLY ONE CPU: the measuring thread and the spinning/trapping thread are both pinned \
             to CPU {other_cpu}, so membarrier_busy_us and membarrier_trapping_us meet no \
             concurrently running thread; "
        ));
    } else {
        note.push_str(&format!(
            "measuring thread pinned to CPU {}, spinning/trapping thread pinned to CPU \
             {other_cpu}; ",
            placement.main
        ));
    }
    note.push_str(&format!(
        "medians of {samples} individually timed repetitions after {warmup} untimed; the \
         spinning thread ran {spins} loop iterations and the trapping thread took {traps} \
         SIGTRAPs (one per {:.2} µs) while membarrier was timed beside them; pwrites rewrite \
         the bytes already there (the first byte of a never-called function, then its \
         4096-byte page) after warm-up, so the page's copy-on-write copy already exists, as \
         for every toggle after a page's first; the SIGTRAP handler returns at once \
         (SA_SIGINFO|SA_ONSTACK|SA_RESTART, as textpoke's)",
        window_us / traps.max(1) as f64
    ));
    crate::mark_debug_build(&mut note);
    note
}

/// Registers this process for SYNC_CORE membarriers (idempotent, like textpoke's own).
pub fn register_sync_core() -> Result<()> {
    if !membarrier_query().contains_command(MembarrierCommand::PrivateExpeditedSyncCore) {
        return Err(BenchError::new(
            "membarrier does not offer PRIVATE_EXPEDITED_SYNC_CORE on this kernel",
        ));
    }
    membarrier(MembarrierCommand::RegisterPrivateExpeditedSyncCore).map_err(|e| {
        BenchError::new(format!(
            "membarrier(REGISTER_PRIVATE_EXPEDITED_SYNC_CORE): {e}"
        ))
    })
}

/// One core serialization, as textpoke makes per batch (three, or two with fewer phases).
pub fn sync_core() -> Result<()> {
    membarrier(MembarrierCommand::PrivateExpeditedSyncCore)
        .map_err(|e| BenchError::new(format!("membarrier(PRIVATE_EXPEDITED_SYNC_CORE): {e}")))
}

/// Runs `op` `warmup` times untimed, then `samples` times timed one by one; returns the median
/// in microseconds.
fn time_each(samples: usize, warmup: usize, mut op: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..warmup {
        op()?;
    }
    let us = (0..samples)
        .map(|_| stats::time_us(&mut op))
        .collect::<Result<Vec<f64>>>()?;
    Ok(stats::median(&us))
}

/// The code whose first byte (and page) the pwrite measurements rewrite. It is never called;
/// taking its address keeps it in the binary.
#[inline(never)]
fn pwrite_target(x: u64) -> u64 {
    black_box(x).rotate_left(7) ^ 0x5a
}

/// Median time of writing `len` bytes at `addr` back over themselves through `mem`, in µs.
/// Checks afterwards that the bytes are unchanged.
fn time_rewrites(
    mem: &File,
    addr: usize,
    len: usize,
    samples: usize,
    warmup: usize,
) -> Result<f64> {
    let io = |what: &str, e: std::io::Error| {
        BenchError::new(format!(
            "{what} {len} byte(s) of /proc/self/mem at {addr:#x}: {e}"
        ))
    };
    let mut bytes = vec![0u8; len];
    mem.read_exact_at(&mut bytes, addr as u64)
        .map_err(|e| io("reading", e))?;
    let median = time_each(samples, warmup, || {
        let written = mem
            .write_at(&bytes, addr as u64)
            .map_err(|e| io("writing", e))?;
        if written == len {
            Ok(())
        } else {
            Err(BenchError::new(format!(
                "short write to /proc/self/mem at {addr:#x}: {written} of {len} bytes"
            )))
        }
    })?;
    let mut after = vec![0u8; len];
    mem.read_exact_at(&mut after, addr as u64)
        .map_err(|e| io("re-reading", e))?;
    if after != bytes {
        return Err(BenchError::new(format!(
            "code at {addr:#x} changed while it was being rewritten with its own bytes"
        )));
    }
    Ok(median)
}

/// Whether the calling thread lets SIGTRAP through; the kernel kills a process whose thread
/// executes `int3` with SIGTRAP blocked.
fn sigtrap_unblocked() -> Result<()> {
    // SAFETY: an all-zero `sigset_t` is a valid (empty) set.
    let mut mask: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: with a null new set, `pthread_sigmask` changes nothing and only writes the
    // current mask into `mask`, a valid out-parameter.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask) };
    if rc != 0 {
        return Err(BenchError::new(format!(
            "pthread_sigmask: {}",
            std::io::Error::from_raw_os_error(rc)
        )));
    }
    // SAFETY: `mask` was filled in by `pthread_sigmask` above; `sigismember` only reads it.
    match unsafe { libc::sigismember(&mask, libc::SIGTRAP) } {
        0 => Ok(()),
        1 => Err(BenchError::new(
            "SIGTRAP is blocked in this thread; an int3 would kill the process",
        )),
        _ => Err(BenchError::new(format!(
            "sigismember: {}",
            std::io::Error::last_os_error()
        ))),
    }
}

/// Does nothing: returning resumes after the `int3`, since the saved instruction pointer of a
/// breakpoint trap already points past it. Async-signal-safe.
extern "C" fn ignore_trap(_sig: libc::c_int, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
}

/// Our SIGTRAP handler, installed while this lives; the replaced disposition comes back on drop.
/// Whoever drops it must first make sure that no thread can still execute [`TrapHandler::trap`].
struct TrapHandler {
    previous: libc::sigaction,
}

impl TrapHandler {
    /// Installs [`ignore_trap`], after checking that the calling thread does not block SIGTRAP.
    fn install() -> Result<Self> {
        sigtrap_unblocked()?;
        // SAFETY: an all-zero `sigaction` is valid: no handler yet, empty mask, no flags.
        let mut ours: libc::sigaction = unsafe { std::mem::zeroed() };
        ours.sa_sigaction = ignore_trap
            as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
            as libc::sighandler_t;
        ours.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
        // SAFETY: `sa_mask` is a valid sigset to clear.
        unsafe { libc::sigemptyset(&mut ours.sa_mask) };
        // SAFETY: an all-zero `sigaction` is a valid out-parameter.
        let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: `ours` is a fully initialized action whose handler has the SA_SIGINFO
        // signature and is async-signal-safe (it does nothing); `previous` is a valid
        // out-parameter that receives the disposition we replace.
        if unsafe { libc::sigaction(libc::SIGTRAP, &ours, &mut previous) } != 0 {
            return Err(BenchError::new(format!(
                "sigaction(SIGTRAP): {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(TrapHandler { previous })
    }

    /// Executes one `int3`, a slow no-op while the handler is installed. Callable only from
    /// threads that let SIGTRAP through: the installing thread (checked by `install`) and
    /// threads that checked with [`sigtrap_unblocked`].
    #[inline(always)]
    fn trap(&self) {
        // SAFETY: `self` lives, so SIGTRAP is handled by `ignore_trap`, which returns at once;
        // the kernel resumes after the one-byte `int3` with every register as it was (the
        // signal frame goes below the red zone, and sigreturn restores flags and registers).
        // So the instruction acts as a no-op, which is all the default asm contract claims.
        unsafe { asm!("int3") };
    }
}

impl Drop for TrapHandler {
    fn drop(&mut self) {
        // SAFETY: `previous` is the disposition `sigaction` returned when we installed ours, so
        // it is a valid action to put back. Best effort: a failure leaves our harmless handler.
        unsafe { libc::sigaction(libc::SIGTRAP, &self.previous, std::ptr::null_mut()) };
    }
}

/// Spins in user space until `stop`; returns the iterations.
fn spin(stop: &AtomicBool) -> Result<u64> {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n = black_box(n).wrapping_add(1);
    }
    Ok(n)
}

/// Sets the flag when dropped, so that a panic in the body still stops the other thread.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Runs `body` while another thread, pinned to `cpu`, runs `work` until told to stop. Returns
/// what both returned and how long `body` took, in µs; the thread is joined before this
/// returns.
fn with_other_thread<T>(
    cpu: usize,
    work: impl FnOnce(&AtomicBool) -> Result<u64> + Send,
    body: impl FnOnce() -> Result<T>,
) -> Result<(T, u64, f64)> {
    let stop = AtomicBool::new(false);
    let ready = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("raw-other".into())
            .spawn_scoped(scope, || {
                let pinned = CpuMask::only(cpu).apply();
                ready.store(true, Ordering::Release);
                pinned?;
                work(&stop)
            })
            .map_err(|e| BenchError::new(format!("cannot start a thread: {e}")))?;
        let (result, window) = {
            let _stop = StopOnDrop(&stop);
            while !ready.load(Ordering::Acquire) && !handle.is_finished() {
                std::thread::yield_now();
            }
            let start = Instant::now();
            (body(), start.elapsed())
        };
        let other = handle
            .join()
            .map_err(|_| BenchError::new("the spinning/trapping thread panicked"))?;
        Ok((result?, other?, window.as_secs_f64() * 1e6))
    })
}

/// Prints the results as a table on stdout.
pub fn print_table(r: &RawRow) -> Result<()> {
    let rows = [
        ("membarrier SYNC_CORE, idle", r.membarrier_idle_us),
        ("membarrier SYNC_CORE, busy", r.membarrier_busy_us),
        ("membarrier SYNC_CORE, trapping", r.membarrier_trapping_us),
        ("pwrite /proc/self/mem, 1 B", r.pwrite_mem_us),
        ("pwrite /proc/self/mem, 4 KiB", r.pwrite_mem_4k_us),
        ("SIGTRAP round trip", r.sigtrap_round_trip_us),
    ];
    crate::print_rows(("operation", "µs median"), &rows, &r.note)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_raw_run_gives_finite_positive_costs_and_restores_sigtrap() -> Result<()> {
        let _serial = crate::tests::serial();
        let disposition = || {
            // SAFETY: an all-zero `sigaction` is a valid out-parameter.
            let mut now: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: a null new action only queries the disposition into `now`.
            let rc = unsafe { libc::sigaction(libc::SIGTRAP, std::ptr::null(), &mut now) };
            assert_eq!(rc, 0);
            // glibc adds SA_RESTORER (0x0400_0000) to whatever it installs, SIG_DFL included.
            (now.sa_sigaction, now.sa_flags & !0x0400_0000)
        };
        let before = disposition();
        let row = run(&RawArgs {
            samples: 5,
            json: true,
        })?;
        assert_eq!(disposition(), before);
        let v: serde_json::Value = serde_json::from_str(&serde_json::to_string(&row)?)?;
        for k in [
            "membarrier_idle_us",
            "membarrier_busy_us",
            "membarrier_trapping_us",
            "pwrite_mem_us",
            "pwrite_mem_4k_us",
            "sigtrap_round_trip_us",
        ] {
            let x = v[k].as_f64().unwrap_or(-1.0);
            assert!(x > 0.0 && x.is_finite(), "{k} in {v}");
        }
        assert_eq!(v["samples"].as_u64(), Some(5));
        assert!(v["note"].as_str().is_some_and(|n| n.contains("kernel")));
        Ok(())
    }
}
