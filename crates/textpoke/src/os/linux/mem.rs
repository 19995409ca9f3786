//! Writing code through `/proc/self/mem`.
//!
//! The kernel writes through its own mapping of the page (`FOLL_FORCE`), so no user mapping is
//! ever made writable: W^X holds at every instant, and the text stays attributed to its file in
//! `/proc/self/maps`. Neighbouring edits in one segment are coalesced into one `pwrite`, filling
//! the gaps with the bytes already there, so a batch costs one system call per run of nearby
//! sites rather than one per site.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags};

use crate::{Error, Result};

/// Edits closer than this are written with one `pwrite`. A gap smaller than a page cannot
/// contain a whole page, so merging never copies-on-write a page that holds no edit.
pub const MERGE_GAP: usize = 4096;

/// One write: `bytes` go to `addr`, which lies in the executable segment starting at `segment`.
#[derive(Clone, Copy, Debug)]
pub struct Edit<'a> {
    /// Destination.
    pub addr: usize,
    /// New bytes.
    pub bytes: &'a [u8],
    /// Start of the segment holding the edit; edits in different segments are never merged.
    pub segment: usize,
}

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

/// Writes all `edits` (sorted by address, non-overlapping) and returns the number of
/// `pwrite` calls made. Stops at the first failure.
pub fn write_edits(edits: &[Edit<'_>]) -> Result<usize> {
    let mut guard = MEM.lock().unwrap_or_else(|e| e.into_inner());
    let pid = rustix::process::getpid();
    if STALE.swap(false, Ordering::Relaxed) || guard.as_ref().is_some_and(|m| m.pid != pid) {
        *guard = None;
    }
    if guard.is_none() {
        let fd = rustix::fs::open(
            "/proc/self/mem",
            OFlags::RDWR | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::syscall("open(/proc/self/mem, O_RDWR)", e))?;
        *guard = Some(MemFile { pid, fd });
    }
    let fd = &guard.as_ref().expect("opened above").fd;

    let mut calls = 0;
    let mut buf = Vec::new();
    let mut i = 0;
    while i < edits.len() {
        let start = edits[i].addr;
        let mut end = start + edits[i].bytes.len();
        let mut j = i + 1;
        while j < edits.len()
            && edits[j].segment == edits[i].segment
            && edits[j].addr.saturating_sub(end) < MERGE_GAP
        {
            end = end.max(edits[j].addr + edits[j].bytes.len());
            j += 1;
        }
        buf.clear();
        buf.resize(end - start, 0);
        // SAFETY: [start, end) lies in one executable, hence readable, segment of a loaded
        // object (the engine checked every edit), and only the patch-lock holder writes it.
        unsafe { std::ptr::copy_nonoverlapping(start as *const u8, buf.as_mut_ptr(), buf.len()) };
        for e in &edits[i..j] {
            buf[e.addr - start..][..e.bytes.len()].copy_from_slice(e.bytes);
        }
        pwrite_all(fd, &buf, start)?;
        calls += 1;
        i = j;
    }
    Ok(calls)
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
