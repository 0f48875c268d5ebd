//! Distillation from cached teacher targets: the teacher's top-k probabilities at T and the
//! residual mass `r` of the other tokens ([`distill_cache::TopK`]), against the student's
//! distribution over the same k + 1 buckets (its k probabilities at those ids, and its mass on
//! all the rest):
//!
//! `KL = Σᵢ pᵢ·log(pᵢ/qᵢ) + r·log(r/q_rest)`, scaled by T² like the online loss.
//!
//! With k = V, `r = 0` and this is the full forward KL. Its gradient with respect to the
//! student's logits (at T) is `q − p̃`, where `p̃` is the teacher's distribution completed by
//! spreading `r` over the other tokens in proportion to the student's own probabilities: the
//! student is told how much mass the tail holds, not how to shape it.
//!
//! [`top_k_kl`] is the composed version (candle ops, any device); [`top_k_kl_ce_rows`] is the
//! CPU row kernel the fused head pass uses, with the same values and gradients.

use candle_core::{DType, Device, Result, Tensor, D};
use distill_cache::{TopK, PAD_LOGP};
use distill_models::ops::rows::{exp, exp_sum, row_max};
use rayon::prelude::*;

/// Floor of the student's residual mass: a student that puts (numerically) nothing outside the
/// teacher's top-k gets a large but finite penalty when the teacher's residual is not zero.
const MIN_REST: f64 = 1e-30;

/// [`TopK`] rows as tensors on a device: ids `[N, k]` (u32), log-probabilities `[N, k]`,
/// residual mass `[N]`.
pub struct TopKTensors {
    pub ids: Tensor,
    pub logp: Tensor,
    pub rest: Tensor,
}

impl TopKTensors {
    pub fn new(t: &TopK, device: &Device) -> Result<Self> {
        let n = t.rows();
        Ok(Self {
            ids: Tensor::from_slice(&t.ids, (n, t.k), device)?,
            logp: Tensor::from_slice(&t.logp, (n, t.k), device)?,
            rest: Tensor::from_slice(&t.rest, n, device)?,
        })
    }
}

/// `T²·mean KL` over the k + 1 buckets from student logits `[N, V]`; differentiable.
pub fn top_k_kl(student: &Tensor, t: &TopKTensors, temperature: f64) -> Result<Tensor> {
    let ls =
        candle_nn::ops::log_softmax(&(student.to_dtype(DType::F32)? / temperature)?, D::Minus1)?;
    let lk = ls.gather(&t.ids, 1)?;
    // log q_rest as a log-sum-exp over the other tokens (the top-k pushed to −10³⁰), not as
    // log(1 − Σ q): that difference cancels to noise when the top-k hold nearly all the mass.
    let hide = Tensor::full(-1e30f32, t.ids.dims(), student.device())?;
    let mask = ls.zeros_like()?.scatter_add(&t.ids, &hide, 1)?;
    let log_q_rest = (ls + mask)?.log_sum_exp(1)?;
    let p = t.logp.exp()?;
    let kl_k = (p * (&t.logp - &lk)?)?.sum(1)?;
    let log_r = t.rest.clamp(MIN_REST, 1.0)?.log()?;
    let kl_r = (&t.rest * (log_r - log_q_rest.maximum(MIN_REST.ln())?)?)?;
    (kl_k + kl_r)?.mean_all()? * (temperature * temperature)
}

distill_models::multiversion! {
    /// In place: `a ← c0·p_s^T + c1·p_s` (the gradient on tokens outside the top-k, before
    /// the label's one-hot).
    #[allow(clippy::too_many_arguments)]
    fn mix_in_place(a: &mut [f32], inv_t: f32, s_t: f32, s_1: f32, same: bool, c0: f32, c1: f32) {
        if same {
            for a in a.iter_mut() {
                *a = (c0 + c1) * exp(*a * inv_t - s_t);
            }
        } else {
            for a in a.iter_mut() {
                let z = *a;
                *a = c0 * exp(z * inv_t - s_t) + c1 * exp(z - s_1);
            }
        }
    }
}

/// One row: returns `(KL at T, CE)` and leaves in `a` the gradient of `c0/T·T²·KL + c1·CE`
/// with respect to the logits, i.e. `c0·(p_s^T − p̃) + c1·(p_s − onehot(label))`.
#[allow(clippy::too_many_arguments)]
fn row(
    a: &mut [f32],
    ids: &[u32],
    logp: &[f32],
    rest: f32,
    label: u32,
    inv_t: f32,
    c0: f32,
    c1: f32,
    saved: &mut Vec<f32>,
) -> (f64, f64) {
    let same = inv_t == 1.0;
    let ma = row_max(a) * inv_t;
    let s_t = ma + exp_sum(a, inv_t, ma).ln();
    let s_1 = if same {
        s_t
    } else {
        let m1 = row_max(a);
        m1 + exp_sum(a, 1.0, m1).ln()
    };
    saved.clear();
    saved.extend(ids.iter().map(|&j| a[j as usize]));
    let mut kl = 0f64;
    for (&z, &lp) in saved.iter().zip(logp) {
        let ls = z as f64 * inv_t as f64 - s_t as f64;
        kl += (lp as f64).exp() * (lp as f64 - ls);
    }
    // The student's mass outside the top-k, summed directly (1 − Σ q would cancel to noise
    // when the top-k hold nearly all of it): the top-k hidden for one more pass.
    for &j in ids {
        a[j as usize] = f32::NEG_INFINITY;
    }
    let s_rest = exp_sum(a, inv_t, ma) as f64;
    for (&j, &z) in ids.iter().zip(saved.iter()) {
        a[j as usize] = z;
    }
    let q_rest = (s_rest * (ma as f64 - s_t as f64).exp()).max(MIN_REST);
    let rest = rest as f64;
    if rest > 0.0 {
        kl += rest * (rest.max(MIN_REST).ln() - q_rest.ln());
    }
    let ce = (s_1 - a[label as usize]) as f64;
    let tail = (1.0 - rest / q_rest) as f32;
    mix_in_place(a, inv_t, s_t, s_1, same, c0 * tail, c1);
    for ((&j, &z), &lp) in ids.iter().zip(saved.iter()).zip(logp) {
        if lp <= PAD_LOGP {
            // A repeated tail sample: its first entry carries the weight.
            continue;
        }
        let ps_t = exp(z * inv_t - s_t);
        let ps = if same { ps_t } else { exp(z - s_1) };
        a[j as usize] = c0 * (ps_t - exp(lp)) + c1 * ps;
    }
    a[label as usize] -= c1;
    (kl, ce)
}

thread_local! {
    static SAVED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Rows of student logits `zs` (`[rows, v]`) against the cached targets `t` from row
/// `first` on, with labels `y`: returns `(Σ KL at T, Σ CE)` and leaves the gradient of the row
/// losses in `zs` (see [`super::fused_kd`] for `c0`, `c1`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn top_k_kl_ce_rows(
    zs: &mut [f32],
    t: &TopK,
    first: usize,
    y: &[u32],
    v: usize,
    temperature: f32,
    c0: f32,
    c1: f32,
) -> (f64, f64) {
    let inv_t = 1.0 / temperature;
    let k = t.k;
    zs.par_chunks_mut(v)
        .zip(y.par_iter())
        .enumerate()
        .map(|(i, (a, &label))| {
            let r = first + i;
            SAVED.with(|s| {
                row(
                    a,
                    &t.ids[r * k..(r + 1) * k],
                    &t.logp[r * k..(r + 1) * k],
                    t.rest[r],
                    label,
                    inv_t,
                    c0,
                    c1,
                    &mut s.borrow_mut(),
                )
            })
        })
        .reduce(|| (0.0, 0.0), |x, y| (x.0 + y.0, x.1 + y.1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::losses::testing::max_abs_diff;
    use crate::losses::{fused_head_kl_ce, fused_head_top_k_kl_ce, CrossEntropy, Loss, LossInputs};
    use candle_core::Var;
    use distill_cache::top_k_row;

    /// The cached targets of teacher logits `zt` `[n, v]` at `k`, as the cache stores them
    /// (here with exact log-probabilities).
    fn targets(zt: &Tensor, k: usize, temperature: f32) -> TopK {
        let rows: Vec<Vec<f32>> = zt.to_vec2().unwrap();
        let mut t = TopK {
            k,
            ..TopK::default()
        };
        for r in rows {
            let c = top_k_row(&r, k, temperature, None).unwrap();
            t.ids.extend(c.ids);
            t.logp.extend(c.logp);
            t.rest.push(c.rest);
            t.label_logp.push(0.0);
        }
        t
    }

    /// Targets as a cache with `m` tail samples stores and decodes them (exact log-probabilities).
    fn targets_with_tail(zt: &Tensor, k: usize, m: usize) -> TopK {
        let v = zt.dim(1).unwrap();
        let layout = distill_cache::Layout::new(k, v, 32)
            .unwrap()
            .with_tail_samples(m)
            .unwrap();
        let mut t = TopK {
            k: layout.row_width(),
            ..TopK::default()
        };
        let mut rec = vec![0u8; layout.record_bytes];
        for (i, r) in zt.to_vec2::<f32>().unwrap().iter().enumerate() {
            let mut row = top_k_row(r, k, 1.0, None).unwrap();
            row.tail = distill_cache::sample_tail(r, &row, 1.0, m, i as u64);
            layout.encode(&row, &mut rec);
            let (rest, label) = layout.decode(&rec, &mut t.ids, &mut t.logp).unwrap();
            t.rest.push(rest);
            t.label_logp.push(label);
        }
        t
    }

    /// With tail samples (repeats merged into padding entries) the fused pass still equals the
    /// composed loss.
    #[test]
    fn fused_equals_composed_with_sampled_tails() {
        let c = case(50, 12, 40);
        // A flat teacher, so that the tail holds mass and draws repeat.
        let zt = (c.ht.matmul(&c.wt.t().unwrap()).unwrap() * 0.3).unwrap();
        let top = targets_with_tail(&zt, 4, 12);
        assert!(top.logp.iter().any(|&l| l <= PAD_LOGP), "some draws repeat");
        assert!(top.rest.iter().all(|&r| r == 0.0));
        assert_fused_equals_composed(&c, &top, 1.0, 0.7, "sampled tails");
    }

    /// The fused head pass over `top` equals the composed loss (the head, then [`top_k_kl`] and
    /// cross-entropy by candle ops) in value, and in the gradients of features and head.
    fn assert_fused_equals_composed(c: &Case, top: &TopK, t: f64, alpha: f64, what: &str) {
        let fused = fused_head_top_k_kl_ce(c.hs.as_tensor(), c.ws.as_tensor(), top, &c.y, t, alpha)
            .unwrap();
        let zs = c.hs.matmul(&c.ws.t().unwrap()).unwrap();
        let kl = top_k_kl(&zs, &TopKTensors::new(top, &Device::Cpu).unwrap(), t).unwrap();
        let ce = CrossEntropy
            .forward(&LossInputs {
                student_logits: &zs,
                teacher_logits: None,
                labels: Some(&c.y),
            })
            .unwrap();
        let (klv, cev) = (
            kl.to_scalar::<f32>().unwrap(),
            ce.to_scalar::<f32>().unwrap(),
        );
        assert!(
            (fused.soft - klv).abs() < 1e-4 * klv.max(1.0),
            "{what}: {} vs {klv}",
            fused.soft
        );
        assert!((fused.hard - cev).abs() < 1e-4 * cev.max(1.0), "{what}");
        let total = ((kl * alpha).unwrap() + (ce * (1.0 - alpha)).unwrap()).unwrap();
        let gf = fused.total.backward().unwrap();
        let gc = total.backward().unwrap();
        for var in [&c.hs, &c.ws] {
            let d = max_abs_diff(
                gf.get(var.as_tensor()).unwrap(),
                gc.get(var.as_tensor()).unwrap(),
            );
            assert!(d < 2e-5, "{what}: gradient differs by {d}");
        }
    }

    struct Case {
        hs: Var,
        ws: Var,
        ht: Tensor,
        wt: Tensor,
        y: Tensor,
    }

    fn case(n: usize, d: usize, v: usize) -> Case {
        let dev = Device::Cpu;
        Case {
            hs: Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, d), &dev).unwrap()).unwrap(),
            ws: Var::from_tensor(&Tensor::randn(0f32, 0.7, (v, d), &dev).unwrap()).unwrap(),
            ht: Tensor::randn(0f32, 1.0, (n, 16), &dev).unwrap(),
            wt: Tensor::randn(0f32, 0.9, (v, 16), &dev).unwrap(),
            y: Tensor::from_vec((0..n as u32).map(|i| i * 5 % v as u32).collect(), n, &dev)
                .unwrap(),
        }
    }

    /// The fused head pass over cached targets equals the composed loss (head, then
    /// [`top_k_kl`] and cross-entropy by candle ops), in value and gradients, for k < V.
    #[test]
    fn fused_equals_composed_for_a_truncated_teacher() {
        let c = case(70, 12, 97);
        let zt = c.ht.matmul(&c.wt.t().unwrap()).unwrap();
        for (t, alpha, k) in [(1.0, 0.5, 8), (2.0, 0.8, 3), (1.0, 1.0, 96)] {
            let top = targets(&zt, k, t as f32);
            assert_fused_equals_composed(&c, &top, t, alpha, &format!("k {k}, T {t}"));
        }
    }

    /// With k = V the cached loss is the online one: same value and gradients as the fused head
    /// pass over the teacher's own features and head.
    #[test]
    fn with_the_whole_vocabulary_it_is_the_online_loss() {
        let v = 61;
        let c = case(40, 10, v);
        let zt = c.ht.matmul(&c.wt.t().unwrap()).unwrap();
        for (t, alpha) in [(1.0, 0.5), (2.5, 0.7)] {
            let top = targets(&zt, v, t as f32);
            let cached =
                fused_head_top_k_kl_ce(c.hs.as_tensor(), c.ws.as_tensor(), &top, &c.y, t, alpha)
                    .unwrap();
            let online = fused_head_kl_ce(
                c.hs.as_tensor(),
                c.ws.as_tensor(),
                &c.ht,
                &c.wt,
                &c.y,
                t,
                alpha,
            )
            .unwrap();
            assert!(
                (cached.soft - online.soft).abs() < 1e-5 * online.soft.max(1.0),
                "{} vs {}",
                cached.soft,
                online.soft
            );
            assert_eq!(cached.hard, online.hard);
            let gc = cached.total.backward().unwrap();
            let go = online.total.backward().unwrap();
            for var in [&c.hs, &c.ws] {
                let d = max_abs_diff(
                    gc.get(var.as_tensor()).unwrap(),
                    go.get(var.as_tensor()).unwrap(),
                );
                assert!(d < 1e-6, "T {t}: gradient differs by {d}");
            }
        }
    }

    #[test]
    fn cached_ids_outside_the_vocabulary_and_row_counts_that_differ_are_errors() {
        let c = case(4, 6, 9);
        let zt = c.ht.matmul(&c.wt.t().unwrap()).unwrap();
        let mut top = targets(&zt, 3, 1.0);
        top.ids[5] = 9;
        let e = fused_head_top_k_kl_ce(c.hs.as_tensor(), c.ws.as_tensor(), &top, &c.y, 1.0, 0.5)
            .err()
            .unwrap();
        assert!(e.to_string().contains("cached token id 9"), "{e}");
        top.rest.pop();
        let e = fused_head_top_k_kl_ce(c.hs.as_tensor(), c.ws.as_tensor(), &top, &c.y, 1.0, 0.5)
            .err()
            .unwrap();
        assert!(e.to_string().contains("3 cached rows"), "{e}");
    }
}
