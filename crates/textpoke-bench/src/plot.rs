//! `toggle --plot FILE.svg`: median µs per toggle against sites, log-log, for textpoke and
//! static-keys, from the rows of one run, with the run's membarrier beside a busy thread as a
//! reference line (the cost a toggle cannot go below, times its syncs).
//!
//! The SVG is built in memory and written in one go, so a failed plot leaves no half a file.
//! Text is left to the SVG viewer's fonts (plotters' SVG backend writes `<text>` elements), so
//! no font crate is needed.

use std::path::Path;

use plotters::prelude::*;

use crate::toggle::{FloorRow, ToggleRow};
use crate::{BenchError, Result};

/// Size of the picture, in SVG pixels.
const SIZE: (u32, u32) = (900, 560);

/// textpoke's colour (blue) and static-keys' (orange), distinguishable in colour-blind vision.
const TEXTPOKE: RGBColor = RGBColor(0, 114, 178);
const STATIC_KEYS: RGBColor = RGBColor(213, 94, 0);

/// Draws `rows` (any order) into an SVG at `path`, with `floor`'s membarrier as a line.
pub fn write_toggle_svg(path: &Path, rows: &[ToggleRow], floor: &FloorRow) -> Result<()> {
    let svg = toggle_svg(rows, floor)?;
    std::fs::write(path, svg)
        .map_err(|e| BenchError::new(format!("--plot {}: {e}", path.display())))
}

/// The SVG text of the plot of `rows` and `floor`.
pub fn toggle_svg(rows: &[ToggleRow], floor: &FloorRow) -> Result<String> {
    let mut rows: Vec<&ToggleRow> = rows.iter().collect();
    rows.sort_by_key(|r| r.sites);
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Err(BenchError::new("--plot: no row to draw"));
    };
    let textpoke: Vec<(f64, f64)> = rows
        .iter()
        .map(|r| (r.sites as f64, r.textpoke_us_median))
        .collect();
    let peer: Vec<(f64, f64)> = rows
        .iter()
        .map(|r| (r.sites as f64, r.static_keys_us_median))
        .collect();
    let ys = || {
        textpoke
            .iter()
            .chain(&peer)
            .map(|p| p.1)
            .chain([floor.membarrier_us])
            .filter(|y| *y > 0.0 && y.is_finite())
    };
    let y_min = ys().fold(f64::INFINITY, f64::min);
    let y_max = ys().fold(0.0, f64::max);
    if !(y_min > 0.0 && y_max.is_finite()) {
        return Err(BenchError::new("--plot: no positive time to draw"));
    }
    // Room around the data on both log axes, so that no point sits on the frame and a single
    // size still gives a range; below the lowest line (the membarrier's, usually) goes the
    // legend, where it hides no data.
    let (x0, x1) = (first.sites as f64 / 2.0, last.sites as f64 * 2.0);
    let (y0, y1) = (y_min / 60.0, y_max * 3.0);
    let busy = first.busy_threads;

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "Toggling one key: median time per toggle, {busy} busy thread{} running its \
                     sites",
                    if busy == 1 { "" } else { "s" }
                ),
                ("sans-serif", 20),
            )
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
            .map_err(draw_error)?;
        chart
            .configure_mesh()
            .x_desc("sites controlled by the key")
            .y_desc("median µs per toggle")
            .x_label_formatter(&|x| with_separators(*x))
            .y_label_formatter(&|y| with_separators(*y))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .draw()
            .map_err(draw_error)?;
        for (name, points, colour) in [
            ("textpoke", &textpoke, TEXTPOKE),
            ("static-keys 0.8.2", &peer, STATIC_KEYS),
        ] {
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    colour.stroke_width(2),
                ))
                .map_err(draw_error)?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 4, colour.filled())))
                .map_err(draw_error)?;
        }
        let line = [(x0, floor.membarrier_us), (x1, floor.membarrier_us)];
        chart
            .draw_series(DashedLineSeries::new(line, 6, 4, BLACK.stroke_width(1)))
            .map_err(draw_error)?
            .label(format!(
                "dashed: one membarrier(SYNC_CORE) beside 1 busy thread, {:.1} µs (a 1-site \
                 toggle: {:.1} µs, {:.2}x)",
                floor.membarrier_us, floor.one_site_us, floor.one_site_over_membarrier
            ))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], BLACK.stroke_width(1)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(draw_error)?;
        root.present().map_err(draw_error)?;
    }
    Ok(svg)
}

fn draw_error(e: impl std::fmt::Display) -> BenchError {
    BenchError::new(format!("--plot: drawing failed: {e}"))
}

/// `x` as an integer with thousands separators, or with one decimal when it is not one.
fn with_separators(x: f64) -> String {
    if (x - x.round()).abs() > 1e-9 * x.abs().max(1.0) {
        return format!("{x:.1}");
    }
    let digits = format!("{:.0}", x);
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_have_thousands_separators() {
        assert_eq!(with_separators(100_000.0), "100,000");
        assert_eq!(with_separators(1_000.0), "1,000");
        assert_eq!(with_separators(100.0), "100");
        assert_eq!(with_separators(1.0), "1");
        assert_eq!(with_separators(0.5), "0.5");
    }
}
