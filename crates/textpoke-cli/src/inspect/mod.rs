//! `textpoke inspect` and `textpoke verify`: textpoke's tables in an ELF file, read without
//! running it.
//!
//! The file is loaded as the loader would map it (`elf`), with its symbols and unwind table
//! for names and function bounds (`symbols`); its tables are decoded (`tables`) with the
//! statics they point at (`statics`). `inspect` gathers them per key, static call and so on
//! (`listing`, rendered by `text`); `verify` checks every entry (`verify`, decoding machine
//! code with `code`).

mod code;
mod elf;
mod error;
mod lines;
mod listing;
mod statics;
mod symbols;
mod tables;
mod text;
mod verify;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use error::InspectError;

use elf::Image;
use listing::Listing;
use tables::Tables;

/// `textpoke inspect FILE`: prints every table of the file, as text or one JSON object.
/// Exits 2 if the file cannot be read as an ELF file.
pub fn run_inspect(file: &Path, json: bool) -> ExitCode {
    let (image, tables) = match load(file) {
        Ok(loaded) => loaded,
        Err(e) => return fail("inspect", &e),
    };
    let listing = Listing::build(&image, &tables);
    let out = if json {
        match json_line("inspect", &listing) {
            Ok(s) => s,
            Err(code) => return code,
        }
    } else {
        text::render(&listing)
    };
    print(&out)
}

/// `textpoke verify FILE`: checks every table entry of the file. Exits 0 with a summary when
/// all is well, 1 with one line per problem otherwise, 2 if the file cannot be read.
pub fn run_verify(file: &Path, json: bool) -> ExitCode {
    let (image, tables) = match load(file) {
        Ok(loaded) => loaded,
        Err(e) => return fail("verify", &e),
    };
    let verdict = verify::verify(&image, &tables);
    let out = if json {
        match json_line("verify", &verdict) {
            Ok(s) => s,
            Err(code) => return code,
        }
    } else if tables.is_empty() {
        format!("{}: no textpoke tables, nothing to check\n", image.file)
    } else if verdict.problems.is_empty() {
        verdict.summary() + "\n"
    } else {
        // The count goes to stderr, so standard output stays one line per problem.
        eprintln!("textpoke verify: {}", verdict.summary());
        verdict.problem_lines()
    };
    match (print(&out), verdict.problems.is_empty()) {
        (code, true) => code,
        (_, false) => ExitCode::FAILURE,
    }
}

/// `value` as one line of JSON, or the exit code after saying why it cannot be.
fn json_line(command: &str, value: &impl serde::Serialize) -> Result<String, ExitCode> {
    serde_json::to_string(value).map(|s| s + "\n").map_err(|e| {
        eprintln!("textpoke {command}: cannot encode the output: {e}");
        ExitCode::FAILURE
    })
}

fn load(file: &Path) -> Result<(Image, Tables), InspectError> {
    let image = Image::load(file)?;
    let tables = Tables::read(&image)?;
    Ok((image, tables))
}

fn fail(command: &str, e: &InspectError) -> ExitCode {
    eprintln!("textpoke {command}: {e}");
    ExitCode::from(2)
}

/// Writes `out` to standard output; a closed pipe (`| head`) is no reason to panic.
fn print(out: &str) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}
