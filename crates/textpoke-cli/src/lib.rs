//! The `textpoke` command-line tool, as a library so that its jobs can be tested directly.

pub mod ctl;
pub mod decode;
pub mod demo;
pub mod inspect;
