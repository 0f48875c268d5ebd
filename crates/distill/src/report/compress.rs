//! A compress run rendered: the size/quality table, the headline, `compress.md`,
//! `compress.json` and the size-vs-quality plot `compress.svg`.

use std::path::Path;

use distill_compress::pipeline::{Outcome, Row};
use distill_train::checkpoint::write_atomic;

use crate::error::{io, Error, Result};

fn quality_cell(r: &Row) -> String {
    match (r.val_ppl, r.acc) {
        (Some(p), _) => format!("{p:.2}"),
        (_, Some(a)) => format!("{:.2}%", a * 100.0),
        _ => "-".into(),
    }
}

fn speed_cell(r: &Row) -> String {
    r.tokens_per_s
        .or(r.msgs_per_s)
        .map(|s| format!("{s:.1}"))
        .unwrap_or_else(|| "-".into())
}

/// The Markdown table of the rows (one line per step).
pub fn table(o: &Outcome) -> String {
    let (q, s) = if o.is_causal_lm() {
        ("val perplexity", "tokens/s")
    } else {
        ("val accuracy", "msgs/s")
    };
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
            if lm { "3% of the uncompressed validation perplexity" } else { "1 point of the uncompressed validation accuracy" },
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

/// Writes `compress.md`, `compress.json` and `compress.svg` into `out`.
pub fn write(o: &Outcome, out: &Path) -> Result<()> {
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
        write_atomic(&p, bytes).map_err(io(&p))
    };
    write("compress.md", md.as_bytes())?;
    write(
        "compress.json",
        serde_json::to_string_pretty(o)
            .expect("an outcome serialises")
            .as_bytes(),
    )?;
    plot(o, &out.join("compress.svg"))
}

/// Size (MB, log scale) against quality, one point per variant's final artifact plus the
/// uncompressed model.
fn plot(o: &Outcome, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let e = |e: &dyn std::fmt::Display| Error::Invalid(format!("plot {}: {e}", path.display()));
    let pts: Vec<(String, f64, f64)> = o
        .rows
        .iter()
        .enumerate()
        .filter(|(i, r)| *i == 0 || r.artifact.is_some())
        .filter_map(|(_, r)| {
            let q = r.val_ppl.or(r.acc.map(|a| a * 100.0))?;
            Some((r.variant.clone(), r.bytes as f64 / 1e6, q))
        })
        .collect();
    if pts.is_empty() {
        return Ok(());
    }
    let (xmin, xmax) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let (ymin, ymax) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.2), b.max(p.2)));
    let pad = ((ymax - ymin) * 0.1).max(1e-3);
    let tmp = path.with_extension("svg.tmp");
    {
        let root = SVGBackend::new(&tmp, (800, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let ylabel = if o.is_causal_lm() {
            "validation perplexity"
        } else {
            "validation accuracy (%)"
        };
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("{}: size vs quality", o.model), ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(
                ((xmin * 0.8).max(1e-3)..xmax * 1.25).log_scale(),
                (ymin - pad)..(ymax + pad),
            )
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .x_desc("weights on disk (MB, log scale)")
            .y_desc(ylabel)
            .draw()
            .map_err(|x| e(&x))?;
        chart
            .draw_series(
                pts.iter()
                    .map(|(_, x, y)| Circle::new((*x, *y), 4, BLUE.filled())),
            )
            .map_err(|x| e(&x))?;
        chart
            .draw_series(
                pts.iter().map(|(n, x, y)| {
                    Text::new(n.clone(), (*x, *y), ("sans-serif", 12).into_font())
                }),
            )
            .map_err(|x| e(&x))?;
        root.present().map_err(|x| e(&x))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))
}
