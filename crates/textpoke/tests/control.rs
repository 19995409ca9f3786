//! Control by name: the registry, requests, `TEXTPOKE` at load and the control socket. Each
//! test runs alone in a fresh process.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use support::{fresh, fresh_env, in_child};
use textpoke::control::{self, Kind};
use textpoke::{Immediate, StaticKey, imm, static_branch_likely, static_branch_unlikely};
use textpoke_fixture::Plugin;

static ALPHA: StaticKey = StaticKey::new();
static BETA: StaticKey<true> = StaticKey::new();
static LIMIT: Immediate<i32> = Immediate::new(-5);
static CALLS: AtomicUsize = AtomicUsize::new(0);

#[inline(never)]
fn alpha() -> bool {
    static_branch_unlikely!(ALPHA)
}

#[inline(never)]
fn beta() -> bool {
    static_branch_likely!(BETA)
}

#[inline(never)]
fn limit() -> i32 {
    imm!(LIMIT)
}

/// Counts its calls: a no-op of it counts nothing.
#[textpoke::patchable]
#[inline(never)]
fn noisy() {
    CALLS.fetch_add(1, Ordering::Relaxed);
}

#[textpoke::patchable]
#[inline(never)]
fn traced_add(x: u32) -> u32 {
    x + 1
}

textpoke::static_call! {
    static HOOK: fn(u32) -> u32 = double;
}

fn double(x: u32) -> u32 {
    2 * x
}

fn ok(reply: &str) -> Value {
    let v: Value = serde_json::from_str(reply).unwrap_or_else(|e| panic!("{e}: {reply}"));
    assert_eq!(v["ok"], true, "{reply}");
    v
}

fn refused(reply: &str) -> String {
    let v: Value = serde_json::from_str(reply).unwrap_or_else(|e| panic!("{e}: {reply}"));
    assert_eq!(v["ok"], false, "{reply}");
    v["errors"].to_string()
}

/// Every item of a reply, from every copy.
fn items(v: &Value) -> Vec<Value> {
    v["copies"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["items"].as_array().unwrap().clone())
        .collect()
}

fn item<'a>(items: &'a [Value], name: &str) -> &'a Value {
    items
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {items:#?}"))
}

#[test]
fn the_registry_lists_keys_calls_functions_and_immediates_with_their_state() {
    fresh(
        "the_registry_lists_keys_calls_functions_and_immediates_with_their_state",
        || {
            assert!(!alpha() && beta() && limit() == -5);
            assert_eq!(HOOK.call(4), 8);
            let all = control::list("*").unwrap();
            let find = |name: &str| all.iter().find(|e| e.name == name).cloned();
            let a = find("control::ALPHA").unwrap_or_else(|| panic!("{all:#?}"));
            assert_eq!((a.kind, a.state.as_str(), a.sites), (Kind::Key, "off", 1));
            assert!(a.declared.as_deref().unwrap().contains("tests/control.rs"));
            assert!(
                a.object
                    .ends_with(&*std::env::current_exe().unwrap().to_string_lossy())
            );
            assert_eq!(find("control::BETA").unwrap().state, "on");
            let l = find("control::LIMIT").unwrap();
            assert_eq!((l.kind, l.state.as_str()), (Kind::Immediate, "-5"));
            let n = find("control::noisy").unwrap();
            assert_eq!((n.kind, n.state.as_str()), (Kind::Function, "off"));
            let h = all.iter().find(|e| e.kind == Kind::StaticCall).unwrap();
            assert!(
                h.name.ends_with("HOOK") && h.state.contains("double"),
                "{h:?}"
            );
            // Patchable functions' own keys are functions, not anonymous keys.
            assert!(
                all.iter().all(|e| !e.name.contains("__TEXTPOKE_KEY")),
                "{all:#?}"
            );
            assert_eq!(control::list("control::B*").unwrap().len(), 1);

            let v = ok(&control::request("list control::*"));
            let items = items(&v);
            assert_eq!(item(&items, "control::ALPHA")["enabled"], false);
            assert_eq!(item(&items, "control::ALPHA")["count"], 0);
            assert_eq!(item(&items, "control::LIMIT")["type"], "i32");
            assert_eq!(item(&items, "control::noisy")["returns_unit"], true);
            assert_eq!(item(&items, "control::traced_add")["returns_unit"], false);
        },
    );
}

#[test]
fn requests_change_by_name_each_as_one_batch() {
    fresh("requests_change_by_name_each_as_one_batch", || {
        let v = ok(&control::request("enable control::AL*"));
        assert_eq!(v["matched"], 1);
        assert!(alpha() && ALPHA.is_enabled());
        ok(&control::request("disable control::BETA"));
        assert!(!beta());
        ok(&control::request("set control::LIMIT -70000"));
        assert_eq!((limit(), LIMIT.get()), (-70000, -70000));
        ok(&control::request("set control::ALPHA off"));
        assert!(!alpha());

        // One batch: a value that is bad for one item changes none.
        let why = refused(&control::request("set control::* maybe"));
        assert!(why.contains("on") && why.contains("off"), "{why}");
        assert_eq!((alpha(), beta(), limit()), (false, false, -70000));
        let why = refused(&control::request("set control::LIMIT 3000000000"));
        assert!(why.contains("does not fit in i32"), "{why}");
        assert_eq!(limit(), -70000);

        let why = refused(&control::request("enable nothing::here::*"));
        assert!(why.contains("nothing matches"), "{why}");
        assert!(refused(&control::request("frobnicate x")).contains("unknown verb"));
        assert!(refused(&control::request("")).contains("empty request"));
        assert!(refused(&control::request("set control::LIMIT")).contains("takes 2"));
    });
}

#[test]
fn trace_profile_noop_and_revert_by_name() {
    fresh("trace_profile_noop_and_revert_by_name", || {
        let v = ok(&control::request("trace control::traced_*"));
        assert_eq!(v["matched"], 1);
        for i in 0..5 {
            assert_eq!(traced_add(i), i + 1);
        }
        let listed = ok(&control::request("list control::traced_add"));
        let f = item(&items(&listed), "control::traced_add").clone();
        assert_eq!(
            (f["state"].as_str(), f["calls"].as_i64()),
            (Some("traced"), Some(5))
        );
        assert_eq!(
            ok(&control::request("untrace control::traced_*"))["matched"],
            1
        );
        assert_eq!(
            control::list("control::traced_add").unwrap()[0].state,
            "off"
        );

        ok(&control::request("profile-start control::*"));
        traced_add(1);
        noisy();
        let v = ok(&control::request("profile-stop control::*"));
        let rows = v["copies"][0]["profile"].as_array().unwrap().clone();
        assert!(
            rows.iter()
                .any(|r| r["name"] == "control::noisy" && r["calls"] == 1),
            "{rows:?}"
        );

        let before = CALLS.load(Ordering::Relaxed);
        noisy();
        assert_eq!(CALLS.load(Ordering::Relaxed), before + 1);
        let v = ok(&control::request("replace-noop control::*"));
        // Only the function that returns `()` can be a no-op.
        assert_eq!(v["matched"], 1, "{v}");
        noisy();
        assert_eq!(
            CALLS.load(Ordering::Relaxed),
            before + 1,
            "a no-op ran its body"
        );
        assert_eq!(traced_add(1), 2);
        assert_eq!(control::list("control::noisy").unwrap()[0].state, "no-op");
        assert_eq!(ok(&control::request("revert control::noisy"))["matched"], 1);
        noisy();
        assert_eq!(CALLS.load(Ordering::Relaxed), before + 2);
        let why = refused(&control::request("replace-noop control::traced_add"));
        assert!(why.contains("nothing matches"), "{why}");
    });
}

#[test]
fn plugins_are_listed_and_changed_under_their_own_names() {
    fresh(
        "plugins_are_listed_and_changed_under_their_own_names",
        || {
            let plugins = [Plugin::load(0).unwrap(), Plugin::load(1).unwrap()];
            let v = ok(&control::request("list textpoke_plugin::k*"));
            let copies = v["copies"].as_array().unwrap();
            for p in &plugins {
                let path = p.path().display().to_string();
                let copy = copies
                    .iter()
                    .find(|c| c["object"] == path)
                    .unwrap_or_else(|| panic!("{path} not in {v}"));
                let names: Vec<&str> = copy["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i["name"].as_str().unwrap())
                    .collect();
                assert!(names.contains(&"textpoke_plugin::k1::KEY"), "{names:?}");
                assert!(
                    copy["items"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|i| i["object"] == path)
                );
            }
            let v = ok(&control::request("enable textpoke_plugin::k1::KEY"));
            assert_eq!(v["matched"], 2);
            for p in &plugins {
                assert_eq!(p.run(1), 8);
                assert_eq!(p.run(2), 0);
            }
            ok(&control::request("set textpoke_plugin::IMM 42"));
            assert!(plugins.iter().all(|p| p.imm() == 42));
            // A copy that fails says so under its object's name; the others' changes stand.
            let why = refused(&control::request("set textpoke_plugin::IMM -1"));
            assert!(why.contains("negative"), "{why}");
            assert!(plugins.iter().all(|p| p.imm() == 42));
        },
    );
}

#[test]
fn requests_race_plugins_being_unloaded() {
    fresh("requests_race_plugins_being_unloaded", || {
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let p = Plugin::load(i % 3).unwrap();
                    p.set(0, true).unwrap();
                    drop(p);
                    i += 1;
                }
            });
            for _ in 0..200 {
                ok(&control::request("list"));
                let _ = control::request("disable textpoke_plugin::k0::KEY");
            }
            stop.store(true, Ordering::Relaxed);
        });
    });
}

/// `TEXTPOKE` in a fresh process: applied before `main`, as one batch.
#[test]
fn textpoke_applies_named_changes_at_load() {
    let stderr = fresh_env(
        "textpoke_applies_named_changes_at_load",
        &[(
            "TEXTPOKE",
            "control::ALPHA, control::BETA=off,control::LIMIT=9,trace=control::traced_*,noop=control::noisy",
        )],
        || {
            // Nothing of textpoke's has been called in this process yet.
            assert!(alpha() && !beta() && limit() == 9);
            noisy();
            assert_eq!(CALLS.load(Ordering::Relaxed), 0, "noisy is a no-op");
            traced_add(1);
            traced_add(2);
            let f = control::list("control::traced_add").unwrap();
            assert_eq!(f[0].state, "traced");
            let v = ok(&control::request("list control::traced_add"));
            assert_eq!(items(&v)[0]["calls"], 2);
        },
    );
    if let Some(stderr) = stderr {
        assert!(
            !stderr.contains("TEXTPOKE"),
            "good entries complain: {stderr}"
        );
    }
}

#[test]
fn bad_textpoke_entries_print_one_line_each_and_the_program_runs_on() {
    let stderr = fresh_env(
        "bad_textpoke_entries_print_one_line_each_and_the_program_runs_on",
        &[(
            "TEXTPOKE",
            "control::LIMIT=lots,=x,nothing::here=on,control::ALPHA=on,control::BETA=perhaps,a b",
        )],
        || {
            // The good entry applied; the bad ones changed nothing.
            assert!(alpha() && beta() && limit() == -5);
        },
    );
    let Some(stderr) = stderr else { return };
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("TEXTPOKE")).collect();
    assert_eq!(lines.len(), 5, "{stderr}");
    for needle in ["lots", "`=x`", "nothing::here", "perhaps", "`a b`"] {
        assert!(
            lines.iter().any(|l| l.contains(needle)),
            "{needle}: {stderr}"
        );
    }
}

#[test]
fn plugins_apply_textpoke_to_their_own_items_when_loaded() {
    let stderr = fresh_env(
        "plugins_apply_textpoke_to_their_own_items_when_loaded",
        &[(
            "TEXTPOKE",
            "textpoke_plugin::k2::KEY,textpoke_plugin::IMM=7,control::ALPHA",
        )],
        || {
            assert!(alpha());
            let p = Plugin::load(0).unwrap();
            assert_eq!((p.run(2), p.run(1), p.imm()), (8, 0, 7));
        },
    );
    if let Some(stderr) = stderr {
        // The executable's copy has none of the plugin's items, and says so once per entry.
        let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("TEXTPOKE")).collect();
        assert_eq!(lines.len(), 2, "{stderr}");
        assert!(
            lines.iter().all(|l| l.contains("a plugin loaded later")),
            "{stderr}"
        );
    }
}

/// Sends one request line over a fresh connection and parses the reply.
fn over_socket(line: &[u8]) -> Value {
    let (mut s, _) = control::connect(std::process::id()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(line).unwrap();
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply:?}"))
}

fn socket_checks() {
    let name = control::serve().unwrap();
    assert_eq!(control::serve().unwrap(), name, "serving twice serves once");
    let v = over_socket(b"enable control::ALPHA\n");
    assert_eq!(v["ok"], true, "{v}");
    assert!(alpha());

    // A client that connects and never speaks holds nothing up.
    let (silent, _) = control::connect(std::process::id()).unwrap();
    // Garbage: not UTF-8, an unknown verb, no newline (end of stream), an over-long line.
    let v = over_socket(&[0xff, 0xfe, b'\n']);
    assert!(v["errors"].to_string().contains("UTF-8"), "{v}");
    assert!(
        over_socket(b"\x01\x02 zap\n")["errors"]
            .to_string()
            .contains("unknown verb")
    );
    let (mut s, _) = control::connect(std::process::id()).unwrap();
    s.write_all(b"list control::ALPHA").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.contains("\"ok\":true"), "{reply}");
    let v = over_socket(&[b'x'; 10_000]);
    assert!(v["errors"].to_string().contains("one line"), "{v}");

    // 100 clients at once, each answered.
    let answered = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..100 {
            s.spawn(|| {
                let v = over_socket(b"list control::ALPHA\n");
                assert_eq!(items(&v)[0]["enabled"], true, "{v}");
                answered.fetch_add(1, Ordering::Relaxed);
            });
        }
    });
    assert_eq!(answered.load(Ordering::Relaxed), 100);
    drop(silent);
    assert_eq!(over_socket(b"disable control::ALPHA\n")["ok"], true);
    assert!(!alpha());
}

#[test]
fn the_socket_serves_in_the_abstract_namespace_and_survives_abuse() {
    fresh_env(
        "the_socket_serves_in_the_abstract_namespace_and_survives_abuse",
        &[("XDG_RUNTIME_DIR", "")],
        || {
            assert!(control::serve().unwrap().starts_with("@textpoke-"));
            socket_checks();
        },
    );
}

#[test]
fn the_socket_serves_from_the_runtime_dir_for_its_owner_only() {
    let dir = std::env::temp_dir().join(format!("textpoke-ctl-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir_text = dir.display().to_string();
    fresh_env(
        "the_socket_serves_from_the_runtime_dir_for_its_owner_only",
        &[("XDG_RUNTIME_DIR", &dir_text)],
        || {
            use std::os::unix::fs::PermissionsExt;
            let name = control::serve().unwrap();
            assert!(
                name.starts_with(&std::env::var("XDG_RUNTIME_DIR").unwrap()),
                "{name}"
            );
            let mode = std::fs::metadata(&name).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
            socket_checks();
        },
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn textpoke_control_serves_from_load_without_a_call() {
    fresh_env(
        "textpoke_control_serves_from_load_without_a_call",
        &[("TEXTPOKE_CONTROL", "1"), ("XDG_RUNTIME_DIR", "")],
        || {
            // No textpoke call has been made in this process: the socket is up already.
            let v = over_socket(b"enable control::ALPHA\n");
            assert_eq!(v["ok"], true, "{v}");
            assert!(alpha());
            // Serving again names the socket the load started.
            let name = control::serve().unwrap();
            assert_eq!(name, format!("@textpoke-{}", std::process::id()));
        },
    );
}

#[test]
fn an_unusable_runtime_dir_falls_back_to_the_abstract_namespace() {
    fresh_env(
        "an_unusable_runtime_dir_falls_back_to_the_abstract_namespace",
        // A directory in which no socket can be made.
        &[("XDG_RUNTIME_DIR", "/proc")],
        || {
            let name = control::serve().unwrap();
            assert_eq!(name, format!("@textpoke-{}", std::process::id()));
            assert_eq!(over_socket(b"list control::ALPHA\n")["ok"], true);
        },
    );
}

#[test]
fn another_user_is_refused() {
    fresh_env(
        "another_user_is_refused",
        &[("XDG_RUNTIME_DIR", "")],
        || {
            // SAFETY: `geteuid` has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                // Only root can become another user to knock; CI runs as root.
                eprintln!("not root: cannot switch to another uid to test the refusal");
                return;
            }
            control::serve().unwrap();
            let pid = std::process::id();
            let status = in_child(|| {
                // SAFETY: dropping privileges in this single-purpose child.
                if unsafe { libc::setgid(65534) } != 0 || unsafe { libc::setuid(65534) } != 0 {
                    return 3;
                }
                let Ok((mut s, _)) = control::connect(pid) else {
                    return 4;
                };
                let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                let _ = s.write_all(b"enable control::ALPHA\n");
                let mut reply = String::new();
                let _ = s.read_to_string(&mut reply);
                if reply.contains("refused: uid 65534") {
                    0
                } else {
                    5
                }
            });
            assert_eq!(status, 0);
            assert!(!alpha(), "a refused client changed a key");
            // The server still serves its own user.
            assert_eq!(over_socket(b"list control::ALPHA\n")["ok"], true);
        },
    );
}

#[test]
fn a_forked_child_serves_under_its_own_id() {
    fresh_env(
        "a_forked_child_serves_under_its_own_id",
        &[("XDG_RUNTIME_DIR", "")],
        || {
            let parent = control::serve().unwrap();
            let status = in_child(|| {
                let Ok(name) = control::serve() else { return 2 };
                if name == parent || !name.ends_with(&std::process::id().to_string()) {
                    return 3;
                }
                let Ok((mut s, _)) = control::connect(std::process::id()) else {
                    return 4;
                };
                let _ = s.write_all(b"enable control::ALPHA\n");
                let mut reply = String::new();
                let _ = BufReader::new(&s).read_line(&mut reply);
                if reply.contains("\"ok\":true") && alpha() {
                    0
                } else {
                    5
                }
            });
            assert_eq!(status, 0);
            assert!(!alpha(), "the child's change reached the parent");
        },
    );
}
