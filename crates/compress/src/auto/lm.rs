//! The search of `distill auto`: structural prefixes measured once, then per-tensor GGUF types
//! chosen on the proxy frontier, screened by calibration loss and bisected on validation.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Tensor};

use super::common::{pareto_rows, structural_bases, AutoOutcome, AutoSearch, Meter, Probe};
use super::config::{Budget, Target};
use super::frontier::{frontier, Choice};
use super::options::tensor_options;
use crate::error::CompressError;
use crate::formats::gguf::export::{GgufType, Search};
use crate::framework::pass::{Candidate, Context, Pass};
use crate::framework::pipeline::{row_of, Quality, Row};
use crate::framework::sink::Sink;
use crate::passes::quantization::Calibrated;

/// Searches for the smallest artifact of `base` within `budget` (or the best within `target`
/// bytes) and writes it to `out/auto.gguf`.
pub(super) fn search(s: &AutoSearch) -> Result<AutoOutcome, CompressError> {
    let AutoSearch {
        name,
        base,
        eval,
        trainer,
        output,
        defaults,
        cfg,
        out,
        ..
    } = *s;
    let (budget, target) = (s.budget, s.target);
    let t0 = Instant::now();
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
    distill_files::container::mark_container(out, "auto")?;
    let calibration = eval.calibration();
    let tokens = calibration.tokens().ok_or_else(|| {
        CompressError::Unsupported("distill auto needs calibration tokens".into())
    })?;
    let mut meter = Meter {
        eval,
        name,
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
            Some(Target::Bytes(_)) => rows[a].quality < rows[b].quality,
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
                damp: crate::calibration::obs::DAMP,
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
                let violation = |i: usize| rows[i].quality / limit;
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
        let mut row = row_of(name, "auto", &steps, &q, written.bytes, m)?;
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
        quality: Quality::Perplexity,
        base_quality: m0.quality,
        limit,
        met: met
            && best_row.as_ref().is_some_and(|r| {
                r.quality <= limit
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
