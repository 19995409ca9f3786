//! Order statistics of samples, and the timer that takes them.

use std::time::Instant;

use crate::Result;

/// Runs `op` once; its wall time in microseconds.
pub fn time_us(op: impl FnOnce() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    op()?;
    Ok(start.elapsed().as_secs_f64() * 1e6)
}

/// The median of `samples` (mean of the two middle values for an even count; 0 when empty).
pub fn median(samples: &[f64]) -> f64 {
    let s = sorted(samples);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// The `q`-quantile of `samples` (nearest rank; 0 when empty).
pub fn percentile(samples: &[f64], q: f64) -> f64 {
    let s = sorted(samples);
    if s.is_empty() {
        return 0.0;
    }
    let rank = (q.clamp(0.0, 1.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// The median of integer samples (the lower middle value for an even count; 0 when empty).
pub fn median_usize(samples: impl Iterator<Item = usize>) -> usize {
    let mut s: Vec<usize> = samples.collect();
    s.sort_unstable();
    if s.is_empty() {
        0
    } else {
        s[(s.len() - 1) / 2]
    }
}

fn sorted(samples: &[f64]) -> Vec<f64> {
    let mut s = samples.to_vec();
    s.sort_unstable_by(f64::total_cmp);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_statistics() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        let xs: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&xs, 0.9), 9.0);
        assert_eq!(percentile(&xs, 1.0), 10.0);
        assert_eq!(percentile(&xs, 0.0), 1.0);
        assert_eq!(median_usize([3, 9, 3, 3].into_iter()), 3);
    }
}
