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

/// Threads of this process whose signal mask blocks SIGTRAP.
///
/// A thread is listed only if it blocks SIGTRAP each time it is looked at over about 3 ms:
/// glibc runs a thread's first instructions, and the end of `pthread_create` in its creator,
/// with every signal blocked, for microseconds (longer if it is preempted there), and no site
/// runs there. (A thread inside
/// textpoke's own handler does not block SIGTRAP at all: the handler runs with it unblocked.)
pub fn threads_blocking_sigtrap() -> Result<Vec<ThreadInfo>> {
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
        // A thread may exit while we look; that is not an error.
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        if blocks_sigtrap(&status) {
            out.push((
                task.path(),
                ThreadInfo {
                    tid: task.file_name().to_string_lossy().parse().unwrap_or(-1),
                    name: status
                        .lines()
                        .find_map(|l| l.strip_prefix("Name:"))
                        .unwrap_or("")
                        .trim()
                        .to_string(),
                },
            ));
        }
    }
    for _ in 0..3 {
        if out.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
        out.retain(|(path, _)| {
            std::fs::read_to_string(path.join("status")).is_ok_and(|s| blocks_sigtrap(&s))
        });
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
        let found = threads_blocking_sigtrap().unwrap();
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
