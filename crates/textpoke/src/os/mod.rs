//! Operating-system services: writing code, serializing cores, the trap signal, the
//! process-wide lock and the map of loaded objects. Nothing here knows about instructions.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::*;

#[cfg(not(target_os = "linux"))]
compile_error!("textpoke supports Linux only for now");
