//! `textpoke demo --serve` under `textpoke ctl`: the demo's own key and immediate, changed from
//! another process, make its heartbeat appear, and `list --json` shows the key on; then every
//! verb, in text and JSON, and the process named by its executable's name.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_textpoke");
const CHATTY: &str = "textpoke_cli::demo::served::CHATTY";
const INTERVAL_MS: &str = "textpoke_cli::demo::served::INTERVAL_MS";
const HEARTBEAT: &str = "textpoke_cli::demo::served::heartbeat";

/// How long each step may take before the test gives up.
const STEP: Duration = Duration::from_secs(10);

/// Kills the demo on every path out of the test, a failed assertion's included.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `textpoke ctl PID ARGS..`, bounded by its own `--timeout`.
fn ctl(pid: u32, args: &[&str]) -> Output {
    Command::new(EXE)
        .arg("ctl")
        .arg(pid.to_string())
        .args(args)
        .args(["--timeout", "5"])
        .output()
        .expect("run textpoke ctl")
}

fn describe(out: &Output) -> String {
    format!(
        "{}; stdout: {}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Forwards each line of `from` to a channel, so that the test can wait for one with a bound.
fn lines(from: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn ctl_changes_the_served_demo() {
    let mut child = Command::new(EXE)
        .args(["demo", "--serve", "--seconds", "20", "--sites", "1000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the demo");
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let demo = Reaper(child);
    let pid = demo.0.id();
    let out = lines(stdout);
    let err = lines(stderr);

    // The socket comes up once the demo has started: ask until it answers.
    let start = Instant::now();
    loop {
        let r = ctl(pid, &["list", CHATTY, "--json"]);
        if r.status.success() {
            break;
        }
        assert!(
            start.elapsed() < STEP,
            "the demo never served: {}; demo stderr: {:?}",
            describe(&r),
            err.try_iter().collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    for args in [&["enable", CHATTY][..], &["set", INTERVAL_MS, "50"]] {
        let r = ctl(pid, args);
        assert!(r.status.success(), "ctl {args:?}: {}", describe(&r));
    }

    let deadline = Instant::now() + STEP;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match out.recv_timeout(left) {
            Ok(line) if line.starts_with("demo: heartbeat") => break,
            Ok(line) => seen.push(line),
            Err(RecvTimeoutError::Timeout) => panic!(
                "no heartbeat within {STEP:?}; stdout: {seen:?}; stderr: {:?}",
                err.try_iter().collect::<Vec<_>>()
            ),
            Err(RecvTimeoutError::Disconnected) => panic!(
                "the demo closed stdout without a heartbeat; stdout: {seen:?}; stderr: {:?}",
                err.try_iter().collect::<Vec<_>>()
            ),
        }
    }

    let r = ctl(pid, &["list", "--json"]);
    assert!(r.status.success(), "ctl list: {}", describe(&r));
    let reply: serde_json::Value = serde_json::from_slice(&r.stdout).expect("a JSON reply");
    assert_eq!(reply["ok"], true, "{reply}");
    let chatty: Vec<&serde_json::Value> = reply["copies"]
        .as_array()
        .expect("copies")
        .iter()
        .flat_map(|c| c["items"].as_array().expect("items"))
        .filter(|i| i["name"] == CHATTY)
        .collect();
    assert_eq!(chatty.len(), 1, "{reply}");
    assert_eq!(chatty[0]["kind"], "key", "{reply}");
    assert_eq!(chatty[0]["enabled"], true, "{reply}");
    let interval = reply["copies"][0]["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["name"] == INTERVAL_MS);
    assert_eq!(
        interval.map(|i| i["value"].clone()),
        Some("50".into()),
        "{reply}"
    );
    every_verb(pid);
    drop(demo);
}

/// The one item a `--json` reply lists.
fn only_item(out: &Output) -> serde_json::Value {
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON reply");
    let items: Vec<serde_json::Value> = reply["copies"]
        .as_array()
        .expect("copies")
        .iter()
        .flat_map(|c| c["items"].as_array().expect("items").clone())
        .collect();
    assert_eq!(items.len(), 1, "{reply}");
    items[0].clone()
}

/// Runs `ctl` and checks its exit code and output.
fn expect(pid: u32, args: &[&str], code: i32, needle: &str) -> Output {
    let r = ctl(pid, args);
    let text = describe(&r);
    assert_eq!(r.status.code(), Some(code), "ctl {args:?}: {text}");
    assert!(
        text.contains(needle),
        "ctl {args:?} lacks {needle:?}: {text}"
    );
    r
}

fn every_verb(pid: u32) {
    let pattern = "textpoke_cli::demo::served::*";
    expect(pid, &["list", pattern], 0, "3 matched");
    expect(pid, &["disable", CHATTY], 0, "off");
    expect(pid, &["enable", CHATTY], 0, "on");
    expect(pid, &["set", INTERVAL_MS, "10"], 0, "10");
    expect(pid, &["set", INTERVAL_MS, "-1"], 1, "negative");
    expect(pid, &["set", CHATTY, "sideways"], 1, "`on` or `off`");
    expect(pid, &["enable", "nothing::*"], 1, "nothing matches");
    expect(pid, &["frobnicate", "x"], 1, "unknown verb");
    expect(pid, &["trace", HEARTBEAT], 0, "traced");
    let start = Instant::now();
    loop {
        let item = only_item(&expect(pid, &["list", HEARTBEAT, "--json"], 0, "calls"));
        if item["calls"].as_i64().is_some_and(|n| n > 0) {
            break;
        }
        assert!(start.elapsed() < STEP, "the trace counted no call: {item}");
        std::thread::sleep(Duration::from_millis(50));
    }
    expect(pid, &["untrace", "*"], 0, "stopped");
    let r = expect(
        pid,
        &["profile", HEARTBEAT, "--seconds", "0.3", "--json"],
        0,
        "profile",
    );
    let reply: serde_json::Value = serde_json::from_slice(&r.stdout).expect("a JSON reply");
    let rows = reply["copies"][0]["profile"]
        .as_array()
        .expect("profile rows")
        .clone();
    assert!(
        rows.iter()
            .any(|p| p["name"] == HEARTBEAT && p["calls"].as_i64() > Some(0)),
        "{reply}"
    );
    expect(pid, &["replace-noop", HEARTBEAT], 0, "no-op");
    assert_eq!(
        only_item(&ctl(pid, &["list", HEARTBEAT, "--json"]))["noop"],
        true
    );
    expect(pid, &["revert", HEARTBEAT], 0, "1 matched");
    assert_eq!(
        only_item(&ctl(pid, &["list", HEARTBEAT, "--json"]))["state"],
        "off"
    );
    expect(pid, &["alternatives"], 0, "0 matched");
    // By its executable's name, when it is the only serving process of that name.
    let by_name = Command::new(EXE)
        .args(["ctl", "textpoke", "list", CHATTY, "--json"])
        .output()
        .expect("run textpoke ctl");
    let text = describe(&by_name);
    if text.contains("processes named `textpoke`") {
        // Someone else's served `textpoke` runs beside this test: the name is ambiguous, and
        // the refusal must say so and list this demo among them.
        assert_eq!(by_name.status.code(), Some(2), "{text}");
        assert!(text.contains(&pid.to_string()), "{text}");
    } else {
        assert!(by_name.status.success(), "{text}");
        assert_eq!(only_item(&by_name)["enabled"], true);
    }
    let r = Command::new(EXE)
        .args(["ctl", "no-such-program-here", "list"])
        .output()
        .expect("run textpoke ctl");
    assert_eq!(r.status.code(), Some(2), "{}", describe(&r));
}
