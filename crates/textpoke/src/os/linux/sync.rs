//! Serializing every core after a code write: `membarrier(PRIVATE_EXPEDITED_SYNC_CORE)`.
//!
//! Each call makes every thread of the process that is running execute a core-serializing
//! instruction before the call returns; threads that are not running serialize when they are
//! next scheduled. Registration is per address space, so a forked child registers again.
//!
//! There is deliberately no fallback. The `mprotect` trick (TLB-shootdown IPIs) no longer
//! reaches every core on CPUs with broadcast TLB invalidation, so it is not a guarantee. When
//! SYNC_CORE is missing (kernel older than 4.16, or a seccomp filter) textpoke refuses to patch
//! with [`Error::CoreSyncUnavailable`] rather than patch unsafely.
//!
//! # Under valgrind
//!
//! There, and only there, a missing SYNC_CORE is not an error: core sync is skipped. What the
//! core sync guarantees is that once it returns, no thread runs a copy of the code taken before
//! the write (a core's prefetched or decoded instructions). Under valgrind no thread runs the
//! program's code at all; each runs valgrind's translations of it, and the only copies of old
//! code are those translations. [`write_code`](super::write_code) discards them after every
//! write, and the discard already gives the guarantee: valgrind runs one guest thread at a
//! time, handing over only between translated blocks (at the end of a time slice, or around a
//! system call), and the discarding thread holds that lock, so no other thread is inside a
//! translation; each looks its next block up afresh, and translates the new bytes. A thread
//! that translated the site while the write was under way (in another thread's system call)
//! saw each byte either old or new, as a core fetching it would, and that translation is
//! discarded too, since the discard comes after the write. Whatever the host CPU must do
//! about valgrind's own freshly written translations is valgrind's business, not this
//! program's. When SYNC_CORE is there under valgrind it is still used (it costs nothing
//! there that matters). Natively nothing changes: the check runs only on the error path, and
//! each sync costs one extra load of a cached flag.

use std::sync::atomic::{AtomicU8, Ordering};

use rustix::thread::{MembarrierCommand, membarrier, membarrier_query};

use crate::{Error, Result};

const UNREGISTERED: u8 = 0;
const REGISTERED: u8 = 1;
/// Under valgrind without SYNC_CORE: discarding translations is the whole sync (module docs).
const NOT_NEEDED: u8 = 2;
static STATE: AtomicU8 = AtomicU8::new(UNREGISTERED);

pub(super) fn forget_after_fork() {
    STATE.store(UNREGISTERED, Ordering::Relaxed);
}

/// Registers this process for SYNC_CORE membarriers, once per address space.
pub fn prepare_core_sync() -> Result<()> {
    if STATE.load(Ordering::Relaxed) != UNREGISTERED {
        return Ok(());
    }
    match register() {
        Ok(()) => STATE.store(REGISTERED, Ordering::Relaxed),
        Err(_) if super::valgrind::running() => STATE.store(NOT_NEEDED, Ordering::Relaxed),
        Err(e) => return Err(e),
    }
    Ok(())
}

fn register() -> Result<()> {
    let supported = membarrier_query();
    if !supported.contains_command(MembarrierCommand::PrivateExpeditedSyncCore) {
        return Err(Error::CoreSyncUnavailable {
            why: format!(
                "membarrier does not offer PRIVATE_EXPEDITED_SYNC_CORE (supported: {:#x})",
                supported.bits()
            ),
        });
    }
    membarrier(MembarrierCommand::RegisterPrivateExpeditedSyncCore).map_err(|e| {
        Error::CoreSyncUnavailable {
            why: format!("membarrier(REGISTER_PRIVATE_EXPEDITED_SYNC_CORE): {e}"),
        }
    })
}

/// Serializes every core running a thread of this process.
pub fn serialize_all_cores() -> Result<()> {
    if STATE.load(Ordering::Relaxed) == NOT_NEEDED {
        return Ok(());
    }
    membarrier(MembarrierCommand::PrivateExpeditedSyncCore).map_err(|e| {
        Error::CoreSyncUnavailable {
            why: format!("membarrier(PRIVATE_EXPEDITED_SYNC_CORE): {e}"),
        }
    })
}
