//! Scoring a model by running it, shared by training evaluation, compression and `distill
//! eval`: perplexity over blocks (from next-token NLL, [`nll`]), class logits of a labelled
//! set, accuracy, cross-entropy and argmax over rows of logits (all in f64 where they sum), and
//! a report's per-class F1 and confusion matrix ([`confusion`]).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use distill_models::{pad_batch, Input, Model};

mod confusion;
mod nll;

pub use confusion::{ClassMetrics, Confusion};
pub use nll::{next_token_nll, next_token_nll_of_targets, NllSum};

use crate::data::{BlockSet, EncodedSet};
use crate::error::{Ctx, TrainError};

/// Index of the largest value of a row (the first of equal maxima).
pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        })
        .0
}

/// [`argmax`] of every row.
pub fn argmaxes(rows: &[Vec<f32>]) -> Vec<u32> {
    rows.iter().map(|r| argmax(r) as u32).collect()
}

/// `log Σ exp(row)`, in f64, shifted by the maximum so it cannot overflow.
fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    max + row
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
}

/// `−log softmax(row)[label]`, in f64.
pub fn cross_entropy(row: &[f32], label: usize) -> f64 {
    log_sum_exp(row) - row[label] as f64
}

/// Mean [`cross_entropy`] of rows against their labels.
pub fn mean_cross_entropy(rows: &[Vec<f32>], labels: &[u32]) -> f64 {
    let sum: f64 = rows
        .iter()
        .zip(labels)
        .map(|(r, &l)| cross_entropy(r, l as usize))
        .sum();
    sum / rows.len().max(1) as f64
}

/// Share of rows whose argmax is their label.
pub fn accuracy(rows: &[Vec<f32>], labels: &[u32]) -> f64 {
    let right = argmaxes(rows)
        .iter()
        .zip(labels)
        .filter(|(p, l)| p == l)
        .count();
    right as f64 / rows.len().max(1) as f64
}

/// `log softmax(row)`, in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let lse = log_sum_exp(row);
    row.iter().map(|&x| x as f64 - lse).collect()
}

/// Mean over rows of `KL(softmax(reference) ‖ softmax(rows))`, in nats: how far a changed
/// model's class distributions moved from the reference model's, on the same examples (what
/// accuracy on a few hundred examples is too coarse to show).
pub fn mean_kl(reference: &[Vec<f32>], rows: &[Vec<f32>]) -> f64 {
    let sum: f64 = reference
        .iter()
        .zip(rows)
        .map(|(p, q)| {
            let (lp, lq) = (log_softmax(p), log_softmax(q));
            lp.iter()
                .zip(&lq)
                .map(|(a, b)| a.exp() * (a - b))
                .sum::<f64>()
        })
        .sum();
    sum / reference.len().max(1) as f64
}

/// Class logits of every example of `set`, in order. Examples are batched by length so that
/// little padding is computed; the mask keeps padding from changing any result.
pub fn predict_logits(
    model: &dyn Model,
    set: &EncodedSet,
    batch_size: usize,
    pad_id: u32,
    device: &Device,
) -> Result<Vec<Vec<f32>>, TrainError> {
    let mut order: Vec<usize> = (0..set.len()).collect();
    order.sort_by_key(|&i| set.ids[i].len());
    let mut out = vec![vec![]; set.len()];
    for chunk in order.chunks(batch_size.max(1)) {
        let rows: Vec<&[u32]> = chunk.iter().map(|&i| set.ids[i].as_slice()).collect();
        let batch = pad_batch(&rows, pad_id, device)?;
        let logits = model
            .run(&Input::new(&batch.ids).with_mask(Some(&batch.mask)))
            .map_err(|e| TrainError::Invalid(format!("classifier forward: {e}")))?
            .logits
            .detach()
            .to_dtype(DType::F32)
            .and_then(|l| l.to_vec2::<f32>())
            .ctx(|| "reading logits".into())?;
        for (&i, row) in chunk.iter().zip(logits) {
            out[i] = row;
        }
    }
    Ok(out)
}

/// Perplexity of a causal LM over `blocks` (one block per forward) and its tokens/s.
pub fn perplexity<'a>(
    model: &dyn Model,
    blocks: impl IntoIterator<Item = &'a [u32]>,
) -> Result<(f64, f64), TrainError> {
    let mut total = NllSum::default();
    let start = Instant::now();
    let mut tokens = 0;
    for b in blocks {
        let ids = Tensor::new(b, model.device())
            .and_then(|t| t.unsqueeze(0))
            .ctx(|| "block".into())?;
        let logits = model
            .run(&Input::new(&ids))
            .map_err(|e| TrainError::Invalid(format!("forward: {e}")))?
            .logits;
        total.add(next_token_nll(&logits, &ids, &[b.len()]).ctx(|| "NLL".into())?);
        tokens += b.len();
    }
    Ok((
        total.perplexity(),
        tokens as f64 / start.elapsed().as_secs_f64().max(1e-9),
    ))
}

/// The top-1 token at every position of every block (`[block][position]`): what another
/// model's agreement with this one is counted against.
pub fn top1_tokens<'a>(
    model: &dyn Model,
    blocks: impl IntoIterator<Item = &'a [u32]>,
) -> Result<Vec<Vec<u32>>, TrainError> {
    blocks
        .into_iter()
        .map(|b| {
            let ids = Tensor::new(b, model.device())
                .and_then(|t| t.unsqueeze(0))
                .ctx(|| "block".into())?;
            model
                .run(&Input::new(&ids))
                .map_err(|e| TrainError::Invalid(format!("forward: {e}")))?
                .logits
                .squeeze(0)
                .and_then(|l| l.argmax(candle_core::D::Minus1))
                .and_then(|a| a.to_vec1::<u32>())
                .ctx(|| "argmax".into())
        })
        .collect()
}

/// Share of positions where `a` and `b` (`[block][position]`) hold the same token.
pub fn agreement(a: &[Vec<u32>], b: &[Vec<u32>]) -> f64 {
    let (mut same, mut all) = (0usize, 0usize);
    for (x, y) in a.iter().zip(b) {
        same += x.iter().zip(y).filter(|(p, q)| p == q).count();
        all += x.len().min(y.len());
    }
    same as f64 / all.max(1) as f64
}

/// Full-sequence scoring throughput (tokens/s) over up to two batches of `blocks`.
pub fn scoring_speed(
    model: &dyn Model,
    blocks: &BlockSet,
    batch: usize,
) -> Result<f64, TrainError> {
    let n = blocks.len().min(batch * 2).max(1);
    let start = Instant::now();
    let mut tokens = 0;
    for chunk in blocks.blocks[..n].chunks(batch.max(1)) {
        let ids: Vec<u32> = chunk.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(ids, (chunk.len(), blocks.block_size), model.device())
            .ctx(|| "batch".into())?;
        let logits = model
            .run(&Input::new(&ids))
            .map_err(|e| TrainError::Invalid(format!("forward: {e}")))?
            .logits;
        logits
            .sum_all()
            .and_then(|s| s.to_dtype(DType::F32))
            .and_then(|s| s.to_scalar::<f32>())
            .ctx(|| "scoring".into())?;
        tokens += chunk.len() * blocks.block_size;
    }
    Ok(tokens as f64 / start.elapsed().as_secs_f64().max(1e-9))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_helpers_agree_with_hand_values() {
        assert_eq!(argmax(&[0.1, 3.0, 3.0, -1.0]), 1);
        assert_eq!(argmaxes(&[vec![1.0, 0.0], vec![0.0, 2.0]]), vec![0, 1]);
        // Uniform logits over 4 classes: ln 4.
        assert!((cross_entropy(&[0.0; 4], 2) - 4f64.ln()).abs() < 1e-12);
        let rows = vec![vec![2.0, 0.0], vec![0.0, 2.0], vec![1.0, 0.0]];
        assert!((accuracy(&rows, &[0, 1, 1]) - 2.0 / 3.0).abs() < 1e-12);
        assert!(mean_cross_entropy(&rows, &[0, 1, 0]) < mean_cross_entropy(&rows, &[1, 0, 1]));
    }

    #[test]
    fn agreement_counts_equal_positions() {
        let a = vec![vec![1, 2, 3], vec![4, 5]];
        let b = vec![vec![1, 0, 3], vec![4, 4]];
        assert!((agreement(&a, &b) - 3.0 / 5.0).abs() < 1e-12);
        assert_eq!(agreement(&a, &a), 1.0);
    }

    #[test]
    fn kl_is_zero_for_the_same_rows_and_matches_a_hand_value() {
        let p = vec![vec![2.0f32, 0.0], vec![0.0, 1.0]];
        assert!(mean_kl(&p, &p).abs() < 1e-12);
        // Logits shifted by a constant are the same distribution.
        let shifted: Vec<Vec<f32>> = p
            .iter()
            .map(|r| r.iter().map(|x| x + 3.0).collect())
            .collect();
        assert!(mean_kl(&p, &shifted).abs() < 1e-9);
        // p = (0.5, 0.5) against q = softmax(ln 3, 0) = (0.75, 0.25):
        // 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25) = 0.5 ln(4/3).
        let q = vec![vec![3f32.ln(), 0.0]];
        let kl = mean_kl(&[vec![0.0, 0.0]], &q);
        assert!((kl - 0.5 * (4.0f64 / 3.0).ln()).abs() < 1e-7, "{kl}");
    }
}
