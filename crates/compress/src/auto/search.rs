//! The search of `distill auto`: structural prefixes measured once, then per-tensor GGUF types
//! chosen on the proxy frontier, screened by calibration loss and bisected on validation.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Tensor};
use serde::Serialize;

use super::frontier::{frontier, Choice};
use super::options::tensor_options;
use super::{AutoConfig, Budget, Target};
use crate::config::{CompressConfig, Defaults};
use crate::error::CompressError;
use crate::gguf_export::{GgufType, Search};
use crate::pass::{Candidate, Context, Pass, Trainer};
use crate::pipeline::{row_of, Evaluator, Measured, Row};
use crate::quantize::Calibrated;
use crate::sink::{Output, Sink};

/// A frontier point and what the proxies said of it.
#[derive(Clone, Debug, Serialize)]
pub struct Probe {
    /// The structural base it quantises (`as-is` or a `structure:` name).
    pub base: String,
    /// `N×type` counts.
    pub types: String,
    /// Tensor bytes as the proxy encodes them.
    pub bytes: u64,
    /// Summed relative reconstruction error (proxy 1).
    pub proxy_error: f64,
    /// Calibration perplexity with the proxy's rounding (proxy 2), and its ratio to the base's.
    pub calibration_ppl: f64,
    pub calibration_ratio: f64,
    /// Whether it passed the calibration screen.
    pub survived: bool,
    /// Validation quality, when measured.
    pub val_ppl: Option<f64>,
}

/// What the search found.
#[derive(Clone, Debug, Serialize)]
pub struct AutoOutcome {
    pub model: String,
    pub budget: String,
    pub target: Option<String>,
    /// `causal_lm` (quality: validation perplexity) or `classification` (accuracy, 0..1).
    pub task: String,
    /// The uncompressed model's validation quality and the budget's limit.
    pub base_quality: f64,
    pub limit: f64,
    /// Whether the best candidate meets the budget (and target); if not it is the closest.
    pub met: bool,
    /// Validation measurements made (the uncompressed model included).
    pub evaluations: usize,
    /// Calibration-loss screens run (cheap: training blocks, no file written).
    pub proxy_evaluations: usize,
    /// Every validation measurement, in order.
    pub rows: Vec<Row>,
    /// The written artifact, measured as a runtime runs it.
    pub best: Option<Row>,
    /// The `quantize` step (with its structural prefix) that reproduces `best` in a
    /// `compress:` variant.
    pub best_steps: Vec<serde_json::Value>,
    /// The measured rows no other measured row beats on both bytes and quality.
    pub pareto: Vec<Row>,
    pub probes: Vec<Probe>,
    pub seconds: f64,
}

/// Validation measurements, counted, each a row.
pub(super) struct Meter<'e> {
    pub eval: &'e dyn Evaluator,
    pub name: &'e str,
    /// A causal LM (perplexity rows) or a classifier (accuracy rows).
    pub lm: bool,
    pub rows: Vec<Row>,
    pub evaluations: usize,
}

impl Meter<'_> {
    pub fn measure(
        &mut self,
        c: &Candidate,
        variant: &str,
        steps: &[String],
        bytes: u64,
    ) -> Result<Measured, CompressError> {
        self.evaluations += 1;
        let m = self.eval.measure(c)?;
        self.rows
            .push(row_of(self.name, variant, steps, c, bytes, m, self.lm)?);
        tracing::info!(
            variant,
            quality = m.quality,
            bytes,
            evaluation = self.evaluations,
            "measured"
        );
        Ok(m)
    }
}

pub(super) struct Base {
    pub name: String,
    pub candidate: Candidate,
    pub steps: Vec<String>,
    pub configs: Vec<serde_json::Value>,
}

/// Searches for the smallest artifact of `base` within `budget` (or the best within `target`
/// bytes) and writes it to `out/auto.gguf`.
#[allow(clippy::too_many_arguments)]
pub fn search(
    name: &str,
    base: &Candidate,
    eval: &dyn Evaluator,
    trainer: Option<&dyn Trainer>,
    output: &Output,
    defaults: &Defaults,
    cfg: &AutoConfig,
    budget: Budget,
    target: Option<Target>,
    out: &Path,
) -> Result<AutoOutcome, CompressError> {
    let t0 = Instant::now();
    if eval.task() != "causal_lm" {
        return super::classifier::search(
            name, base, eval, trainer, output, defaults, cfg, budget, target, out,
        );
    }
    let Budget::PplRelative(r) = budget else {
        return Err(CompressError::Config {
            key: "--budget".into(),
            msg: "a causal-LM model is budgeted in perplexity: ppl:+N%".into(),
        });
    };
    let parse_list = |key: &str, v: &[GgufType]| -> Result<Vec<GgmlDType>, CompressError> {
        if v.is_empty() {
            return Err(CompressError::Config {
                key: format!("auto.{key}"),
                msg: "is empty".into(),
            });
        }
        Ok(v.iter().map(|t| t.ggml()).collect())
    };
    let layer_types = parse_list("types", &cfg.types)?;
    let embed_types = parse_list("embeddings", &cfg.embeddings)?;
    // Marked as distill's: a later run may write here again; a user's folder is not.
    distill_files::marker::mark_container(out, "auto")?;
    let calibration = eval.calibration();
    let tokens = calibration.tokens().ok_or_else(|| {
        CompressError::Unsupported("distill auto needs calibration tokens".into())
    })?;
    let mut meter = Meter {
        eval,
        name,
        lm: true,
        rows: vec![],
        evaluations: 0,
    };
    let full_bytes: u64 = base
        .weights
        .tensors
        .values()
        .map(|t| (t.elem_count() * 4) as u64)
        .sum();
    let m0 = meter.measure(base, "uncompressed", &[], full_bytes)?;
    let limit = budget.limit(m0.quality);
    tracing::info!(val_ppl = m0.quality, limit, budget = %budget.label(), "uncompressed model");

    let bases = structural_bases(
        base,
        m0,
        &mut meter,
        cfg,
        budget,
        target,
        &Context {
            calibration,
            trainer,
        },
        defaults,
    )?;

    let mut probes: Vec<Probe> = vec![];
    let mut proxy_evaluations = 0usize;
    // The best measured candidate so far: (row index, candidate, base index, choice).
    let mut best: Option<(usize, Candidate, usize, Choice)> = None;
    let mut closest: Option<(usize, Candidate, usize, Choice)> = None;
    let better = |rows: &[Row], a: usize, b: usize| -> bool {
        match target {
            Some(Target::Bytes(_)) => rows[a].val_ppl < rows[b].val_ppl,
            _ => rows[a].bytes < rows[b].bytes,
        }
    };
    for (bi, b) in bases.iter().enumerate() {
        if meter.evaluations >= cfg.max_evaluations {
            break;
        }
        // Proxy 1: every matrix in every type, encoded as the artifact will be.
        let super::options::Options {
            tensors: options,
            encoded,
        } = tensor_options(
            &b.candidate,
            &tokens,
            cfg.method,
            &layer_types,
            &embed_types,
        )?;
        let mut fixed_bytes: u64 = 0;
        for (n, t) in &b.candidate.weights.tensors {
            if !encoded.contains_key(n) {
                fixed_bytes += (t.elem_count() * 4) as u64;
            }
        }
        // Proxy 2 on the frontier: calibration perplexity with the proxy's rounding.
        let points = frontier(&options, cfg.sweep);
        let base_cal = calibration.loss(&b.candidate)?;
        let allowed = 1.0 + cfg.proxy_slack * r;
        let mut survivors: Vec<Choice> = vec![];
        for (pi, p) in points.iter().enumerate() {
            if pi % 8 == 0 {
                tracing::info!(base = %b.name, done = pi, of = points.len(), "calibration screen");
            }
            let bytes = p.bytes + fixed_bytes;
            // Over a byte target: skipped, except the smallest point, the closest there is.
            if let Some(Target::Bytes(max)) = target {
                if bytes > max && pi > 0 {
                    continue;
                }
            }
            let mut q = b.candidate.clone();
            for (tname, ty) in &p.types {
                let e = encoded[tname]
                    .iter()
                    .find(|e| e.dtype == *ty)
                    .expect("encoded type");
                let shape = q.weights.tensors[tname].shape().clone();
                let t =
                    Tensor::from_slice(&e.dense, shape, &q.weights.device).map_err(|source| {
                        CompressError::Tensor {
                            context: format!("`{tname}`"),
                            source,
                        }
                    })?;
                q.weights.tensors.insert(tname.clone(), t);
            }
            let cal = calibration.loss(&q)?;
            proxy_evaluations += 1;
            let ratio = cal / base_cal;
            let survived = ratio <= allowed;
            probes.push(Probe {
                base: b.name.clone(),
                types: p.summary(),
                bytes,
                proxy_error: p.error,
                calibration_ppl: cal,
                calibration_ratio: ratio,
                survived,
                val_ppl: None,
            });
            if survived {
                survivors.push(Choice { bytes, ..p.clone() });
            }
        }
        tracing::info!(
            base = %b.name,
            frontier = points.len(),
            survivors = survivors.len(),
            "proxies screened the frontier"
        );
        drop(encoded);
        // The smallest point over a byte target only stands in when nothing fits.
        if let Some(Target::Bytes(max)) = target {
            if survivors.iter().any(|p| p.bytes <= max) {
                survivors.retain(|p| p.bytes <= max);
            }
        }
        // Validation: bisection over the survivors' sizes (the largest that fits, for a byte
        // target), each encoded with the configured method.
        let mut lo = 0usize;
        let mut hi = survivors.len();
        if let Some(Target::Bytes(_)) = target {
            lo = survivors.len().saturating_sub(1);
        }
        // The smallest survivor first: when it is within budget (the common case once the
        // proxies have screened), one measurement settles the base.
        let mut first = true;
        while lo < hi && meter.evaluations < cfg.max_evaluations {
            let mid = match target {
                Some(Target::Bytes(_)) => hi - 1,
                _ if first => lo,
                _ => (lo + hi) / 2,
            };
            first = false;
            let p = &survivors[mid];
            let mut q = b.candidate.clone();
            let pass = Calibrated {
                qtype: layer_types[0],
                embeddings: None,
                types: p.types.clone(),
                name: p.summary(),
                method: cfg.method,
                file: None,
                damp: crate::obs::DAMP,
            };
            let mut steps = b.steps.clone();
            steps.push(pass.label());
            pass.apply(
                &mut q,
                &Context {
                    calibration,
                    trainer,
                },
            )?;
            q.weights
                .round_dense_to(DType::F32)
                .map_err(|source| CompressError::Tensor {
                    context: "rounding".into(),
                    source,
                })?;
            let variant = format!("auto-{}", meter.rows.len());
            let m = meter.measure(&q, &variant, &steps, p.bytes)?;
            let idx = meter.rows.len() - 1;
            if let Some(pr) = probes
                .iter_mut()
                .rev()
                .find(|pr| pr.base == b.name && pr.bytes == p.bytes)
            {
                pr.val_ppl = Some(m.quality);
            }
            let fits = match target {
                Some(Target::Bytes(max)) => p.bytes <= max,
                _ => true,
            };
            let ok = budget.allows(m0.quality, m.quality) && fits;
            let record = (idx, q, bi, p.clone());
            if ok {
                hi = mid;
                if best
                    .as_ref()
                    .is_none_or(|(j, ..)| better(&meter.rows, idx, *j))
                {
                    best = Some(record);
                }
            } else {
                lo = mid + 1;
                let rows = &meter.rows;
                let violation = |i: usize| rows[i].val_ppl.unwrap_or(f64::INFINITY) / limit;
                if closest
                    .as_ref()
                    .is_none_or(|(j, ..)| violation(idx) < violation(*j))
                {
                    closest = Some(record);
                }
            }
            if let Some(Target::Bytes(_)) = target {
                break;
            }
        }
    }

    let met = best.is_some();
    let chosen = best.or(closest);
    let mut best_row = None;
    let mut best_steps = vec![];
    let Meter {
        mut rows,
        mut evaluations,
        ..
    } = meter;
    if let Some((idx, q, bi, choice)) = chosen {
        let path: PathBuf = out.join("auto.gguf");
        let sink = Sink::Gguf {
            qtype: layer_types[0],
            embeddings: None,
            name: choice.summary(),
            search: Search::Reference,
        };
        let written = sink.write(&q, &path, output)?;
        evaluations += 1;
        let m = eval.measure_gguf(&path)?;
        let overhead = written.bytes.saturating_sub(choice.bytes);
        for r in rows.iter_mut().skip(1) {
            if r.variant.starts_with("auto-") {
                r.bytes += overhead;
            }
        }
        let mut steps = rows[idx].steps.clone();
        steps.push(sink.label());
        let mut row = row_of(name, "auto", &steps, &q, written.bytes, m, true)?;
        row.artifact = Some(path.display().to_string());
        row.notes = written.notes;
        tracing::info!(
            val_ppl = m.quality,
            bytes = written.bytes,
            "auto artifact written"
        );
        rows.push(row.clone());
        best_row = Some(row);
        best_steps = bases[bi].configs.clone();
        best_steps.push(serde_json::json!({
            "step": "quantize",
            "type": format!("{:?}", layer_types[0]).to_lowercase(),
            "method": cfg.method,
            "types": choice
                .types
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(format!("{v:?}").to_lowercase())))
                .collect::<serde_json::Map<_, _>>(),
        }));
    }
    let pareto = pareto_rows(&rows);
    Ok(AutoOutcome {
        model: name.to_string(),
        budget: budget.label(),
        target: target.map(|t| t.label()),
        task: "causal_lm".into(),
        base_quality: m0.quality,
        limit,
        met: met
            && best_row.as_ref().is_some_and(|r| {
                r.val_ppl.is_some_and(|p| p <= limit)
                    && match target {
                        Some(Target::Bytes(b)) => r.bytes <= b,
                        _ => true,
                    }
            }),
        evaluations,
        proxy_evaluations,
        rows,
        best: best_row,
        best_steps,
        pareto,
        probes,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The model as it is, and every `structure:` prefix (pruned and healed), each measured once;
/// those within budget (and the speed target) are the bases the encodings start from.
#[allow(clippy::too_many_arguments)]
pub(super) fn structural_bases(
    base: &Candidate,
    m0: Measured,
    meter: &mut Meter,
    cfg: &AutoConfig,
    budget: Budget,
    target: Option<Target>,
    cx: &Context,
    defaults: &Defaults,
) -> Result<Vec<Base>, CompressError> {
    let mut bases = vec![Base {
        name: "as-is".into(),
        candidate: base.clone(),
        steps: vec![],
        configs: vec![],
    }];
    for (i, v) in cfg.structure.iter().enumerate() {
        if meter.evaluations >= cfg.max_evaluations {
            break;
        }
        let key = format!("auto.structure[{i}]");
        let plans = CompressConfig {
            variants: vec![v.clone()],
            eval_blocks: 0,
            calibration_blocks: 1,
        }
        .plans(defaults)
        .map_err(|e| CompressError::Context {
            context: key.clone(),
            source: Box::new(e),
        })?;
        let plan = &plans[0];
        if plan.sink != Sink::Folder || plan.passes.iter().any(|p| p.encodes()) {
            return Err(CompressError::Config {
                key,
                msg: "a structural prefix prunes and heals; it may not quantise, factorise or share (auto chooses the types)".into(),
            });
        }
        let mut c = base.clone();
        let mut steps = vec![];
        for pass in &plan.passes {
            steps.push(pass.label());
            pass.apply(&mut c, cx)?;
        }
        let bytes = c
            .weights
            .tensors
            .values()
            .map(|t| (t.elem_count() * 4) as u64)
            .sum();
        let m = meter.measure(&c, &v.name, &steps, bytes)?;
        let speed_ok = match target {
            Some(Target::TokensPerS(s)) => m.speed >= s,
            _ => true,
        };
        if budget.allows(m0.quality, m.quality) && speed_ok {
            bases.push(Base {
                name: v.name.clone(),
                candidate: c,
                steps,
                configs: v
                    .steps
                    .iter()
                    .map(|s| serde_json::to_value(s).expect("step JSON"))
                    .collect(),
            });
        } else {
            tracing::info!(prefix = %v.name, quality = m.quality, "structural prefix outside the budget: not compressed further");
        }
    }

    Ok(bases)
}

/// The measured rows no other measured row beats on both bytes and perplexity (the written
/// artifact's row stands for the candidate it was written from).
pub(super) fn pareto_rows(rows: &[Row]) -> Vec<Row> {
    // Lower is better: perplexity, or accuracy negated.
    let q = |r: &Row| r.val_ppl.or(r.acc.map(|a| -a));
    let mut v: Vec<&Row> = rows.iter().filter(|r| q(r).is_some()).collect();
    v.sort_by(|a, b| {
        a.bytes
            .cmp(&b.bytes)
            .then(q(a).partial_cmp(&q(b)).unwrap_or(std::cmp::Ordering::Equal))
    });
    let mut out: Vec<Row> = vec![];
    let mut best = f64::INFINITY;
    for r in v {
        let p = q(r).unwrap_or(f64::INFINITY);
        if p < best {
            best = p;
            out.push(r.clone());
        }
    }
    out
}
