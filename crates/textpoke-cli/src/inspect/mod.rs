//! `textpoke inspect` and `textpoke verify`: textpoke's tables in an ELF file, read without
//! running it.

use std::path::Path;
use std::process::ExitCode;

/// `textpoke inspect FILE`.
pub fn run_inspect(file: &Path, json: bool) -> ExitCode {
    let _ = (file, json);
    eprintln!("textpoke inspect: not built yet");
    ExitCode::from(2)
}

/// `textpoke verify FILE`.
pub fn run_verify(file: &Path, json: bool) -> ExitCode {
    let _ = (file, json);
    eprintln!("textpoke verify: not built yet");
    ExitCode::from(2)
}
