//! Pinning threads to CPUs, so that a "busy" thread really runs beside the patching thread.
//!
//! Left to the scheduler, a freshly spawned thread often shares its parent's CPU for the first
//! milliseconds, and a short measurement then times a patcher that never meets a concurrently
//! running thread. Pinning the patcher to one CPU and the busy threads to the others removes
//! that luck.

use crate::{BenchError, Result};

/// A thread's CPU affinity mask.
#[derive(Clone, Copy)]
pub struct CpuMask(libc::cpu_set_t);

/// The calling thread's affinity mask.
pub fn current() -> Result<CpuMask> {
    // SAFETY: an all-zero `cpu_set_t` is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; `set` is a valid out-parameter of the given size.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if rc != 0 {
        return Err(BenchError::new(format!(
            "sched_getaffinity: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(CpuMask(set))
}

impl CpuMask {
    /// The CPUs in the mask, in increasing order.
    pub fn cpus(&self) -> Vec<usize> {
        let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: `CPU_ISSET` only reads the set; every index is below its capacity.
        (0..max)
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &self.0) })
            .collect()
    }

    /// A mask holding only `cpu`.
    pub fn only(cpu: usize) -> Self {
        // SAFETY: an all-zero `cpu_set_t` is a valid (empty) set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `CPU_SET` only writes the set; callers pass CPUs taken from `cpus`, which
        // are below its capacity.
        unsafe { libc::CPU_SET(cpu, &mut set) };
        CpuMask(set)
    }

    /// Makes this the calling thread's affinity mask.
    pub fn apply(&self) -> Result<()> {
        // SAFETY: pid 0 is the calling thread; `self.0` is a valid set of the given size.
        let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&self.0), &self.0) };
        if rc != 0 {
            return Err(BenchError::new(format!(
                "sched_setaffinity: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    }
}

/// Puts the calling thread's affinity back when dropped.
pub struct RestoreAffinity(pub CpuMask);

impl Drop for RestoreAffinity {
    fn drop(&mut self) {
        // Best effort: the mask was the thread's own a moment ago, and a failure here leaves the
        // thread pinned, which is harmless.
        let _ = self.0.apply();
    }
}

/// Where the patching thread and each busy thread run.
pub struct Placement {
    /// The patching thread's CPU.
    pub main: usize,
    /// CPUs for the busy threads, used round-robin; never `main` while another CPU is allowed.
    pub busy: Vec<usize>,
}

impl Placement {
    /// Spreads threads over the CPUs in `allowed`: the first for the patcher, the others for
    /// busy threads (all of them, the patcher's too, when there is only one).
    pub fn over(allowed: &[usize]) -> Result<Self> {
        let (&main, rest) = allowed
            .split_first()
            .ok_or_else(|| BenchError::new("this thread may run on no CPU"))?;
        let busy = if rest.is_empty() {
            vec![main]
        } else {
            rest.to_vec()
        };
        Ok(Placement { main, busy })
    }

    /// The CPU of busy thread `i`.
    pub fn busy_cpu(&self, i: usize) -> usize {
        self.busy[i % self.busy.len()]
    }

    /// A description for notes.
    pub fn describe(&self, threads: usize) -> String {
        let mut busy: Vec<usize> = (0..threads).map(|i| self.busy_cpu(i)).collect();
        busy.dedup();
        let shared = busy.contains(&self.main);
        format!(
            "patching thread pinned to CPU {}{}",
            self.main,
            match (threads, shared) {
                (0, _) => String::new(),
                (_, false) => format!(", busy threads to CPU(s) {busy:?}"),
                (_, true) => format!(
                    ", busy threads to CPU(s) {busy:?} (too few CPUs: some share the patcher's)"
                ),
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_keeps_busy_threads_off_the_patcher_cpu() -> Result<()> {
        let p = Placement::over(&[2, 5, 7])?;
        assert_eq!(p.main, 2);
        assert_eq!([p.busy_cpu(0), p.busy_cpu(1), p.busy_cpu(2)], [5, 7, 5]);
        let single = Placement::over(&[3])?;
        assert_eq!(single.busy_cpu(0), 3);
        assert!(Placement::over(&[]).is_err());
        assert!(!current()?.cpus().is_empty());
        Ok(())
    }
}
