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

use std::sync::atomic::{AtomicBool, Ordering};

use rustix::thread::{MembarrierCommand, membarrier, membarrier_query};

use crate::{Error, Result};

static REGISTERED: AtomicBool = AtomicBool::new(false);

pub(super) fn forget_after_fork() {
    REGISTERED.store(false, Ordering::Relaxed);
}

/// Registers this process for SYNC_CORE membarriers, once per address space.
pub fn prepare_core_sync() -> Result<()> {
    if REGISTERED.load(Ordering::Relaxed) {
        return Ok(());
    }
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
    })?;
    REGISTERED.store(true, Ordering::Relaxed);
    Ok(())
}

/// Serializes every core running a thread of this process.
pub fn serialize_all_cores() -> Result<()> {
    membarrier(MembarrierCommand::PrivateExpeditedSyncCore).map_err(|e| {
        Error::CoreSyncUnavailable {
            why: format!("membarrier(PRIVATE_EXPEDITED_SYNC_CORE): {e}"),
        }
    })
}
