//! Distillation across tokenizers, at the positions where both tokenisations end a token at the
//! same byte (both next-token distributions are then over the same continuation of the same
//! text). Two terms, as GOLD combines them:
//!
//! - over the ids both vocabularies spell the same: the teacher's top-k at those ids, mapped
//!   to the student's ids, with all its other mass one bucket — the cache's top-k KL
//!   ([`top_k_kl`]), scaled by T²;
//! - over the ids only one side has: Universal Logit Distillation (Boizard et al. 2024), the
//!   L1 distance between the two sides' probabilities sorted in descending order (here the
//!   top k of each, zero-padded), which needs no correspondence between ids.
//!
//! The teacher's targets are computed from its top-k rows, so they are the same whether the
//! rows come from the teacher online or from a cache of its top-k.

use candle_core::{DType, Device, Result, Tensor, D};
use distill_cache::{TopK, TopKRow, PAD_LOGP};
use distill_models::ops::rows::largest;
use rayon::prelude::*;

use super::top_k::{top_k_kl, TopKTensors};
use crate::config::CrossConfig;
use crate::data::CrossVocab;

/// The teacher's side of the cross loss at `N` aligned positions.
#[derive(Clone, Debug)]
pub struct CrossTargets {
    /// The teacher's top-k at ids the student spells, in the student's ids, padded to k with
    /// [`PAD_LOGP`]; `rest` holds the rest of its mass (unmatched ids and beyond the top-k).
    pub matched: TopK,
    /// The teacher's top-k probabilities at ids the student lacks, sorted in descending order
    /// and zero-padded to k: `[N·k]`.
    pub unmatched_sorted: Vec<f32>,
    /// The student id of the teacher's most probable token, where it is matched.
    pub top1: Vec<Option<u32>>,
}

/// [`CrossTargets`] of the teacher's top-k `rows` (at the loss temperature), the first `k`
/// entries of each.
pub fn cross_targets(rows: &[TopKRow], k: usize, vocab: &CrossVocab) -> CrossTargets {
    let n = rows.len();
    let mut matched = TopK {
        k,
        ids: Vec::with_capacity(n * k),
        logp: Vec::with_capacity(n * k),
        rest: Vec::with_capacity(n),
        label_logp: vec![0.0; n],
    };
    let mut unmatched_sorted = Vec::with_capacity(n * k);
    let mut top1 = Vec::with_capacity(n);
    for row in rows {
        let (mut ids, mut logp, mut other) = (vec![], vec![], vec![]);
        for (&id, &lp) in row.ids.iter().zip(&row.logp).take(k) {
            match vocab.student_of_teacher.get(id as usize).copied().flatten() {
                Some(s) => {
                    ids.push(s);
                    logp.push(lp);
                }
                None => other.push(lp.exp()),
            }
        }
        top1.push(
            row.ids
                .first()
                .and_then(|&t| vocab.student_of_teacher.get(t as usize).copied().flatten()),
        );
        // Rows from a cache may go on with tail samples, not in order of probability.
        other.sort_by(|a, b| b.total_cmp(a));
        other.truncate(k);
        let inside: f64 = logp.iter().map(|&l| f64::from(l).exp()).sum();
        // A padding entry repeats a present id (or id 0) at zero mass: it moves nothing.
        let pad = ids.first().copied().unwrap_or(0);
        ids.resize(k, pad);
        logp.resize(k, PAD_LOGP);
        other.resize(k, 0.0);
        matched.ids.extend(ids);
        matched.logp.extend(logp);
        matched.rest.push((1.0 - inside).max(0.0) as f32);
        unmatched_sorted.extend(other);
    }
    CrossTargets {
        matched,
        unmatched_sorted,
        top1,
    }
}

/// The value of the cross loss and its two terms.
pub struct CrossValue {
    pub total: Tensor,
    pub matched: f32,
    pub unmatched: f32,
}

/// `matched_weight · T²·KL(shared ids + rest) + unmatched_weight · ULD` of student logits
/// `[N, Vs]` at the aligned positions against `t`; differentiable in the student's logits.
/// `student_unmatched` is `[Vs]`, 1 at the student ids no teacher id spells.
pub fn cross_vocab_loss(
    student: &Tensor,
    t: &CrossTargets,
    student_unmatched: &Tensor,
    temperature: f64,
    cfg: &CrossConfig,
) -> Result<CrossValue> {
    let device = student.device();
    let student = student.to_dtype(DType::F32)?;
    let matched = top_k_kl(
        &student,
        &TopKTensors::new(&t.matched, device)?,
        temperature,
    )?;
    let unmatched = sorted_l1(&student, t, student_unmatched, temperature, device)?;
    let total = ((&matched * cfg.matched_weight)? + (&unmatched * cfg.unmatched_weight)?)?;
    Ok(CrossValue {
        total,
        matched: matched.to_scalar::<f32>()?,
        unmatched: unmatched.to_scalar::<f32>()?,
    })
}

/// ULD over the unmatched ids: mean over rows of `Σ |sort(q_unmatched)ᵢ − sort(p_unmatched)ᵢ|`
/// over the top k of each side. The student's order is taken on its detached probabilities;
/// the gradient flows through the gathered values.
fn sorted_l1(
    student: &Tensor,
    t: &CrossTargets,
    student_unmatched: &Tensor,
    temperature: f64,
    device: &Device,
) -> Result<Tensor> {
    let k = t.matched.k;
    let n = t.matched.rows();
    // The composed softmax: the fused kernel has no backward pass.
    let q = candle_nn::ops::softmax(&(student / temperature)?, D::Minus1)?;
    let q = q.broadcast_mul(student_unmatched)?;
    let host: Vec<Vec<f32>> = q.detach().to_vec2()?;
    let order: Vec<u32> = host
        .par_iter()
        .flat_map_iter(|row| largest(row, k))
        .collect();
    let order = Tensor::from_vec(order, (n, k.min(q.dim(1)?)), device)?;
    let mut sorted = q.gather(&order, 1)?;
    if sorted.dim(1)? < k {
        let pad = Tensor::zeros((n, k - sorted.dim(1)?), DType::F32, device)?;
        sorted = Tensor::cat(&[&sorted, &pad], 1)?;
    }
    let target = Tensor::from_slice(&t.unmatched_sorted, (n, k), device)?;
    (sorted - target)?.abs()?.sum(D::Minus1)?.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use distill_cache::top_k_row;

    /// Teacher vocabulary of 5: ids 0..3 spelled by student ids 2, 0, 1; ids 3, 4 not.
    fn vocab() -> CrossVocab {
        CrossVocab {
            student_of_teacher: vec![Some(2), Some(0), Some(1), None, None],
            student_matched: vec![true, true, true, false],
            teacher_bytes: vec![1; 5],
            teacher_pad: 0,
        }
    }

    fn softmax(z: &[f32]) -> Vec<f64> {
        let m = z.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
        let e: Vec<f64> = z.iter().map(|&x| (x as f64 - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|x| x / s).collect()
    }

    /// Both terms against a direct computation from the definitions, with every teacher id in
    /// the top-k (so nothing is truncated).
    #[test]
    fn both_terms_equal_their_definitions() {
        let dev = Device::Cpu;
        let zt = [2.0f32, 0.5, -1.0, 1.5, 0.0];
        let zs = [0.3f32, -0.2, 1.1, 0.7];
        let row = top_k_row(&zt, 5, 1.0, None).unwrap();
        let t = cross_targets(&[row], 5, &vocab());
        let unmatched = Tensor::new(&[0f32, 0.0, 0.0, 1.0], &dev).unwrap();
        let s = Tensor::new(&[zs], &dev).unwrap();
        let cfg = CrossConfig::default();
        let v = cross_vocab_loss(&s, &t, &unmatched, 1.0, &cfg).unwrap();
        let (p, q) = (softmax(&zt), softmax(&zs));
        // KL over buckets {t0↔s2, t1↔s0, t2↔s1, rest}.
        let pairs = [(0, 2), (1, 0), (2, 1)];
        let mut kl = 0.0;
        for &(ti, si) in &pairs {
            kl += p[ti] * (p[ti] / q[si]).ln();
        }
        let (pr, qr) = (p[3] + p[4], q[3]);
        kl += pr * (pr / qr).ln();
        // ULD: teacher's unmatched {p3, p4} sorted against the student's {q3} (zero-padded).
        let mut tu = [p[3], p[4]];
        tu.sort_by(|a, b| b.total_cmp(a));
        let uld = (q[3] - tu[0]).abs() + tu[1];
        assert!(
            (v.matched as f64 - kl).abs() < 1e-5,
            "{} vs {kl}",
            v.matched
        );
        assert!(
            (v.unmatched as f64 - uld).abs() < 1e-5,
            "{} vs {uld}",
            v.unmatched
        );
        let total = v.total.to_scalar::<f32>().unwrap() as f64;
        assert!((total - kl - uld).abs() < 1e-5);
        assert_eq!(t.top1, vec![Some(2)]);
    }

    /// The gradient of the whole loss in the student's logits agrees with finite differences.
    #[test]
    fn gradient_matches_finite_differences() {
        let zt = [2.0f32, 0.5, -1.0, 1.5, 0.0];
        let row = top_k_row(&zt, 4, 2.0, None).unwrap();
        let t = cross_targets(&[row.clone(), row], 4, &vocab());
        let dev = Device::Cpu;
        let unmatched = Tensor::new(&[0f32, 0.0, 0.0, 1.0], &dev).unwrap();
        let cfg = CrossConfig {
            top_k: 4,
            matched_weight: 0.7,
            unmatched_weight: 1.3,
        };
        crate::losses::test_util::check_gradient(
            &[0.3, -0.2, 1.1, 0.7, -0.5, 0.4, 0.2, 1.9],
            (2, 4),
            |x| {
                cross_vocab_loss(x, &t, &unmatched, 2.0, &cfg)
                    .unwrap()
                    .total
            },
        );
    }

    #[test]
    fn unmatched_entries_fold_into_the_rest_and_padding_moves_nothing() {
        let zt = [0.0f32, 0.0, 0.0, 5.0, 5.0];
        let row = top_k_row(&zt, 3, 1.0, None).unwrap();
        let t = cross_targets(&[row], 3, &vocab());
        // Top 3: ids 3, 4 (unmatched), then 0 (matched as student 2).
        assert_eq!(t.matched.ids, vec![2, 2, 2]);
        assert_eq!(&t.matched.logp[1..], &[PAD_LOGP, PAD_LOGP]);
        let p = softmax(&zt);
        assert!((t.matched.rest[0] as f64 - (1.0 - p[0])).abs() < 1e-6);
        assert!((t.unmatched_sorted[0] as f64 - p[3]).abs() < 1e-6);
        assert_eq!(t.unmatched_sorted[2], 0.0);
        assert_eq!(t.top1, vec![None]);
    }
}
