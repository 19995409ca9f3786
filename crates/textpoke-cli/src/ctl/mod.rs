//! `textpoke ctl`: the client of a process's control socket.

use std::process::ExitCode;

/// Examples shown by `textpoke ctl --help`.
pub const EXAMPLES: &str = "Examples:
  textpoke ctl 4242 list
  textpoke ctl myapp enable 'myapp::net::*'
  textpoke ctl 4242 set myapp::SAMPLE_SHIFT 4
  textpoke ctl 4242 profile 'myapp::db::*' --seconds 2";

/// What `textpoke ctl` was asked.
pub struct Options {
    /// A process id or an executable name.
    pub process: String,
    /// Verb and arguments.
    pub command: Vec<String>,
    /// Print JSON.
    pub json: bool,
    /// `profile` duration.
    pub seconds: f64,
    /// Reply timeout.
    pub timeout: f64,
}

/// Runs `textpoke ctl`.
pub fn run(options: &Options) -> ExitCode {
    let _ = options;
    eprintln!("textpoke ctl: not built yet");
    ExitCode::from(2)
}
