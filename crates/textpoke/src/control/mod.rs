//! Control by name, from inside the process and from outside, like the kernel's
//! `dynamic_debug` control file: list what textpoke controls, and change it by name.
//!
//! # The registry
//!
//! [`list`] shows what this copy of textpoke controls in its object: keys (state, count,
//! sites), static calls (current target), alternatives (the candidate chosen per site),
//! patchable functions (traced, replaced, no-op), immediate values (value) and detours.
//! [`request`] runs a request in *every* copy of textpoke in the process (the executable's and
//! each plugin's, each on its own items) and answers in JSON: it is what the control socket
//! serves.
//!
//! # Requests
//!
//! One line of words; patterns are globs over Rust paths (`*` any run, `?` one character):
//!
//! | request | does |
//! |---|---|
//! | `list [PATTERN]` | every entry whose name matches |
//! | `alternatives [PATTERN]` | alternative sites and the candidate chosen for each |
//! | `enable PATTERN` / `disable PATTERN` | the matching keys |
//! | `set PATTERN VALUE` | matching keys (`on`/`off`) and immediates (a value of their type) |
//! | `trace PATTERN` / `untrace PATTERN` | counts calls of matching patchable functions |
//! | `profile-start PATTERN` / `profile-stop PATTERN` | calls and time per function |
//! | `replace-noop PATTERN` / `revert PATTERN` | makes matching `()` functions no-ops, and back |
//!
//! Each request is one batch in each copy: every change, or none. A request that changes
//! things and matches nothing anywhere is an error.
//!
//! # At start-up: `TEXTPOKE`
//!
//! Each copy reads the `TEXTPOKE` environment variable when its object is loaded (before
//! `main`, for the executable's) and applies its entries to its own items as one batch.
//! Entries are separated by commas:
//!
//! - `PATTERN` or `PATTERN=on` / `PATTERN=off`: keys;
//! - `PATTERN=VALUE`: immediates (and keys, with `on`/`off`);
//! - `trace=PATTERN`: count calls of the matching patchable functions (see `list`);
//! - `noop=PATTERN`: make the matching functions that return `()` no-ops.
//!
//! For example `TEXTPOKE='myapp::net::*=on,myapp::SAMPLE_SHIFT=4,trace=myapp::db::*'`. A bad
//! entry prints one line on standard error and is skipped; the program always runs on.
//!
//! # From outside: `textpoke ctl`
//!
//! A program opts in with [`serve`] or by running with `TEXTPOKE_CONTROL=1`. A thread of
//! textpoke's then serves a Unix socket named by the process id: `$XDG_RUNTIME_DIR/textpoke-
//! PID.sock`, or `textpoke-PID` in the abstract namespace when `XDG_RUNTIME_DIR` is not set
//! or no socket can be made there.
//! Only the same user, or root, may connect (the peer's credentials are checked). A client
//! sends one request line and reads one JSON reply; `textpoke ctl PID …` is that client.
//!
//! The serving thread takes no lock a program's own code holds but the patch lock, which it
//! takes only to apply a batch, never while it talks to a client: a slow or silent client
//! costs nothing but its own connection, which is closed after a few seconds.

mod command;
mod env;
mod json;
mod registry;
mod server;

#[doc(hidden)]
pub use registry::imm_text;
pub use registry::{Entry, Kind};

use crate::Result;
use crate::engine::Answer;

/// What this copy of textpoke controls in its object whose name matches `pattern` (`*` for
/// everything), sorted by kind and name. The executable's and each plugin's copy list their
/// own; [`request`] asks every copy.
pub fn list(pattern: &str) -> Result<Vec<Entry>> {
    let filter = registry::Filter {
        pattern,
        kinds: &[],
    };
    Ok(command::rows(&filter)?
        .into_iter()
        .map(|r| r.entry)
        .collect())
}

/// Runs one request (see the [module docs](self)) in every copy of textpoke in the process,
/// and returns the JSON reply the control socket sends:
///
/// `{"ok": bool, "request": "...", "matched": N, "errors": ["..."], "copies": [{"object":
/// "...", "matched": N, "error": null, "items": [...], "profile": [...]}]}`
///
/// Each item has `kind`, `name`, `object`, `declared`, `sites` and `state`, and fields of its
/// kind (a key's `enabled` and `count`, an immediate's `value` and `type`, ...). Never
/// panics; every failure is in `errors`.
pub fn request(line: &str) -> String {
    let parsed = match command::parse(line) {
        Ok(p) => p,
        Err(why) => return reply(line, false, 0, &[why], &[]),
    };
    let copies = crate::engine::control_each(line.as_bytes());
    let mut errors = Vec::new();
    let mut matched = 0;
    let mut replies = Vec::with_capacity(copies.len());
    for c in copies.iter() {
        match &c.answer {
            Answer::Replied(n, reply) => {
                matched += n;
                replies.push(reply.clone());
            }
            Answer::Failed(why) => {
                errors.push(format!("{}: {why}", c.object));
                replies.push(command::copy_reply(&c.object, Err(why)));
            }
            // Not a failure of the request: that copy has nothing to say.
            Answer::Silent(why) => replies.push(command::copy_reply(&c.object, Err(why))),
        }
    }
    if errors.is_empty() && matched == 0 && parsed.verb.changes() {
        errors.push(format!(
            "nothing matches `{}` in any of the {} loaded object(s) with textpoke",
            parsed.pattern,
            copies.len()
        ));
    }
    let replies: Vec<&str> = replies.iter().map(String::as_str).collect();
    reply(line, errors.is_empty(), matched, &errors, &replies)
}

/// The reply to a request: `ok`, the request, items matched, errors and each copy's reply.
pub(super) fn reply(
    line: &str,
    ok: bool,
    matched: u64,
    errors: &[String],
    copies: &[&str],
) -> String {
    let mut out = String::new();
    json::Obj::new(&mut out)
        .bool("ok", ok)
        .str("request", line.trim())
        .num("matched", matched)
        .strs("errors", errors.iter().map(String::as_str))
        .raw("copies", &json::array(copies.iter().copied()))
        .end();
    out
}

/// Starts serving `textpoke ctl` requests on a Unix socket named by the process id (see the
/// [module docs](self)), in a thread of textpoke's. Returns the socket's address. Serving
/// again returns the same address. The server lives in the process's patcher's copy of
/// textpoke, whose object is never unloaded, whichever copy asks.
pub fn serve() -> std::result::Result<String, crate::Error> {
    crate::engine::serve_in_patcher().map_err(|why| crate::Error::Control { why })
}

/// Connects to the control socket of process `pid`, wherever it may be: in this user's
/// `$XDG_RUNTIME_DIR`, in the runtime directory of the user running `pid`
/// (`/run/user/UID`), or in the abstract namespace. Returns the stream and the socket's name.
pub fn connect(pid: u32) -> std::io::Result<(std::os::unix::net::UnixStream, String)> {
    let mut dirs: Vec<std::path::PathBuf> = std::env::var_os("XDG_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        .into_iter()
        .collect();
    if let Ok(meta) = std::fs::metadata(format!("/proc/{pid}")) {
        use std::os::unix::fs::MetadataExt;
        dirs.push(format!("/run/user/{}", meta.uid()).into());
    }
    let mut names: Vec<String> = dirs
        .iter()
        .map(|d| crate::os::control_socket_name(pid, Some(d)))
        .collect();
    names.push(crate::os::control_socket_name(pid, None));
    names.dedup();
    let mut tried = Vec::new();
    for name in names {
        match crate::os::connect_control_socket(&name) {
            Ok(stream) => return Ok((stream, name)),
            Err(e) => tried.push(format!("{name}: {e}")),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!(
            "process {pid} serves no textpoke control socket (tried {})",
            tried.join("; ")
        ),
    ))
}

/// A copy's request entry point (through the rendezvous table): runs `request` on this
/// copy's items: the number matched and this copy's JSON reply, or why it failed.
pub(crate) fn handle_request(request: &[u8]) -> Answer {
    let outcome = std::str::from_utf8(request)
        .map_err(|_| "the request is not UTF-8".to_owned())
        .and_then(command::parse)
        .and_then(|r| command::execute(&r));
    match outcome {
        Ok(o) => Answer::Replied(
            o.matched as u64,
            command::copy_reply(&registry::this_object(), Ok(&o)),
        ),
        Err(why) => Answer::Failed(why),
    }
}

/// Starts the server in this copy (see [`serve`]).
pub(crate) fn start_serving() -> std::result::Result<String, String> {
    server::start()
}

pub(crate) use env::apply_at_load;
pub(crate) use registry::release;
