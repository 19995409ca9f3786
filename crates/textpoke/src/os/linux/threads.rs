//! Which threads block SIGTRAP.
//!
//! A thread that blocks SIGTRAP and meets a breakpoint mid-batch is killed by the kernel: a
//! trap signal cannot be blocked, so the kernel resets it to its default action. textpoke cannot
//! prevent that; this lets a program find such threads before it patches.

use crate::{Error, Result};

/// A thread of this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadInfo {
    /// Kernel thread id.
    pub tid: i32,
    /// Thread name (`comm`).
    pub name: String,
}

/// textpoke's SIGTRAP handler as seen from outside, so that a thread on its path (which blocks
/// SIGTRAP) is not reported.
pub struct TrapView<'a> {
    /// Whether a thread (by id) is running the handler, or left it within the given number of
    /// nanoseconds.
    pub inside: &'a dyn Fn(i32, u64) -> bool,
    /// The handler's first instruction.
    pub entry: usize,
}

/// How long after leaving the handler a thread may still block SIGTRAP: until `rt_sigreturn`
/// restores its mask, and it may be preempted in between.
const HANDLER_EDGE_NS: u64 = 2_000_000;
/// How long to wait for a runnable thread to run.
const PROGRESS_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

/// Something that changes when a thread runs: its CPU time in nanoseconds where the scheduler
/// shows it (`sched`), else its context-switch counts.
fn progress(task: &std::path::Path) -> Option<String> {
    if let Ok(sched) = std::fs::read_to_string(task.join("sched"))
        && let Some(line) = sched.lines().find(|l| l.starts_with("se.sum_exec_runtime"))
    {
        return Some(line.to_string());
    }
    let status = std::fs::read_to_string(task.join("status")).ok()?;
    Some(
        status
            .lines()
            .filter(|l| l.ends_with("ctxt_switches") || l.contains("ctxt_switches:"))
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Bytes from the handler's entry before it records the thread.
const HANDLER_PROLOGUE: usize = 256;

impl TrapView<'_> {
    /// Whether thread `tid` (its `/proc/self/task/<tid>` is `task`), seen blocking SIGTRAP, is
    /// on the handler's path: in it, just out of it, in its system calls (`gettid`,
    /// `rt_sigreturn`), or with its signal frame set up but the handler not yet begun.
    fn owns(&self, task: &std::path::Path, tid: i32) -> bool {
        if (self.inside)(tid, HANDLER_EDGE_NS) {
            return true;
        }
        let Ok(syscall) = std::fs::read_to_string(task.join("syscall")) else {
            return false;
        };
        // "running", "-1 SP PC" outside a system call, or "NR ARG1..ARG6 SP PC" in one.
        let mut fields = syscall.split_whitespace();
        match fields.next().map(str::parse::<i64>) {
            Some(Ok(-1)) => fields
                .nth(1)
                .and_then(|pc| usize::from_str_radix(pc.trim_start_matches("0x"), 16).ok())
                .is_some_and(|pc| pc.wrapping_sub(self.entry) < HANDLER_PROLOGUE),
            Some(Ok(nr)) => nr == libc::SYS_gettid || nr == libc::SYS_rt_sigreturn,
            // On a CPU or waiting for one ("running"): if it is on its way into the handler
            // (its signal frame set up, then preempted), it runs the handler as soon as it runs
            // at all. Wait until it has run, then ask again.
            _ => {
                let start = std::time::Instant::now();
                let before = progress(task);
                while progress(task) == before && start.elapsed() < PROGRESS_WAIT {
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
                let waited = start.elapsed().as_nanos() as u64;
                (self.inside)(tid, HANDLER_EDGE_NS + waited)
            }
        }
    }
}

/// Threads of this process whose signal mask blocks SIGTRAP, leaving out threads on textpoke's
/// own handler path, which blocks SIGTRAP while it runs (see [`TrapView`]).
///
/// A thread is listed only if it blocks SIGTRAP each time it is looked at over about 3 ms and
/// has not been on the handler path meanwhile: glibc runs a thread's first instructions, and
/// the end of `pthread_create` in its creator, with every signal blocked, for microseconds
/// (longer if it is preempted there), and no site runs there.
pub fn threads_blocking_sigtrap(view: &TrapView<'_>) -> Result<Vec<ThreadInfo>> {
    let blocked = |task: &std::path::Path| -> Option<String> {
        let status = std::fs::read_to_string(task.join("status")).ok()?;
        blocks_sigtrap(&status).then_some(status)
    };
    let io = |what: &str, e: std::io::Error| {
        Error::syscall(
            what.to_string(),
            rustix::io::Errno::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EIO)),
        )
    };
    let mut out = Vec::new();
    let tasks =
        std::fs::read_dir("/proc/self/task").map_err(|e| io("read_dir(/proc/self/task)", e))?;
    for task in tasks {
        let task = task.map_err(|e| io("read_dir(/proc/self/task)", e))?;
        let tid: i32 = task.file_name().to_string_lossy().parse().unwrap_or(-1);
        // A thread may exit while we look; that is not an error.
        if let Some(status) = blocked(&task.path()) {
            let name = status
                .lines()
                .find_map(|l| l.strip_prefix("Name:"))
                .unwrap_or("")
                .trim()
                .to_string();
            out.push((task.path(), ThreadInfo { tid, name }));
        }
    }
    for _ in 0..3 {
        if out.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
        // A thread seen blocked because it was on its way into the handler, in it, or on its
        // way out, has been in it within the last moments.
        out.retain(|(task, t)| blocked(task).is_some() && !view.owns(task, t.tid));
    }
    Ok(out.into_iter().map(|(_, t)| t).collect())
}

fn blocks_sigtrap(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGTRAP - 1)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_sigtrap_bit() {
        assert!(blocks_sigtrap("Name:\tx\nSigBlk:\t0000000000000010\n"));
        assert!(!blocks_sigtrap("Name:\tx\nSigBlk:\t0000000000000000\n"));
        assert!(blocks_sigtrap("SigBlk:\tfffffffffffffffe\nSigIgn:\t0\n"));
        assert!(!blocks_sigtrap("SigBlk:\tffffffffffffffef\n"));
    }

    #[test]
    fn finds_a_thread_that_blocks_sigtrap() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::Builder::new()
            .name("blocks-trap".into())
            .spawn(move || {
                // SAFETY: blocking one signal in this thread's own mask.
                unsafe {
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, libc::SIGTRAP);
                    libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                }
                tx.send(rustix::thread::gettid().as_raw_nonzero().get())
                    .unwrap();
                done_rx.recv().unwrap();
            })
            .unwrap();
        let tid = rx.recv().unwrap();
        let view = TrapView {
            inside: &|_, _| false,
            entry: 0,
        };
        let found = threads_blocking_sigtrap(&view).unwrap();
        done_tx.send(()).unwrap();
        t.join().unwrap();
        assert!(
            found
                .iter()
                .any(|t| t.tid == tid && t.name == "blocks-trap"),
            "{found:?}"
        );
    }
}
