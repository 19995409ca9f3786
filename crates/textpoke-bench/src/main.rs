//! `textpoke-bench`: textpoke measured side by side with its peers, in one process.
//!
//! - `toggle`: wall time to flip one key that controls N sites while busy threads run them,
//!   textpoke against static-keys 0.8.2, plus table bytes per site for both, and the run's
//!   one-site floor (a 1-site toggle against one membarrier); `--plot` draws it as an SVG;
//! - `branch`: ns per iteration of a loop over one disabled branch: textpoke, `AtomicBool`,
//!   static-keys, and an empty loop;
//! - `call`: ns per call of a direct call, a textpoke static call, a function pointer loaded from
//!   an `AtomicPtr` on every call (as `multiversion` dispatches) and a `&dyn Fn`; of a direct
//!   C-ABI call and a C-ABI static call with inline call sites; and the time of one update of
//!   each kind of static call while another thread calls it;
//! - `alt`: the time of one `alternatives::apply()` of 1,000 instruction-level alternatives
//!   (each in a forked child), and ns per call of a direct call, a textpoke function-level
//!   alternative (`multiversion!`, both forms) and the `multiversion` crate;
//! - `functions`: ns per call of a plain function, of the same `#[textpoke::patchable]` while
//!   disabled and traced, and under the `tracing` crate's `#[instrument]`; the time of tracing
//!   1,000 functions in one batch and of replacing one, while a busy thread calls them; ns per
//!   read of an immediate value against an `AtomicU32` load, warm and with the variable's line
//!   evicted, and the time of one `set` of an immediate with 1,000 read sites while a busy
//!   thread reads them;
//! - `detour`: textpoke's `Detour` beside retour's `GenericDetour`, each on its own copy of one
//!   function: crashes, hangs and wrong results in child processes whose threads call the target
//!   while it is detoured and restored `--cycles` times; the time of one enable and of one
//!   disable while a busy thread calls it (retour's in children, as it cannot survive that
//!   thread); and ns per call of the replacement called directly and through each detour;
//! - `raw`: the raw costs that bound a toggle: `membarrier(SYNC_CORE)` idle, beside a spinning
//!   thread and beside a trapping one, `pwrite` to `/proc/self/mem`, and a SIGTRAP round trip.
//!
//! `--json` prints one JSON object per line on stdout; otherwise a table. Errors go to stderr
//! and make the exit status non-zero.

mod affinity;
mod alt;
mod branch;
mod call;
mod cold;
mod ctl;
mod detour;
mod dispatch;
mod functions;
mod imm;
mod peer;
mod plot;
mod raw;
mod sites;
mod stats;
mod toggle;

use std::fmt;
use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// An error that ends a benchmark, with a message for the user.
#[derive(Debug)]
pub struct BenchError(String);

impl BenchError {
    /// An error with this message.
    pub fn new(msg: impl Into<String>) -> Self {
        BenchError(msg.into())
    }
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BenchError {}

impl From<textpoke::Error> for BenchError {
    fn from(e: textpoke::Error) -> Self {
        BenchError(format!("textpoke: {e}"))
    }
}

impl From<serde_json::Error> for BenchError {
    fn from(e: serde_json::Error) -> Self {
        BenchError(format!("JSON: {e}"))
    }
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, BenchError>;

/// Prints `(name, value)` rows under a two-column header, then the note.
pub fn print_rows(header: (&str, &str), rows: &[(&str, f64)], note: &str) -> Result<()> {
    print_line(&format!("{:<32} {:>10}", header.0, header.1))?;
    for (name, v) in rows {
        print_line(&format!("{name:<32} {v:>10.3}"))?;
    }
    print_line(&format!("note: {note}"))
}

/// Writes one line to stdout, reporting failure (a closed pipe, say) as an error.
pub fn print_line(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| BenchError::new(format!("writing to stdout: {e}")))
}

#[derive(Parser)]
#[command(
    name = "textpoke-bench",
    version,
    about = "textpoke measured side by side with its peers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Time toggling one key that controls N sites while busy threads run them
    /// (textpoke vs static-keys).
    Toggle(toggle::ToggleArgs),
    /// ns per iteration of a loop over one disabled branch (textpoke, AtomicBool, static-keys).
    Branch(branch::BranchArgs),
    /// ns per call: direct, static call, fn pointer loaded from an AtomicPtr, &dyn Fn, direct C
    /// call, inline C-ABI static call; and the time of one update of each static call while
    /// another thread calls it.
    Call(call::CallArgs),
    /// Time to apply 1,000 instruction-level alternatives (forked children); ns per call of a
    /// direct call, textpoke's multiversion! (both forms) and the multiversion crate.
    Alt(alt::AltArgs),
    /// ns per call: plain, patchable (disabled, traced), tracing's `#[instrument]`; tracing 1,000
    /// functions and replacing one, busy thread; ns per read of an immediate value vs an
    /// AtomicU32 load; the time of one `set` of an immediate with 1,000 read sites.
    Functions(FunctionsArgs),
    /// Detours with a busy caller (textpoke vs retour): crashes in child processes toggling one
    /// while threads call it; enable/disable time; ns per call through each detour vs direct.
    Detour(detour::DetourArgs),
    /// One child process of `detour`.
    #[command(hide = true)]
    DetourChild(detour::ChildArgs),
    /// Round trips through textpoke's control socket (list, enable) against a busy child, beside
    /// a Unix-socket echo and the request run in-process; `list` of everything.
    Ctl(ctl::CtlArgs),
    /// The serving child process of `ctl`.
    #[command(hide = true)]
    CtlChild(ctl::ChildArgs),
    /// Raw costs that bound a toggle: membarrier SYNC_CORE (idle, busy, trapping), pwrite to
    /// /proc/self/mem (1 byte, 4 KiB), SIGTRAP round trip.
    Raw(raw::RawArgs),
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Toggle(args) => {
            if args.json {
                let floor =
                    toggle::run(&args, &mut |row| print_line(&serde_json::to_string(row)?))?;
                print_line(&serde_json::to_string(&floor)?)
            } else {
                let mut table = toggle::TablePrinter::new();
                let floor = toggle::run(&args, &mut |row| table.row(row))?;
                table.finish(&floor)
            }
        }
        Command::Branch(args) => emit(args.json, &branch::run(&args)?, branch::print_table),
        Command::Call(args) => emit(args.json, &call::run(&args)?, call::print_table),
        Command::Alt(args) => emit(args.json, &alt::run(&args)?, alt::print_table),
        Command::Functions(args) => {
            let row = FunctionsRow {
                functions: functions::measure(&args.functions)?,
                imm: imm::run(&args.imm)?,
            };
            emit(args.json, &row, |r| {
                functions::print_table(&r.functions)?;
                imm::print_table(&r.imm)
            })
        }
        Command::Detour(args) => emit(args.json, &detour::run(&args)?, detour::print_table),
        Command::DetourChild(args) => detour::child(&args),
        Command::Ctl(args) => emit(args.json, &ctl::run(&args)?, ctl::print_table),
        Command::CtlChild(args) => ctl::child(&args),
        Command::Raw(args) => emit(args.json, &raw::run(&args)?, raw::print_table),
    }
}

/// Options of the `functions` subcommand.
#[derive(clap::Args)]
struct FunctionsArgs {
    #[command(flatten)]
    functions: functions::FunctionsArgs,
    #[command(flatten)]
    imm: imm::ImmArgs,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
}

/// The `functions` subcommand's one JSON object: patchable functions' fields and immediates'.
#[derive(serde::Serialize)]
struct FunctionsRow {
    #[serde(flatten)]
    functions: functions::FunctionsRow,
    #[serde(flatten)]
    imm: imm::ImmRow,
}

/// Ends a result's note with a warning when this is a debug build, whose figures mean nothing.
pub(crate) fn mark_debug_build(note: &mut String) {
    if cfg!(debug_assertions) {
        note.push_str("; DEBUG BUILD: not representative");
    }
}

/// Prints a subcommand's one result: a JSON line, or its table.
fn emit<R: serde::Serialize>(json: bool, row: &R, table: fn(&R) -> Result<()>) -> Result<()> {
    if json {
        print_line(&serde_json::to_string(row)?)
    } else {
        table(row)
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("textpoke-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Mutex, MutexGuard};

    static SERIAL: Mutex<()> = Mutex::new(());

    /// Runs the tests of this crate one at a time: they share keys, and static-keys must not
    /// patch code that another test is running.
    pub fn serial() -> MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[test]
    fn cli_parses_size_lists() {
        use clap::Parser;
        let cli = super::Cli::try_parse_from([
            "textpoke-bench",
            "toggle",
            "--sites",
            "1,10,100",
            "--busy-threads",
            "2",
            "--json",
        ])
        .expect("valid command line");
        match cli.command {
            super::Command::Toggle(a) => {
                assert_eq!(a.sites, [1, 10, 100]);
                assert_eq!(a.busy_threads, 2);
                assert!(a.json);
            }
            _ => panic!("not parsed as toggle"),
        }
    }
}
