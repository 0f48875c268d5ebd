//! SVG line plots of training curves (plotters), written through a temporary file.

use std::path::Path;

use distill_train::checkpoint::tmp_sibling;
use plotters::prelude::*;

use crate::error::{io, Error, Result};

fn plot_err(e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("plot: {e}"))
}

/// One SVG line chart of `series` (name, points) with axis labels.
pub fn line_plot(
    path: &Path,
    title: &str,
    x: &str,
    y: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> Result<()> {
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(a, b) in pts {
        if b.is_finite() {
            x0 = x0.min(a);
            x1 = x1.max(a);
            y0 = y0.min(b);
            y1 = y1.max(b);
        }
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let tmp = tmp_sibling(path);
    {
        let root = SVGBackend::new(&tmp, (760, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc(x)
            .y_desc(y)
            .draw()
            .map_err(plot_err)?;
        for (i, (name, p)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    p.iter().copied().filter(|(_, v)| v.is_finite()),
                    color.stroke_width(2),
                ))
                .map_err(plot_err)?
                .label(*name)
                .legend(move |(a, b)| {
                    PathElement::new(vec![(a, b), (a + 20, b)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))
}
