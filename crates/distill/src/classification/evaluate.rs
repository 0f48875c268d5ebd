//! The evaluation stage: every model of the run — the teacher, the distilled student and the
//! labels-only baseline — read back from its exported folder and scored on the test split:
//! accuracy, per-class F1, agreement with the teacher, latency and throughput.

use std::time::Instant;

use candle_core::Device;
use distill_models::{pad_batch, Input, Model};
use distill_train::data::EncodedSet;
use distill_train::scoring::Confusion;
use distill_train::scoring::{argmaxes, predict_logits};
use distill_train::Event;

use crate::error::Result;
use crate::options::RunOptions;
use crate::report::ModelRow;
use crate::saved_classifier::load_classifier;

/// Scores each `(role, folder)` of `models` on `test`, with agreement against the teacher's
/// predictions `teacher_pred`.
pub(crate) fn test_rows(
    models: &[(&str, String)],
    test: &EncodedSet,
    labels: &[String],
    teacher_pred: &[u32],
    device: &Device,
) -> Result<Vec<ModelRow>> {
    let mut rows = vec![];
    for (role, source) in models {
        let m = load_classifier(source, device)?;
        let logits = predict_logits(&m.model, test, 32, m.pad_id, device)?;
        let pred = argmaxes(&logits);
        let confusion = Confusion::new(labels, &test.labels, &pred);
        let (latency, throughput) = speed(&m.model, test, m.pad_id, device)?;
        let agree = pred
            .iter()
            .zip(teacher_pred)
            .filter(|(a, b)| a == b)
            .count() as f64
            / pred.len().max(1) as f64;
        rows.push(ModelRow {
            role: role.to_string(),
            path: source.clone(),
            parameters: m.parameters,
            bytes: m.bytes,
            accuracy: confusion.accuracy(),
            classes: (0..labels.len()).map(|c| confusion.class(c)).collect(),
            confusion,
            agreement_with_teacher: agree,
            latency_ms_b1: latency,
            msgs_per_s_b32: throughput,
        });
    }
    Ok(rows)
}

/// Mean latency per message at batch 1 and throughput at batch 32, on the test split in its
/// order (real lengths, padding as a server would see it).
fn speed(model: &dyn Model, set: &EncodedSet, pad: u32, device: &Device) -> Result<(f64, f64)> {
    let run = |rows: &[Vec<u32>]| -> Result<()> {
        let refs: Vec<&[u32]> = rows.iter().map(|r| r.as_slice()).collect();
        let b = pad_batch(&refs, pad, device)?;
        let l = model
            .run(&Input::new(&b.ids).with_mask(Some(&b.mask)))?
            .logits;
        l.sum_all()?.to_scalar::<f32>()?;
        Ok(())
    };
    let n1 = set.len().min(64);
    run(&set.ids[..1])?; // warm-up
    let t = Instant::now();
    for i in 0..n1 {
        run(&set.ids[i..i + 1])?;
    }
    let latency_ms = t.elapsed().as_secs_f64() * 1e3 / n1.max(1) as f64;
    let n32 = set.len().min(256);
    let t = Instant::now();
    for chunk in set.ids[..n32].chunks(32) {
        run(chunk)?;
    }
    Ok((latency_ms, n32 as f64 / t.elapsed().as_secs_f64().max(1e-9)))
}

/// Class logits of `set` with progress reported as `stage`.
pub(crate) fn logits_with_progress(
    model: &dyn Model,
    set: &EncodedSet,
    pad: u32,
    device: &Device,
    opts: &RunOptions,
    stage: &str,
) -> Result<Vec<Vec<f32>>> {
    const SLICE: usize = 256;
    opts.observer.event(&Event::Started {
        stage,
        unit: "examples",
        total: set.len() as u64,
        done: 0,
    });
    let mut out = Vec::with_capacity(set.len());
    for start in (0..set.len()).step_by(SLICE) {
        let end = (start + SLICE).min(set.len());
        let part = EncodedSet {
            ids: set.ids[start..end].to_vec(),
            labels: set.labels[start..end].to_vec(),
            truncated: 0,
        };
        out.extend(predict_logits(model, &part, 32, pad, device)?);
        opts.observer.event(&Event::Progress {
            stage,
            done: end as u64,
        });
    }
    opts.observer.event(&Event::Finished { stage });
    Ok(out)
}
