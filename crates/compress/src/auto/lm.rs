//! The search of `distill auto`: structural prefixes measured once, then per-tensor GGUF types
//! chosen on the proxy frontier, screened by calibration loss and bisected on validation.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Tensor};

use super::common::{pareto_rows, structural_bases, AutoOutcome, AutoSearch, Base, Meter, Probe};
use super::config::{Budget, Target};
use super::frontier::{frontier, Choice};
use super::options::tensor_options;
use crate::calibration::walk::CalibrationTokens;
use crate::error::CompressError;
use crate::formats::gguf::export::{GgufType, Search};
use crate::framework::pass::{Candidate, Context, Pass};
use crate::framework::pipeline::{row_of, Measured, Quality, Row};
use crate::framework::sink::Sink;
use crate::passes::quantization::Calibrated;

/// A measured candidate: its row, the candidate, its base and the types chosen.
type Found = (usize, Candidate, usize, Choice);

/// Searches for the smallest artifact of `s.base` within its budget (or the best within a
/// byte target) and writes it to `out/auto.gguf`.
pub(super) fn search(s: &AutoSearch) -> Result<AutoOutcome, CompressError> {
    let t0 = Instant::now();
    let Budget::PplRelative(relative) = s.budget else {
        return Err(CompressError::Config {
            key: "--budget".into(),
            msg: "a causal-LM model is budgeted in perplexity: ppl:+N%".into(),
        });
    };
    let layer_types = type_list("types", &s.cfg.types)?;
    let embed_types = type_list("embeddings", &s.cfg.embeddings)?;
    // Marked as distill's: a later run may write here again; a user's folder is not.
    distill_files::container::mark_container(s.out, "auto")?;
    let tokens = s.eval.calibration().tokens().ok_or_else(|| {
        CompressError::Unsupported("distill auto needs calibration tokens".into())
    })?;
    let mut meter = Meter {
        eval: s.eval,
        name: s.name,
        rows: vec![],
        evaluations: 0,
    };
    let full_bytes: u64 = s
        .base
        .weights
        .tensors
        .values()
        .map(|t| (t.elem_count() * 4) as u64)
        .sum();
    let m0 = meter.measure(s.base, "uncompressed", &[], full_bytes)?;
    let limit = s.budget.limit(m0.quality);
    tracing::info!(val_ppl = m0.quality, limit, budget = %s.budget.label(), "uncompressed model");
    let bases = structural_bases(s, m0, &mut meter)?;
    let mut run = LmSearch {
        s,
        layer_types,
        embed_types,
        tokens,
        relative,
        m0,
        limit,
        meter,
        probes: vec![],
        proxy_evaluations: 0,
        best: None,
        closest: None,
    };
    for (bi, b) in bases.iter().enumerate() {
        if run.meter.evaluations >= s.cfg.max_evaluations {
            break;
        }
        let survivors = run.screen(b)?;
        run.bisect(bi, b, survivors)?;
    }
    run.finish(&bases, t0)
}

/// `auto.types` or `auto.embeddings` as GGUF types; an empty list is an error naming it.
fn type_list(key: &str, v: &[GgufType]) -> Result<Vec<GgmlDType>, CompressError> {
    if v.is_empty() {
        return Err(CompressError::Config {
            key: format!("auto.{key}"),
            msg: "is empty".into(),
        });
    }
    Ok(v.iter().map(|t| t.ggml()).collect())
}

fn context<'a>(s: &'a AutoSearch) -> Context<'a> {
    Context {
        calibration: s.eval.calibration(),
        trainer: s.trainer,
    }
}

/// The search's state across the structural bases.
struct LmSearch<'a> {
    s: &'a AutoSearch<'a>,
    layer_types: Vec<GgmlDType>,
    embed_types: Vec<GgmlDType>,
    tokens: CalibrationTokens,
    /// The budget as a share of the uncompressed perplexity.
    relative: f64,
    /// The uncompressed model's measurement, and the budget's perplexity limit.
    m0: Measured,
    limit: f64,
    meter: Meter<'a>,
    probes: Vec<Probe>,
    proxy_evaluations: usize,
    /// The best measured candidate within budget so far, and the closest one outside it.
    best: Option<Found>,
    closest: Option<Found>,
}

impl LmSearch<'_> {
    /// The proxies on base `b`: every matrix in every type encoded as the artifact will be
    /// (proxy 1), the frontier of per-tensor choices, each point's calibration perplexity with
    /// the proxy's rounding (proxy 2). Returns the points that pass the screen.
    fn screen(&mut self, b: &Base) -> Result<Vec<Choice>, CompressError> {
        let (cfg, target) = (self.s.cfg, self.s.target);
        let calibration = self.s.eval.calibration();
        let super::options::Options {
            tensors: options,
            encoded,
        } = tensor_options(
            &b.candidate,
            &self.tokens,
            cfg.method,
            &self.layer_types,
            &self.embed_types,
        )?;
        let fixed_bytes: u64 = b
            .candidate
            .weights
            .tensors
            .iter()
            .filter(|(n, _)| !encoded.contains_key(*n))
            .map(|(_, t)| (t.elem_count() * 4) as u64)
            .sum();
        let points = frontier(&options, cfg.sweep);
        let base_cal = calibration.loss(&b.candidate)?;
        let allowed = 1.0 + cfg.proxy_slack * self.relative;
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
            self.proxy_evaluations += 1;
            let ratio = cal / base_cal;
            let survived = ratio <= allowed;
            self.probes.push(Probe {
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
        // The smallest point over a byte target only stands in when nothing fits.
        if let Some(Target::Bytes(max)) = target {
            if survivors.iter().any(|p| p.bytes <= max) {
                survivors.retain(|p| p.bytes <= max);
            }
        }
        Ok(survivors)
    }

    /// Validation on base `bi`: bisection over the survivors' sizes (the largest that fits,
    /// for a byte target), each encoded with the configured method. The smallest survivor
    /// goes first: when it is within budget (the common case once the proxies have screened),
    /// one measurement settles the base.
    fn bisect(&mut self, bi: usize, b: &Base, survivors: Vec<Choice>) -> Result<(), CompressError> {
        let target = self.s.target;
        let mut lo = 0usize;
        let mut hi = survivors.len();
        if let Some(Target::Bytes(_)) = target {
            lo = survivors.len().saturating_sub(1);
        }
        let mut first = true;
        while lo < hi && self.meter.evaluations < self.s.cfg.max_evaluations {
            let mid = match target {
                Some(Target::Bytes(_)) => hi - 1,
                _ if first => lo,
                _ => (lo + hi) / 2,
            };
            first = false;
            let p = &survivors[mid];
            let (idx, q, m) = self.measure_choice(b, p)?;
            let fits = match target {
                Some(Target::Bytes(max)) => p.bytes <= max,
                _ => true,
            };
            let record = (idx, q, bi, p.clone());
            if self.s.budget.allows(self.m0.quality, m.quality) && fits {
                hi = mid;
                self.keep_best(record);
            } else {
                lo = mid + 1;
                self.keep_closest(record);
            }
            if let Some(Target::Bytes(_)) = target {
                break;
            }
        }
        Ok(())
    }

    /// Encodes base `b` with the types of `p` (the configured method) and measures it on
    /// validation; its row index, the candidate and the measurement.
    fn measure_choice(
        &mut self,
        b: &Base,
        p: &Choice,
    ) -> Result<(usize, Candidate, Measured), CompressError> {
        let mut q = b.candidate.clone();
        let pass = Calibrated {
            qtype: self.layer_types[0],
            embeddings: None,
            types: p.types.clone(),
            name: p.summary(),
            method: self.s.cfg.method,
            file: None,
            damp: crate::calibration::obs::DAMP,
        };
        let mut steps = b.steps.clone();
        steps.push(pass.label());
        pass.apply(&mut q, &context(self.s))?;
        q.weights
            .round_dense_to(DType::F32)
            .map_err(|source| CompressError::Tensor {
                context: "rounding".into(),
                source,
            })?;
        let variant = format!("auto-{}", self.meter.rows.len());
        let m = self.meter.measure(&q, &variant, &steps, p.bytes)?;
        let idx = self.meter.rows.len() - 1;
        if let Some(pr) = self
            .probes
            .iter_mut()
            .rev()
            .find(|pr| pr.base == b.name && pr.bytes == p.bytes)
        {
            pr.val_ppl = Some(m.quality);
        }
        Ok((idx, q, m))
    }

    /// `record` becomes the best when it beats it: smaller, or (for a byte target) better.
    fn keep_best(&mut self, record: Found) {
        let rows = &self.meter.rows;
        let better = |a: usize, b: usize| -> bool {
            match self.s.target {
                Some(Target::Bytes(_)) => rows[a].quality < rows[b].quality,
                _ => rows[a].bytes < rows[b].bytes,
            }
        };
        if self
            .best
            .as_ref()
            .is_none_or(|(j, ..)| better(record.0, *j))
        {
            self.best = Some(record);
        }
    }

    /// `record` becomes the closest outside the budget when it violates it least.
    fn keep_closest(&mut self, record: Found) {
        let rows = &self.meter.rows;
        let violation = |i: usize| rows[i].quality / self.limit;
        if self
            .closest
            .as_ref()
            .is_none_or(|(j, ..)| violation(record.0) < violation(*j))
        {
            self.closest = Some(record);
        }
    }

    /// Writes the best candidate (or the closest, when none met the budget) as `auto.gguf`,
    /// measures it as a runtime runs it, and says what was found.
    fn finish(self, bases: &[Base], t0: Instant) -> Result<AutoOutcome, CompressError> {
        let s = self.s;
        let met = self.best.is_some();
        let chosen = self.best.or(self.closest);
        let Meter {
            mut rows,
            mut evaluations,
            ..
        } = self.meter;
        let mut best_row = None;
        let mut best_steps = vec![];
        if let Some((idx, q, bi, choice)) = chosen {
            let row = write_artifact(s, &mut rows, idx, &q, &choice, self.layer_types[0])?;
            evaluations += 1;
            rows.push(row.clone());
            best_row = Some(row);
            best_steps = bases[bi].configs.clone();
            best_steps.push(quantize_step(self.layer_types[0], s.cfg.method, &choice));
        }
        let pareto = pareto_rows(&rows);
        let limit = self.limit;
        Ok(AutoOutcome {
            model: s.name.to_string(),
            budget: s.budget.label(),
            target: s.target.map(|t| t.label()),
            quality: Quality::Perplexity,
            base_quality: self.m0.quality,
            limit,
            met: met
                && best_row.as_ref().is_some_and(|r| {
                    r.quality <= limit
                        && match s.target {
                            Some(Target::Bytes(b)) => r.bytes <= b,
                            _ => true,
                        }
                }),
            evaluations,
            proxy_evaluations: self.proxy_evaluations,
            rows,
            best: best_row,
            best_steps,
            pareto,
            probes: self.probes,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }
}

/// Writes candidate `q` (row `idx`, types `choice`) as `out/auto.gguf`, measures the file,
/// and adds the GGUF's own overhead to the rows of the encoded candidates; the artifact's row.
fn write_artifact(
    s: &AutoSearch,
    rows: &mut [Row],
    idx: usize,
    q: &Candidate,
    choice: &Choice,
    qtype: GgmlDType,
) -> Result<Row, CompressError> {
    let path: PathBuf = s.out.join("auto.gguf");
    let sink = Sink::Gguf {
        qtype,
        embeddings: None,
        name: choice.summary(),
        search: Search::Reference,
    };
    let written = sink.write(q, &path, s.output)?;
    let m = s.eval.measure_gguf(&path)?;
    let overhead = written.bytes.saturating_sub(choice.bytes);
    for r in rows.iter_mut().skip(1) {
        if r.variant.starts_with("auto-") {
            r.bytes += overhead;
        }
    }
    let mut steps = rows[idx].steps.clone();
    steps.push(sink.label());
    let mut row = row_of(s.name, "auto", &steps, q, written.bytes, m)?;
    row.artifact = Some(path.display().to_string());
    row.notes = written.notes;
    tracing::info!(
        val_ppl = m.quality,
        bytes = written.bytes,
        "auto artifact written"
    );
    Ok(row)
}

/// The `quantize` step that reproduces `choice` in a `compress:` variant.
fn quantize_step(
    qtype: GgmlDType,
    method: crate::passes::quantization::QuantMethod,
    choice: &Choice,
) -> serde_json::Value {
    serde_json::json!({
        "step": "quantize",
        "type": format!("{qtype:?}").to_lowercase(),
        "method": method,
        "types": choice
            .types
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::from(format!("{v:?}").to_lowercase())))
            .collect::<serde_json::Map<_, _>>(),
    })
}
