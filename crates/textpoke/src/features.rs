//! CPU features, as alternatives select code by them, with an operator override.
//!
//! Names are those `is_x86_feature_detected!` knows, plus `erms`, `fsrm` and `clflushopt`,
//! read from CPUID directly. `TEXTPOKE_NO_FEATURES=avx2,bmi2` makes textpoke act as if those
//! features were absent, like the kernel's `clearcpuid=`: tests use it to run every path on one
//! machine, and operators to rule out a bad one. The variable is read once, at first use.

use std::sync::OnceLock;

use crate::{Error, Result};

/// The environment variable that masks features.
pub const OVERRIDE_VAR: &str = "TEXTPOKE_NO_FEATURES";

macro_rules! std_detected {
    ($($name:tt),* $(,)?) => {
        &[$(($name, || std::arch::is_x86_feature_detected!($name))),*]
    };
}

/// A feature name and its detector.
type Detector = (&'static str, fn() -> bool);

/// Every feature name textpoke knows, with its detector.
const DETECTORS: &[Detector] = std_detected!(
    "aes",
    "pclmulqdq",
    "rdrand",
    "rdseed",
    "tsc",
    "mmx",
    "sse",
    "sse2",
    "sse3",
    "ssse3",
    "sse4.1",
    "sse4.2",
    "sse4a",
    "sha",
    "avx",
    "avx2",
    "avx512f",
    "avx512cd",
    "avx512er",
    "avx512pf",
    "avx512bw",
    "avx512dq",
    "avx512vl",
    "avx512ifma",
    "avx512vbmi",
    "avx512vpopcntdq",
    "avx512vbmi2",
    "gfni",
    "vaes",
    "vpclmulqdq",
    "avx512vnni",
    "avx512bitalg",
    "avx512bf16",
    "avx512vp2intersect",
    "avx512fp16",
    "f16c",
    "fma",
    "bmi1",
    "bmi2",
    "abm",
    "lzcnt",
    "tbm",
    "popcnt",
    "fxsr",
    "xsave",
    "xsaveopt",
    "xsaves",
    "xsavec",
    "cmpxchg16b",
    "adx",
    "rtm",
    "movbe",
    "avxvnni",
);

/// Features read from CPUID leaf 7, subleaf 0: (name, register is EDX, bit).
const CPUID7: &[(&str, bool, u32)] = &[
    ("erms", false, 9),
    ("clflushopt", false, 23),
    ("fsrm", true, 4),
];

/// Every feature name textpoke knows, as one string literal (names separated by spaces), for
/// the compile-time checks of `alternative!` and `multiversion!`. A test keeps it equal to
/// [`known`].
#[doc(hidden)]
#[macro_export]
macro_rules! __known_features {
    () => {
        "aes pclmulqdq rdrand rdseed tsc mmx sse sse2 sse3 ssse3 sse4.1 sse4.2 sse4a sha avx avx2 \
         avx512f avx512cd avx512er avx512pf avx512bw avx512dq avx512vl avx512ifma avx512vbmi \
         avx512vpopcntdq avx512vbmi2 gfni vaes vpclmulqdq avx512vnni avx512bitalg avx512bf16 \
         avx512vp2intersect avx512fp16 f16c fma bmi1 bmi2 abm lzcnt tbm popcnt fxsr xsave \
         xsaveopt xsaves xsavec cmpxchg16b adx rtm movbe avxvnni erms clflushopt fsrm"
    };
}

/// Whether `name` is one of the space-separated words of `list`, in a constant.
const fn listed(name: &str, list: &str) -> bool {
    let (name, list) = (name.as_bytes(), list.as_bytes());
    let mut start = 0;
    while start < list.len() {
        let mut end = start;
        while end < list.len() && list[end] != b' ' {
            end += 1;
        }
        if end - start == name.len() {
            let mut i = 0;
            while i < name.len() && list[start + i] == name[i] {
                i += 1;
            }
            if i == name.len() && !name.is_empty() {
                return true;
            }
        }
        start = end + 1;
    }
    false
}

/// Fails the build, with `message`, when `name` is not a feature textpoke knows. Part of the
/// `alternative!` and `multiversion!` expansions.
#[doc(hidden)]
pub const fn __check(name: &str, message: &'static str) {
    if !listed(name, crate::__known_features!()) {
        panic!("{}", message);
    }
}

/// Every feature name textpoke knows.
pub fn known() -> impl Iterator<Item = &'static str> {
    DETECTORS
        .iter()
        .map(|(n, _)| *n)
        .chain(CPUID7.iter().map(|(n, _, _)| *n))
}

fn canonical(name: &str) -> Result<&'static str> {
    known()
        .find(|k| *k == name)
        .ok_or_else(|| Error::UnknownFeature {
            name: name.to_string(),
        })
}

fn detected(name: &'static str) -> bool {
    if let Some((_, detect)) = DETECTORS.iter().find(|(n, _)| *n == name) {
        return detect();
    }
    let Some(&(_, edx, bit)) = CPUID7.iter().find(|(n, _, _)| *n == name) else {
        return false;
    };
    // Leaf 7 exists only if the maximum basic leaf reaches it.
    let max_leaf = std::arch::x86_64::__cpuid(0).eax;
    if max_leaf < 7 {
        return false;
    }
    let regs = std::arch::x86_64::__cpuid_count(7, 0);
    let reg = if edx { regs.edx } else { regs.ebx };
    reg & (1 << bit) != 0
}

/// Parses an override list: comma-separated names, spaces ignored, empty entries skipped.
pub fn parse_override(list: &str) -> Result<Vec<&'static str>> {
    list.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(canonical)
        .collect()
}

fn masked() -> Result<&'static [&'static str]> {
    static MASKED: OnceLock<Result<Vec<&'static str>>> = OnceLock::new();
    MASKED
        .get_or_init(|| match std::env::var(OVERRIDE_VAR) {
            Ok(list) => parse_override(&list).map_err(|e| Error::BadOverride {
                var: OVERRIDE_VAR,
                why: e.to_string(),
            }),
            Err(std::env::VarError::NotPresent) => Ok(Vec::new()),
            Err(std::env::VarError::NotUnicode(_)) => Err(Error::BadOverride {
                var: OVERRIDE_VAR,
                why: "not valid UTF-8".into(),
            }),
        })
        .as_ref()
        .map(Vec::as_slice)
        .map_err(Clone::clone)
}

/// Whether the CPU has feature `name` and the operator has not masked it.
pub fn has(name: &str) -> Result<bool> {
    let name = canonical(name)?;
    Ok(!masked()?.contains(&name) && detected(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_the_issue_s_features_and_refuses_others() {
        for name in [
            "popcnt",
            "lzcnt",
            "bmi1",
            "bmi2",
            "avx2",
            "avx512f",
            "erms",
            "fsrm",
            "clflushopt",
        ] {
            assert!(has(name).is_ok(), "{name}");
        }
        assert!(matches!(has("avx3"), Err(Error::UnknownFeature { ref name }) if name == "avx3"));
        // This machine is x86-64: SSE2 is architectural.
        assert!(has("sse2").unwrap());
    }

    #[test]
    fn the_compile_time_list_is_the_known_list() {
        let list: Vec<&str> = crate::__known_features!().split_whitespace().collect();
        assert_eq!(list, known().collect::<Vec<_>>());
        assert!(listed("avx2", crate::__known_features!()));
        assert!(listed("fsrm", crate::__known_features!()));
        for bad in ["avx3", "avx", "sse4", "", "avx2 "] {
            assert_eq!(
                listed(bad, crate::__known_features!()),
                bad == "avx",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn override_lists_are_parsed_strictly() {
        assert_eq!(parse_override(" avx2, bmi2,,").unwrap(), ["avx2", "bmi2"]);
        assert!(parse_override("").unwrap().is_empty());
        assert!(matches!(
            parse_override("avx2,nope"),
            Err(Error::UnknownFeature { .. })
        ));
    }

    #[test]
    fn cpuid_features_agree_with_std_where_both_know_them() {
        // `popcnt` comes from std; check the CPUID path on a bit std also reports.
        let leaf1 = std::arch::x86_64::__cpuid(1);
        assert_eq!(
            leaf1.ecx & (1 << 23) != 0,
            std::arch::is_x86_feature_detected!("popcnt")
        );
    }
}
