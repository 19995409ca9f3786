//! Alternatives: both paths on one machine through the feature override, relocation of moved
//! code, and applying while threads run the sites.

mod alt_sites;

use std::process::Command;

use alt_sites::{COUNT, PICK, PICK_C, TARGET, count_expected, expected, moved, which};
use textpoke::features::OVERRIDE_VAR;

#[test]
fn both_paths_follow_the_features_and_the_override() {
    let masked = std::env::var(OVERRIDE_VAR).is_ok();
    // This test applies explicitly; `alternatives_first_use` covers the first-use path.
    textpoke::alternatives::apply_on_first_use(false);
    assert_eq!(which(), 1, "before apply the default runs");
    assert_eq!(
        (PICK.call(4), PICK_C.call(4)),
        (41, 41),
        "and the default implementations"
    );
    assert_eq!(moved(), (0, 0));
    assert_eq!(COUNT.call(0b1011), 3);
    let choices = textpoke::alternatives::choices().unwrap();
    assert_eq!(choices.len(), 2);
    textpoke::alternatives::apply().unwrap();
    assert!(textpoke::alternatives::applied());
    assert_eq!(which(), expected());
    assert_eq!(
        COUNT.call(0b1011),
        count_expected(),
        "a #[target_feature] implementation is bound when its feature is present"
    );
    if masked {
        assert_eq!(
            which(),
            1,
            "with every candidate's feature masked, the default is inlined"
        );
        assert_eq!(moved(), (0, 0));
        return;
    }
    assert_eq!(
        moved(),
        (42, &raw const TARGET as u64),
        "moved code keeps its targets"
    );
    // The other path, on the same machine: a child with the features masked.
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["both_paths_follow_the_features_and_the_override", "--exact"])
        .env(OVERRIDE_VAR, "avx512f,sse2,popcnt")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 passed"), "{stdout}");
    // Applying again changes nothing.
    assert_eq!(textpoke::alternatives::apply().unwrap().sites, 0);
}
