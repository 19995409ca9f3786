//! `textpoke ctl`: the client of a process's control socket (see `textpoke::control`).

use std::io::{BufRead, BufReader, Write};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

/// Examples shown by `textpoke ctl --help`.
pub const EXAMPLES: &str = "Examples:
  textpoke ctl 4242 list
  textpoke ctl myapp list 'myapp::net::*' --json
  textpoke ctl myapp enable 'myapp::net::*'
  textpoke ctl 4242 set myapp::SAMPLE_SHIFT 4
  textpoke ctl 4242 trace 'myapp::db::*'      (then `list` shows the calls counted)
  textpoke ctl 4242 profile 'myapp::db::*' --seconds 2
  textpoke ctl 4242 replace-noop myapp::debug_dump   (undo: revert)

The process serves requests once it calls textpoke::control::serve() or runs with
TEXTPOKE_CONTROL=1. Exit status: 0 done, 1 the process refused the request, 2 no answer.";

/// What `textpoke ctl` was asked.
pub struct Options {
    /// A process id or an executable name.
    pub process: String,
    /// Verb and arguments.
    pub command: Vec<String>,
    /// Print JSON.
    pub json: bool,
    /// `profile` duration, in seconds.
    pub seconds: f64,
    /// Reply timeout, in seconds.
    pub timeout: f64,
}

/// Why `textpoke ctl` got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// No process, or several, go by that name.
    #[error("{0}")]
    Process(String),
    /// The socket could not be reached, or did not answer.
    #[error("{0}")]
    Socket(String),
    /// The arguments are not a request.
    #[error("{0}")]
    Usage(String),
}

impl Options {
    /// Takes the flags out of the request's words, where the command line put them: the
    /// request takes values that start with `-` (`set X -5`), so everything after the process
    /// reaches it, `--json` included.
    fn with_flags_taken(&self) -> Result<Options, CtlError> {
        let mut out = Options {
            process: self.process.clone(),
            command: Vec::new(),
            json: self.json,
            seconds: self.seconds,
            timeout: self.timeout,
        };
        let mut words = self.command.iter();
        while let Some(w) = words.next() {
            let (flag, inline) = match w.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
                _ => (w.as_str(), None),
            };
            let mut number = |name: &str| -> Result<f64, CtlError> {
                inline
                    .clone()
                    .or_else(|| words.next().cloned())
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| CtlError::Usage(format!("{name} takes a number of seconds")))
            };
            match flag {
                "--json" => out.json = true,
                "--seconds" => out.seconds = number("--seconds")?,
                "--timeout" => out.timeout = number("--timeout")?,
                _ => out.command.push(w.clone()),
            }
        }
        Ok(out)
    }
}

/// Runs `textpoke ctl`.
pub fn run(options: &Options) -> ExitCode {
    let options = match options.with_flags_taken() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("textpoke ctl: {e}");
            return ExitCode::from(2);
        }
    };
    let options = &options;
    match run_checked(options) {
        Ok(reply) => {
            let ok = reply.get("ok").and_then(Value::as_bool) == Some(true);
            if options.json {
                println!("{reply}");
            } else {
                print_text(&reply);
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            if options.json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": false, "errors": [e.to_string()] })
                );
            } else {
                eprintln!("textpoke ctl: {e}");
            }
            ExitCode::from(2)
        }
    }
}

fn run_checked(options: &Options) -> Result<Value, CtlError> {
    let pid = resolve(&options.process)?;
    let timeout = Duration::try_from_secs_f64(options.timeout)
        .map_err(|_| CtlError::Usage(format!("--timeout {} is not a duration", options.timeout)))?;
    let words: Vec<&str> = options.command.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["profile", pattern] => {
            let seconds = Duration::try_from_secs_f64(options.seconds).map_err(|_| {
                CtlError::Usage(format!("--seconds {} is not a duration", options.seconds))
            })?;
            let started = send(pid, &format!("profile-start {pattern}"), timeout)?;
            if started.get("ok").and_then(Value::as_bool) != Some(true) {
                return Ok(started);
            }
            std::thread::sleep(seconds);
            send(pid, &format!("profile-stop {pattern}"), timeout)
        }
        ["profile", ..] => Err(CtlError::Usage(
            "`profile` takes one pattern (and --seconds)".into(),
        )),
        _ => {
            if words
                .iter()
                .any(|w| w.chars().any(char::is_whitespace) || w.is_empty())
            {
                return Err(CtlError::Usage(
                    "arguments are patterns and values: no spaces, none empty".into(),
                ));
            }
            send(pid, &words.join(" "), timeout)
        }
    }
}

/// Sends one request line to process `pid` and reads its JSON reply.
pub fn send(pid: u32, line: &str, timeout: Duration) -> Result<Value, CtlError> {
    let (mut stream, name) =
        textpoke::control::connect(pid).map_err(|e| CtlError::Socket(e.to_string()))?;
    let io = |e: std::io::Error| CtlError::Socket(format!("{name}: {e}"));
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    stream
        .write_all(format!("{line}\n").as_bytes())
        .map_err(io)?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).map_err(io)?;
    if reply.is_empty() {
        return Err(CtlError::Socket(format!("{name}: closed without a reply")));
    }
    serde_json::from_str(&reply)
        .map_err(|e| CtlError::Socket(format!("{name}: the reply is not JSON: {e}")))
}

/// The process id named by `process`: an id, or the name of the one serving process whose
/// executable (or `comm`) has that name.
pub fn resolve(process: &str) -> Result<u32, CtlError> {
    if let Ok(pid) = process.parse::<u32>() {
        return Ok(pid);
    }
    let unix = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    let me = std::process::id();
    let mut found: Vec<u32> = std::fs::read_dir("/proc")
        .map_err(|e| CtlError::Process(format!("cannot list /proc: {e}")))?
        .filter_map(|d| d.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && names_of(pid).iter().any(|n| n == process))
        .filter(|&pid| serves(&unix, pid))
        .collect();
    found.sort_unstable();
    match found.as_slice() {
        [pid] => Ok(*pid),
        [] => Err(CtlError::Process(format!(
            "no process named `{process}` serves textpoke control (start it with \
             TEXTPOKE_CONTROL=1, or call textpoke::control::serve())"
        ))),
        many => Err(CtlError::Process(format!(
            "{} processes named `{process}` serve textpoke control ({}): name one by its id",
            many.len(),
            many.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The names process `pid` goes by: its `comm` and its executable's file name.
fn names_of(pid: u32) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        names.push(comm.trim_end().to_owned());
    }
    if let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe"))
        && let Some(name) = exe.file_name().and_then(|n| n.to_str())
    {
        names.push(name.trim_end_matches(" (deleted)").to_owned());
    }
    names
}

/// Whether `/proc/net/unix` (its text) lists a control socket of `pid`.
fn serves(unix: &str, pid: u32) -> bool {
    let abstract_name = format!("@textpoke-{pid}");
    let file_name = format!("/textpoke-{pid}.sock");
    unix.lines()
        .filter_map(|l| l.split_whitespace().nth(7))
        .any(|path| path == abstract_name || path.ends_with(&file_name))
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// The reply for a person: errors, then each object's items in columns, then profile rows.
fn print_text(reply: &Value) {
    let empty = Vec::new();
    let array = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_array)
            .unwrap_or(&empty)
            .clone()
    };
    for e in array(reply, "errors") {
        eprintln!("textpoke ctl: {}", e.as_str().unwrap_or_default());
    }
    for copy in array(reply, "copies") {
        let items = array(&copy, "items");
        let profile = array(&copy, "profile");
        if items.is_empty() && profile.is_empty() {
            continue;
        }
        println!("{}:", text(&copy, "object"));
        let rows: Vec<[String; 4]> = items
            .iter()
            .map(|i| {
                if i.get("stopped").is_some() {
                    return [
                        "stopped".into(),
                        text(i, "stopped"),
                        String::new(),
                        String::new(),
                    ];
                }
                let mut state = text(i, "state");
                if let Some(calls) = i.get("calls") {
                    state = format!("{state}, {calls} calls");
                }
                [
                    text(i, "kind"),
                    text(i, "name"),
                    state,
                    format!("{} sites", text(i, "sites")),
                ]
            })
            .collect();
        let width = |n: usize| rows.iter().map(|r| r[n].chars().count()).max().unwrap_or(0);
        let (w0, w1, w2) = (width(0), width(1), width(2));
        for r in &rows {
            println!("  {:w0$}  {:w1$}  {:w2$}  {}", r[0], r[1], r[2], r[3]);
        }
        for p in &profile {
            let ms = |key: &str| p.get(key).and_then(Value::as_f64).unwrap_or(0.0) / 1e6;
            println!(
                "  {}  {} calls  {:.3} ms total  {:.3} ms max",
                text(p, "name"),
                text(p, "calls"),
                ms("total_ns"),
                ms("max_ns")
            );
        }
    }
    if reply.get("ok").and_then(Value::as_bool) == Some(true) {
        println!("{} matched", text(reply, "matched"));
    }
}
