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
    /// Tokens drawn from the distribution outside the top-k ([`sample_tail`]); empty without.
    pub tail: Vec<u32>,
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
        tail: vec![],
    })
}

/// splitmix64: the seeded stream of the tail draws (one per position, reproducible on resume).
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `m` tokens drawn from the teacher's distribution at T restricted to the tokens outside
/// `row`'s top-k, by stratified sampling (draw i uniform in [i/m, (i+1)/m) of the tail's
/// cumulative mass): each token's expected count is `m · p_j / rest`, with less variance than
/// independent draws. In order of the draws, so repeats are adjacent. Empty when the tail is
/// empty or holds no mass.
pub fn sample_tail(
    logits: &[f32],
    row: &TopKRow,
    temperature: f32,
    m: usize,
    seed: u64,
) -> Vec<u32> {
    if m == 0 || row.rest <= 0.0 || row.ids.len() >= logits.len() {
        return vec![];
    }
    let mut in_top = vec![false; logits.len()];
    for &i in &row.ids {
        in_top[i as usize] = true;
    }
    let inv_t = 1.0 / temperature as f64;
    let m_top = row.logp[0] as f64; // the largest log-probability: a safe shift
    let base = logits[row.ids[0] as usize] as f64 * inv_t - m_top;
    let w: Vec<f64> = logits
        .iter()
        .zip(&in_top)
        .map(|(&z, &top)| {
            if top {
                0.0
            } else {
                (z as f64 * inv_t - base).exp()
            }
        })
        .collect();
    let total: f64 = w.iter().sum();
    if total <= 0.0 {
        return vec![];
    }
    let mut state = seed;
    let mut out = Vec::with_capacity(m);
    let (mut j, mut cum) = (0usize, 0f64);
    for i in 0..m {
        let u = (i as f64 + (splitmix(&mut state) >> 11) as f64 / (1u64 << 53) as f64) / m as f64
            * total;
        while j + 1 < w.len() && (cum + w[j] <= u || w[j] == 0.0) {
            cum += w[j];
            j += 1;
        }
        while in_top[j] || w[j] == 0.0 {
            // Only past the last token with mass: step back to it.
            j -= 1;
        }
        out.push(j as u32);
    }
    out
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

    #[test]
    fn tail_samples_follow_the_tail_distribution() {
        let z: Vec<f32> = (0..40).map(|j| ((j * 7 % 13) as f32) * 0.4).collect();
        let top = top_k_row(&z, 4, 1.0, None).unwrap();
        let m = 64;
        let mut counts = vec![0usize; z.len()];
        let draws = 400;
        for seed in 0..draws {
            let t = sample_tail(&z, &top, 1.0, m, seed);
            assert_eq!(t.len(), m);
            assert!(t.windows(2).all(|w| w[0] <= w[1]), "in draw order: {t:?}");
            for id in t {
                assert!(!top.ids.contains(&id), "sampled from the top-k");
                counts[id as usize] += 1;
            }
        }
        let lse = z.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
        for (j, &c) in counts.iter().enumerate() {
            if top.ids.contains(&(j as u32)) {
                continue;
            }
            let want = ((z[j] as f64 - lse).exp() / top.rest as f64) * (m * draws as usize) as f64;
            assert!(
                (c as f64 - want).abs() < 5.0 * want.sqrt().max(1.0),
                "token {j}: {c} vs {want:.1}"
            );
        }
        // Same seed, same draws.
        assert_eq!(
            sample_tail(&z, &top, 1.0, m, 7),
            sample_tail(&z, &top, 1.0, m, 7)
        );
    }
}
