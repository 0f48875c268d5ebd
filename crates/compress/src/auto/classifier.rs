//! `distill auto` for a classifier, which has no GGUF export: each structural base is encoded
//! in every configured `encodings:` variant (int8, k-means sharing, ...), the candidates are
//! measured smallest first, and the first within the accuracy budget settles the base. A
//! classifier's encodings are few and each is measured in seconds, so no proxy screen stands
//! between them and validation.

use std::time::Instant;

use super::common::{pareto_rows, structural_bases, AutoOutcome, AutoSearch, Base, Meter};
use super::config::{Budget, Target};
use crate::error::CompressError;
use crate::formats::folder::serialized_bytes;
use crate::framework::pass::{Candidate, Context};
use crate::framework::pipeline::Quality;
use crate::framework::plan::{CompressConfig, Plan, Variant};
use crate::framework::sink::Sink;

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
    check(s)?;
    // Marked as distill's: a later run may write here again; a user's folder is not.
    distill_files::container::mark_container(out, "auto")?;
    let dtype = output.dense_dtype;
    let calibration = eval.calibration();
    let cx = Context {
        calibration,
        trainer,
    };
    let mut meter = Meter {
        eval,
        name,
        rows: vec![],
        evaluations: 0,
    };
    let m0 = meter.measure(
        base,
        "uncompressed",
        &[],
        serialized_bytes(&base.weights, dtype)?,
    )?;
    let limit = budget.limit(m0.quality);
    let bases = structural_bases(s, m0, &mut meter)?;
    let plans = CompressConfig {
        variants: cfg.encodings.clone(),
        eval_blocks: 0,
        calibration_blocks: 1,
    }
    .plans(defaults)
    .map_err(|e| CompressError::Context {
        context: "auto.encodings".into(),
        source: Box::new(e),
    })?;
    // (row, candidate, base, encoding) of the smallest within budget, and of the closest.
    let mut best: Option<(usize, Candidate, usize, usize)> = None;
    let mut closest: Option<(usize, Candidate, usize, usize)> = None;
    for (bi, b) in bases.iter().enumerate() {
        for (bytes, pi, c, steps) in encodings(b, &plans, &cx, dtype)? {
            if meter.evaluations >= cfg.max_evaluations {
                break;
            }
            let fits = match target {
                Some(Target::Bytes(max)) => bytes <= max,
                _ => true,
            };
            let variant = format!("auto-{}", meter.rows.len());
            let m = meter.measure(&c, &variant, &steps, bytes)?;
            let idx = meter.rows.len() - 1;
            if budget.allows(m0.quality, m.quality) && fits {
                if best
                    .as_ref()
                    .is_none_or(|(j, ..)| meter.rows[idx].bytes < meter.rows[*j].bytes)
                {
                    best = Some((idx, c, bi, pi));
                }
                break;
            }
            let gap = |i: usize| limit - meter.rows[i].quality;
            if closest.as_ref().is_none_or(|(j, ..)| gap(idx) < gap(*j)) {
                closest = Some((idx, c, bi, pi));
            }
        }
    }
    let met = best.is_some();
    let Meter {
        mut rows,
        evaluations,
        ..
    } = meter;
    let mut best_row = None;
    let mut best_steps = vec![];
    if let Some((idx, c, bi, pi)) = best.or(closest) {
        let path = out.join("auto");
        let written = Sink::Folder.write(&c, &path, output)?;
        let mut row = rows[idx].clone();
        row.variant = "auto".into();
        row.bytes = written.bytes;
        row.artifact = Some(path.display().to_string());
        rows.push(row.clone());
        best_row = Some(row);
        best_steps = steps_of(&bases[bi], &cfg.encodings[pi]);
    }
    let pareto = pareto_rows(&rows);
    Ok(AutoOutcome {
        model: name.to_string(),
        budget: budget.label(),
        target: target.map(|t| t.label()),
        quality: Quality::Accuracy,
        base_quality: m0.quality,
        limit,
        met,
        evaluations,
        proxy_evaluations: 0,
        rows,
        best: best_row,
        best_steps,
        pareto,
        probes: vec![],
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// A base encoded one way: its exact serialised size, the encoding's index, the candidate and
/// its steps.
type Encoded = (u64, usize, Candidate, Vec<String>);

/// Every encoding of base `b`, smallest first.
fn encodings(
    b: &Base,
    plans: &[Plan],
    cx: &Context,
    dtype: candle_core::DType,
) -> Result<Vec<Encoded>, CompressError> {
    let mut encoded = vec![];
    for (pi, plan) in plans.iter().enumerate() {
        if plan.sink != Sink::Folder {
            return Err(CompressError::Config {
                key: format!("auto.encodings[{pi}]"),
                msg: "a classifier's encodings write safetensors folders (int8, share, low_rank); GGUF types are for Llama decoders".into(),
            });
        }
        let mut c = b.candidate.clone();
        let mut steps = b.steps.clone();
        for pass in &plan.passes {
            steps.push(pass.label());
            pass.apply(&mut c, cx)?;
        }
        let bytes = serialized_bytes(&c.weights, dtype)?;
        encoded.push((bytes, pi, c, steps));
    }
    encoded.sort_by_key(|e| e.0);
    Ok(encoded)
}

/// The `compress:` steps that reproduce base `b` encoded as `encoding`.
fn steps_of(b: &Base, encoding: &Variant) -> Vec<serde_json::Value> {
    let mut steps = b.configs.clone();
    steps.extend(
        encoding
            .steps
            .iter()
            .map(|s| serde_json::to_value(s).expect("step JSON")),
    );
    steps
}

/// A classifier is budgeted in accuracy and needs encodings to try.
fn check(s: &AutoSearch) -> Result<(), CompressError> {
    if !matches!(s.budget, Budget::AccPoints(_)) {
        return Err(CompressError::Config {
            key: "--budget".into(),
            msg: "a classifier is budgeted in accuracy: acc:-Npt".into(),
        });
    }
    if s.cfg.encodings.is_empty() {
        return Err(CompressError::Config {
            key: "auto.encodings".into(),
            msg: "is empty: a classifier needs at least one encoding to try".into(),
        });
    }
    Ok(())
}
