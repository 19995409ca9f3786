//! A host without textpoke of its own: the first plugin's copy becomes the process's patcher.

#[test]
fn host_without_textpoke_of_its_own() {
    for round in 0..3 {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_textpoke-fixture-host"))
            .output()
            .expect("run the host");
        assert!(
            out.status.success(),
            "round {round}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
