//! Builds the `textpoke-plugin` cdylib (release) with a nested cargo in its own target
//! directory, `target/plugin` (the outer build holds the lock of `target/`), and copies it to
//! `OUT_DIR` for `include_bytes!`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest
        .parent()
        .and_then(|p| p.parent())
        .expect("crates/textpoke-fixture lies two levels below the workspace")
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join("plugin");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--quiet", "-p", "textpoke-plugin"])
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target);
    // A clippy or doc run of the outer build must not turn the plugin's build into one.
    for var in ["RUSTC_WORKSPACE_WRAPPER", "CLIPPY_ARGS", "CARGO_TARGET_DIR"] {
        cmd.env_remove(var);
    }
    let out = cmd.output().expect("run cargo to build textpoke-plugin");
    if !out.status.success() {
        panic!(
            "building textpoke-plugin failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let built = target.join("release").join("libtextpoke_plugin.so");
    let dest = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("plugin.so");
    std::fs::copy(&built, &dest)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", built.display(), dest.display()));
    for dir in [
        "crates/textpoke-plugin",
        "crates/textpoke/src",
        "crates/textpoke/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("Cargo.lock").display()
    );
}
