//! Forward KL at temperature T and hard-label cross-entropy in one pass over the logits, with
//! an analytic backward pass. The composed candle ops allocate a dozen `[N, V]` temporaries
//! forward and more backward; with a 49k vocabulary that dominates a CPU training step. Rows are
//! processed in parallel with rayon, with the vectorised row kernels of
//! `distill_models::ops::rows`; the backward pass reuses the forward pass's per-row
//! normalisers, so each logit costs two exponentials each way (three at T ≠ 1). CPU only: other devices use the composed losses.
//!
//! Output `[2]`: `T²·mean KL(p_t^T ‖ p_s^T)` and `mean CE(z_s, y)`. Gradient with respect to the
//! student logits, for upstream gradients `(g₀, g₁)`:
//! `g₀·T·(p_s^T − p_t^T)/N + g₁·(softmax(z_s) − onehot(y))/N`.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use distill_models::ops::rows::{exp_into, exp_sum, row_max};
use distill_models::ops::{cpu_slice, with_cpu_f32};
use rayon::prelude::*;

/// Per-row statistics the forward pass keeps for the backward pass: the log-normalisers of the
/// student at T and at 1 (`log p_s^T = a·inv_t − s_t`, `log p_s = a − s_1`), and the teacher's
/// shift and exp-sum at T (`p_t^T = e^(b·inv_t − t_shift) / t_sum`).
#[derive(Clone, Copy)]
struct RowStats {
    s_t: f32,
    s_1: f32,
    t_shift: f32,
    t_sum: f32,
}

struct FusedKlCe {
    temperature: f32,
    stats: Mutex<Vec<RowStats>>,
}

thread_local! {
    /// One row of teacher exponentials per thread, reused across rows and steps.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

distill_models::multiversion! {
    /// Σ_j p_t[j]·(lt[j] − ls[j]) for one row, where `e` holds e^(b·inv_t − mb) (so
    /// p_t = e/S_b), lt = b·inv_t − mb − lb and ls = a·inv_t − ma − la.
    fn kl_row(a: &[f32], b: &[f32], e: &[f32], inv_t: f32, shift: f32, inv_sb: f32) -> f32 {
        let mut acc = [0f32; 16];
        let n = a.len() / 16 * 16;
        for ((ac, bc), ec) in a[..n].chunks_exact(16).zip(b[..n].chunks_exact(16)).zip(e[..n].chunks_exact(16)) {
            for k in 0..16 {
                acc[k] += ec[k] * ((bc[k] - ac[k]) * inv_t - shift);
            }
        }
        let mut s = 0f32;
        for x in acc {
            s += x;
        }
        for j in n..a.len() {
            s += e[j] * ((b[j] - a[j]) * inv_t - shift);
        }
        s * inv_sb
    }
}

distill_models::multiversion! {
    /// In place: `a ← c0·(p_s^T − p_t^T) + c1·p_s`, with `p_t^T = e·inv_sb` already at hand.
    #[allow(clippy::too_many_arguments)]
    fn grad_row_in_place(a: &mut [f32], e: &[f32], inv_sb: f32, inv_t: f32, s_t: f32, s_1: f32, same: bool, c0: f32, c1: f32) {
        use distill_models::ops::rows::exp;
        if same {
            for (a, &e) in a.iter_mut().zip(e) {
                let ps = exp(*a * inv_t - s_t);
                *a = (c0 + c1) * ps - c0 * (e * inv_sb);
            }
        } else {
            for (a, &e) in a.iter_mut().zip(e) {
                let ps_t = exp(*a * inv_t - s_t);
                let ps = exp(*a - s_1);
                *a = c0 * (ps_t - e * inv_sb) + c1 * ps;
            }
        }
    }
}

/// One row's KL (at T) and CE from student logits `a`, teacher logits `b` and the label, with
/// the row's normalisers; `e` is left holding `e^(b·inv_t − t_shift)` (the teacher's
/// unnormalised probabilities at T).
fn row_loss(
    a: &[f32],
    b: &[f32],
    e: &mut Vec<f32>,
    label: u32,
    inv_t: f32,
    same: bool,
) -> (f32, f32, RowStats) {
    let ma = row_max(a) * inv_t;
    let la = exp_sum(a, inv_t, ma).ln();
    let mb = row_max(b) * inv_t;
    e.resize(b.len(), 0.0);
    let sb = exp_into(b, inv_t, mb, e);
    let lb = sb.ln();
    // lt − ls = (b − a)·inv_t − (mb + lb − ma − la)
    let kl = kl_row(a, b, e, inv_t, mb + lb - ma - la, 1.0 / sb);
    let s_1 = if same {
        ma + la
    } else {
        let m1 = row_max(a);
        m1 + exp_sum(a, 1.0, m1).ln()
    };
    let ce = s_1 - a[label as usize];
    let stats = RowStats {
        s_t: ma + la,
        s_1,
        t_shift: mb,
        t_sum: sb,
    };
    (kl, ce, stats)
}

/// Writes the gradient of row `a` in place from its statistics and the teacher's `e`, then
/// subtracts the label's one-hot: `c0·(p_s^T − p_t^T) + c1·(p_s − onehot(label))`.
#[allow(clippy::too_many_arguments)]
fn row_gradient(
    a: &mut [f32],
    e: &[f32],
    st: &RowStats,
    label: u32,
    inv_t: f32,
    same: bool,
    c0: f32,
    c1: f32,
) {
    grad_row_in_place(a, e, 1.0 / st.t_sum, inv_t, st.s_t, st.s_1, same, c0, c1);
    a[label as usize] -= c1;
}

/// Rows of student logits `zs` and teacher logits `zt` (`[rows, v]`) with their labels: returns
/// `(Σ KL at T, Σ CE)` and leaves in `zs` the gradient of `c0/T·T²·KL… `, precisely
/// `c0·(p_s^T − p_t^T) + c1·(p_s − onehot(y))` per row (`c0 = α·T/N`, `c1 = (1 − α)/N` for the
/// mean loss `α·T²·KL + (1 − α)·CE` over `N` positions).
pub(crate) fn kl_ce_rows(
    zs: &mut [f32],
    zt: &[f32],
    y: &[u32],
    v: usize,
    temperature: f32,
    c0: f32,
    c1: f32,
) -> (f64, f64) {
    let inv_t = 1.0 / temperature;
    let same = temperature == 1.0;
    zs.par_chunks_mut(v)
        .zip(zt.par_chunks(v))
        .zip(y.par_iter())
        .map(|((a, b), &label)| {
            SCRATCH.with(|e| {
                let mut e = e.borrow_mut();
                let (kl, ce, st) = row_loss(a, b, &mut e, label, inv_t, same);
                row_gradient(a, &e, &st, label, inv_t, same, c0, c1);
                (kl as f64, ce as f64)
            })
        })
        .reduce(|| (0.0, 0.0), |x, y| (x.0 + y.0, x.1 + y.1))
}

impl CustomOp3 for FusedKlCe {
    fn name(&self) -> &'static str {
        "fused-kl-ce"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        let zs = cpu_slice::<f32>(s1, l1, "fused KL+CE: student logits")?;
        let zt = cpu_slice::<f32>(s2, l2, "fused KL+CE: teacher logits")?;
        let y = cpu_slice::<u32>(s3, l3, "fused KL+CE: labels")?;
        if let Some(bad) = y.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("fused KL+CE: label {bad} outside a vocabulary of {v}");
        }
        let inv_t = 1.0 / self.temperature;
        let same = self.temperature == 1.0;
        let rows: Vec<(f64, f64, RowStats)> = (0..n)
            .into_par_iter()
            .map(|i| {
                let (a, b) = (&zs[i * v..(i + 1) * v], &zt[i * v..(i + 1) * v]);
                SCRATCH.with(|e| {
                    let (kl, ce, st) = row_loss(a, b, &mut e.borrow_mut(), y[i], inv_t, same);
                    (kl as f64, ce as f64, st)
                })
            })
            .collect();
        let (mut kl, mut ce) = (0f64, 0f64);
        let mut stats = Vec::with_capacity(n);
        for (k, c, s) in rows {
            kl += k;
            ce += c;
            stats.push(s);
        }
        *self.stats.lock().expect("row statistics") = stats;
        let t2 = (self.temperature * self.temperature) as f64;
        let out = vec![(t2 * kl / n as f64) as f32, (ce / n as f64) as f32];
        Ok((CpuStorage::F32(out), Shape::from_dims(&[2])))
    }

    fn bwd(
        &self,
        zs: &Tensor,
        zt: &Tensor,
        y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, v) = zs.dims2()?;
        let g: Vec<f32> = grad.to_dtype(DType::F32)?.to_vec1()?;
        let stats = std::mem::take(&mut *self.stats.lock().expect("row statistics"));
        if stats.len() != n {
            candle_core::bail!("fused KL+CE: backward without its forward pass");
        }
        let y: Vec<u32> = y.to_vec1()?;
        let t = self.temperature;
        let inv_t = 1.0 / t;
        let same = t == 1.0;
        let (c0, c1) = (g[0] * t / n as f32, g[1] / n as f32);
        let mut out = vec![0f32; n * v];
        with_cpu_f32(zs, "fused KL+CE: student logits", |a| {
            with_cpu_f32(zt, "fused KL+CE: teacher logits", |b| {
                // The teacher's exponentials are recomputed exactly as the forward pass made them.
                out.par_chunks_mut(v).enumerate().for_each(|(i, o)| {
                    let (ra, rb) = (&a[i * v..(i + 1) * v], &b[i * v..(i + 1) * v]);
                    let st = &stats[i];
                    o.copy_from_slice(ra);
                    SCRATCH.with(|e| {
                        let mut e = e.borrow_mut();
                        e.resize(v, 0.0);
                        exp_into(rb, inv_t, st.t_shift, &mut e);
                        row_gradient(o, &e, st, y[i], inv_t, same, c0, c1);
                    });
                });
                Ok(())
            })
        })?;
        Ok((
            Some(Tensor::from_vec(out, (n, v), zs.device())?),
            None,
            None,
        ))
    }
}

/// `[T²·KL, CE]` for student logits `[N, V]` (f32, CPU), teacher logits `[N, V]` and labels `[N]`.
/// Gradients flow to the student logits only.
pub fn fused_forward_kl_ce(
    student: &Tensor,
    teacher: &Tensor,
    labels: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    let s = student.to_dtype(DType::F32)?.contiguous()?;
    let t = teacher.to_dtype(DType::F32)?.contiguous()?.detach();
    let y = labels.to_dtype(DType::U32)?.contiguous()?;
    s.apply_op3(
        &t,
        &y,
        FusedKlCe {
            temperature: temperature as f32,
            stats: Mutex::new(Vec::new()),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::losses::{CrossEntropy, ForwardKl, Loss, LossInputs};
    use candle_core::{Device, Var};

    #[test]
    fn values_and_gradients_equal_the_composed_losses() {
        let dev = Device::Cpu;
        let (n, v) = (5, 11);
        let zs = Var::from_tensor(&(Tensor::randn(0f32, 2.0, (n, v), &dev).unwrap())).unwrap();
        let zt = Tensor::randn(0f32, 2.0, (n, v), &dev).unwrap();
        let y = Tensor::new(&[3u32, 0, 10, 7, 7], &dev).unwrap();
        // T ≠ 1 (three softmaxes) and T = 1 (the student's shared by KL and CE).
        for t in [2.5, 1.0] {
            let alpha = 0.7;

            let fused = fused_forward_kl_ce(zs.as_tensor(), &zt, &y, t).unwrap();
            let f: Vec<f32> = fused.to_vec1().unwrap();
            let loss_f = ((fused.get(0).unwrap() * alpha).unwrap()
                + (fused.get(1).unwrap() * (1.0 - alpha)).unwrap())
            .unwrap();
            let gf: Vec<f32> = loss_f
                .backward()
                .unwrap()
                .get(zs.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();

            let kl = ForwardKl { temperature: t }
                .forward(&LossInputs {
                    student_logits: zs.as_tensor(),
                    teacher_logits: Some(&zt),
                    labels: None,
                })
                .unwrap();
            let ce = CrossEntropy
                .forward(&LossInputs {
                    student_logits: zs.as_tensor(),
                    teacher_logits: None,
                    labels: Some(&y),
                })
                .unwrap();
            assert!(
                (f[0] - kl.to_scalar::<f32>().unwrap()).abs() < 1e-4,
                "{f:?}"
            );
            assert!(
                (f[1] - ce.to_scalar::<f32>().unwrap()).abs() < 1e-5,
                "{f:?}"
            );
            let loss_c = ((kl * alpha).unwrap() + (ce * (1.0 - alpha)).unwrap()).unwrap();
            let gc: Vec<f32> = loss_c
                .backward()
                .unwrap()
                .get(zs.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for (a, b) in gf.iter().zip(&gc) {
                assert!((a - b).abs() < 1e-5, "T = {t}: gradient {a} vs {b}");
            }
        }
    }
}
