//! A compress run rendered: the size/quality table, the headline, `compress.md`,
//! `compress.json` and the size-vs-quality plot `compress.svg`.

use std::path::Path;

use distill_compress::framework::pipeline::{Outcome, Quality, Row};
use distill_files::write_file;

use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::prelude::*;

use super::plot::plot_err;
use crate::error::{io, Result};

fn quality_cell(r: &Row) -> String {
    match r.kind {
        Quality::Perplexity => format!("{:.2}", r.quality),
        Quality::Accuracy => format!("{:.2}%", r.quality * 100.0),
    }
}

fn speed_cell(r: &Row) -> String {
    format!("{:.1}", r.speed)
}

/// The Markdown table of the rows (one line per step).
pub fn table(o: &Outcome) -> String {
    let (q, s) = o.quality.columns();
    let mut t = format!(
        "| variant | step | parameters | non-zero | bytes | {q} | {s} |\n|---|---|---:|---:|---:|---:|---:|\n"
    );
    for r in &o.rows {
        t.push_str(&format!(
            "| {} | {} | {:.2} M | {:.2} M | {:.2} MB | {} | {} |\n",
            r.variant,
            r.steps.last().map(String::as_str).unwrap_or("-"),
            r.params as f64 / 1e6,
            r.nonzero_params as f64 / 1e6,
            r.bytes as f64 / 1e6,
            quality_cell(r),
            speed_cell(r),
        ));
    }
    t
}

/// The headline sentence.
pub fn headline_text(o: &Outcome) -> String {
    let base = &o.rows[0];
    let lm = o.is_causal_lm();
    match &o.headline {
        Some(h) => format!(
            "Smallest artifact within {}: **{}** ({}), {:.2} MB ({:.1}x smaller than {:.2} MB), {} {}, {} {}.",
            o.quality.headline_budget().trim_start_matches("within "),
            h.variant,
            h.steps.join(" → "),
            h.bytes as f64 / 1e6,
            base.bytes as f64 / h.bytes.max(1) as f64,
            base.bytes as f64 / 1e6,
            if lm { "perplexity" } else { "accuracy" },
            quality_cell(h),
            speed_cell(h),
            if lm { "tokens/s" } else { "msgs/s" },
        ),
        None => "No variant stays within the quality budget.".into(),
    }
}

/// Writes `compress.md`, `compress.json` and `compress.svg` (with `teacher` marked, when given)
/// into `out`.
pub fn write(o: &Outcome, out: &Path, teacher: Option<&Reference>) -> Result<()> {
    let mut md = format!("# Compression of {}\n\n{}\n\n", o.model, headline_text(o));
    md.push_str(&table(o));
    md.push_str("\n![size vs quality](compress.svg)\n\nNotes:\n");
    for r in &o.rows {
        for n in &r.notes {
            md.push_str(&format!(
                "- {} / {}: {n}\n",
                r.variant,
                r.steps.last().map(String::as_str).unwrap_or("")
            ));
        }
    }
    let write = |name: &str, bytes: &[u8]| -> Result<()> {
        let p = out.join(name);
        write_file(&p, bytes).map_err(crate::error::Error::from)
    };
    write("compress.md", md.as_bytes())?;
    write(
        "compress.json",
        serde_json::to_string_pretty(o)
            .expect("an outcome serialises")
            .as_bytes(),
    )?;
    plot(o, &out.join("compress.svg"), teacher, &|r| {
        r.artifact.is_some()
    })
}

/// A model the size/quality plot marks besides the variants: the run's teacher.
#[derive(Clone, Debug)]
pub struct Reference {
    pub name: String,
    pub bytes: u64,
    /// Perplexity or accuracy (0..1), as the rows hold it.
    pub quality: f64,
}

/// One point of the plot: bytes in MB and quality (perplexity, or accuracy in %).
#[derive(Clone, Debug, PartialEq)]
struct Point {
    name: String,
    mb: f64,
    q: f64,
}

/// The points no other point beats on both size and quality (smaller and better), by size.
fn pareto(points: &[Point], lower_is_better: bool) -> Vec<Point> {
    let mut by_size: Vec<&Point> = points.iter().collect();
    by_size.sort_by(|a, b| a.mb.total_cmp(&b.mb).then(a.q.total_cmp(&b.q)));
    let better = |a: f64, b: f64| if lower_is_better { a < b } else { a > b };
    let mut front: Vec<Point> = vec![];
    for p in by_size {
        if front.last().is_none_or(|l| better(p.q, l.q)) {
            front.push(p.clone());
        }
    }
    front
}

/// Size (MB, log scale) against quality (perplexity on a log scale, or accuracy): every
/// variant's final artifact as a numbered point (the key beside the chart names them, so labels
/// never overlap; points that coincide share one label), the Pareto frontier as a line, the
/// uncompressed model and, when given, the teacher as their own markers.
/// `include` picks the rows after the first that are plotted (a compress run: the final
/// artifacts; `distill auto`: every measured candidate).
pub(crate) fn plot(
    o: &Outcome,
    path: &Path,
    teacher: Option<&Reference>,
    include: &dyn Fn(&Row) -> bool,
) -> Result<()> {
    let lm = o.is_causal_lm();
    let q_of = |r: &Row| {
        Some(match r.kind {
            Quality::Perplexity => r.quality,
            Quality::Accuracy => r.quality * 100.0,
        })
    };
    let Some(base) = o.rows.first().and_then(|r| {
        Some(Point {
            name: "uncompressed".into(),
            mb: r.bytes as f64 / 1e6,
            q: q_of(r)?,
        })
    }) else {
        return Ok(());
    };
    let variants: Vec<Point> = o
        .rows
        .iter()
        .skip(1)
        .filter(|r| include(r))
        .filter_map(|r| {
            Some(Point {
                name: r.variant.clone(),
                mb: r.bytes as f64 / 1e6,
                q: q_of(r)?,
            })
        })
        .filter(|p| p.q.is_finite() && (!lm || p.q > 0.0))
        .collect();
    let teacher = teacher.map(|t| Point {
        name: t.name.clone(),
        mb: t.bytes as f64 / 1e6,
        q: if lm { t.quality } else { t.quality * 100.0 },
    });
    let mut all = vec![base.clone()];
    all.extend(variants.iter().cloned());
    let front = pareto(&all, lm);
    all.extend(teacher.iter().cloned());
    // Labels: variants numbered in order; points within 1% of each other on both axes share one.
    let mut labels: Vec<(f64, f64, String)> = vec![];
    for (i, p) in variants.iter().enumerate() {
        let n = (i + 1).to_string();
        match labels
            .iter_mut()
            .find(|(x, y, _)| (x / p.mb - 1.0).abs() < 0.01 && (y / p.q - 1.0).abs() < 0.01)
        {
            Some(l) => {
                l.2.push(',');
                l.2.push_str(&n);
            }
            None => labels.push((p.mb, p.q, n)),
        }
    }
    let (xmin, xmax) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.mb), b.max(p.mb)));
    let (ymin, ymax) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.q), b.max(p.q)));
    let key_lines = variants.len() + 1;
    let height = (80 + 16 * key_lines as u32).max(520);
    let tmp = path.with_extension("svg.tmp");
    {
        let root = SVGBackend::new(&tmp, (1000, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let (left, right) = root.split_horizontally(680);
        let mut builder = ChartBuilder::on(&left);
        builder
            .caption(format!("{}: size vs quality", o.model), ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(70);
        let xs = ((xmin * 0.8).max(1e-3)..xmax * 1.25).log_scale();
        let marks = Marks {
            base: &base,
            variants: &variants,
            front: &front,
            teacher: teacher.as_ref(),
            labels: &labels,
        };
        if lm {
            let mut chart = builder
                .build_cartesian_2d(xs, (ymin * 0.85..ymax * 1.2).log_scale())
                .map_err(plot_err)?;
            draw_marks(&mut chart, "validation perplexity (log scale)", &marks)?;
        } else {
            let pad = ((ymax - ymin) * 0.1).max(0.5);
            let mut chart = builder
                .build_cartesian_2d(xs, (ymin - pad)..(ymax + pad).min(100.0 + pad))
                .map_err(plot_err)?;
            draw_marks(&mut chart, "validation accuracy (%)", &marks)?;
        }
        let font = ("sans-serif", 13).into_font();
        right
            .draw(&Text::new("key", (10, 30), font.clone()))
            .map_err(plot_err)?;
        for (i, p) in variants.iter().enumerate() {
            right
                .draw(&Text::new(
                    format!("{:>2}  {}", i + 1, p.name),
                    (10, 50 + 16 * i as i32),
                    font.clone(),
                ))
                .map_err(plot_err)?;
        }
        root.present().map_err(plot_err)?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// What the chart draws.
struct Marks<'a> {
    base: &'a Point,
    variants: &'a [Point],
    front: &'a [Point],
    teacher: Option<&'a Point>,
    labels: &'a [(f64, f64, String)],
}

fn draw_marks<'c, DB, Y>(
    chart: &mut ChartContext<'c, DB, Cartesian2d<LogCoord<f64>, Y>>,
    ylabel: &str,
    m: &Marks,
) -> Result<()>
where
    DB: DrawingBackend + 'c,
    DB::ErrorType: 'static,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc("weights on disk (MB, log scale)")
        .y_desc(ylabel)
        .draw()
        .map_err(plot_err)?;
    let grey = RGBColor(150, 150, 150);
    chart
        .draw_series(LineSeries::new(
            m.front.iter().map(|p| (p.mb, p.q)),
            grey.stroke_width(2),
        ))
        .map_err(plot_err)?
        .label("Pareto frontier")
        .legend(move |(a, b)| PathElement::new(vec![(a, b), (a + 20, b)], grey.stroke_width(2)));
    chart
        .draw_series(
            m.variants
                .iter()
                .map(|p| Circle::new((p.mb, p.q), 4, BLUE.filled())),
        )
        .map_err(plot_err)?
        .label("variant (number: see key)")
        .legend(|(a, b)| Circle::new((a + 10, b), 4, BLUE.filled()));
    chart
        .draw_series(std::iter::once(Rectangle::new(
            [
                (m.base.mb * 0.97, m.base.q * 0.99),
                (m.base.mb * 1.03, m.base.q * 1.01),
            ],
            BLACK.filled(),
        )))
        .map_err(plot_err)?
        .label("uncompressed")
        .legend(|(a, b)| Rectangle::new([(a + 5, b - 4), (a + 13, b + 4)], BLACK.filled()));
    if let Some(t) = m.teacher {
        chart
            .draw_series(std::iter::once(TriangleMarker::new(
                (t.mb, t.q),
                7,
                RED.filled(),
            )))
            .map_err(plot_err)?
            .label(t.name.as_str())
            .legend(|(a, b)| TriangleMarker::new((a + 10, b), 7, RED.filled()));
    }
    chart
        .draw_series(m.labels.iter().map(|(x, y, n)| {
            EmptyElement::at((*x, *y))
                + Text::new(n.clone(), (6, -14), ("sans-serif", 12).into_font())
        }))
        .map_err(plot_err)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(name: &str, mb: f64, q: f64) -> Point {
        Point {
            name: name.into(),
            mb,
            q,
        }
    }

    #[test]
    fn the_frontier_keeps_only_points_nothing_smaller_beats() {
        let pts = vec![
            pt("base", 200.0, 100.0),
            pt("a", 30.0, 110.0),
            pt("b", 50.0, 120.0), // larger and worse than a
            pt("c", 100.0, 101.0),
            pt("d", 25.0, 400.0),
        ];
        let names: Vec<String> = pareto(&pts, true).into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["d", "a", "c", "base"]);
        // Accuracy: higher is better.
        let acc = vec![
            pt("base", 90.0, 98.0),
            pt("x", 20.0, 97.0),
            pt("y", 40.0, 96.0),
        ];
        let names: Vec<String> = pareto(&acc, false).into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["x", "base"]);
    }

    fn row(variant: &str, bytes: u64, ppl: f64, artifact: bool) -> Row {
        Row {
            model: "m".into(),
            variant: variant.into(),
            steps: vec![],
            params: 10,
            nonzero_params: 10,
            bytes,
            kind: Quality::Perplexity,
            quality: ppl,
            speed: 1.0,
            kl_to_uncompressed: None,
            artifact: artifact.then(|| format!("{variant}.gguf")),
            notes: vec![],
            seconds: 0.0,
        }
    }

    #[test]
    fn the_size_quality_plot_numbers_points_keys_them_and_renders() {
        let o = Outcome {
            model: "student".into(),
            quality: Quality::Perplexity,
            rows: vec![
                row("uncompressed", 198_000_000, 213.0, false),
                row("q4_0-gptq", 29_700_000, 217.8, true),
                row("q4_0-rtn", 29_700_000, 265.9, true),
                row("q4_0-imatrix", 29_700_000, 265.9, true), // coincides with rtn
                row("sparse-50-step", 198_000_000, 400.0, false), // not a final artifact
                row("kmeans-row", 27_400_000, 231.6, true),
            ],
            headline: None,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("compress.svg");
        let teacher = Reference {
            name: "teacher".into(),
            bytes: 98_400_000,
            quality: 87.7,
        };
        plot(&o, &path, Some(&teacher), &|r| r.artifact.is_some()).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        for want in [
            "q4_0-gptq",
            "kmeans-row",
            "Pareto frontier",
            "uncompressed",
            "teacher",
            "2,3",
        ] {
            assert!(svg.contains(want), "{want}");
        }
        assert!(
            !svg.contains("sparse-50-step"),
            "only final artifacts are plotted"
        );
        let (w, _, inked) = crate::report::plot::render(&path);
        assert_eq!(w, 1000);
        assert!(inked > 0.01, "{inked}");
    }
}
