//! `textpoke inspect` and `textpoke verify` run as commands on the project's own binaries (the
//! CLI, whose demo has keys, static calls, patchable functions and immediates; the plugin,
//! which has alternatives), and on damaged copies of the CLI, each damaged in one way.
//!
//! The copies are damaged with a small ELF reader of this file's own, so that the tool is
//! not checked against itself.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use textpoke_cli::demo;

const CLI: &str = env!("CARGO_BIN_EXE_textpoke");
const JUMP_TABLE: &str = "textpoke_jump_v2";
const JUMP_ENTRY: usize = 12;
const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];

fn textpoke(args: &[&str], file: &Path) -> Output {
    Command::new(CLI).args(args).arg(file).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(args: &[&str], file: &Path) -> Value {
    let out = textpoke(args, file);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}\n{}\n{}", stdout(&out), stderr(&out)))
}

/// A file of this test process's own in the temporary directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, bytes: &[u8]) -> TempFile {
        let path = std::env::temp_dir().join(format!(
            "textpoke-inspect-test-{}-{name}",
            std::process::id()
        ));
        std::fs::write(&path, bytes).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One section header of a 64-bit little-endian ELF file.
#[derive(Debug)]
struct Section {
    name: String,
    /// File offset of its name in the section-name string table.
    name_at: usize,
    /// File offset of its header.
    header_at: usize,
    addr: u64,
    offset: u64,
    size: u64,
}

fn u16_at(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap()).into()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn sections(elf: &[u8]) -> Vec<Section> {
    let (shoff, shentsize) = (u64_at(elf, 0x28) as usize, u16_at(elf, 0x3a));
    let (shnum, shstrndx) = (u16_at(elf, 0x3c), u16_at(elf, 0x3e));
    let header = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(elf, header(shstrndx) + 24) as usize;
    (0..shnum)
        .map(|i| {
            let h = header(i);
            let name_at = strtab + u32_at(elf, h) as usize;
            let len = elf[name_at..].iter().position(|&b| b == 0).unwrap();
            Section {
                name: String::from_utf8_lossy(&elf[name_at..name_at + len]).into_owned(),
                name_at,
                header_at: h,
                addr: u64_at(elf, h + 16),
                offset: u64_at(elf, h + 24),
                size: u64_at(elf, h + 32),
            }
        })
        .collect()
}

fn section<'a>(sections: &'a [Section], name: &str) -> &'a Section {
    sections.iter().find(|s| s.name == name).unwrap()
}

/// The file offset of address `addr`.
fn file_offset(sections: &[Section], addr: u64) -> usize {
    let s = sections
        .iter()
        .find(|s| s.addr != 0 && (s.addr..s.addr + s.size).contains(&addr))
        .unwrap();
    (addr - s.addr + s.offset) as usize
}

/// The index of the jump-table entry whose site is `site`, and the site field's file offset.
fn jump_entry(elf: &[u8], sections: &[Section], site: u64) -> (usize, usize) {
    let table = section(sections, JUMP_TABLE);
    (0..table.size as usize / JUMP_ENTRY)
        .find_map(|i| {
            let at = table.offset as usize + i * JUMP_ENTRY;
            let field = table.addr + (i * JUMP_ENTRY) as u64;
            let rel = u32_at(elf, at) as i32;
            (field.wrapping_add_signed(rel.into()) == site).then_some((i, at))
        })
        .unwrap()
}

/// A site of the demo's KEY0 (initially disabled, `unlikely`: a 5-byte NOP).
fn key0_site() -> u64 {
    let listing = json(&["inspect", "--json"], Path::new(CLI));
    let key = listing["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "textpoke_cli::demo::sites::KEY0")
        .unwrap();
    key["site_addrs"][7].as_u64().unwrap()
}

/// Runs `verify` on `bytes` and returns its output, checking that it failed with status 1.
fn verify_fails(name: &str, bytes: &[u8]) -> (String, Value) {
    let copy = TempFile::new(name, bytes);
    let out = textpoke(&["verify"], &copy.0);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(
        text.lines()
            .all(|l| l.starts_with(&format!("{}: ", copy.0.display()))),
        "every line names the file:\n{text}"
    );
    assert!(stderr(&out).contains(" problem"), "{}", stderr(&out));
    let verdict = json(&["verify", "--json"], &copy.0);
    (text, verdict)
}

#[test]
fn inspect_lists_the_demo_keys_calls_functions_and_immediates() {
    let out = textpoke(&["inspect"], Path::new(CLI));
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    for heading in [
        "Static keys (",
        "Static calls (",
        "Patchable functions (",
        "Immediate values (",
    ] {
        assert!(text.contains(heading), "{heading}:\n{text}");
    }
    let key0 = text
        .lines()
        .find(|l| l.contains("textpoke_cli::demo::sites::KEY0 "))
        .unwrap_or_else(|| panic!("no KEY0 line:\n{text}"));
    assert!(
        key0.contains("crates/textpoke-cli/src/demo/sites.rs:"),
        "{key0}"
    );
    assert!(key0.contains("initially disabled"), "{key0}");
    assert!(
        key0.contains(&format!("{} sites", demo::sites::PER_KEY)),
        "{key0}"
    );
    let key3 = text
        .lines()
        .find(|l| l.contains("textpoke_cli::demo::sites::KEY3 "))
        .unwrap();
    assert!(key3.contains("initially enabled"), "{key3}");
    assert!(text.contains("textpoke_cli::demo::calls::CALL0"), "{text}");
    assert!(text.contains("textpoke_cli::demo::functions::a0"), "{text}");
    let wide = text
        .lines()
        .find(|l| l.contains("textpoke_cli::demo::immediates::WIDE "))
        .unwrap();
    assert!(wide.contains(" u64 "), "{wide}");
    let small = text
        .lines()
        .find(|l| l.contains("textpoke_cli::demo::immediates::SMALL "))
        .unwrap();
    // Its type is recorded: the bits 0x9c read as an i8.
    assert!(
        small.contains(" i8 ") && small.contains("initial -100 (0x9c)"),
        "{small}"
    );
    // A patchable function's key is shown as the function, not as an anonymous key.
    assert!(!text.contains("__TEXTPOKE_KEY"), "{text}");
}

/// The items of `listing[kind]` whose name starts with `prefix`.
fn named(listing: &Value, kind: &str, prefix: &str) -> Vec<Value> {
    listing[kind]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
        .cloned()
        .collect()
}

#[test]
fn inspect_json_has_every_kind_with_counts_and_sources() {
    let l = json(&["inspect", "--json"], Path::new(CLI));
    assert_eq!(l["file"], CLI);
    // Every item of every kind is named and has sites; keys and immediates say where they
    // were declared.
    for kind in ["keys", "static_calls", "functions", "immediates"] {
        let items = l[kind].as_array().unwrap();
        assert!(!items.is_empty(), "no {kind}");
        for i in items {
            let name = i["name"].as_str().unwrap_or_else(|| panic!("unnamed: {i}"));
            let sites = i["sites"].as_u64().unwrap();
            assert_eq!(
                i["site_addrs"].as_array().unwrap().len() as u64,
                sites,
                "{name}"
            );
            if kind != "static_calls" {
                assert!(sites > 0, "{kind} {name} has no site");
            }
            assert!(i["declared"]["line"].as_u64().unwrap() > 0, "{name}");
            assert!(
                i["declared"]["file"].as_str().unwrap().ends_with(".rs"),
                "{name}"
            );
        }
    }

    let keys = named(&l, "keys", "textpoke_cli::demo::sites::KEY");
    assert_eq!(keys.len(), demo::sites::KEYS);
    for k in &keys {
        let file = k["declared"]["file"].as_str().unwrap();
        assert_eq!(
            file, "crates/textpoke-cli/src/demo/sites.rs",
            "{}",
            k["name"]
        );
        let sites = k["sites"].as_u64().unwrap();
        assert_eq!(sites, demo::sites::PER_KEY as u64, "{}", k["name"]);
        let (likely, unlikely) = (
            k["likely"].as_u64().unwrap(),
            k["unlikely"].as_u64().unwrap(),
        );
        assert_eq!(likely + unlikely, sites, "{}", k["name"]);
    }
    let key = |n: usize| {
        let name = format!("textpoke_cli::demo::sites::KEY{n}");
        keys.iter().find(|k| k["name"] == name.as_str()).unwrap()
    };
    // KEY1: off, likely; KEY2: on, unlikely (see the demo's `key_group!`s).
    assert_eq!(key(1)["initially_enabled"], false);
    assert_eq!(key(1)["likely"], key(1)["sites"]);
    assert_eq!(key(2)["initially_enabled"], true);
    assert_eq!(key(2)["unlikely"], key(2)["sites"]);

    let calls = named(&l, "static_calls", "textpoke_cli::demo::calls::CALL");
    assert_eq!(calls.len(), demo::calls::CALLS);
    for c in &calls {
        let target = c["initial_target"].as_str().unwrap();
        assert!(target.contains("target"), "{}: {target}", c["name"]);
        assert!(c["trampoline"].as_u64().unwrap() > 0, "{}", c["name"]);
    }
    let inline: u64 = calls.iter().map(|c| c["sites"].as_u64().unwrap()).sum();
    assert!(inline >= 2, "the two inline calls have sites");

    let functions = named(&l, "functions", "textpoke_cli::demo::functions::");
    assert_eq!(functions.len(), demo::functions::FUNCTIONS);
    for f in &functions {
        let file = f["declared"]["file"].as_str().unwrap();
        assert!(file.ends_with("demo/functions.rs"), "{}: {file}", f["name"]);
    }
    // A patchable function's key is shown as the function, not as an anonymous key.
    assert!(named(&l, "keys", "textpoke_cli::demo::functions").is_empty());

    let imms = named(&l, "immediates", "textpoke_cli::demo::immediates::");
    assert_eq!(imms.len(), demo::immediates::IMMS);
    let imm = |n: &str| {
        let name = format!("textpoke_cli::demo::immediates::{n}");
        imms.iter().find(|i| i["name"] == name.as_str()).unwrap()
    };
    assert_eq!(imm("WIDE")["width"], 64);
    assert_eq!(imm("NARROW")["width"], 32);
    assert_eq!(imm("FLAG")["initial"], 0);
    for i in &imms {
        let sites = i["sites"].as_u64().unwrap();
        assert!(sites >= demo::immediates::READERS as u64, "{}", i["name"]);
    }
    let tables = l["tables"].as_array().unwrap();
    assert!(
        tables
            .iter()
            .any(|t| t["name"] == JUMP_TABLE && t["known"] == true)
    );
}

#[test]
fn verify_passes_on_the_cli_itself() {
    let out = textpoke(&["verify"], Path::new(CLI));
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with(&format!("{CLI}: ok: ")), "{text}");
    let v = json(&["verify", "--json"], Path::new(CLI));
    assert_eq!(v["problems"].as_array().unwrap().len(), 0, "{v}");
    let checked = &v["checked"];
    assert!(
        checked["jump"].as_u64().unwrap() >= demo::sites::MAX_SITES as u64,
        "{v}"
    );
    assert!(
        checked["call"].as_u64().unwrap() >= demo::calls::CALLS as u64,
        "{v}"
    );
    assert!(checked["fn"].as_u64().unwrap() > 0, "{v}");
    assert!(checked["imm"].as_u64().unwrap() > 0, "{v}");
    assert!(checked["boundaries"].as_u64().unwrap() > 0, "{v}");
}

#[test]
fn the_plugin_is_inspected_and_verified() {
    let plugin = TempFile::new("libtextpoke_plugin.so", textpoke_fixture::PLUGIN);
    let l = json(&["inspect", "--json"], &plugin.0);
    assert_eq!(l["kind"], "shared object");
    assert!(!l["keys"].as_array().unwrap().is_empty(), "{l}");
    assert!(
        l["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["declared"]["file"]
                .as_str()
                .is_some_and(|f| f.ends_with("textpoke-plugin/src/lib.rs"))),
        "{l}"
    );
    assert!(!l["static_calls"].as_array().unwrap().is_empty(), "{l}");
    let alts = l["alternatives"].as_array().unwrap();
    assert!(!alts.is_empty(), "{l}");
    for a in alts {
        let candidates = a["candidates"].as_array().unwrap();
        assert!(candidates.len() >= 2, "{a}");
        assert!(candidates.last().unwrap()["feature"].is_null(), "{a}");
        assert!(candidates[0]["feature"].is_string(), "{a}");
    }
    let text = stdout(&textpoke(&["inspect"], &plugin.0));
    assert!(
        text.contains("Alternatives (") && text.contains("default ("),
        "{text}"
    );
    let out = textpoke(&["verify"], &plugin.0);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
}

#[test]
fn verify_reports_a_site_byte_changed() {
    let mut elf = std::fs::read(CLI).unwrap();
    let sections = sections(&elf);
    let site = key0_site();
    let (entry, _) = jump_entry(&elf, &sections, site);
    let at = file_offset(&sections, site);
    assert_eq!(elf[at..at + 5], NOP5);
    elf[at + 3] = 0x08;
    let (text, v) = verify_fails("flipped", &elf);
    let line = format!("{JUMP_TABLE} entry {entry} at {site:#x}: holds `0f 1f 44 08 00`");
    assert!(text.contains(&line), "{line}:\n{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
    let p = &v["problems"][0];
    assert_eq!(p["table"], JUMP_TABLE);
    assert_eq!(p["entry"], entry);
    assert_eq!(p["addr"], site);
}

#[test]
fn verify_reports_an_entry_moved_into_an_instruction() {
    let mut elf = std::fs::read(CLI).unwrap();
    let sections = sections(&elf);
    let site = key0_site();
    let (entry, field) = jump_entry(&elf, &sections, site);
    let moved = u32_at(&elf, field).wrapping_add(2);
    elf[field..field + 4].copy_from_slice(&moved.to_le_bytes());
    let (text, v) = verify_fails("moved", &elf);
    let line = format!(
        "{JUMP_TABLE} entry {entry} at {:#x}: not on an instruction boundary",
        site + 2
    );
    assert!(text.contains(&line), "{line}:\n{text}");
    assert!(
        v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["entry"] == entry),
        "only the moved entry is wrong: {v}"
    );
}

#[test]
fn verify_reports_a_truncated_table() {
    let mut elf = std::fs::read(CLI).unwrap();
    let sections = sections(&elf);
    let table = section(&sections, JUMP_TABLE);
    let size = table.size - 4;
    let at = table.header_at + 32;
    elf[at..at + 8].copy_from_slice(&size.to_le_bytes());
    let (text, _) = verify_fails("truncated", &elf);
    let whole = size as usize / JUMP_ENTRY;
    let line = format!("{JUMP_TABLE} entry {whole} at ");
    assert!(
        text.lines()
            .any(|l| l.contains(&line) && l.contains("the table is truncated")),
        "{line}:\n{text}"
    );
}

#[test]
fn verify_reports_an_unknown_table_version() {
    let mut elf = std::fs::read(CLI).unwrap();
    let sections = sections(&elf);
    let table = section(&sections, JUMP_TABLE);
    elf[table.name_at + JUMP_TABLE.len() - 1] = b'9';
    let (text, v) = verify_fails("version", &elf);
    assert!(
        text.contains("textpoke_jump_v9 at ") && text.contains("unknown format version 9"),
        "{text}"
    );
    assert!(v["problems"][0]["entry"].is_null(), "{v}");
    // `inspect` still lists what it can read, and names the table it cannot.
    let copy = TempFile::new("version-inspect", &elf);
    let out = textpoke(&["inspect"], &copy.0);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("textpoke_jump_v9 (unknown format"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_file_that_is_not_elf_exits_2_naming_it() {
    let junk = TempFile::new("not-elf", b"#!/bin/sh\necho this is no ELF file\n");
    let name = junk.0.display().to_string();
    for command in [["inspect"], ["verify"]] {
        let out = textpoke(&command, &junk.0);
        assert_eq!(out.status.code(), Some(2), "{command:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&name) && err.contains("not an ELF file"),
            "{err}"
        );
        assert!(stdout(&out).is_empty());
    }
    let missing = junk.0.with_extension("missing");
    let out = textpoke(&["verify", "--json"], &missing);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&missing.display().to_string()),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_file_without_tables_says_so() {
    let mut elf = std::fs::read(CLI).unwrap();
    for s in sections(&elf) {
        if s.name.starts_with("textpoke_") {
            elf[s.name_at] = b'x';
        }
    }
    let copy = TempFile::new("no-tables", &elf);
    let out = textpoke(&["inspect"], &copy.0);
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("no textpoke tables"),
        "{}",
        stdout(&out)
    );
    let out = textpoke(&["verify"], &copy.0);
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("no textpoke tables"),
        "{}",
        stdout(&out)
    );
    let l = json(&["inspect", "--json"], &copy.0);
    assert!(l["tables"].as_array().unwrap().is_empty(), "{l}");
}
