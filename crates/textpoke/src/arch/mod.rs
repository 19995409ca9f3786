//! Instruction-set knowledge. Everything here is about machine code only: encodings, the
//! breakpoint, and emulating an instruction on a trapped thread's registers.

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use x86_64::*;

#[cfg(not(target_arch = "x86_64"))]
compile_error!("textpoke supports x86_64 only for now; aarch64 is planned behind this module");
