//! `detour`: textpoke's [`Detour`] beside `retour`'s `GenericDetour`, each hooking its own copy
//! of one function while other threads call it.
//!
//! The targets are copies of one `global_asm!` function with a known shape (`push rbx;
//! mov rbx, rdi; imul rax, rbx, 31; xor rax, 7; pop rbx; ret`: `call`'s work, `x*31 ^ 7`), so
//! that the 5-byte jump overwrites three instructions and a thread can be caught inside them.
//! Each library hooks copies of its own, so that neither ever sees the other's bytes: one
//! toggled while threads call it, one detoured for the call loops (so that no function is
//! detoured twice in one process). Replacements are Rust `extern "C"`
//! functions: [`same_work`] (`x*31 ^ 7`, for call costs) and [`other_work`] (`x*31 ^ 13`, where
//! every result must tell which function made it).
//!
//! - Crash runs, first: `runs` child processes per library (this program run again, with the
//!   hidden `detour-child` subcommand), each starting two threads that call its target in a
//!   tight loop and check every result, then making `cycles` enable/disable pairs (checking its
//!   own next call after each), then stopping the threads. A child killed by a signal is a
//!   crash, one that outlives the timeout a hang, one that exits non-zero (a wrong result, an
//!   error) a failure.
//! - Enable and disable times: `samples` timed pairs while one busy thread (pinned to another
//!   CPU when there is one) calls the target and checks every result. textpoke's are taken in
//!   this process. retour's are taken in children, because retour cannot survive the busy
//!   thread: a child streams each sample as it is taken, and when one dies the next child goes
//!   on where it stopped, up to [`MAX_TIMING_CHILDREN`]; if the samples are still not all taken,
//!   they are all taken again in one child without the busy thread, and the row says so.
//! - Calls: `call`'s dispatch loops (64-byte aligned, the counter through `black_box`, results
//!   XOR-ed into a checksum) calling [`same_work`] directly, the textpoke target detoured to it
//!   and the retour target detoured to it, interleaved; medians of `reps` repetitions. Each
//!   target's first instruction is read back first: a `jmp` to [`same_work`].

use std::hint::black_box;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use retour::GenericDetour;
use serde::Serialize;
use textpoke::Detour;

use crate::affinity::Placement;
use crate::branch::dispatch_loop;
use crate::call::function_bytes;
use crate::dispatch::{self, Loop, mix};
use crate::functions::{Busy, Pairs, time_pairs, with_busy_thread};
use crate::{BenchError, Result, stats, toggle};

/// Options of the `detour` subcommand.
#[derive(Clone, Debug, clap::Args)]
pub struct DetourArgs {
    /// Timed enable/disable pairs per library, with a busy thread; medians are reported.
    #[arg(long, default_value_t = 101)]
    pub samples: usize,
    /// Enable/disable pairs per crash-run child.
    #[arg(long, default_value_t = 1000)]
    pub cycles: u64,
    /// Crash-run children per library.
    #[arg(long, default_value_t = 8)]
    pub runs: usize,
    /// Calls per repetition of each call loop.
    #[arg(long, default_value_t = 10_000_000)]
    pub iters: u64,
    /// Repetitions of each call loop; the median is reported.
    #[arg(long, default_value_t = 21)]
    pub reps: usize,
    /// Seconds a child may run before it is killed and counted as a hang.
    #[arg(long, default_value_t = 20)]
    pub timeout_s: u64,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Options of the hidden `detour-child` subcommand: one child process of `detour`.
#[derive(Clone, Debug, clap::Args)]
pub struct ChildArgs {
    /// The library whose detour the child toggles.
    #[arg(long, value_enum)]
    pub lib: Lib,
    /// A crash run: this many enable/disable pairs while two threads call the target.
    #[arg(long, default_value_t = 0)]
    pub cycles: u64,
    /// A timing run instead: this many timed pairs, printed on stdout as they are taken.
    #[arg(long, default_value_t = 0)]
    pub samples: usize,
    /// In a timing run, no busy thread.
    #[arg(long)]
    pub idle: bool,
}

/// A detour library.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lib {
    /// `textpoke::Detour`.
    Textpoke,
    /// `retour::GenericDetour`.
    Retour,
}

/// The results of one run.
#[derive(Clone, Debug, Serialize)]
pub struct DetourRow {
    /// Median wall time of one `Detour::enable` while a busy thread calls the target, in µs.
    pub textpoke_enable_us: f64,
    /// 90th percentile of those times, in µs.
    pub textpoke_enable_us_p90: f64,
    /// Median wall time of one `Detour::disable`, likewise, in µs.
    pub textpoke_disable_us: f64,
    /// Core serializations per enable (median, from `PatchStats`).
    pub textpoke_enable_syncs: usize,
    /// Calls the busy thread made while textpoke's pairs were timed.
    pub textpoke_busy_calls: u64,
    /// Of those, results that were neither the original's nor the replacement's (always 0: any
    /// other count is an error).
    pub textpoke_violations: u64,
    /// Median wall time of one `GenericDetour::enable`, in µs: with a busy thread when
    /// `retour_timed_with_busy_thread`, else without one.
    pub retour_enable_us: f64,
    /// Median wall time of one `GenericDetour::disable`, likewise, in µs.
    pub retour_disable_us: f64,
    /// Whether retour's samples were all taken with a busy thread (in children that may have
    /// died between samples), rather than without one after too many children died.
    pub retour_timed_with_busy_thread: bool,
    /// Children that took retour's samples.
    pub retour_timing_children: usize,
    /// How each timing child that died ended (a signal's name, or `hang`).
    pub retour_timing_deaths: Vec<String>,
    /// Calls the busy thread made in timing children that finished.
    pub retour_busy_calls: u64,
    /// Of those, results that were neither the original's nor the replacement's.
    pub retour_violations: u64,
    /// Timed pairs per library.
    pub samples: usize,
    /// A direct call of the replacement, ns per call.
    pub direct_ns: f64,
    /// A call of the textpoke target while detoured to that replacement, ns per call.
    pub detoured_call_ns: f64,
    /// A call of the retour target while detoured to that replacement, ns per call.
    pub retour_detoured_call_ns: f64,
    /// `detoured_call_ns / direct_ns` (the project's target: at most 1.3).
    pub detoured_vs_direct: f64,
    /// `retour_detoured_call_ns / direct_ns`.
    pub retour_detoured_vs_direct: f64,
    /// Enable/disable pairs per crash-run child.
    pub cycles: u64,
    /// Crash-run children per library.
    pub runs: usize,
    /// textpoke crash-run children killed by a signal.
    pub textpoke_crashes: usize,
    /// retour crash-run children killed by a signal.
    pub retour_crashes: usize,
    /// The signals that killed textpoke children, each once.
    pub textpoke_signals: Vec<String>,
    /// The signals that killed retour children, each once.
    pub retour_signals: Vec<String>,
    /// textpoke children killed after the timeout.
    pub textpoke_hangs: usize,
    /// retour children killed after the timeout.
    pub retour_hangs: usize,
    /// textpoke children that exited non-zero (a wrong result or an error).
    pub textpoke_failures: usize,
    /// retour children that exited non-zero.
    pub retour_failures: usize,
    /// Threads textpoke moved out of the overwritten bytes, over its crash runs that finished:
    /// how often the hazard retour dies of was met.
    pub textpoke_threads_moved: usize,
    /// Every textpoke crash run that did not exit 0: how it ended, after how long, and what it
    /// wrote on stderr.
    pub textpoke_run_failures: Vec<String>,
    /// The same for retour.
    pub retour_run_failures: Vec<String>,
    /// Calls per repetition of each call loop.
    pub iters: u64,
    /// Repetitions of each call loop.
    pub reps: usize,
    /// How it was measured.
    pub note: String,
}

/// Defines one copy of the target: `x*31 ^ 7` through `rbx`, so that its first three
/// instructions (1, 3 and 4 bytes) lie under the 5-byte jump.
macro_rules! detour_target {
    ($name:literal) => {
        core::arch::global_asm!(
            ".pushsection .text.tpbench_detour,\"ax\",@progbits",
            ".p2align 4",
            concat!(".globl ", $name),
            concat!(".type ", $name, ",@function"),
            concat!($name, ":"),
            ".cfi_startproc",
            "push rbx",
            ".cfi_adjust_cfa_offset 8",
            ".cfi_offset rbx, -16",
            "mov rbx, rdi",
            "imul rax, rbx, 31",
            "xor rax, 7",
            "pop rbx",
            ".cfi_adjust_cfa_offset -8",
            ".cfi_restore rbx",
            "ret",
            ".cfi_endproc",
            concat!(".size ", $name, ", .-", $name),
            ".popsection",
        );
    };
}

detour_target!("tpbench_detour_textpoke");
detour_target!("tpbench_detour_retour");
detour_target!("tpbench_detour_textpoke_call");
detour_target!("tpbench_detour_retour_call");

// SAFETY: both are defined by `detour_target!` above with this signature: they follow the C ABI,
// read only `rdi`, write `rax` and restore `rbx`, so a call has no precondition.
unsafe extern "C" {
    /// The copy textpoke toggles while threads call it.
    safe fn tpbench_detour_textpoke(x: u64) -> u64;
    /// The copy retour toggles while threads call it.
    safe fn tpbench_detour_retour(x: u64) -> u64;
    /// The copy textpoke detours for the call loops.
    safe fn tpbench_detour_textpoke_call(x: u64) -> u64;
    /// The copy retour detours for the call loops.
    safe fn tpbench_detour_retour_call(x: u64) -> u64;
}

/// The type of the targets and replacements.
type Unary = extern "C" fn(u64) -> u64;

/// The replacement the calls are timed through: the targets' own work, so that every loop's
/// checksum holds.
#[inline(never)]
extern "C" fn same_work(x: u64) -> u64 {
    mix(x, 7)
}

/// The replacement toggled while threads call the targets: another constant, so that every
/// result tells which function made it.
#[inline(never)]
extern "C" fn other_work(x: u64) -> u64 {
    mix(x, 13)
}

impl Lib {
    fn name(self) -> &'static str {
        match self {
            Lib::Textpoke => "textpoke",
            Lib::Retour => "retour",
        }
    }

    /// This library's own copy of the target, toggled while threads call it.
    fn target(self) -> Unary {
        match self {
            Lib::Textpoke => tpbench_detour_textpoke,
            Lib::Retour => tpbench_detour_retour,
        }
    }

    /// This library's copy detoured for the call loops: one of its own, so that no function is
    /// detoured twice in one process, whatever a library allows after a detour is dropped.
    fn call_target(self) -> Unary {
        match self {
            Lib::Textpoke => tpbench_detour_textpoke_call,
            Lib::Retour => tpbench_detour_retour_call,
        }
    }
}

/// A textpoke detour of `target`, one of textpoke's copies, to `replacement`.
fn textpoke_detour(target: Unary, replacement: Unary) -> Result<Detour<Unary>> {
    // SAFETY: the replacements are C-ABI functions of the target's type whose one effect is
    // their result, which only this benchmark reads.
    Ok(unsafe { Detour::new(target, replacement) }?)
}

fn retour_error(e: retour::Error) -> BenchError {
    BenchError::new(format!("retour: {e}"))
}

/// One library's detour of its copy of the target.
enum Hook {
    Textpoke(Detour<Unary>),
    Retour(GenericDetour<Unary>),
}

impl Hook {
    /// `lib`'s detour of `target`, one of its copies, to `replacement`.
    fn new(lib: Lib, target: Unary, replacement: Unary) -> Result<Self> {
        match lib {
            Lib::Textpoke => textpoke_detour(target, replacement).map(Hook::Textpoke),
            Lib::Retour => {
                // SAFETY: as for textpoke's. retour also needs no other thread to run the target
                // while it writes: the busy threads break that on purpose, only in children
                // whose death is the measurement.
                let d = unsafe { GenericDetour::<Unary>::new(target, replacement) };
                d.map(Hook::Retour).map_err(retour_error)
            }
        }
    }

    fn set(&self, on: bool) -> Result<()> {
        match self {
            Hook::Textpoke(d) => {
                if on {
                    d.enable()?;
                } else {
                    d.disable()?;
                }
                Ok(())
            }
            Hook::Retour(d) => {
                // SAFETY: see `new`.
                let r = unsafe { if on { d.enable() } else { d.disable() } };
                r.map_err(retour_error)
            }
        }
    }
}

/// Calls per pass of a busy thread, between its checks of the stop flag.
const CALLS_PER_PASS: u64 = 64;

/// Pass `pass` of a busy thread: [`CALLS_PER_PASS`] calls of `target`; how many results were
/// neither the original's nor [`other_work`]'s.
fn busy_pass(target: Unary, pass: u64) -> u64 {
    let first = pass.wrapping_mul(CALLS_PER_PASS);
    (first..first.wrapping_add(CALLS_PER_PASS))
        .map(|x| {
            let got = target(black_box(x));
            u64::from(got != mix(x, 7) && got != mix(x, 13))
        })
        .sum()
}

/// Fails unless the patching thread's own next call of `lib`'s target reaches the function the
/// last batch selected.
fn check_own_call(lib: Lib, on: bool, x: u64) -> Result<()> {
    let (got, want) = (lib.target()(black_box(x)), mix(x, if on { 13 } else { 7 }));
    (got == want).then_some(()).ok_or_else(|| {
        BenchError::new(format!(
            "with {}'s detour {}, the target returned {got:#x} for {x}, expected {want:#x}",
            lib.name(),
            if on { "enabled" } else { "disabled" }
        ))
    })
}

/// Busy threads of a crash run.
const CRASH_THREADS: usize = 2;

/// The `detour-child` subcommand: one crash run or one timing run (see the module docs). Its
/// findings go to stdout, one `word numbers…` line each.
pub fn child(args: &ChildArgs) -> Result<()> {
    let (_restore, placement) = toggle::place(false)?;
    let placement =
        placement.ok_or_else(|| BenchError::new("no thread placement (pinning is on)"))?;
    if args.samples > 0 {
        time_child(args, &placement)
    } else {
        crash_child(args.lib, args.cycles, &placement)
    }
}

fn crash_child(lib: Lib, cycles: u64, placement: &Placement) -> Result<()> {
    let target = lib.target();
    let hook = Hook::new(lib, target, other_work)?;
    let stop = AtomicBool::new(false);
    let ready = AtomicUsize::new(0);
    let work = |_: usize| {
        let mut wrong = busy_pass(target, 0);
        ready.fetch_add(1, Ordering::Release);
        let mut pass = 1;
        while !stop.load(Ordering::Relaxed) {
            wrong += busy_pass(target, pass);
            pass += 1;
        }
        wrong
    };
    // A thread that could not be pinned must not leave the cycles waiting.
    let unpinned = |_: usize| {
        ready.fetch_add(1, Ordering::Release);
    };
    let moved_before = textpoke::__private::threads_moved();
    let ((), wrong) = toggle::with_threads(
        CRASH_THREADS,
        Some(placement),
        &stop,
        &work,
        &unpinned,
        || {
            while ready.load(Ordering::Acquire) < CRASH_THREADS {
                std::thread::yield_now();
            }
            for i in 0..cycles {
                hook.set(true)?;
                check_own_call(lib, true, i)?;
                hook.set(false)?;
                check_own_call(lib, false, i)?;
            }
            Ok(())
        },
    )?;
    let moved = textpoke::__private::threads_moved() - moved_before;
    crate::print_line(&format!("moved {moved}"))?;
    let wrong: u64 = wrong.iter().sum();
    if wrong != 0 {
        return Err(BenchError::new(format!(
            "{wrong} results of the threads calling {}'s target were neither the original's nor \
             the replacement's",
            lib.name()
        )));
    }
    Ok(())
}

fn time_child(args: &ChildArgs, placement: &Placement) -> Result<()> {
    let lib = args.lib;
    let hook = Hook::new(lib, lib.target(), other_work)?;
    // Untimed warm-up: the first write faults in the written page's copy.
    hook.set(true)?;
    hook.set(false)?;
    let body = || {
        for i in 0..args.samples as u64 {
            let on = stats::time_us(|| hook.set(true))?;
            check_own_call(lib, true, i)?;
            let off = stats::time_us(|| hook.set(false))?;
            check_own_call(lib, false, i)?;
            // At once, so that the parent keeps every sample taken before a crash.
            crate::print_line(&format!("sample {on} {off}"))?;
        }
        Ok(())
    };
    let busy = if args.idle {
        body()?;
        Busy {
            passes: 0,
            violations: 0,
        }
    } else {
        let pass = |p: u64| busy_pass(lib.target(), p);
        with_busy_thread(placement, &pass, body)?.1
    };
    crate::print_line(&format!(
        "busy {} {}",
        busy.passes * CALLS_PER_PASS,
        busy.violations
    ))
}

/// How a child process ended.
#[derive(Clone, Copy, Debug, PartialEq)]
enum End {
    Exited(i32),
    Signaled(i32),
    TimedOut,
}

/// A finished child process.
struct ChildRun {
    end: End,
    elapsed: Duration,
    stdout: String,
    stderr: String,
}

impl ChildRun {
    /// The numbers of every stdout line that starts with `word`.
    fn lines(&self, word: &str) -> Vec<Vec<f64>> {
        self.stdout
            .lines()
            .filter_map(|l| l.strip_prefix(word)?.strip_prefix(' '))
            .map(|rest| rest.split(' ').filter_map(|n| n.parse().ok()).collect())
            .collect()
    }

    /// How it ended, for messages.
    fn describe(&self) -> String {
        let how = match self.end {
            End::Exited(code) => format!("exited with status {code}"),
            End::Signaled(sig) => format!("killed by {}", signal_name(sig)),
            End::TimedOut => "hung: killed after the timeout".to_string(),
        };
        let stderr = self.stderr.trim();
        let stderr = match stderr.char_indices().rev().nth(400) {
            // The end of a long message says the most.
            Some((at, _)) => &stderr[at..],
            None => stderr,
        };
        format!(
            "{how} after {} ms{}",
            self.elapsed.as_millis(),
            if stderr.is_empty() {
                String::new()
            } else {
                format!("; stderr: {stderr}")
            }
        )
    }
}

fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGILL => "SIGILL",
        libc::SIGBUS => "SIGBUS",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGFPE => "SIGFPE",
        libc::SIGABRT => "SIGABRT",
        libc::SIGSYS => "SIGSYS",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}

/// Reads a child's pipe to its end on a thread of its own, so that a child filling one pipe
/// while the parent waits for it can never block.
fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut p) = pipe {
            // A read error only shortens what is kept of the child's output.
            let _ = p.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Runs `cmd` to its end, killing it after `timeout`.
fn run_child(mut cmd: Command, timeout: Duration) -> Result<ChildRun> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BenchError::new(format!("cannot start a child process: {e}")))?;
    let (out, err) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let wait_error = |e: std::io::Error| BenchError::new(format!("waiting for a child: {e}"));
    let end = loop {
        if let Some(status) = child.try_wait().map_err(wait_error)? {
            break match (status.code(), status.signal()) {
                (Some(code), _) => End::Exited(code),
                (None, Some(sig)) => End::Signaled(sig),
                (None, None) => End::Exited(-1),
            };
        }
        if start.elapsed() >= timeout {
            // It may have exited meanwhile; `wait` reaps it either way.
            let _ = child.kill();
            child.wait().map_err(wait_error)?;
            break End::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let elapsed = start.elapsed();
    let joined = |h: JoinHandle<String>| {
        h.join()
            .map_err(|_| BenchError::new("a thread reading a child's output panicked"))
    };
    Ok(ChildRun {
        end,
        elapsed,
        stdout: joined(out)?,
        stderr: joined(err)?,
    })
}

/// Makes the command that runs `detour-child` with these arguments.
type Launch<'a> = dyn Fn(&[String]) -> Command + 'a;

/// The crash runs of one library.
#[derive(Default)]
struct CrashRuns {
    crashes: usize,
    hangs: usize,
    failures: usize,
    signals: Vec<String>,
    run_failures: Vec<String>,
    threads_moved: usize,
}

fn crash_runs(lib: Lib, args: &DetourArgs, launch: &Launch<'_>) -> Result<CrashRuns> {
    let mut r = CrashRuns::default();
    let child_args = [
        "--lib".to_string(),
        lib.name().to_string(),
        "--cycles".to_string(),
        args.cycles.to_string(),
    ];
    for run in 1..=args.runs {
        let child = run_child(launch(&child_args), Duration::from_secs(args.timeout_s))?;
        match child.end {
            End::Exited(0) => {
                r.threads_moved += child
                    .lines("moved")
                    .iter()
                    .filter_map(|n| n.first())
                    .map(|&n| n as usize)
                    .sum::<usize>();
                continue;
            }
            End::Exited(_) => r.failures += 1,
            End::Signaled(sig) => {
                r.crashes += 1;
                r.signals.push(signal_name(sig));
            }
            End::TimedOut => r.hangs += 1,
        }
        r.run_failures
            .push(format!("run {run} of {}: {}", args.runs, child.describe()));
    }
    r.signals.sort();
    r.signals.dedup();
    Ok(r)
}

/// Most children that may die while taking retour's samples with a busy thread before they are
/// taken without one.
const MAX_TIMING_CHILDREN: usize = 8;

/// Timed pairs taken in children.
struct ChildTiming {
    on_us: Vec<f64>,
    off_us: Vec<f64>,
    busy: bool,
    children: usize,
    deaths: Vec<String>,
    busy_calls: u64,
    violations: u64,
}

/// Takes `samples` timed pairs of `lib` in children (see the module docs).
fn time_in_children(lib: Lib, args: &DetourArgs, launch: &Launch<'_>) -> Result<ChildTiming> {
    let mut t = ChildTiming {
        on_us: Vec::with_capacity(args.samples),
        off_us: Vec::with_capacity(args.samples),
        busy: true,
        children: 0,
        deaths: Vec::new(),
        busy_calls: 0,
        violations: 0,
    };
    let timeout = Duration::from_secs(args.timeout_s);
    let take = |t: &mut ChildTiming, idle: bool| -> Result<()> {
        let left = args.samples - t.on_us.len();
        let mut child_args = vec![
            "--lib".to_string(),
            lib.name().to_string(),
            "--samples".to_string(),
            left.to_string(),
        ];
        if idle {
            child_args.push("--idle".to_string());
        }
        let child = run_child(launch(&child_args), timeout)?;
        t.children += 1;
        for s in child.lines("sample").iter().take(left) {
            if let [on, off] = s[..] {
                t.on_us.push(on);
                t.off_us.push(off);
            }
        }
        match child.end {
            End::Exited(0) => {
                if let Some(&[calls, wrong]) = child.lines("busy").first().map(Vec::as_slice) {
                    t.busy_calls += calls as u64;
                    t.violations += wrong as u64;
                }
                Ok(())
            }
            End::Signaled(sig) if !idle => {
                t.deaths.push(signal_name(sig));
                Ok(())
            }
            End::TimedOut if !idle => {
                t.deaths.push("hang".to_string());
                Ok(())
            }
            _ => Err(BenchError::new(format!(
                "a child timing {} {}: {}",
                lib.name(),
                if idle {
                    "without a busy thread"
                } else {
                    "with a busy thread"
                },
                child.describe()
            ))),
        }
    };
    while t.on_us.len() < args.samples && t.children < MAX_TIMING_CHILDREN {
        take(&mut t, false)?;
    }
    if t.on_us.len() < args.samples {
        t.on_us.clear();
        t.off_us.clear();
        t.busy = false;
        take(&mut t, true)?;
        if t.on_us.len() < args.samples {
            return Err(BenchError::new(format!(
                "the child timing {} without a busy thread gave {} samples of {}",
                lib.name(),
                t.on_us.len(),
                args.samples
            )));
        }
    }
    Ok(t)
}

/// Times textpoke's enable and disable in this process, with a busy thread.
fn time_textpoke(samples: usize, placement: &Placement) -> Result<(Pairs, Busy)> {
    let d = textpoke_detour(Lib::Textpoke.target(), other_work)?;
    let original = d.original();
    if original(3) != mix(3, 7) {
        return Err(BenchError::new(format!(
            "textpoke's trampoline returned {:#x} for 3, expected {:#x}",
            original(3),
            mix(3, 7)
        )));
    }
    // Untimed warm-up: the first batch faults in the written page's copy.
    d.enable()?;
    d.disable()?;
    let pass = |p: u64| busy_pass(Lib::Textpoke.target(), p);
    let check = |on: bool, i: u64| check_own_call(Lib::Textpoke, on, i);
    with_busy_thread(placement, &pass, || {
        time_pairs(samples, || d.enable(), || d.disable(), check)
    })
}

dispatch_loop!(direct_loop, i => same_work(black_box(i)));
dispatch_loop!(textpoke_loop, i => tpbench_detour_textpoke_call(black_box(i)));
dispatch_loop!(retour_loop, i => tpbench_detour_retour_call(black_box(i)));

/// The call loops, in the order their results are reported.
const LOOPS: [(&str, Loop); 3] = [
    ("direct", direct_loop),
    ("textpoke detour", textpoke_loop),
    ("retour detour", retour_loop),
];

/// Fails unless `lib`'s call target starts with a `jmp rel32` to [`same_work`]: the loops' checksum
/// cannot tell a detoured call from an original one, as both do the same work.
fn check_jumps_to_same_work(lib: Lib) -> Result<()> {
    let addr = lib.call_target() as usize;
    let code = function_bytes(addr, 5)?;
    let dest = match code[..] {
        [0xe9, a, b, c, d] => Some(
            addr.wrapping_add(5)
                .wrapping_add_signed(i32::from_le_bytes([a, b, c, d]) as isize),
        ),
        _ => None,
    };
    if dest == Some(same_work as *const () as usize) {
        return Ok(());
    }
    Err(BenchError::new(format!(
        "{}'s target at {addr:#x} starts with {code:02x?}, not a jmp to the replacement at {:#x}",
        lib.name(),
        same_work as *const () as usize
    )))
}

/// ns per call of [`LOOPS`], both targets detoured to [`same_work`].
fn measure_calls(iters: u64, reps: usize) -> Result<[f64; 3]> {
    let hooks = [
        Hook::new(Lib::Textpoke, Lib::Textpoke.call_target(), same_work)?,
        Hook::new(Lib::Retour, Lib::Retour.call_target(), same_work)?,
    ];
    for (hook, lib) in hooks.iter().zip([Lib::Textpoke, Lib::Retour]) {
        hook.set(true)?;
        check_jumps_to_same_work(lib)?;
    }
    let ns = dispatch::measure(&LOOPS, iters, reps)?;
    for (hook, lib) in hooks.iter().zip([Lib::Textpoke, Lib::Retour]) {
        hook.set(false)?;
        if lib.call_target()(5) != mix(5, 7) {
            return Err(BenchError::new(format!(
                "{}'s target is wrong after its detour was disabled",
                lib.name()
            )));
        }
    }
    Ok(ns)
}

/// Runs the benchmark, its children being this program run again with `detour-child`.
pub fn run(args: &DetourArgs) -> Result<DetourRow> {
    let exe = std::env::current_exe()
        .map_err(|e| BenchError::new(format!("cannot find this program's file: {e}")))?;
    measure(args, &|child_args| {
        let mut cmd = Command::new(&exe);
        cmd.arg("detour-child").args(child_args);
        cmd
    })
}

/// Measures everything, in one run (see the module docs); `launch` makes a child's command.
fn measure(args: &DetourArgs, launch: &Launch<'_>) -> Result<DetourRow> {
    if args.samples == 0 || args.iters == 0 || args.reps == 0 || args.runs == 0 {
        return Err(BenchError::new(
            "--samples, --iters, --reps and --runs must be at least 1",
        ));
    }
    let textpoke_runs = crash_runs(Lib::Textpoke, args, launch)?;
    let retour_runs = crash_runs(Lib::Retour, args, launch)?;

    let (_restore, placement) = toggle::place(false)?;
    let placement =
        placement.ok_or_else(|| BenchError::new("no thread placement (pinning is on)"))?;
    let (pairs, busy) = time_textpoke(args.samples, &placement)?;
    if busy.violations != 0 {
        return Err(BenchError::new(format!(
            "{} results of the thread calling textpoke's target came from neither function",
            busy.violations
        )));
    }
    let retour = time_in_children(Lib::Retour, args, launch)?;
    let [direct_ns, detoured_ns, retour_ns] = measure_calls(args.iters, args.reps)?;

    let note = note(args, &placement, &retour);
    Ok(DetourRow {
        textpoke_enable_us: stats::median(&pairs.on_us),
        textpoke_enable_us_p90: stats::percentile(&pairs.on_us, 0.9),
        textpoke_disable_us: stats::median(&pairs.off_us),
        textpoke_enable_syncs: stats::median_usize(pairs.on_stats.iter().map(|s| s.syncs)),
        textpoke_busy_calls: busy.passes * CALLS_PER_PASS,
        textpoke_violations: busy.violations,
        retour_enable_us: stats::median(&retour.on_us),
        retour_disable_us: stats::median(&retour.off_us),
        retour_timed_with_busy_thread: retour.busy,
        retour_timing_children: retour.children,
        retour_timing_deaths: retour.deaths,
        retour_busy_calls: retour.busy_calls,
        retour_violations: retour.violations,
        samples: args.samples,
        direct_ns,
        detoured_call_ns: detoured_ns,
        retour_detoured_call_ns: retour_ns,
        detoured_vs_direct: detoured_ns / direct_ns,
        retour_detoured_vs_direct: retour_ns / direct_ns,
        cycles: args.cycles,
        runs: args.runs,
        textpoke_crashes: textpoke_runs.crashes,
        retour_crashes: retour_runs.crashes,
        textpoke_signals: textpoke_runs.signals,
        retour_signals: retour_runs.signals,
        textpoke_hangs: textpoke_runs.hangs,
        retour_hangs: retour_runs.hangs,
        textpoke_failures: textpoke_runs.failures,
        retour_failures: retour_runs.failures,
        textpoke_threads_moved: textpoke_runs.threads_moved,
        textpoke_run_failures: textpoke_runs.run_failures,
        retour_run_failures: retour_runs.run_failures,
        iters: args.iters,
        reps: args.reps,
        note,
    })
}

fn note(args: &DetourArgs, placement: &Placement, retour: &ChildTiming) -> String {
    let retour_timing = if retour.busy {
        format!(
            "retour's pairs likewise but in child processes (this program re-run), each \
             printing every pair as it is taken, a new child going on where a dead one stopped: \
             {} children, {} of them died ({})",
            retour.children,
            retour.deaths.len(),
            if retour.deaths.is_empty() {
                "none".to_string()
            } else {
                retour.deaths.join(", ")
            }
        )
    } else {
        format!(
            "retour's pairs WITHOUT a busy thread, in one child process: {} children timing it \
             with a busy thread died ({}) before all {} pairs were taken",
            retour.deaths.len(),
            retour.deaths.join(", "),
            args.samples
        )
    };
    let mut note = format!(
        "targets: copies of one global_asm! function (push rbx; mov rbx, rdi; imul rax, rbx, \
         31; xor rax, 7; pop rbx; ret), two per library (one toggled, one for the call loops); \
         crash runs: {runs} child \
         processes per library (this program re-run), each with {CRASH_THREADS} threads calling \
         its target in a tight loop and checking every result while the main thread makes \
         {cycles} enable/disable pairs to x*31 ^ 13 and checks its own next call after each, \
         killed after {timeout} s; enable/disable: {samples} timed pairs, in turn, while one \
         busy thread calls the target and checks that every result is x*31 ^ 7 or x*31 ^ 13: \
         textpoke's in this process, {retour_timing}; calls: median of {reps} interleaved \
         repetitions of {iters} calls per loop, each loop 64-byte aligned, calling the \
         replacement (x*31 ^ 7 in Rust, extern \"C\") directly or a target detoured to it, the \
         jmp read back; {}",
        placement.describe(1),
        runs = args.runs,
        cycles = args.cycles,
        timeout = args.timeout_s,
        samples = args.samples,
        reps = args.reps,
        iters = args.iters,
    );
    crate::mark_debug_build(&mut note);
    note
}

/// Prints the results as a table on stdout.
pub fn print_table(r: &DetourRow) -> Result<()> {
    let rows = [
        ("textpoke enable (µs)", r.textpoke_enable_us),
        ("textpoke enable, p90 (µs)", r.textpoke_enable_us_p90),
        ("textpoke disable (µs)", r.textpoke_disable_us),
        ("textpoke enable: syncs", r.textpoke_enable_syncs as f64),
        ("textpoke: busy calls", r.textpoke_busy_calls as f64),
        ("textpoke: violations", r.textpoke_violations as f64),
        ("retour enable (µs)", r.retour_enable_us),
        ("retour disable (µs)", r.retour_disable_us),
        ("retour: timing children", r.retour_timing_children as f64),
        ("direct call (ns)", r.direct_ns),
        ("textpoke detoured call (ns)", r.detoured_call_ns),
        ("retour detoured call (ns)", r.retour_detoured_call_ns),
        ("textpoke detoured / direct", r.detoured_vs_direct),
        ("retour detoured / direct", r.retour_detoured_vs_direct),
        ("textpoke crashes", r.textpoke_crashes as f64),
        ("textpoke hangs", r.textpoke_hangs as f64),
        ("textpoke failures", r.textpoke_failures as f64),
        ("textpoke threads moved", r.textpoke_threads_moved as f64),
        ("retour crashes", r.retour_crashes as f64),
        ("retour hangs", r.retour_hangs as f64),
        ("retour failures", r.retour_failures as f64),
    ];
    crate::print_rows(("what", "value"), &rows, &r.note)?;
    crate::print_line(&format!(
        "crash runs: {} per library, {} cycles each; signals: textpoke {:?}, retour {:?}",
        r.runs, r.cycles, r.textpoke_signals, r.retour_signals
    ))?;
    for f in r.textpoke_run_failures.iter().chain(&r.retour_run_failures) {
        crate::print_line(&format!("run failure: {f}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The environment variable that makes [`detour_child_process`] a child: its value is the
    /// child's arguments, separated by spaces.
    const CHILD_ENV: &str = "TEXTPOKE_BENCH_DETOUR_CHILD";

    #[derive(clap::Parser)]
    struct ChildCli {
        #[command(flatten)]
        args: ChildArgs,
    }

    /// A test binary has no `detour-child` subcommand: its children are this test binary again,
    /// running only [`detour_child_process`].
    fn harness_launch(child_args: &[String]) -> Command {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut cmd = Command::new(exe);
        cmd.args([
            "--exact",
            "detour::tests::detour_child_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(CHILD_ENV, child_args.join(" "));
        cmd
    }

    #[test]
    // Ignored because it is not a test of its own: it is the body of the child process that
    // `tiny_detour_run_gives_a_complete_json_object` starts (this test binary run again, with
    // CHILD_ENV set and `--ignored --exact` selecting only this test), since a test binary has
    // no `detour-child` subcommand. Run alone, without CHILD_ENV, it would have nothing to do
    // and could not fail; its parent test runs it on every `cargo test`.
    #[ignore = "the child process of the detour tests: does nothing unless they start it"]
    fn detour_child_process() {
        use clap::Parser;
        let Ok(line) = std::env::var(CHILD_ENV) else {
            return;
        };
        let cli = ChildCli::parse_from(std::iter::once("detour-child").chain(line.split(' ')));
        let code = match child(&cli.args) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("detour child: error: {e}");
                1
            }
        };
        std::process::exit(code);
    }

    fn run_and_print(args: &DetourArgs) -> Result<(DetourRow, serde_json::Value)> {
        let _serial = crate::tests::serial();
        let row = measure(args, &harness_launch)?;
        let line = serde_json::to_string(&row)?;
        println!("{line}");
        Ok((row, serde_json::from_str(&line)?))
    }

    #[test]
    fn tiny_detour_run_gives_a_complete_json_object() -> Result<()> {
        let (row, v) = run_and_print(&DetourArgs {
            samples: 3,
            cycles: 20,
            runs: 1,
            iters: 1000,
            reps: 3,
            timeout_s: 10,
            json: true,
        })?;
        let num = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_f64)
                .unwrap_or_else(|| panic!("{k} missing or not a number in {v}"))
        };
        for k in [
            "textpoke_enable_us",
            "textpoke_enable_us_p90",
            "textpoke_disable_us",
            "textpoke_enable_syncs",
            "textpoke_busy_calls",
            "retour_enable_us",
            "retour_disable_us",
            "retour_timing_children",
            "samples",
            "direct_ns",
            "detoured_call_ns",
            "retour_detoured_call_ns",
            "detoured_vs_direct",
            "retour_detoured_vs_direct",
            "cycles",
            "runs",
            "iters",
            "reps",
        ] {
            assert!(num(k) > 0.0 && num(k).is_finite(), "{k} in {v}");
        }
        for k in [
            "textpoke_violations",
            "retour_busy_calls",
            "retour_violations",
            "textpoke_crashes",
            "retour_crashes",
            "textpoke_hangs",
            "retour_hangs",
            "textpoke_failures",
            "retour_failures",
            "textpoke_threads_moved",
        ] {
            assert!(num(k) >= 0.0, "{k} in {v}");
        }
        for k in [
            "textpoke_signals",
            "retour_signals",
            "retour_timing_deaths",
            "textpoke_run_failures",
            "retour_run_failures",
        ] {
            assert!(
                v.get(k).is_some_and(serde_json::Value::is_array),
                "{k} in {v}"
            );
        }
        assert!(
            v.get("retour_timed_with_busy_thread")
                .is_some_and(serde_json::Value::is_boolean)
        );
        assert_eq!(
            (
                row.textpoke_crashes,
                row.textpoke_hangs,
                row.textpoke_failures,
                row.textpoke_violations
            ),
            (0, 0, 0, 0),
            "{:?}",
            row.textpoke_run_failures
        );
        assert_eq!(
            row.retour_signals.is_empty(),
            row.retour_crashes == 0,
            "{v}"
        );
        assert_eq!(row.samples, 3);
        assert!(row.note.contains("crash runs"));
        print_table(&row)?;
        // The run leaves both targets as it found them.
        assert_eq!(tpbench_detour_textpoke(3), mix(3, 7));
        assert_eq!(tpbench_detour_retour(3), mix(3, 7));
        assert_eq!(tpbench_detour_textpoke_call(3), mix(3, 7));
        assert_eq!(tpbench_detour_retour_call(3), mix(3, 7));
        Ok(())
    }
}
