//! Static calls declared under one path by two crates of one program link, and stay apart
//! (issue 8, item 6).
//!
//! Builds the fixture workspace `tests/fixtures/link` with a nested cargo (once per run of this
//! test binary), then runs its programs and reads their symbol tables:
//! - `twin`: a package whose `src/lib.rs` and `src/main.rs` (two crates, both named `twin`) each
//!   declare `pub static HASH` and `pub static ONES`;
//! - `app`: links versions 1.0.0 and 2.0.0 of the package `hash`, both declaring
//!   `pub static HASH` and `pub inline static FAST`.
//!
//! With trampolines named after the module path only, neither program links (`duplicate
//! symbol: textpoke_trampoline::twin::HASH`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The longest the fixture build may take. The first build compiles textpoke and its
/// dependencies (debug) into `target/fixtures`: under a minute on 2 vCPUs.
const BUILD_LIMIT: Duration = Duration::from_secs(600);

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/link")
}

/// A target directory of its own: a nested cargo sharing the outer one would wait forever on
/// its lock.
fn target_dir() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = crate_dir.ancestors().nth(2).unwrap_or(crate_dir);
    workspace.join("target/fixtures")
}

fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(Into::into))
        .unwrap_or_else(|| "cargo".into())
}

/// Builds every binary of the fixture workspace once; `Err` holds a report with cargo's output.
fn build() -> Result<&'static Path, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(run_build)
        .as_deref()
        .map_err(|e| e.clone())
}

fn run_build() -> Result<PathBuf, String> {
    let manifest = fixture().join("Cargo.toml");
    let target = target_dir();
    let mut cmd = Command::new(cargo());
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .args([
            "--workspace",
            "--bins",
            "--locked",
            "--keep-going",
            "--color",
            "never",
        ])
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = format!("{cmd:?}");
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("could not start `{shown}`: {e}"))?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if started.elapsed() > BUILD_LIMIT => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("timed out after {BUILD_LIMIT:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => break Err(format!("could not wait for cargo: {e}")),
        }
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    let report = |why: &str| {
        format!(
            "building the link fixture failed ({why}).\n\
             A `duplicate symbol: textpoke_trampoline::...` error from the linker means two \
             crates of one program emitted the same trampoline name.\n\
             command: {shown}\n--- cargo stderr ---\n{err}\n--- cargo stdout ---\n{out}"
        )
    };
    match status {
        Ok(s) if s.success() => {
            eprintln!(
                "link fixture built in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            Ok(target.join("debug"))
        }
        Ok(s) => Err(report(&s.to_string())),
        Err(why) => Err(report(&why)),
    }
}

fn built(bin: &str) -> PathBuf {
    match build() {
        Ok(dir) => dir.join(bin),
        Err(report) => panic!("{report}"),
    }
}

/// Runs a fixture program and checks that every one of its checks passed.
fn run_fixture(bin: &str) {
    let path = built(bin);
    let output = Command::new(&path)
        .output()
        .unwrap_or_else(|e| panic!("could not run {}: {e}", path.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.trim_end().ends_with("checks, 0 failed"),
        "{bin} failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status
    );
}

/// The trampoline symbols in a fixture binary, from `nm`; `None` if `nm` is not installed.
fn trampoline_symbols(bin: &str) -> Option<Vec<String>> {
    let path = built(bin);
    let output = match Command::new("nm").arg(&path).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("nm is not installed: symbol names not checked");
            return None;
        }
        Err(e) => panic!("could not run nm: {e}"),
    };
    assert!(
        output.status.success(),
        "nm {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let mut names: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        // `address type name`; the name is the rest of the line.
        .filter_map(|line| line.splitn(3, ' ').nth(2))
        .filter(|name| name.starts_with("textpoke_trampoline::"))
        .map(String::from)
        .collect();
    names.sort();
    Some(names)
}

/// Each name is unique, unmangled and printable, with no spaces and no `@` (which linkers
/// read as a symbol version).
fn assert_readable_and_distinct(bin: &str, names: &[String]) {
    for name in names {
        assert!(
            name.chars().all(|c| c.is_ascii_graphic()) && !name.contains('@'),
            "{bin}: trampoline symbol {name:?} is not plain printable ASCII without `@`"
        );
    }
    let mut unique = names.to_vec();
    unique.dedup();
    assert_eq!(unique, names, "{bin}: a trampoline symbol appears twice");
}

#[test]
fn lib_and_bin_of_one_package_declare_the_same_static_call() {
    run_fixture("twin");
}

#[test]
fn two_major_versions_of_one_crate_declare_the_same_static_call() {
    run_fixture("app");
}

#[test]
fn trampoline_symbols_are_distinct_and_readable() {
    let Some(twin) = trampoline_symbols("twin") else {
        return;
    };
    assert_readable_and_distinct("twin", &twin);
    // Cargo names a workspace member's sources relative to the workspace root.
    assert_eq!(
        twin,
        [
            "textpoke_trampoline::twin::HASH<twin/src/lib.rs>",
            "textpoke_trampoline::twin::HASH<twin/src/main.rs>",
            "textpoke_trampoline::twin::ONES<twin/src/lib.rs>",
            "textpoke_trampoline::twin::ONES<twin/src/main.rs>",
        ],
        "twin: trampoline symbols"
    );

    let Some(app) = trampoline_symbols("app") else {
        return;
    };
    assert_readable_and_distinct("app", &app);
    assert_eq!(
        app,
        [
            "textpoke_trampoline::hash::FAST<hash-v1/src/lib.rs>",
            "textpoke_trampoline::hash::FAST<hash-v2/src/lib.rs>",
            "textpoke_trampoline::hash::HASH<hash-v1/src/lib.rs>",
            "textpoke_trampoline::hash::HASH<hash-v2/src/lib.rs>",
        ],
        "app: trampoline symbols"
    );
}
