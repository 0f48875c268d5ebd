//! Language-model quality measures shared by evaluation during training and `distill eval`.

use candle_core::{DType, Result, Tensor, D};

/// Summed negative log-likelihood of next-token predictions and how many there were.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NllSum {
    pub nll: f64,
    pub tokens: usize,
}

impl NllSum {
    pub fn add(&mut self, other: NllSum) {
        self.nll += other.nll;
        self.tokens += other.tokens;
    }

    /// `exp(mean NLL)`; `NaN` when nothing was counted.
    pub fn perplexity(&self) -> f64 {
        if self.tokens == 0 {
            f64::NAN
        } else {
            (self.nll / self.tokens as f64).exp()
        }
    }
}

/// log p(token `t+1` | position `t`) for `logits` `[b, s, V]` and `input_ids` `[b, s]`: `b`
/// rows of `s − 1` (none when `s < 2`).
fn next_token_logp(logits: &Tensor, input_ids: &Tensor) -> Result<Vec<Vec<f32>>> {
    let (_, s, _) = logits.dims3()?;
    if s < 2 {
        return Ok(vec![]);
    }
    let logp = candle_nn::ops::log_softmax(
        &logits.narrow(1, 0, s - 1)?.to_dtype(DType::F32)?,
        D::Minus1,
    )?;
    let next = input_ids
        .narrow(1, 1, s - 1)?
        .to_dtype(DType::U32)?
        .unsqueeze(2)?;
    logp.gather(&next.contiguous()?, D::Minus1)?
        .squeeze(2)?
        .to_vec2()
}

/// NLL of predicting token `t+1` from position `t`, for `logits` `[b, s, V]` and `input_ids`
/// `[b, s]`; `lengths[i]` is the number of real (unpadded) tokens of sequence `i`.
pub fn next_token_nll(logits: &Tensor, input_ids: &Tensor, lengths: &[usize]) -> Result<NllSum> {
    let s = logits.dim(1)?;
    let mut sum = NllSum::default();
    for (i, row) in next_token_logp(logits, input_ids)?.iter().enumerate() {
        let n = lengths
            .get(i)
            .copied()
            .unwrap_or(s)
            .saturating_sub(1)
            .min(s - 1);
        sum.nll -= row[..n].iter().map(|&x| x as f64).sum::<f64>();
        sum.tokens += n;
    }
    Ok(sum)
}

/// [`next_token_nll`] over the positions whose next token is a target: `targets[i][p]` says
/// whether token `p` of sequence `i` counts (chat data: the assistant's tokens).
pub fn next_token_nll_of_targets(
    logits: &Tensor,
    input_ids: &Tensor,
    targets: &[&[bool]],
) -> Result<NllSum> {
    let mut sum = NllSum::default();
    for (row, counts) in next_token_logp(logits, input_ids)?.iter().zip(targets) {
        for (&lp, _) in row.iter().zip(&counts[1..]).filter(|(_, &c)| c) {
            sum.nll -= lp as f64;
            sum.tokens += 1;
        }
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn only_target_positions_count() {
        let v = 5;
        // Sequence 0 predicts 3 tokens; only tokens 2 and 3 are targets.
        let mut l = vec![0f32; 4 * v];
        l[v + 2] = 3.0; // position 1 strongly predicts token 2
        let logits = Tensor::from_vec(l, (1, 4, v), &Device::Cpu).unwrap();
        let ids = Tensor::new(&[[0u32, 1, 2, 4]], &Device::Cpu).unwrap();
        let targets = [false, false, true, true];
        let s = next_token_nll_of_targets(&logits, &ids, &[&targets]).unwrap();
        assert_eq!(s.tokens, 2);
        let sure = (3f64.exp() / (3f64.exp() + 4.0)).ln();
        let uniform = (1.0f64 / v as f64).ln();
        assert!((s.nll - -(sure + uniform)).abs() < 1e-5, "{}", s.nll);
        let all = next_token_nll(&logits, &ids, &[4]).unwrap();
        assert_eq!(all.tokens, 3);
    }

    #[test]
    fn uniform_logits_give_perplexity_equal_to_vocab() {
        let v = 7;
        let logits = Tensor::zeros((2, 5, v), DType::F32, &Device::Cpu).unwrap();
        let ids = Tensor::new(&[[1u32, 2, 3, 4, 5], [6, 0, 1, 0, 0]], &Device::Cpu).unwrap();
        let s = next_token_nll(&logits, &ids, &[5, 3]).unwrap();
        assert_eq!(s.tokens, 4 + 2);
        assert!(
            (s.perplexity() - v as f64).abs() < 1e-4,
            "{}",
            s.perplexity()
        );
    }

    #[test]
    fn certain_correct_predictions_give_perplexity_one() {
        // Position t puts all its mass on ids[t+1].
        let ids = [3u32, 1, 2, 0];
        let mut l = vec![-1e4f32; 4 * 4];
        for t in 0..3 {
            l[t * 4 + ids[t + 1] as usize] = 0.0;
        }
        let logits = Tensor::from_vec(l, (1, 4, 4), &Device::Cpu).unwrap();
        let ids = Tensor::new(&[ids], &Device::Cpu).unwrap();
        let s = next_token_nll(&logits, &ids, &[4]).unwrap();
        assert!((s.perplexity() - 1.0).abs() < 1e-6);
    }
}
