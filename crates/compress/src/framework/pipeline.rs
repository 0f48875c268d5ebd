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
use crate::framework::sink::{Output, Sink};
use crate::model::tensors::TensorMap;
use crate::passes::pruning::sparsity::zero_share;

/// Quality and speed of one model, measured by running it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measured {
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
    /// `causal_lm` or `classification`: how `quality` reads (lower or higher is better).
    fn task(&self) -> &'static str;
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
    /// Mean KL divergence from the uncompressed model's outputs (classification).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl_to_uncompressed: Option<f64>,
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

/// Everything a compress run produced.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub model: String,
    pub task: String,
    pub rows: Vec<Row>,
    /// The smallest variant within 3% perplexity (1 point accuracy) of the uncompressed model.
    pub headline: Option<Row>,
}

impl Outcome {
    pub fn is_causal_lm(&self) -> bool {
        self.task == "causal_lm"
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

/// A table row for candidate `c` after `steps`, measured as `m` (`lm`: a causal LM's
/// perplexity and tokens/s, else a classifier's accuracy and messages/s).
pub fn row_of(
    model: &str,
    variant: &str,
    steps: &[String],
    c: &Candidate,
    bytes: u64,
    m: Measured,
    lm: bool,
) -> Result<Row, CompressError> {
    Ok(Row {
        model: model.to_string(),
        variant: variant.to_string(),
        steps: steps.to_vec(),
        params: c.weights.parameters(),
        nonzero_params: nonzero(&c.weights)?,
        bytes,
        val_ppl: lm.then_some(m.quality),
        acc: (!lm).then_some(m.quality),
        kl_to_uncompressed: m.kl_to_uncompressed,
        tokens_per_s: lm.then_some(m.speed),
        msgs_per_s: (!lm).then_some(m.speed),
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
    let task = eval.task();
    let lm = task == "causal_lm";
    let dtype = src.output.dense_dtype;
    let row = |variant: &str, steps: &[String], c: &Candidate, bytes, m: Measured| {
        row_of(&src.name, variant, steps, c, bytes, m, lm)
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
    let headline = headline(&rows, lm);
    Ok(Outcome {
        model: src.name.clone(),
        task: task.into(),
        rows,
        headline,
    })
}

/// The smallest final artifact within 3% of the uncompressed perplexity (or 1 point of its
/// accuracy).
fn headline(rows: &[Row], lm: bool) -> Option<Row> {
    smallest_within_budget(rows, lm, |_| true).cloned()
}

/// The smallest final artifact that `accept`s and stays within the headline's quality budget:
/// 3% of the uncompressed perplexity, or 1 point of its accuracy (`rows[0]` is uncompressed).
pub fn smallest_within_budget(
    rows: &[Row],
    lm: bool,
    accept: impl Fn(&Row) -> bool,
) -> Option<&Row> {
    let base = rows.first()?;
    rows.iter()
        .filter(|r| r.artifact.is_some() && accept(r))
        .filter(|r| {
            if lm {
                matches!((r.val_ppl, base.val_ppl), (Some(p), Some(b)) if p <= b * 1.03)
            } else {
                matches!((r.acc, base.acc), (Some(a), Some(b)) if a >= b - 0.01)
            }
        })
        .min_by_key(|r| r.bytes)
}
