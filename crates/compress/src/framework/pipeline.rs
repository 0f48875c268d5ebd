//! Running the `compress:` section: every variant starts from the uncompressed model, applies
//! its passes in order and is measured after every one by running it; its sink then writes
//! the artifact. What "measured" means is the task's [`Evaluator`]; what healing trains with
//! is its [`Trainer`]. The outcome is data; rendering it is the caller's.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::error::CompressError;
use crate::formats::folder::{serialized_bytes, Stored};
use crate::framework::pass::{Calibration, Candidate, Context, Trainer};
use crate::framework::plan::{CompressConfig, Defaults};
pub use crate::framework::quality::Quality;
use crate::framework::sink::{Output, Sink};
use crate::model::tensors::TensorMap;
use crate::passes::pruning::sparsity::zero_share;

/// Quality and speed of one model, measured by running it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measured {
    /// What `quality` and `speed` are.
    pub kind: Quality,
    /// Validation perplexity (causal LM) or accuracy (classification).
    pub quality: f64,
    /// Tokens/s (causal LM) or messages/s (classification).
    pub speed: f64,
    /// Mean KL divergence from the uncompressed model's output distributions on the same
    /// validation data, when the task measures it (classification: accuracy on a few hundred
    /// examples moves in steps too coarse to compare methods by).
    pub kl_to_uncompressed: Option<f64>,
}

/// How a task measures a candidate, on validation data that calibration never sees.
pub trait Evaluator {
    /// How its measurements read (perplexity or accuracy).
    fn quality(&self) -> Quality;
    fn measure(&self, c: &Candidate) -> Result<Measured, CompressError>;
    /// Measures a written GGUF file as a runtime would run it (quantised matrices).
    fn measure_gguf(&self, path: &Path) -> Result<Measured, CompressError>;
    /// The calibration data of the task's training split.
    fn calibration(&self) -> &dyn Calibration;
}

/// The uncompressed model a run starts every variant from.
pub struct Source<'a> {
    /// The model as given (for the report).
    pub name: String,
    pub base: Candidate,
    /// Bytes of its weights on disk.
    pub bytes: u64,
    pub output: Output<'a>,
}

/// One row of the size/quality table. Serialised with the quality and speed under their
/// task's keys (`val_ppl`/`tokens_per_s` or `acc`/`msgs_per_s`).
#[derive(Clone, Debug)]
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
    /// Validation perplexity or accuracy, and tokens/s or messages/s: what `kind` says.
    pub kind: Quality,
    pub quality: f64,
    pub speed: f64,
    /// Mean KL divergence from the uncompressed model's outputs (classification).
    pub kl_to_uncompressed: Option<f64>,
    /// The written artifact (folder or GGUF file), on a variant's last row.
    pub artifact: Option<String>,
    /// Notes such as GGUF fall-back types or factorisation ranks.
    pub notes: Vec<String>,
    /// Seconds the step took (healing included).
    pub seconds: f64,
}

impl Row {
    /// The validation perplexity, for a causal LM's row.
    pub fn val_ppl(&self) -> Option<f64> {
        (self.kind == Quality::Perplexity).then_some(self.quality)
    }

    /// The validation accuracy, for a classifier's row.
    pub fn acc(&self) -> Option<f64> {
        (self.kind == Quality::Accuracy).then_some(self.quality)
    }
}

impl Serialize for Row {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let (quality_key, speed_key) = self.kind.keys();
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("model", &self.model)?;
        m.serialize_entry("variant", &self.variant)?;
        m.serialize_entry("steps", &self.steps)?;
        m.serialize_entry("params", &self.params)?;
        m.serialize_entry("nonzero_params", &self.nonzero_params)?;
        m.serialize_entry("bytes", &self.bytes)?;
        m.serialize_entry(quality_key, &self.quality)?;
        if let Some(kl) = self.kl_to_uncompressed {
            m.serialize_entry("kl_to_uncompressed", &kl)?;
        }
        m.serialize_entry(speed_key, &self.speed)?;
        if let Some(a) = &self.artifact {
            m.serialize_entry("artifact", a)?;
        }
        if !self.notes.is_empty() {
            m.serialize_entry("notes", &self.notes)?;
        }
        m.serialize_entry("seconds", &self.seconds)?;
        m.end()
    }
}

/// Everything a compress run produced.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub model: String,
    /// How its rows' quality reads (`causal_lm` or `classification` in JSON).
    #[serde(rename = "task")]
    pub quality: Quality,
    pub rows: Vec<Row>,
    /// The smallest variant within 3% perplexity (1 point accuracy) of the uncompressed model.
    pub headline: Option<Row>,
}

impl Outcome {
    pub fn is_causal_lm(&self) -> bool {
        self.quality == Quality::Perplexity
    }
}

/// Values that are not exact zeros (a factorised matrix counts its factors).
pub fn nonzero(map: &TensorMap) -> Result<usize, CompressError> {
    let mut n = 0usize;
    for (name, t) in &map.tensors {
        if let Some(Stored::LowRank { u, v }) = map.stored.get(name) {
            n += u.elem_count() + v.elem_count();
        } else if map.stored.contains_key(name) {
            n += t.elem_count();
        } else {
            let z = zero_share(t).map_err(|source| CompressError::Tensor {
                context: format!("counting zeros of `{name}`"),
                source,
            })?;
            n += ((1.0 - z) * t.elem_count() as f64).round() as usize;
        }
    }
    Ok(n)
}

/// A table row for candidate `c` after `steps`, measured as `m`.
pub fn row_of(
    model: &str,
    variant: &str,
    steps: &[String],
    c: &Candidate,
    bytes: u64,
    m: Measured,
) -> Result<Row, CompressError> {
    Ok(Row {
        model: model.to_string(),
        variant: variant.to_string(),
        steps: steps.to_vec(),
        params: c.weights.parameters(),
        nonzero_params: nonzero(&c.weights)?,
        bytes,
        kind: m.kind,
        quality: m.quality,
        speed: m.speed,
        kl_to_uncompressed: m.kl_to_uncompressed,
        artifact: None,
        notes: vec![],
        seconds: 0.0,
    })
}

/// Runs every variant of `cfg` on `src`, writing artifacts into `out`.
pub fn run(
    src: &Source,
    eval: &dyn Evaluator,
    trainer: Option<&dyn Trainer>,
    cfg: &CompressConfig,
    defaults: &Defaults,
    out: &Path,
) -> Result<Outcome, CompressError> {
    let plans = cfg.plans(defaults)?;
    // Marked as distill's: a later run may write here again; a user's folder is not.
    distill_files::container::mark_container(out, "compressed")?;
    let dtype = src.output.dense_dtype;
    let row = |variant: &str, steps: &[String], c: &Candidate, bytes, m: Measured| {
        row_of(&src.name, variant, steps, c, bytes, m)
    };
    let base = eval.measure(&src.base)?;
    tracing::info!(
        quality = base.quality,
        speed = base.speed,
        "uncompressed model"
    );
    let mut rows = vec![row("uncompressed", &[], &src.base, src.bytes, base)?];

    for plan in &plans {
        let mut c = src.base.clone();
        let mut steps: Vec<String> = vec![];
        let artifact = plan.sink.path(out, &plan.name);
        for (i, pass) in plan.passes.iter().enumerate() {
            let t0 = Instant::now();
            let label = pass.label();
            tracing::info!(variant = %plan.name, step = %label, "compressing");
            let ctx = |e: CompressError| CompressError::Context {
                context: format!("compress variant `{}`, step `{label}`", plan.name),
                source: Box::new(e),
            };
            steps.push(label.clone());
            let cx = Context {
                calibration: eval.calibration(),
                trainer,
            };
            let report = pass.apply(&mut c, &cx).map_err(ctx)?;
            // Measure the model exactly as it is stored.
            c.weights
                .round_dense_to(dtype)
                .map_err(|source| CompressError::Tensor {
                    context: format!("rounding `{}` to {dtype:?}", plan.name),
                    source,
                })?;
            let writes_here = i + 1 == plan.passes.len() && plan.sink == Sink::Folder;
            let bytes = if writes_here {
                plan.sink
                    .write(&c, &artifact, &src.output)
                    .map_err(ctx)?
                    .bytes
            } else {
                serialized_bytes(&c.weights, dtype)?
            };
            let m = eval.measure(&c).map_err(ctx)?;
            let mut r = row(&plan.name, &steps, &c, bytes, m)?;
            r.artifact = writes_here.then(|| artifact.display().to_string());
            r.notes = report.notes;
            r.seconds = t0.elapsed().as_secs_f64();
            tracing::info!(variant = %plan.name, quality = m.quality, bytes, "measured");
            rows.push(r);
        }
        if let Sink::Gguf { .. } = plan.sink {
            let t0 = Instant::now();
            let label = plan.sink.label();
            steps.push(label.clone());
            let ctx = |e: CompressError| CompressError::Context {
                context: format!("compress variant `{}`, step `{label}`", plan.name),
                source: Box::new(e),
            };
            let written = plan.sink.write(&c, &artifact, &src.output).map_err(ctx)?;
            let m = eval.measure_gguf(&artifact).map_err(ctx)?;
            let mut r = row(&plan.name, &steps, &c, written.bytes, m)?;
            r.artifact = Some(artifact.display().to_string());
            r.notes = written.notes;
            r.seconds = t0.elapsed().as_secs_f64();
            tracing::info!(variant = %plan.name, quality = m.quality, bytes = written.bytes, "measured");
            rows.push(r);
        }
    }
    let headline = smallest_within_budget(&rows, |_| true).cloned();
    Ok(Outcome {
        model: src.name.clone(),
        quality: eval.quality(),
        rows,
        headline,
    })
}

/// The smallest final artifact that `accept`s and stays within the headline's quality budget
/// ([`Quality::within_headline_budget`]; `rows[0]` is the uncompressed model).
pub fn smallest_within_budget(rows: &[Row], accept: impl Fn(&Row) -> bool) -> Option<&Row> {
    let base = rows.first()?;
    rows.iter()
        .filter(|r| r.artifact.is_some() && accept(r))
        .filter(|r| r.kind.within_headline_budget(r.quality, base.quality))
        .min_by_key(|r| r.bytes)
}
