//! The `compress:` section run: each variant starts from the uncompressed model, applies its
//! steps in order and is measured after every step by running it; the last step's artifact
//! is written (a compressed safetensors folder or a GGUF file). Rows go to `compress.md`,
//! `compress.json` and a size-vs-quality plot `compress.svg`.

pub mod cls;
pub mod lm;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Var};
use candle_nn::VarMap;
use distill_compress::config::{CompressConfig, Step};
use distill_compress::int8::quantize_int8;
use distill_compress::low_rank::{low_rank, RankTarget};
use distill_compress::prune::{is_layer_matrix, magnitude_prune, two_four_prune, zero_share};
use distill_compress::share::share_weights;
use distill_compress::stored::serialized_bytes;
use distill_compress::{write_model_folder, TensorMap};
use distill_models::ArchConfig;
use serde::Serialize;

/// Quality and speed of one model, measured by running it.
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    /// Validation perplexity (causal LM) or accuracy (classification).
    pub quality: f64,
    /// Tokens/s (causal LM) or messages/s (classification).
    pub speed: f64,
}

/// A model the pipeline compresses: what differs between a decoder and a classifier.
pub trait Subject {
    /// The model as given (name for the report).
    fn name(&self) -> String;
    /// `causal_lm` or `classification`.
    fn task(&self) -> &'static str;
    /// A fresh copy of the uncompressed model.
    fn base(&self) -> anyhow::Result<(ArchConfig, TensorMap)>;
    /// Bytes of the uncompressed weights on disk.
    fn base_bytes(&self) -> u64;
    /// dtype dense weights are written in (the source's).
    fn dense_dtype(&self) -> DType;
    /// Runs the model on the validation data.
    fn measure(&self, arch: &ArchConfig, map: &TensorMap) -> anyhow::Result<Measured>;
    /// The structured parts of a `prune` step (layers, heads, FFN neurons), which change the
    /// architecture; returns notes for the report. The runner applies sparsity after it.
    fn prune(
        &self,
        arch: &mut ArchConfig,
        map: &mut TensorMap,
        step: &Step,
    ) -> anyhow::Result<Vec<String>>;
    /// A `heal` step: distillation from the uncompressed model into `map`; `dir` is scratch.
    fn heal(
        &self,
        arch: &ArchConfig,
        map: &mut TensorMap,
        step: &Step,
        dir: &Path,
    ) -> anyhow::Result<()>;
    /// Folder the compressed model's tokenizer and other files are copied from.
    fn template(&self) -> &Path;
    /// `config.json` of the compressed model.
    fn config_json(&self, arch: &ArchConfig) -> anyhow::Result<serde_json::Value>;
    /// Writes `map` as GGUF `qtype` to `path` and measures the file through QMatMul.
    fn gguf(
        &self,
        arch: &ArchConfig,
        map: &TensorMap,
        qtype: &str,
        path: &Path,
    ) -> anyhow::Result<(u64, Measured, Vec<String>)>;
}

/// One row of the size/quality table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub model: String,
    pub variant: String,
    /// Every step so far.
    pub steps: Vec<String>,
    pub params: usize,
    pub nonzero_params: usize,
    /// Bytes of the weights as written after this step (the file on disk for a variant's
    /// last step; the exact serialised size otherwise).
    pub bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_ppl: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msgs_per_s: Option<f64>,
    /// The written artifact (folder or GGUF file), on a variant's last row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    /// Notes such as GGUF fall-back types or factorisation ranks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Seconds the step took (healing included).
    pub seconds: f64,
}

/// Everything a pipeline run produced.
#[derive(Serialize)]
pub struct Outcome {
    pub model: String,
    pub task: String,
    pub rows: Vec<Row>,
    /// The smallest variant within 3% perplexity (1 pt accuracy) of the uncompressed model.
    pub headline: Option<Row>,
}

/// The variables of a new `VarMap` holding copies of `map`'s tensors.
pub(crate) fn varmap_of(map: &TensorMap) -> anyhow::Result<VarMap> {
    let vm = VarMap::new();
    {
        let mut data = vm.data().lock().unwrap_or_else(|p| p.into_inner());
        for (n, t) in &map.tensors {
            data.insert(n.clone(), Var::from_tensor(&t.copy()?)?);
        }
    }
    Ok(vm)
}

/// Copies trained variables back into `map`, keeping pruned (zero) weights at zero: healing
/// must not regrow what sparsity removed.
pub(super) fn take_back(map: &mut TensorMap, vm: &VarMap) -> anyhow::Result<()> {
    let data = vm.data().lock().unwrap_or_else(|p| p.into_inner());
    for (n, t) in map.tensors.iter_mut() {
        let Some(v) = data.get(n) else { continue };
        let trained = v.as_tensor().detach();
        *t = if zero_share(t)? > 0.0 {
            trained.mul(&t.ne(0.0)?.to_dtype(t.dtype())?)?
        } else {
            trained
        };
    }
    Ok(())
}

/// The `n` of `layers` layers whose removal, each alone, gives the lowest `loss_without(l)`;
/// and a report note listing every layer's loss (`what`).
pub(super) fn least_important(
    layers: usize,
    n: usize,
    what: &str,
    mut loss_without: impl FnMut(usize) -> anyhow::Result<f64>,
) -> anyhow::Result<(Vec<usize>, String)> {
    if n >= layers {
        anyhow::bail!("drop_layers.least_important: {n} of {layers} layers would leave none");
    }
    let mut scores = vec![];
    for l in 0..layers {
        scores.push((loss_without(l)?, l));
    }
    scores.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut chosen: Vec<usize> = scores[..n].iter().map(|s| s.1).collect();
    chosen.sort();
    let note = format!(
        "{what} without each layer: {}; dropped {chosen:?}",
        scores
            .iter()
            .map(|(p, l)| format!("{l}: {p:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok((chosen, note))
}

/// `base` with every non-null key of `changes` (a serialised config) written over it: the
/// compressed model's `config.json` keeps the source's other keys.
pub fn overlay(
    base: &serde_json::Value,
    changes: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let mut out = base.clone();
    let (Some(o), serde_json::Value::Object(c)) = (out.as_object_mut(), changes) else {
        anyhow::bail!("config.json is not a JSON object");
    };
    for (k, v) in c {
        if !v.is_null() {
            o.insert(k, v);
        }
    }
    Ok(out)
}

/// Values that are not exact zeros (a factorised matrix counts its factors).
pub fn nonzero(map: &TensorMap) -> anyhow::Result<usize> {
    let mut n = 0usize;
    for (name, t) in &map.tensors {
        if let Some(distill_compress::Stored::LowRank { u, v }) = map.stored.get(name) {
            n += u.elem_count() + v.elem_count();
        } else if map.stored.contains_key(name) {
            n += t.elem_count();
        } else {
            n += ((1.0 - zero_share(t)?) * t.elem_count() as f64).round() as usize;
        }
    }
    Ok(n)
}

/// Runs every variant of `cfg` on `subject`, writing artifacts and reports into `out`.
pub fn run(subject: &dyn Subject, cfg: &CompressConfig, out: &Path) -> anyhow::Result<Outcome> {
    cfg.validate()?;
    std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
    let task = subject.task();
    let row = |variant: &str, steps: &[String], params, nz, bytes, m: Measured| Row {
        model: subject.name(),
        variant: variant.to_string(),
        steps: steps.to_vec(),
        params,
        nonzero_params: nz,
        bytes,
        val_ppl: (task == "causal_lm").then_some(m.quality),
        acc: (task != "causal_lm").then_some(m.quality),
        tokens_per_s: (task == "causal_lm").then_some(m.speed),
        msgs_per_s: (task != "causal_lm").then_some(m.speed),
        artifact: None,
        notes: vec![],
        seconds: 0.0,
    };
    let (arch0, map0) = subject.base()?;
    let base = subject.measure(&arch0, &map0)?;
    let mut rows = vec![row(
        "uncompressed",
        &[],
        map0.parameters(),
        nonzero(&map0)?,
        subject.base_bytes(),
        base,
    )];
    drop(map0);
    tracing::info!(
        quality = base.quality,
        speed = base.speed,
        "uncompressed model"
    );

    for v in &cfg.variants {
        let (mut arch, mut map) = subject.base()?;
        let mut steps: Vec<String> = vec![];
        let last = v.steps.len() - 1;
        for (i, step) in v.steps.iter().enumerate() {
            let t0 = Instant::now();
            let label = match step {
                Step::Heal { steps, .. } if task == "causal_lm" => format!("heal {steps} steps"),
                Step::Heal { epochs, .. } => format!("heal {epochs} epoch(s)"),
                _ => step.label(),
            };
            tracing::info!(variant = %v.name, step = %label, "compressing");
            let ctx = || format!("compress variant `{}`, step `{label}`", v.name);
            let mut notes = vec![];
            steps.push(label.clone());
            let mut artifact = None;
            let mut written: Option<(u64, Measured)> = None;
            match step {
                Step::Prune {
                    sparsity,
                    scope,
                    two_four,
                    ..
                } => {
                    notes = subject.prune(&mut arch, &mut map, step).with_context(ctx)?;
                    if let Some(s) = sparsity {
                        magnitude_prune(&mut map.tensors, *s, *scope).with_context(ctx)?;
                    }
                    if *two_four {
                        two_four_prune(&mut map.tensors).with_context(ctx)?;
                    }
                }
                Step::Heal { .. } => {
                    let dir = out.join(format!(".heal-{}", v.name));
                    subject
                        .heal(&arch, &mut map, step, &dir)
                        .with_context(ctx)?;
                    let _ = std::fs::remove_dir_all(&dir);
                }
                Step::LowRank { rank, energy } => {
                    let target = match (rank, energy) {
                        (Some(r), _) => RankTarget::Rank(*r),
                        (_, Some(e)) => RankTarget::Energy(*e),
                        _ => unreachable!("validated"),
                    };
                    let done = low_rank(&mut map, is_layer_matrix, target).with_context(ctx)?;
                    let applied: Vec<_> = done.iter().filter(|f| f.applied).collect();
                    let ranks: Vec<usize> = applied.iter().map(|f| f.rank).collect();
                    notes.push(format!(
                        "{} of {} matrices factorised, ranks {}..={}, mean energy kept {:.3}",
                        applied.len(),
                        done.len(),
                        ranks.iter().min().unwrap_or(&0),
                        ranks.iter().max().unwrap_or(&0),
                        applied.iter().map(|f| f.energy).sum::<f64>() / applied.len().max(1) as f64
                    ));
                }
                Step::Share { bits } => {
                    let done = share_weights(&mut map, |_| true, *bits).with_context(ctx)?;
                    notes.push(format!(
                        "{} matrices, mean RMS error {:.2e}",
                        done.len(),
                        done.iter().map(|s| s.rms_error).sum::<f64>() / done.len().max(1) as f64
                    ));
                }
                Step::Quantize { to } if to == "int8" => {
                    let done = quantize_int8(&mut map, |_| true).with_context(ctx)?;
                    notes.push(format!("{} matrices int8 per channel", done.len()));
                }
                Step::Quantize { to } => {
                    if i != last {
                        anyhow::bail!("{}: a GGUF quantisation must be the last step", ctx());
                    }
                    let path = out.join(format!("{}.gguf", v.name));
                    let (bytes, m, fallbacks) =
                        subject.gguf(&arch, &map, to, &path).with_context(ctx)?;
                    notes.extend(fallbacks);
                    artifact = Some(path.display().to_string());
                    written = Some((bytes, m));
                }
            }
            // Measure the model exactly as it is stored.
            map.round_dense_to(subject.dense_dtype())?;
            let (bytes, m) = match written {
                Some(w) => w,
                None if i == last => {
                    let dir = out.join(&v.name);
                    let bytes = write_model_folder(
                        &dir,
                        subject.template(),
                        &subject.config_json(&arch)?,
                        &map,
                        subject.dense_dtype(),
                    )
                    .with_context(ctx)?;
                    artifact = Some(dir.display().to_string());
                    (bytes, subject.measure(&arch, &map).with_context(ctx)?)
                }
                None => (
                    serialized_bytes(&map, subject.dense_dtype())?,
                    subject.measure(&arch, &map).with_context(ctx)?,
                ),
            };
            let mut r = row(&v.name, &steps, map.parameters(), nonzero(&map)?, bytes, m);
            r.artifact = artifact;
            r.notes = notes;
            r.seconds = t0.elapsed().as_secs_f64();
            tracing::info!(variant = %v.name, quality = m.quality, bytes, "measured");
            rows.push(r);
        }
    }

    let headline = headline(&rows, task);
    let outcome = Outcome {
        model: subject.name(),
        task: task.into(),
        rows,
        headline,
    };
    write_reports(&outcome, out)?;
    Ok(outcome)
}

/// Runs the `compress:` section after a training run: artifacts and reports in
/// `RUN/compressed/`, the table and headline appended to `RUN/report.md`.
pub fn run_in(subject: &dyn Subject, cfg: &CompressConfig, run_dir: &Path) -> anyhow::Result<()> {
    let out = run_dir.join("compressed");
    let o = run(subject, cfg, &out)?;
    let report = run_dir.join("report.md");
    let mut md = std::fs::read_to_string(&report).unwrap_or_default();
    md.push_str(&format!(
        "\n## Compression\n\n{}\n\n{}\n![size vs quality](compressed/compress.svg)\n",
        headline_text(&o),
        table(&o)
    ));
    write(report.clone(), md.as_bytes())?;
    println!("\n{}\n{}", table(&o), headline_text(&o));
    println!("compressed: {}", out.display());
    Ok(())
}

/// The smallest final artifact within 3% of the uncompressed perplexity (or 1 point of its
/// accuracy).
fn headline(rows: &[Row], task: &str) -> Option<Row> {
    let base = rows.first()?;
    rows.iter()
        .filter(|r| r.artifact.is_some())
        .filter(|r| match task {
            "causal_lm" => matches!((r.val_ppl, base.val_ppl), (Some(p), Some(b)) if p <= b * 1.03),
            _ => matches!((r.acc, base.acc), (Some(a), Some(b)) if a >= b - 0.01),
        })
        .min_by_key(|r| r.bytes)
        .cloned()
}

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

/// The Markdown table of `rows` (one line per step).
pub fn table(o: &Outcome) -> String {
    let (q, s) = if o.task == "causal_lm" {
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
    match &o.headline {
        Some(h) => format!(
            "Smallest artifact within {}: **{}** ({}), {:.2} MB ({:.1}x smaller than {:.2} MB), {} {}, {} {}.",
            if o.task == "causal_lm" { "3% of the uncompressed validation perplexity" } else { "1 point of the uncompressed validation accuracy" },
            h.variant,
            h.steps.join(" → "),
            h.bytes as f64 / 1e6,
            base.bytes as f64 / h.bytes.max(1) as f64,
            base.bytes as f64 / 1e6,
            if o.task == "causal_lm" { "perplexity" } else { "accuracy" },
            quality_cell(h),
            speed_cell(h),
            if o.task == "causal_lm" { "tokens/s" } else { "msgs/s" },
        ),
        None => "No variant stays within the quality budget.".into(),
    }
}

fn write_reports(o: &Outcome, out: &Path) -> anyhow::Result<()> {
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
    write(out.join("compress.md"), md.as_bytes())?;
    write(
        out.join("compress.json"),
        serde_json::to_string_pretty(o)?.as_bytes(),
    )?;
    plot(o, &out.join("compress.svg"))?;
    Ok(())
}

fn write(path: PathBuf, bytes: &[u8]) -> anyhow::Result<()> {
    distill_train::checkpoint::write_atomic(&path, bytes)
        .with_context(|| path.display().to_string())
}

/// Size (MB, log scale) against quality, one point per variant's final artifact plus the
/// uncompressed model.
fn plot(o: &Outcome, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
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
        root.fill(&WHITE)?;
        let ylabel = if o.task == "causal_lm" {
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
            )?;
        chart
            .configure_mesh()
            .x_desc("weights on disk (MB, log scale)")
            .y_desc(ylabel)
            .draw()?;
        chart.draw_series(
            pts.iter()
                .map(|(_, x, y)| Circle::new((*x, *y), 4, BLUE.filled())),
        )?;
        chart.draw_series(
            pts.iter()
                .map(|(n, x, y)| Text::new(n.clone(), (*x, *y), ("sans-serif", 12).into_font())),
        )?;
        root.present()?;
    }
    std::fs::rename(&tmp, path).with_context(|| path.display().to_string())?;
    Ok(())
}
