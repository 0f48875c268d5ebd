//! SVG line plots of training curves (plotters), written through a temporary file.

use std::path::Path;

use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::error::{Error, Result};

pub(crate) fn plot_err(e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("plot: {e}"))
}

/// One SVG line chart of `series` (name, points) with axis labels. `log_y` puts the y axis on
/// a log scale (perplexity, whose early values are orders of magnitude above the late ones);
/// points that are not finite, or not positive on a log axis, are left out.
pub fn line_plot(
    path: &Path,
    title: &str,
    x: &str,
    y: &str,
    series: &[(&str, Vec<(f64, f64)>)],
    log_y: bool,
) -> Result<()> {
    let keep = |v: f64| v.is_finite() && (!log_y || v > 0.0);
    let series: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(n, p)| (*n, p.iter().copied().filter(|(_, v)| keep(*v)).collect()))
        .collect();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(a, b) in series.iter().flat_map(|(_, p)| p.iter()) {
        x0 = x0.min(a);
        x1 = x1.max(a);
        y0 = y0.min(b);
        y1 = y1.max(b);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 1.0, 2.0);
    }
    distill_files::write_file_with(path, |tmp| -> Result<()> {
        let root = SVGBackend::new(tmp, (760, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60);
        let xs = x0..x1.max(x0 + 1.0);
        if log_y {
            let mut chart = builder
                .build_cartesian_2d(xs, (y0 * 0.9..(y1 * 1.1).max(y0 * 1.2)).log_scale())
                .map_err(plot_err)?;
            draw_lines(&mut chart, x, &format!("{y} (log scale)"), &series)?;
        } else {
            let pad = ((y1 - y0) * 0.05).max(1e-3);
            let mut chart = builder
                .build_cartesian_2d(xs, (y0 - pad)..(y1 + pad))
                .map_err(plot_err)?;
            draw_lines(&mut chart, x, y, &series)?;
        }
        root.present().map_err(plot_err)
    })
}

/// The mesh, one coloured line per series and the legend, on either kind of y axis.
fn draw_lines<'c, DB, Y>(
    chart: &mut ChartContext<'c, DB, Cartesian2d<RangedCoordf64, Y>>,
    x: &str,
    y: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> Result<()>
where
    DB: DrawingBackend + 'c,
    DB::ErrorType: 'static,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc(x)
        .y_desc(y)
        .draw()
        .map_err(plot_err)?;
    for (i, (name, p)) in series.iter().enumerate() {
        if p.is_empty() {
            continue;
        }
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(p.iter().copied(), color.stroke_width(2)))
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
    Ok(())
}

/// Renders the SVG at `path` to pixels (resvg), as a viewer would: an SVG it cannot parse
/// fails the test. Returns the width, height and the share of pixels that are not white.
#[cfg(test)]
pub(crate) fn render(path: &Path) -> (u32, u32, f64) {
    use resvg::{tiny_skia, usvg};
    let data = std::fs::read(path).unwrap();
    let tree = usvg::Tree::from_data(&data, &usvg::Options::default())
        .unwrap_or_else(|e| panic!("{}: not a valid SVG: {e}", path.display()));
    let size = tree.size().to_int_size();
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height()).unwrap();
    resvg::render(&tree, tiny_skia::Transform::default(), &mut pixmap.as_mut());
    assert!(!pixmap.encode_png().unwrap().is_empty());
    let inked = pixmap
        .pixels()
        .iter()
        .filter(|p| (p.red(), p.green(), p.blue()) != (255, 255, 255))
        .count();
    (
        size.width(),
        size.height(),
        inked as f64 / pixmap.pixels().len() as f64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_curves_render_on_a_log_axis_and_skip_what_it_cannot_show() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("val_ppl.svg");
        let student = vec![
            (0.0, 40000.0),
            (20.0, 900.0),
            (40.0, f64::NAN),
            (80.0, 520.0),
        ];
        let teacher = vec![(0.0, 87.7), (80.0, 87.7)];
        line_plot(
            &path,
            "validation perplexity",
            "step",
            "perplexity",
            &[
                ("student", student),
                ("teacher", teacher),
                ("none", vec![(1.0, 0.0)]),
            ],
            true,
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("teacher") && svg.contains("log scale"));
        let texts: Vec<&str> = svg.lines().map(str::trim).collect();
        assert!(texts.contains(&"student") && texts.contains(&"teacher"));
        assert!(
            !texts.contains(&"none"),
            "a series with nothing to show has no legend entry"
        );
        let (w, h, inked) = render(&path);
        assert_eq!((w, h), (760, 420));
        assert!(inked > 0.01, "{inked}");
    }
}
