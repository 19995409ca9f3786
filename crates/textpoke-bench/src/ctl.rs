//! `ctl`: what a request to textpoke's control socket costs a client, beside what a Unix
//! socket round trip costs at all and what the request costs without the socket.
//!
//! The server is a child process (this program run again, with the hidden `ctl-child`
//! subcommand) that calls `textpoke::control::serve()`, starts `busy_threads` threads running
//! the 10,000 sites of one key and the 1 site of another, and serves a trivial echo socket of
//! its own (abstract namespace, one line in, the same line out, one connection at a time):
//! the floor any one-request-per-connection server meets. It runs until its stdin closes.
//!
//! Each round, in turn (so that noise falls on every measurement alike):
//!
//! - `unix_echo_round_trip_us`: connect to the echo socket, send one line, read it back;
//! - `ctl_round_trip_us.list`: `textpoke::control::connect(pid)` (what `textpoke ctl` does),
//!   `list` of the 1-site key's exact name, read the reply line;
//! - `ctl_round_trip_us.enable`: the same with `enable`, then `disable` next round, of that key
//!   (each a batch that patches its one site while a busy thread runs it);
//! - `ctl_connect_us`: `textpoke::control::connect(pid)` alone (it looks for the socket in the
//!   runtime directories before the abstract namespace), for the share of the above it is;
//! - `list_all_ms`: `list` of everything, read whole: the registry is the whole of this
//!   program's (every site group of `toggle`, the functions of `functions`...), and
//!   `list_all_sites` is the sum of its items' `sites`;
//! - `list_10k_ms`: `list textpoke_plugin::*` of everything of one copy of the plugin the child
//!   loaded (`crates/textpoke-plugin`: its key groups of 1 to 10,000 sites, 4 keys of 8, a
//!   static call, an alternative and an immediate; `list_10k_sites` says how many sites in
//!   all): a registry of about 10,000 sites, answered by the plugin's own copy of textpoke,
//!   while this program's copy filters its own items out by the pattern;
//! - `in_process_request_us.list`: `textpoke::control::request` of the same one-key `list`,
//!   called in this (the parent) process: the request without the socket, the other process
//!   and its busy threads.
//!
//! Rounds stop at `rounds`, or earlier once `budget_s` is spent (at least [`MIN_ROUNDS`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::{BenchError, Result, sites, stats};

/// Options of the `ctl` subcommand.
#[derive(Clone, Debug, clap::Args)]
pub struct CtlArgs {
    /// Timed rounds, each taking every measurement once.
    #[arg(long, default_value_t = 200)]
    pub rounds: usize,
    /// Untimed rounds first.
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
    /// Seconds the timed rounds may take; fewer rounds are taken if they do not fit.
    #[arg(long, default_value_t = 10.0)]
    pub budget_s: f64,
    /// Threads of the serving process running static-key sites meanwhile.
    #[arg(long, default_value_t = 2)]
    pub busy_threads: usize,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Options of the hidden `ctl-child` subcommand: the serving process of `ctl`.
#[derive(Clone, Debug, clap::Args)]
pub struct ChildArgs {
    /// Threads running static-key sites until the process ends.
    #[arg(long, default_value_t = 2)]
    pub busy_threads: usize,
}

/// The fewest timed rounds taken, whatever the budget.
pub const MIN_ROUNDS: usize = 11;

/// Sites of the key the busy threads run: the registry has a key this big.
const BIG_KEY_SITES: usize = 10_000;

/// How long the child may take to say it is ready, and the longest wait for any reply.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Median and 90th percentile of one measurement.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Spread {
    /// The median.
    pub median: f64,
    /// The 90th percentile.
    pub p90: f64,
}

impl Spread {
    fn of(samples: &[f64]) -> Self {
        Spread {
            median: stats::median(samples),
            p90: stats::percentile(samples, 0.9),
        }
    }
}

/// Round trips through textpoke's control socket.
#[derive(Clone, Debug, Serialize)]
pub struct RoundTrips {
    /// Connect, `list` one key, read the reply, in µs.
    pub list: Spread,
    /// Connect, `enable` or `disable` one key (one site patched), read the reply, in µs.
    pub enable: Spread,
}

/// A request run in-process, without the socket.
#[derive(Clone, Debug, Serialize)]
pub struct InProcess {
    /// `textpoke::control::request` of the one-key `list`, in µs.
    pub list: Spread,
}

/// The results of one run.
#[derive(Clone, Debug, Serialize)]
pub struct CtlRow {
    /// Requests through textpoke's control socket, in µs.
    pub ctl_round_trip_us: RoundTrips,
    /// `textpoke::control::connect(pid)` alone, in µs.
    pub ctl_connect_us: Spread,
    /// Connect, one line and its echo, against a trivial server thread in the same child, in
    /// µs: the floor of a socket round trip.
    pub unix_echo_round_trip_us: Spread,
    /// The request without the socket, in µs.
    pub in_process_request_us: InProcess,
    /// `list` of everything through the socket, in ms.
    pub list_all_ms: Spread,
    /// Items in that reply.
    pub list_all_items: usize,
    /// Sites in that reply (the sum of its items' `sites`).
    pub list_all_sites: u64,
    /// Sites of keys in that reply.
    pub list_all_key_sites: u64,
    /// Bytes of that reply.
    pub list_all_reply_bytes: usize,
    /// `list textpoke_plugin::*` through the socket (the plugin copy's registry), in ms.
    pub list_10k_ms: Spread,
    /// Items in that reply.
    pub list_10k_items: usize,
    /// Sites in that reply (the sum of its items' `sites`).
    pub list_10k_sites: u64,
    /// The key listed and toggled.
    pub key: String,
    /// The child's control socket.
    pub socket: String,
    /// Timed rounds taken.
    pub rounds: usize,
    /// Untimed rounds first.
    pub warmup: usize,
    /// Busy threads in the child.
    pub busy_threads: usize,
    /// CPUs this process may run on.
    pub cpus: usize,
    /// How it was measured.
    pub note: String,
}

/// The `ctl-child` subcommand: serves, runs the busy threads, and prints `ready PID SOCKET
/// ECHO` once it is ready; ends when stdin closes.
pub fn child(args: &ChildArgs) -> Result<()> {
    let socket = textpoke::control::serve()?;
    let echo_name = format!("textpoke-bench-echo-{}", std::process::id());
    let echo = UnixListener::bind_addr(&abstract_addr(&echo_name)?)
        .map_err(|e| BenchError::new(format!("binding the echo socket @{echo_name}: {e}")))?;
    std::thread::Builder::new()
        .name("echo".into())
        .spawn(move || serve_echo(&echo))
        .map_err(|e| BenchError::new(format!("starting the echo thread: {e}")))?;
    // Its registry is the one `list_10k_ms` lists; it stays loaded until the child ends.
    let _plugin = textpoke_fixture::Plugin::load(0).map_err(BenchError::new)?;
    let big = group(BIG_KEY_SITES)?.textpoke_sites;
    let one = group(1)?.textpoke_sites;
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..args.busy_threads {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::black_box(big.run() + one.run());
                }
            });
        }
        let served = crate::print_line(&format!(
            "ready {} {socket} @{echo_name}",
            std::process::id()
        ))
        .and_then(|()| {
            std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())
                .map(drop)
                .map_err(|e| BenchError::new(format!("reading stdin: {e}")))
        });
        stop.store(true, Ordering::Relaxed);
        served
    })
}

fn group(size: usize) -> Result<&'static sites::SiteGroup> {
    sites::group(size).ok_or_else(|| BenchError::new(format!("no group of {size} sites")))
}

fn abstract_addr(name: &str) -> Result<SocketAddr> {
    SocketAddr::from_abstract_name(name)
        .map_err(|e| BenchError::new(format!("abstract socket name {name}: {e}")))
}

/// Echoes one line per connection, one connection at a time, forever.
fn serve_echo(listener: &UnixListener) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let mut line = String::new();
        let mut reader = BufReader::new(&stream);
        if reader.read_line(&mut line).is_ok() {
            let _ = (&stream).write_all(line.as_bytes());
        }
    }
}

/// A child process, killed however the run ends.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The serving child and its sockets.
struct Server {
    _child: Reaper,
    pid: u32,
    socket: String,
    echo: SocketAddr,
}

impl Server {
    fn start(busy_threads: usize) -> Result<Self> {
        let exe = std::env::current_exe()
            .map_err(|e| BenchError::new(format!("cannot find this program's file: {e}")))?;
        let mut child = Command::new(exe)
            .args(["ctl-child", "--busy-threads", &busy_threads.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| BenchError::new(format!("starting the ctl child: {e}")))?;
        let stdout = child.stdout.take();
        let child = Reaper(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            if let Some(out) = stdout {
                let _ = BufReader::new(out).read_line(&mut line);
            }
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(TIMEOUT).unwrap_or_default();
        let words: Vec<&str> = line.split_whitespace().collect();
        let ["ready", pid, socket, echo] = words.as_slice() else {
            return Err(BenchError::new(format!(
                "the ctl child did not say it was ready within {TIMEOUT:?} (it said {line:?})"
            )));
        };
        let server = Server {
            pid: pid
                .parse()
                .map_err(|_| BenchError::new(format!("the ctl child's pid: {line:?}")))?,
            socket: (*socket).to_owned(),
            echo: abstract_addr(echo.trim_start_matches('@'))?,
            _child: child,
        };
        Ok(server)
    }

    fn connect(&self) -> Result<UnixStream> {
        let (stream, _) = textpoke::control::connect(self.pid)
            .map_err(|e| BenchError::new(format!("connecting to the ctl child: {e}")))?;
        Ok(stream)
    }

    /// Connects, sends `line`, and reads the reply line.
    fn request(&self, line: &str) -> Result<String> {
        round_trip(self.connect()?, line)
    }

    fn echo(&self, line: &str) -> Result<String> {
        let stream = UnixStream::connect_addr(&self.echo)
            .map_err(|e| BenchError::new(format!("connecting to the echo socket: {e}")))?;
        round_trip(stream, line)
    }
}

/// Sends one line on `stream` and reads one line back.
fn round_trip(stream: UnixStream, line: &str) -> Result<String> {
    let io = |e: std::io::Error| BenchError::new(format!("control socket: {e}"));
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    (&stream)
        .write_all(format!("{line}\n").as_bytes())
        .map_err(io)?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .take(64 << 20)
        .read_line(&mut reply)
        .map_err(io)?;
    if reply.is_empty() {
        return Err(BenchError::new(format!("no reply to {line:?}")));
    }
    Ok(reply)
}

/// The reply as JSON, which must say `ok`.
fn ok_reply(line: &str, reply: &str) -> Result<Value> {
    let v: Value = serde_json::from_str(reply)?;
    if v.get("ok").and_then(Value::as_bool) != Some(true) {
        return Err(BenchError::new(format!(
            "{line:?} failed: {}",
            reply.trim()
        )));
    }
    Ok(v)
}

/// The items of a reply, over every copy.
fn items(reply: &Value) -> Vec<&Value> {
    reply
        .get("copies")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("items").and_then(Value::as_array))
        .flatten()
        .collect()
}

/// The exact name of the 1-site group's key, from an in-process `list`.
fn key_name() -> Result<String> {
    let line = "list *::sites::g1::TEXTPOKE_KEY";
    let reply = ok_reply(line, &textpoke::control::request(line))?;
    let names: Vec<&str> = items(&reply)
        .into_iter()
        .filter_map(|i| i.get("name").and_then(Value::as_str))
        .collect();
    match names.as_slice() {
        [name] => Ok((*name).to_owned()),
        _ => Err(BenchError::new(format!(
            "{line:?} should match one key, not {names:?}"
        ))),
    }
}

/// Samples of one round of every measurement.
#[derive(Default)]
struct Samples {
    echo: Vec<f64>,
    list: Vec<f64>,
    enable: Vec<f64>,
    connect: Vec<f64>,
    list_all: Vec<f64>,
    list_10k: Vec<f64>,
    in_process: Vec<f64>,
}

/// What the full list replied, the last time.
#[derive(Default)]
struct Listed {
    items: usize,
    sites: u64,
    key_sites: u64,
    bytes: usize,
    /// Items and sites of the plugin's registry.
    plugin: (usize, u64),
}

/// One round: each measurement once, its reply checked outside the timing.
fn round(server: &Server, key: &str, n: usize, s: &mut Samples, listed: &mut Listed) -> Result<()> {
    let mut reply = String::new();
    let mut timed = |line: &str, op: &mut dyn FnMut(&str) -> Result<String>| {
        stats::time_us(|| {
            reply = op(line)?;
            Ok(())
        })
        .map(|us| (us, std::mem::take(&mut reply)))
    };

    let echo_line = format!("echo {n}");
    let (us, got) = timed(&echo_line, &mut |l| server.echo(l))?;
    if got.trim_end() != echo_line {
        return Err(BenchError::new(format!("the echo server replied {got:?}")));
    }
    s.echo.push(us);

    let list = format!("list {key}");
    let (us, got) = timed(&list, &mut |l| server.request(l))?;
    let v = ok_reply(&list, &got)?;
    if v.get("matched").and_then(Value::as_u64) != Some(1) {
        return Err(BenchError::new(format!(
            "{list:?} did not match one item: {got}"
        )));
    }
    s.list.push(us);

    let on = n.is_multiple_of(2);
    let change = format!("{} {key}", if on { "enable" } else { "disable" });
    let (us, got) = timed(&change, &mut |l| server.request(l))?;
    let v = ok_reply(&change, &got)?;
    let enabled = items(&v)
        .first()
        .and_then(|i| i.get("enabled"))
        .and_then(Value::as_bool);
    if enabled != Some(on) {
        return Err(BenchError::new(format!("{change:?} left: {got}")));
    }
    s.enable.push(us);

    s.connect
        .push(stats::time_us(|| server.connect().map(drop))?);

    let (us, got) = timed("list", &mut |l| server.request(l))?;
    let v = ok_reply("list", &got)?;
    let all = items(&v);
    let sites = |i: &&Value| i.get("sites").and_then(Value::as_u64).unwrap_or(0);
    let all_bytes = got.len();
    let all_sites: u64 = all.iter().map(sites).sum();
    let key_sites = all
        .iter()
        .filter(|i| i.get("kind").and_then(Value::as_str) == Some("key"))
        .map(sites)
        .sum();
    let all_items = all.len();
    s.list_all.push(us / 1e3);

    let plugin = "list textpoke_plugin::*";
    let (us, got) = timed(plugin, &mut |l| server.request(l))?;
    let v = ok_reply(plugin, &got)?;
    let of_plugin = items(&v);
    if of_plugin.is_empty() {
        return Err(BenchError::new(format!("{plugin:?} listed nothing: {got}")));
    }
    s.list_10k.push(us / 1e3);
    *listed = Listed {
        items: all_items,
        sites: all_sites,
        key_sites,
        bytes: all_bytes,
        plugin: (of_plugin.len(), of_plugin.iter().map(sites).sum()),
    };

    let (us, got) = timed(&list, &mut |l| Ok(textpoke::control::request(l)))?;
    ok_reply(&list, &got)?;
    s.in_process.push(us);
    Ok(())
}

/// Runs the benchmark against a child serving the control socket.
pub fn run(args: &CtlArgs) -> Result<CtlRow> {
    if args.rounds == 0 {
        return Err(BenchError::new("--rounds must be at least 1"));
    }
    let budget = Duration::try_from_secs_f64(args.budget_s)
        .map_err(|_| BenchError::new(format!("--budget-s {} is not a duration", args.budget_s)))?;
    let key = key_name()?;
    let server = Server::start(args.busy_threads)?;
    let mut listed = Listed::default();
    let mut discard = Samples::default();
    for n in 0..args.warmup {
        round(&server, &key, n, &mut discard, &mut listed)?;
    }
    let mut samples = Samples::default();
    let start = Instant::now();
    let mut rounds = 0;
    while rounds < args.rounds && (rounds < MIN_ROUNDS || start.elapsed() < budget) {
        round(
            &server,
            &key,
            args.warmup + rounds,
            &mut samples,
            &mut listed,
        )?;
        rounds += 1;
    }
    // Leave the key as compiled, whichever request came last.
    ok_reply("disable", &server.request(&format!("disable {key}"))?)?;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let mut note = format!(
        "server: a child process (this program re-run) serving textpoke's control socket ({}), \
         with {} busy threads running the sites of a {BIG_KEY_SITES}-site key and of the 1-site \
         key, on {cpus} CPUs, unpinned; echo: a thread of the child echoing one line per \
         connection on an abstract Unix socket, blocking, one connection at a time; each of \
         {rounds} timed rounds (after {} untimed) takes every measurement once, in turn, each \
         reply checked outside its timing; round trips connect anew each time, through \
         textpoke::control::connect(pid) (ctl_connect_us alone); in-process: \
         textpoke::control::request in the parent, which has the same registry",
        server.socket, args.busy_threads, args.warmup
    );
    crate::mark_debug_build(&mut note);
    Ok(CtlRow {
        ctl_round_trip_us: RoundTrips {
            list: Spread::of(&samples.list),
            enable: Spread::of(&samples.enable),
        },
        ctl_connect_us: Spread::of(&samples.connect),
        unix_echo_round_trip_us: Spread::of(&samples.echo),
        in_process_request_us: InProcess {
            list: Spread::of(&samples.in_process),
        },
        list_all_ms: Spread::of(&samples.list_all),
        list_all_items: listed.items,
        list_all_sites: listed.sites,
        list_all_key_sites: listed.key_sites,
        list_all_reply_bytes: listed.bytes,
        list_10k_ms: Spread::of(&samples.list_10k),
        list_10k_items: listed.plugin.0,
        list_10k_sites: listed.plugin.1,
        key,
        socket: server.socket.clone(),
        rounds,
        warmup: args.warmup,
        busy_threads: args.busy_threads,
        cpus,
        note,
    })
}

/// Prints the results as a table on stdout.
pub fn print_table(r: &CtlRow) -> Result<()> {
    let rows = [
        ("unix echo round trip (µs)", r.unix_echo_round_trip_us),
        ("ctl list, one key (µs)", r.ctl_round_trip_us.list),
        ("ctl enable/disable (µs)", r.ctl_round_trip_us.enable),
        ("ctl connect alone (µs)", r.ctl_connect_us),
        (
            "in-process list, one key (µs)",
            r.in_process_request_us.list,
        ),
        ("ctl list, everything (ms)", r.list_all_ms),
        ("ctl list, the plugin's (ms)", r.list_10k_ms),
    ];
    crate::print_line(&format!("{:<32} {:>10} {:>10}", "request", "median", "p90"))?;
    for (name, s) in rows {
        crate::print_line(&format!("{name:<32} {:>10.1} {:>10.1}", s.median, s.p90))?;
    }
    crate::print_line(&format!(
        "everything: {} items, {} sites ({} of keys), {} bytes; key: {}; {} rounds",
        r.list_all_items,
        r.list_all_sites,
        r.list_all_key_sites,
        r.list_all_reply_bytes,
        r.key,
        r.rounds
    ))?;
    crate::print_line(&format!(
        "the plugin's: {} items, {} sites",
        r.list_10k_items, r.list_10k_sites
    ))?;
    crate::print_line(&format!("note: {}", r.note))
}
