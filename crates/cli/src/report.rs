//! `report.md` (+ `report.json`) of a run — teacher vs student: parameters, bytes on disk,
//! validation perplexity, agreement, CPU inference speed, training time — and SVG curves.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use distill_train::trainer::TrainOutcome;
use plotters::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct ModelStats {
    pub name: String,
    pub parameters: usize,
    pub embedding_parameters: usize,
    pub bytes_on_disk: u64,
    pub val_ppl: Option<f64>,
    /// Full-sequence scoring throughput on this machine's CPU.
    pub tokens_per_second: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub run: String,
    pub teacher: ModelStats,
    pub student: ModelStats,
    pub top1_agreement: Option<f64>,
    pub val_kl: Option<f64>,
    pub steps: usize,
    pub train_tokens: u64,
    pub train_seconds: f64,
    pub train_tokens_per_second: f64,
    pub student_layers_from_teacher: Option<Vec<usize>>,
    pub loss: String,
    pub alpha: f64,
    pub temperature: f64,
}

fn millions(n: usize) -> String {
    format!("{:.2} M", n as f64 / 1e6)
}

fn mb(n: u64) -> String {
    format!("{:.1} MB", n as f64 / 1e6)
}

impl RunReport {
    /// The headline table (also printed at the end of a run).
    pub fn table(&self) -> String {
        let (t, s) = (&self.teacher, &self.student);
        let ppl = |p: Option<f64>| p.map(|v| format!("{v:.2}")).unwrap_or_else(|| "–".into());
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.2}×", a / b)
            } else {
                "–".into()
            }
        };
        let mut md = String::new();
        let _ = writeln!(md, "| | teacher | student | student / teacher |");
        let _ = writeln!(md, "|---|---:|---:|---:|");
        let _ = writeln!(
            md,
            "| parameters | {} | {} | {} |",
            millions(t.parameters),
            millions(s.parameters),
            ratio(s.parameters as f64, t.parameters as f64)
        );
        let _ = writeln!(
            md,
            "| non-embedding parameters | {} | {} | {} |",
            millions(t.parameters - t.embedding_parameters),
            millions(s.parameters - s.embedding_parameters),
            ratio(
                (s.parameters - s.embedding_parameters) as f64,
                (t.parameters - t.embedding_parameters) as f64
            )
        );
        let _ = writeln!(
            md,
            "| bytes on disk | {} | {} | {} |",
            mb(t.bytes_on_disk),
            mb(s.bytes_on_disk),
            ratio(s.bytes_on_disk as f64, t.bytes_on_disk as f64)
        );
        let _ = writeln!(
            md,
            "| validation perplexity | {} | {} | |",
            ppl(t.val_ppl),
            ppl(s.val_ppl)
        );
        let _ = writeln!(
            md,
            "| CPU tokens/s (scoring) | {:.0} | {:.0} | {} |",
            t.tokens_per_second,
            s.tokens_per_second,
            ratio(s.tokens_per_second, t.tokens_per_second)
        );
        if let Some(a) = self.top1_agreement {
            let _ = writeln!(
                md,
                "| top-1 agreement with the teacher | | {:.1}% | |",
                100.0 * a
            );
        }
        if let Some(k) = self.val_kl {
            let _ = writeln!(md, "| KL(teacher ‖ student) per token | | {k:.3} | |");
        }
        md
    }

    pub fn markdown(&self) -> String {
        let mut md = format!("# Distillation report: {}\n\n{}\n", self.run, self.table());
        let _ = writeln!(
            md,
            "Training: {} steps, {} tokens in {:.1} min ({:.0} tokens/s), loss `{}` at T = {}, α = {}.",
            self.steps,
            self.train_tokens,
            self.train_seconds / 60.0,
            self.train_tokens_per_second,
            self.loss,
            self.temperature,
            self.alpha
        );
        if let Some(l) = &self.student_layers_from_teacher {
            let _ = writeln!(
                md,
                "\nStudent layers were initialised from teacher layers {l:?}."
            );
        }
        md.push_str(
            "\n![training loss](plots/loss.svg)\n\n![validation perplexity](plots/val_ppl.svg)\n",
        );
        md.push_str("\nPerplexity is over next-token predictions on held-out documents; throughput is full-sequence scoring in this run's block size, on this machine's CPU.\n");
        md
    }
}

/// Writes `report.md`, `report.json` and `plots/*.svg` into `run_dir` (each through a temporary file).
pub fn write(run_dir: &Path, report: &RunReport, outcome: &TrainOutcome) -> anyhow::Result<()> {
    let plots = run_dir.join("plots");
    std::fs::create_dir_all(&plots).with_context(|| plots.display().to_string())?;
    let loss: Vec<(f64, f64)> = outcome
        .steps_log
        .iter()
        .map(|r| (r.step as f64, r.loss as f64))
        .collect();
    let hard: Vec<(f64, f64)> = outcome
        .steps_log
        .iter()
        .map(|r| (r.step as f64, r.hard as f64))
        .collect();
    let soft: Vec<(f64, f64)> = outcome
        .steps_log
        .iter()
        .filter_map(|r| r.soft.map(|s| (r.step as f64, s as f64)))
        .collect();
    let mut series = vec![("total loss", loss), ("cross-entropy (labels)", hard)];
    if !soft.is_empty() {
        series.push(("soft-target loss", soft));
    }
    line_plot(
        &plots.join("loss.svg"),
        "training loss",
        "step",
        "loss",
        &series,
    )?;
    let val: Vec<(f64, f64)> = outcome
        .evals
        .iter()
        .map(|e| (e.step as f64, e.val_ppl))
        .collect();
    let mut series = vec![("student", val.clone())];
    if let (Some(t), Some(first), Some(last)) = (report.teacher.val_ppl, val.first(), val.last()) {
        series.push(("teacher", vec![(first.0.min(0.0), t), (last.0, t)]));
    }
    line_plot(
        &plots.join("val_ppl.svg"),
        "validation perplexity",
        "step",
        "perplexity",
        &series,
    )?;
    let write = |name: &str, data: &[u8]| -> anyhow::Result<()> {
        let p = run_dir.join(name);
        distill_train::checkpoint::write_atomic(&p, data).with_context(|| p.display().to_string())
    };
    write("report.md", report.markdown().as_bytes())?;
    write("report.json", &serde_json::to_vec_pretty(report)?)?;
    Ok(())
}

fn line_plot(
    path: &Path,
    title: &str,
    x: &str,
    y: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
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
    let tmp = distill_train::checkpoint::tmp_sibling(path);
    {
        let root = SVGBackend::new(&tmp, (760, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc(x)
            .y_desc(y)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for (i, (name, p)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    p.iter().copied().filter(|(_, v)| v.is_finite()),
                    color.stroke_width(2),
                ))
                .map_err(|e| anyhow::anyhow!("{e}"))?
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
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    std::fs::rename(&tmp, path).with_context(|| path.display().to_string())?;
    Ok(())
}
