//! `textpoke`: live code patching tools. `textpoke demo` is a stress test of static keys and
//! static calls.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use textpoke_cli::demo;

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
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Demo {
            seconds,
            threads,
            sites,
            json,
        } => run_demo(seconds, threads, sites, json),
    }
}

fn run_demo(seconds: f64, threads: usize, sites: usize, json: bool) -> ExitCode {
    let Ok(duration) = Duration::try_from_secs_f64(seconds) else {
        eprintln!("textpoke demo: --seconds {seconds} is not a valid duration");
        return ExitCode::from(2);
    };
    let config = demo::Config {
        duration,
        threads,
        sites,
        progress: !json,
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
    println!(
        "{} worker threads called {} sites {} times in {:.1} s ({} on the enabled path)",
        r.threads, r.sites, r.calls, r.seconds, r.calls_enabled
    );
    println!(
        "{} changes ({} key flips over {} keys, {} sites each): median {:.1} µs, p99 {:.1} µs",
        r.toggles, r.key_toggles, r.keys, r.sites_per_key, r.toggle_us_median, r.toggle_us_p99
    );
    println!(
        "{} static calls called {} times, retargeted {} times",
        r.static_calls, r.static_call_calls, r.static_call_updates
    );
    println!(
        "breakpoint traps: {} emulated, {} re-executed",
        r.traps_emulated, r.traps_rewound
    );
    for e in &r.errors {
        println!("error: {e}");
    }
    if r.ok() {
        println!("inconsistencies: 0 — every call matched its key's or static call's history");
    } else {
        println!("inconsistencies: {} — FAILED", r.inconsistencies);
    }
}
