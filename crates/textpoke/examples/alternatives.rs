//! Alternatives: instructions chosen by CPU feature (`alternative!`) and functions bound once to
//! the best implementation (`multiversion!`), applied live at first use.
//!
//! Run: `cargo run --example alternatives`, or
//! `TEXTPOKE_NO_FEATURES=popcnt cargo run --example alternatives` to see the defaults run.

/// Counts set bits: `popcnt` where the CPU has it, a portable loop otherwise.
#[inline(never)]
fn ones(x: u64) -> u64 {
    let n: u64;
    // SAFETY: both sequences only read `x` and write `n` and the scratch register `t`.
    unsafe {
        textpoke::alternative!(
            default: [
                "xor {n:e}, {n:e}",
                "mov {t}, {x}",
                "2:",
                "test {t}, {t}",
                "jz 3f",
                "lea {s}, [{t} - 1]",
                "and {t}, {s}",
                "inc {n}",
                "jmp 2b",
                "3:",
            ],
            "popcnt" => ["popcnt {n}, {x}"];
            x = in(reg) x, n = out(reg) n, t = out(reg) _, s = out(reg) _,
        );
    }
    n
}

textpoke::multiversion! {
    /// Sums a slice with the widest vector unit available.
    static SUM: fn(&[u32]) -> u64 = {
        "avx2" => unsafe sum_avx2,
        _ => sum_scalar,
    };
}

fn sum_scalar(v: &[u32]) -> u64 {
    v.iter().map(|&x| x as u64).sum()
}

/// # Safety
///
/// Needs AVX2; `multiversion!` binds it only where the CPU has it.
#[target_feature(enable = "avx2")]
fn sum_avx2(v: &[u32]) -> u64 {
    v.iter().map(|&x| x as u64).sum()
}

fn main() -> Result<(), textpoke::Error> {
    // Optional: alternatives are applied at the first run of any site anyway, but calling
    // `apply` early chooses when the code is written and returns any error.
    let stats = textpoke::alternatives::apply()?;
    println!(
        "applied: {} sites changed, {} core syncs",
        stats.sites, stats.syncs
    );
    for (site, feature) in textpoke::alternatives::choices()? {
        let chosen = if feature.is_empty() {
            "the default"
        } else {
            &feature
        };
        println!("alternative at {site:#x}: {chosen}");
    }
    for x in [0u64, 1, 0xff, u64::MAX] {
        assert_eq!(ones(x), x.count_ones() as u64);
    }
    let v: Vec<u32> = (1..=1000).collect();
    assert_eq!(SUM.call(&v), 500_500);
    println!(
        "ones(0xff) = {}, SUM(1..=1000) = {}",
        ones(0xff),
        SUM.call(&v)
    );
    Ok(())
}
