//! `textpoke`: live code patching tools. `textpoke demo` is a stress test of static keys and
//! static calls; `textpoke decode` disassembles machine code from crash reports; `textpoke
//! inspect` and `verify` read and check the tables of an ELF file; `textpoke ctl` controls a
//! running process by name.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use textpoke_cli::{ctl, decode, demo, inspect};

#[derive(Parser)]
#[command(
    name = "textpoke",
    version,
    about = "Live code patching for user space"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Toggle keys and retarget static calls as fast as possible while worker threads run
    /// thousands of sites and calls, checking every call against the history of its key or
    /// static call. Exits non-zero on any inconsistency.
    Demo {
        /// How long to toggle, in seconds.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Worker threads calling sites.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Distinct sites the workers call.
        #[arg(long, default_value_t = demo::sites::MAX_SITES)]
        sites: usize,
        /// Print one JSON object instead of a summary.
        #[arg(long)]
        json: bool,
        /// Also load N copies of a plugin (a shared object with its own copy of textpoke, its
        /// own keys and static call), toggle them too, and keep unloading and reloading them
        /// while the workers call into them.
        #[arg(long, default_value_t = 0, value_name = "N")]
        plugins: usize,
        /// With --plugins: unload one plugin and load a fresh copy every this many
        /// milliseconds, the plugins in turn.
        #[arg(long, default_value_t = 10, value_name = "MS")]
        plugin_reload_ms: u64,
        /// Serve `textpoke ctl` (a Unix socket named by this process's id) while the demo runs,
        /// so that another terminal can list and toggle the demo's keys.
        #[arg(long)]
        serve: bool,
    },
    /// Disassemble machine code from a crash report: hex bytes or a kernel oops `Code:` line.
    ///
    /// Like the kernel's scripts/decodecode. Reads hex bytes, or a kernel oops `Code:` line
    /// (x86-64 with the faulting byte marked `<48>`, or arm64 32-bit words with the faulting
    /// word marked `(d4210000)`), from the arguments or standard input. Prints one line per
    /// instruction: offset, bytes, whether it is a NOP, text, and which one is the marked,
    /// faulting instruction. On x86-64 the bytes before the mark are decoded from the first
    /// offset whose instructions end exactly on the marked byte. Bad input exits with status 2.
    #[command(after_help = DECODE_EXAMPLES)]
    Decode {
        /// The code: hex bytes (`0f 1f 44 00 00 c3` or `0f1f440000c3`) or a `Code:` line,
        /// with or without its `Code:` prefix and timestamp, in one or more arguments. Read from
        /// standard input when absent.
        code: Vec<String>,
        /// The architecture [default: detected: 8-hex-digit words mean aarch64, bytes x86-64].
        #[arg(long, value_enum)]
        arch: Option<decode::Arch>,
        /// AT&T syntax instead of Intel (x86-64 only).
        #[arg(long)]
        att: bool,
        /// Print a JSON array of objects with the keys offset, len, bytes, text, is_nop and
        /// marked.
        #[arg(long)]
        json: bool,
    },
    /// List every textpoke table of an ELF executable or shared object, without running it:
    /// keys with their sites, source lines and initial states, static calls, alternatives with
    /// their candidates and CPU features, patchable functions and immediate values.
    Inspect {
        /// The ELF file.
        file: std::path::PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check every textpoke table entry of an ELF file as the runtime would, and more (like the
    /// kernel's objtool): sites in executable sections, on instruction boundaries decoded from
    /// their function's start, holding their initial bytes, jumps inside their function, no
    /// overlaps, every key resolved, known table versions. Prints one line per problem and
    /// exits non-zero if there is any.
    Verify {
        /// The ELF file.
        file: std::path::PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Control a running process that serves textpoke's control socket
    /// (`textpoke::control::serve()` or `TEXTPOKE_CONTROL=1`): list, enable, disable, set,
    /// trace, untrace, profile, replace-noop, alternatives.
    #[command(after_help = ctl::EXAMPLES)]
    Ctl {
        /// The process: its id, or its executable's name when exactly one serving process has
        /// it.
        process: String,
        /// The verb and its arguments: `list [PATTERN]`, `enable PATTERN`, `disable PATTERN`,
        /// `set NAME VALUE`, `trace PATTERN`, `untrace PATTERN`, `profile PATTERN`,
        /// `replace-noop PATTERN`, `alternatives [PATTERN]`.
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
        command: Vec<String>,
        /// Print the reply as JSON.
        #[arg(long)]
        json: bool,
        /// With `profile`: how long to profile, in seconds.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        /// Give up after this many seconds without a reply.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
    },
}

const DECODE_EXAMPLES: &str = "Examples:
  textpoke decode 0f 1f 44 00 00 c3
  textpoke decode 'Code: 48 89 c2 <48> 8b 00 48 8d 5a e8'
  textpoke decode --json 'Code: 39402e61 39402a62 6b01005f 54fff500 (d4210000)'
  dmesg | grep -m1 'Code:' | textpoke decode";

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Demo {
            seconds,
            threads,
            sites,
            json,
            plugins,
            plugin_reload_ms,
            serve,
        } => run_demo(
            seconds,
            threads,
            sites,
            json,
            (plugins, Duration::from_millis(plugin_reload_ms)),
            serve,
        ),
        Command::Inspect { file, json } => inspect::run_inspect(&file, json),
        Command::Verify { file, json } => inspect::run_verify(&file, json),
        Command::Ctl {
            process,
            command,
            json,
            seconds,
            timeout,
        } => ctl::run(&ctl::Options {
            process,
            command,
            json,
            seconds,
            timeout,
        }),
        Command::Decode {
            code,
            arch,
            att,
            json,
        } => {
            let syntax = if att {
                decode::Syntax::Att
            } else {
                decode::Syntax::Intel
            };
            run_decode(code, &decode::Options { arch, syntax, json })
        }
    }
}

fn run_decode(code: Vec<String>, options: &decode::Options) -> ExitCode {
    let input = if code.is_empty() {
        let mut raw = Vec::new();
        if let Err(e) = std::io::stdin().read_to_end(&mut raw) {
            eprintln!("textpoke decode: cannot read standard input: {e}");
            return ExitCode::from(2);
        }
        String::from_utf8_lossy(&raw).into_owned()
    } else {
        code.join(" ")
    };
    match decode::run(&input, options) {
        // A closed pipe (`| head`) is no reason to panic.
        Ok(out) => match std::io::stdout().write_all(out.as_bytes()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        },
        Err(e) => {
            if options.json {
                // Machine-readable output stays machine-readable when the input is bad.
                println!("{}", serde_json::json!({ "error": e.to_string() }));
            } else {
                eprintln!("textpoke decode: {e}");
            }
            ExitCode::from(2)
        }
    }
}

fn run_demo(
    seconds: f64,
    threads: usize,
    sites: usize,
    json: bool,
    (plugins, plugin_reload): (usize, Duration),
    serve: bool,
) -> ExitCode {
    let Ok(duration) = Duration::try_from_secs_f64(seconds) else {
        eprintln!("textpoke demo: --seconds {seconds} is not a valid duration");
        return ExitCode::from(2);
    };
    let config = demo::Config {
        duration,
        threads,
        sites,
        progress: if !json && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            demo::Progress::Bar
        } else {
            demo::Progress::Lines
        },
        plugins,
        plugin_reload,
        serve,
    };
    let report = match demo::run(&config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("textpoke demo: {e}");
            return ExitCode::from(2);
        }
    };
    if json {
        match serde_json::to_string(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("textpoke demo: cannot encode the report: {e}"),
        }
    } else {
        print_summary(&report);
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_summary(r: &demo::Report) {
    let n = |v: u64| demo::thousands(v);
    println!(
        "{} worker threads called {} sites {} times in {:.1} s ({} on the enabled path)",
        r.threads,
        n(r.sites as u64),
        n(r.calls),
        r.seconds,
        n(r.calls_enabled)
    );
    println!(
        "{} changes ({} key flips over {} keys, {} sites each): median {:.1} µs, p99 {:.1} µs",
        n(r.toggles),
        n(r.key_toggles),
        r.keys,
        n(r.sites_per_key as u64),
        r.toggle_us_median,
        r.toggle_us_p99
    );
    if r.tail.changes > 0 {
        let t = &r.tail;
        println!(
            "  the long tail: {} changes took over {}× the median; during {} of them the patching \
             thread was preempted (it lost its CPU mid-change), and they met {:.1} breakpoint \
             traps each on average, against {:.1} for all changes",
            n(t.changes),
            demo::TAIL_FACTOR,
            n(t.preempted),
            t.mean_traps,
            t.mean_traps_all
        );
    }
    println!(
        "{} static calls called {} times, retargeted {} times",
        r.static_calls,
        n(r.static_call_calls),
        n(r.static_call_updates)
    );
    println!(
        "breakpoint traps: {} emulated, {} re-executed",
        n(r.traps_emulated as u64),
        n(r.traps_rewound as u64)
    );
    println!("{}", r.functions.summary());
    println!("{}", r.immediates.summary());
    println!("{}", r.detours.summary());
    if let Some(p) = &r.plugins {
        println!(
            "{} plugins: {} loads, {} unloads (reload median {:.0} µs); {} plugin site calls \
             ({} enabled), {} plugin static calls; {} changes ({} key flips, {} retargets), \
             median {:.1} µs, p99 {:.1} µs",
            p.plugins,
            p.plugin_loads,
            p.plugin_unloads,
            p.plugin_reload_us_median,
            p.plugin_calls,
            p.plugin_calls_enabled,
            p.plugin_static_call_calls,
            p.plugin_toggles,
            p.plugin_key_toggles,
            p.plugin_static_call_updates,
            p.plugin_toggle_us_median,
            p.plugin_toggle_us_p99
        );
    }
    for e in &r.errors {
        println!("error: {e}");
    }
    if r.ok() {
        println!(
            "inconsistencies: 0 — every call and read matched its key's, static call's, function's, \
             immediate's or detour's history"
        );
    } else {
        println!("inconsistencies: {} — FAILED", r.inconsistencies);
    }
}
