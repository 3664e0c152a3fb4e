//! PNG plots with plotters (bitmap backend, line series): a latency CDF per
//! path and throughput against message size.

use crate::host::size_label;
use crate::model::{Cdf, Curve, Group};
use plotters::prelude::*;
use std::path::Path;

/// Text needs a TrueType font (Debian's fonts-dejavu-core).
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

pub fn setup_font() -> Result<(), String> {
    let bytes = std::fs::read(FONT).map_err(|e| format!("{FONT}: {e} (apt-get install fonts-dejavu-core)"))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
        .map_err(|_| format!("{FONT} is not a usable font"))
}

const COLORS: [RGBColor; 6] = [
    RGBColor(0, 90, 181),
    RGBColor(220, 50, 32),
    RGBColor(0, 140, 70),
    RGBColor(150, 80, 180),
    RGBColor(230, 140, 0),
    RGBColor(90, 90, 90),
];

/// The legend box of both plots, at `pos`.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    pos: SeriesLabelPosition,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(pos)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// One CDF plot of every distribution in `group`, RTT on a log axis.
pub fn latency(group: Group, cdfs: &[&Cdf], file: &Path) -> Result<(), String> {
    let all: Vec<f64> = cdfs.iter().flat_map(|c| c.points.iter().map(|p| p[0])).filter(|&x| x > 0.0).collect();
    if all.is_empty() {
        return Err("no latency data".into());
    }
    let lo = all.iter().copied().fold(f64::MAX, f64::min) * 0.8;
    let hi = all.iter().copied().fold(0.0, f64::max) * 1.25;
    let root = BitMapBackend::new(file, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Round-trip time CDF, 64 B: {}", group.title()), ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(60)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("round-trip time (µs, log scale)")
        .y_desc("fraction of round trips at or below")
        .x_labels(24)
        .x_label_formatter(&|v| if *v >= 100.0 { format!("{v:.0}") } else { format!("{v:.1}") })
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    for (i, c) in cdfs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = c.points.iter().filter(|p| p[0] > 0.0).map(|p| (p[0], p[1])).collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(err)?
            .label(c.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present().map_err(err)
}

/// Throughput (Gbit/s, log) against message size (log), one line per curve.
pub fn throughput(group: Group, curves: &[&Curve], file: &Path) -> Result<(), String> {
    let ys: Vec<f64> = curves.iter().flat_map(|c| c.points.iter().map(|p| p.1)).filter(|&y| y > 0.0).collect();
    if ys.is_empty() {
        return Err("no throughput data".into());
    }
    let lo = ys.iter().copied().fold(f64::MAX, f64::min) / 2.0;
    let hi = ys.iter().copied().fold(0.0, f64::max) * 2.0;
    let root = BitMapBackend::new(file, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("One-way throughput against message size: {}", group.title()), ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(70)
        // x is log2(size), so every power of two gets its label.
        .build_cartesian_2d(5.7f64..20.3, (lo..hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("message size (log scale)")
        .y_desc("Gbit/s (log scale)")
        .x_labels(15)
        .y_labels(16)
        .x_label_formatter(&|v| size_label(1usize << v.round().clamp(0.0, 40.0) as u32))
        .y_label_formatter(&|v| if *v >= 1.0 { format!("{v:.1}") } else { format!("{v:.3}") })
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    for (i, c) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut pts: Vec<(f64, f64)> =
            c.points.iter().filter(|p| p.1 > 0.0).map(|p| ((p.0 as f64).log2(), p.1)).collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(c.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled()))).map_err(err)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present().map_err(err)
}
