//! What the cache keeps of one row of teacher logits: the k most probable tokens at T, their
//! log-probabilities, the residual mass of the rest, and the next token's log-probability.

/// The cached part of one teacher distribution.
#[derive(Clone, Debug, PartialEq)]
pub struct TopKRow {
    /// Most probable first; ties by lower id.
    pub ids: Vec<u32>,
    /// `log softmax(z/T)` at `ids`.
    pub logp: Vec<f32>,
    /// `1 − Σ exp(logp)`, never negative.
    pub rest: f32,
    /// `log softmax(z)[label]` at T = 1 (0 without a label).
    pub label_logp: f32,
}

/// The top `k` of `logits` at `temperature`. `None` when a logit is not finite.
pub fn top_k_row(
    logits: &[f32],
    k: usize,
    temperature: f32,
    label: Option<u32>,
) -> Option<TopKRow> {
    if logits.iter().any(|z| !z.is_finite()) {
        return None;
    }
    let inv_t = 1.0 / temperature as f64;
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let log_norm = |scale: f64| -> f64 {
        let s: f64 = logits.iter().map(|&z| ((z as f64 - m) * scale).exp()).sum();
        m * scale + s.ln()
    };
    let lse_t = log_norm(inv_t);
    let k = k.min(logits.len());
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    let by_logit = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    if k < order.len() {
        order.select_nth_unstable_by(k - 1, by_logit);
        order.truncate(k);
    }
    order.sort_unstable_by(by_logit);
    let logp: Vec<f32> = order
        .iter()
        .map(|&i| (logits[i as usize] as f64 * inv_t - lse_t) as f32)
        .collect();
    let mass: f64 = order
        .iter()
        .map(|&i| (logits[i as usize] as f64 * inv_t - lse_t).exp())
        .sum();
    let label_logp = match label {
        Some(y) => {
            let lse_1 = if temperature == 1.0 {
                lse_t
            } else {
                log_norm(1.0)
            };
            (logits[y as usize] as f64 - lse_1) as f32
        }
        None => 0.0,
    };
    Some(TopKRow {
        ids: order,
        logp,
        rest: (1.0 - mass).max(0.0) as f32,
        label_logp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_probable_tokens_with_their_log_probabilities_and_the_rest() {
        let z = [0.5f32, 3.0, -1.0, 3.0, 2.0];
        let r = top_k_row(&z, 3, 1.0, Some(2)).unwrap();
        assert_eq!(r.ids, vec![1, 3, 4]);
        let lse = z.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
        assert!((r.logp[2] as f64 - (2.0 - lse)).abs() < 1e-6);
        let rest = ((0.5f64).exp() + (-1.0f64).exp()) / lse.exp();
        assert!((r.rest as f64 - rest).abs() < 1e-6);
        assert!((r.label_logp as f64 - (-1.0 - lse)).abs() < 1e-6);
        // At T = 2 the distribution flattens; the label stays at T = 1.
        let r2 = top_k_row(&z, 3, 2.0, Some(2)).unwrap();
        assert!(r2.rest > r.rest);
        assert_eq!(r2.label_logp, r.label_logp);
        // k = V: nothing left over.
        let all = top_k_row(&z, 5, 1.0, None).unwrap();
        assert!(all.rest < 1e-6);
        assert_eq!(all.ids, vec![1, 3, 4, 0, 2]);
        assert!(top_k_row(&[0.0, f32::NAN], 1, 1.0, None).is_none());
    }
}
