//! A second, independently compiled copy of textpoke's process-wide patch lock. It stands in
//! for a semver-incompatible textpoke linked into the same binary: the tests check that both
//! copies end up with one lock.

#[path = "../../textpoke/src/os/linux/lock.rs"]
mod lock;

pub use lock::{
    PatchGuard, lock_shared_state_addr, patch_lock, register_fork_handlers, try_patch_lock,
};
