//! Writing code through `/proc/self/mem`.
//!
//! The kernel writes through its own mapping of the page (`FOLL_FORCE`), so no user mapping is
//! ever made writable: W^X holds at every instant, and the text stays attributed to its file in
//! `/proc/self/maps`.
//!
//! Under valgrind, whose cached translations of the old code would otherwise keep running,
//! every write is followed by a request to discard the translations of the written range (see
//! [`super::valgrind`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags};

use crate::{Error, Result};

struct MemFile {
    pid: rustix::process::Pid,
    fd: OwnedFd,
}

static MEM: Mutex<Option<MemFile>> = Mutex::new(None);
/// Set in a forked child: the cached descriptor names the parent's memory.
static STALE: AtomicBool = AtomicBool::new(false);

pub(super) fn forget_after_fork() {
    STALE.store(true, Ordering::Relaxed);
}

/// Writes `bytes` at `addr` in this process's memory. On return, under valgrind too, no thread
/// runs code translated from the bytes that were there before.
pub fn write_code(addr: usize, bytes: &[u8]) -> Result<()> {
    let written = write(addr, bytes);
    // Even after a failed or partial write: some bytes may have changed.
    super::valgrind::discard_translations(addr, bytes.len());
    written
}

fn write(addr: usize, bytes: &[u8]) -> Result<()> {
    let mut guard = MEM.lock().unwrap_or_else(|e| e.into_inner());
    let pid = rustix::process::getpid();
    if STALE.swap(false, Ordering::Relaxed) || guard.as_ref().is_some_and(|m| m.pid != pid) {
        *guard = None;
    }
    let mem = match &mut *guard {
        Some(mem) => mem,
        None => {
            let fd = rustix::fs::open(
                "/proc/self/mem",
                OFlags::RDWR | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| Error::syscall("open(/proc/self/mem, O_RDWR)", e))?;
            guard.insert(MemFile { pid, fd })
        }
    };
    pwrite_all(&mem.fd, bytes, addr)
}

fn pwrite_all(fd: &OwnedFd, mut buf: &[u8], mut addr: usize) -> Result<()> {
    while !buf.is_empty() {
        match rustix::io::pwrite(fd, buf, addr as u64) {
            Ok(0) => {
                return Err(Error::syscall(
                    format!("pwrite(/proc/self/mem, {addr:#x})"),
                    rustix::io::Errno::IO,
                ));
            }
            Ok(n) => {
                buf = &buf[n..];
                addr += n;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                return Err(Error::syscall(
                    format!("pwrite(/proc/self/mem, {addr:#x})"),
                    e,
                ));
            }
        }
    }
    Ok(())
}
