//! `textpoke decode` run as a command on the real `Code:` lines of the reference threads.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// Reference 004 (2.6.25-git2 `__d_lookup` oops on x86-64), as Ingo Molnar quoted it: a
/// `Code:` line wrapped by the mail client over three lines, then his underline.
const X86_004: &str = "\
Code: f6 43 04 10 75 06 f0 ff 03 48 89 d8 fe 43 08 eb 31 fe 43 08 48 8b 
45 d0 48 8b 00 48 89 45 d0 48 8b 45 d0 48 85 c0 74 18 48 89 c2 <48> 8b 
00 48 8d 5a e8 44 39 73 30 0f 18 08 75 d9 e9 6a ff ff ff
                           ========
";

/// Reference 002 (arm64 boot `BUG()` from a stale build), lines 58, 98 and 159, as quoted.
const ARM64_002_58: &str = "> > [ 0.431045] Code: 39402e61 39402a62 6b01005f 54fff500 (d4210000)";
const ARM64_002_98: &str = "> [ 0.496588] Code: 39402e61 39402a62 6b01005f 54fff6a0 (d4210000)";
const ARM64_002_159: &str = "[ 0.482449] Code: 8b040264 d63f0080 f94006a1 17ffffc9 (d4210000)";

fn textpoke(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_textpoke"))
        .arg("decode")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn ok(args: &[&str], stdin: Option<&str>) -> String {
    let out = textpoke(args, stdin);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {:?}\n{stderr}", out.status);
    String::from_utf8(out.stdout).unwrap()
}

fn json(args: &[&str], stdin: Option<&str>) -> Vec<Value> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    match serde_json::from_str(&ok(&all, stdin)).unwrap() {
        Value::Array(items) => items,
        other => panic!("not an array: {other}"),
    }
}

/// The one marked instruction of a `--json` output.
fn marked(items: &[Value]) -> &Value {
    let marked: Vec<_> = items.iter().filter(|i| i["marked"] == true).collect();
    assert_eq!(marked.len(), 1, "{items:?}");
    marked[0]
}

fn find<'a>(items: &'a [Value], bytes: &str) -> &'a Value {
    items.iter().find(|i| i["bytes"] == bytes).unwrap()
}

#[test]
fn x86_reference_004_from_arguments_and_stdin() {
    for items in [json(&[X86_004], None), json(&[], Some(X86_004))] {
        let m = marked(&items);
        assert_eq!(m["offset"], 0x2b);
        assert_eq!(m["len"], 3);
        assert_eq!(m["bytes"], "48 8b 00");
        assert_eq!(m["text"], "mov rax,[rax]");
        let prefetch = find(&items, "0f 18 08");
        assert_eq!(prefetch["text"], "prefetcht0 [rax]");
        assert_eq!(prefetch["is_nop"], false);
        assert_eq!(find(&items, "48 8d 5a e8")["text"], "lea rbx,[rdx-0x18]");
        assert_eq!(find(&items, "e9 6a ff ff ff")["text"], "jmp -0x56");
        let covered: u64 = items.iter().map(|i| i["len"].as_u64().unwrap()).sum();
        assert_eq!(covered, 64);
    }
}

#[test]
fn x86_reference_004_table() {
    let out = ok(&[X86_004], None);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "# x86-64, Intel syntax: 64 bytes, faulting instruction marked at offset 0x2b"
    );
    assert!(lines.contains(&"  0x2b  48 8b 00             mov rax,[rax]    <-- faulting (marked)"));
    assert!(lines.contains(&"  0x36  0f 18 08             prefetcht0 [rax]"));
    // A header plus one line per instruction: 20 instructions in 64 bytes.
    assert_eq!(lines.len(), 2 + 20, "{out}");
}

#[test]
fn x86_att_syntax() {
    let items = json(&["--att", X86_004], None);
    assert_eq!(marked(&items)["text"], "mov (%rax),%rax");
    assert_eq!(find(&items, "0f 18 08")["text"], "prefetcht0 (%rax)");
    let out = ok(&["--att", X86_004], None);
    assert!(out.starts_with("# x86-64, AT&T syntax:"), "{out}");
}

#[test]
fn arm64_reference_002() {
    for line in [ARM64_002_58, ARM64_002_98, ARM64_002_159] {
        let items = json(&[line], None);
        assert_eq!(items.len(), 5);
        let m = marked(&items);
        assert_eq!(m["offset"], 16);
        assert_eq!(m["len"], 4);
        assert_eq!(m["bytes"], "d4210000");
        assert_eq!(m["text"], "brk #0x800");
        assert!(items.iter().all(|i| i["is_nop"] == false));
    }
    let texts = |line| -> Vec<String> {
        json(&[], Some(line))
            .iter()
            .map(|i| i["text"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        texts(ARM64_002_58),
        [
            "ldrb w1, [x19, #0xb]",
            "ldrb w2, [x19, #0xa]",
            "cmp w2, w1",
            "b.eq -0x154",
            "brk #0x800"
        ]
    );
    assert_eq!(texts(ARM64_002_98)[3], "b.eq -0x120");
    assert_eq!(
        texts(ARM64_002_159),
        [
            "add x4, x19, x4",
            "blr x4",
            "ldr x1, [x21, #0x8]",
            "b -0xd0",
            "brk #0x800"
        ]
    );
    let out = ok(&[ARM64_002_58], None);
    assert!(out.contains("  0x10  d4210000       brk #0x800    <-- faulting (marked)"));
}

#[test]
fn json_shape() {
    let items = json(&["0f 1f 44 00 00 <f3> 90 c3"], None);
    assert_eq!(items.len(), 3);
    for item in &items {
        let keys: Vec<&str> = item
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let mut want = ["offset", "len", "bytes", "text", "is_nop", "marked"];
        want.sort_unstable();
        let mut keys = keys.clone();
        keys.sort_unstable();
        assert_eq!(keys, want);
        assert!(item["offset"].is_u64() && item["len"].is_u64());
        assert!(item["bytes"].is_string() && item["text"].is_string());
        assert!(item["is_nop"].is_boolean() && item["marked"].is_boolean());
    }
    assert_eq!(items[0]["bytes"], "0f 1f 44 00 00");
    assert_eq!(items[0]["is_nop"], true);
    // PAUSE is not a NOP, whatever it looks like.
    assert_eq!(items[1]["text"], "pause");
    assert_eq!(items[1]["is_nop"], false);
    assert_eq!(items[1]["marked"], true);
}

#[test]
fn plain_bytes_and_forced_arch() {
    let spaced = json(&["0f", "1f", "44", "00", "00", "c3"], None);
    let packed = json(&["0f1f440000c3"], None);
    assert_eq!(spaced, packed);
    assert_eq!(spaced.len(), 2);
    assert!(spaced.iter().all(|i| i["marked"] == false));
    // 8 hex digits read as an arm64 word unless told otherwise.
    assert_eq!(json(&["d503201f"], None)[0]["is_nop"], true);
    let x86 = json(&["--arch", "x86-64", "0f1f4000"], None);
    assert_eq!(
        (x86[0]["text"].as_str(), x86[0]["is_nop"].as_bool()),
        (Some("nop [rax]"), Some(true))
    );
    let arm = json(&["--arch", "aarch64", "1f 20 03 d5"], None);
    assert_eq!(
        (arm[0]["bytes"].as_str(), arm[0]["is_nop"].as_bool()),
        (Some("d503201f"), Some(true))
    );
}

#[test]
fn bad_input_exits_2_with_a_message() {
    let cases: &[(&[&str], Option<&str>, &str)] = &[
        (&["0f 1"], None, "odd number of hex digits"),
        (&["0f1f4"], None, "odd number of hex digits"),
        (&["0f zz"], None, "not hex"),
        (&[], Some(""), "no machine code given"),
        (&[], Some("  \n\n"), "no machine code given"),
        (&["<48> 8b <00>"], None, "two marked"),
        (&["39402e61 48 8b"], None, "mixed sizes"),
        (&["48 (8b) 00"], None, "marked <48>"),
        (&["39402e61 <d4210000>"], None, "marked (d4210000)"),
        (
            &["Code: Unable to access opcode bytes at 0x36."],
            None,
            "not hex",
        ),
        (&["--arch", "aarch64", "1f 20 03"], None, "4-byte aarch64"),
        (&["--arch", "sparc", "90"], None, "invalid value"),
        (
            &["--att", "39402e61 (d4210000)"],
            None,
            "--att applies to x86-64 only",
        ),
    ];
    for (args, stdin, message) in cases {
        let out = textpoke(args, *stdin);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn json_errors_are_json() {
    let out = textpoke(&["--json", "0f zz"], None);
    assert_eq!(out.status.code(), Some(2));
    let v: Value = serde_json::from_slice(&out.stdout).expect("a JSON error object on stdout");
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("not hex")),
        "{v}"
    );
}

#[test]
fn skipped_leading_bytes_are_not_called_bad() {
    // `d0` ends an instruction that began before the line.
    let text = ok(&["d0 48 89 c2 <48> 8b 00 c3"], None);
    assert!(text.contains("(skipped)"), "{text}");
    assert!(!text.contains("(bad)"), "{text}");
}
