//! `textpoke demo --serve` under `textpoke ctl`: the demo's own key and immediate, changed from
//! another process, make its heartbeat appear, and `list --json` shows the key on.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_textpoke");
const CHATTY: &str = "textpoke_cli::demo::served::CHATTY";
const INTERVAL_MS: &str = "textpoke_cli::demo::served::INTERVAL_MS";

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
    drop(demo);
}
