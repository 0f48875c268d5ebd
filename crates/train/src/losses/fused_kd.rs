//! Forward KL at temperature T and hard-label cross-entropy in one pass over the logits, with
//! an analytic backward pass. The composed candle ops allocate a dozen `[N, V]` temporaries
//! forward and more backward; with a 49k vocabulary that dominates a CPU training step. Rows are
//! processed in parallel with rayon. CPU only: other devices use the composed losses.
//!
//! Output `[2]`: `T²·mean KL(p_t^T ‖ p_s^T)` and `mean CE(z_s, y)`. Gradient with respect to the
//! student logits, for upstream gradients `(g₀, g₁)`:
//! `g₀·T·(p_s^T − p_t^T)/N + g₁·(softmax(z_s) − onehot(y))/N`.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

struct FusedKlCe {
    temperature: f32,
}

fn slice<'a, T: candle_core::WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> Result<&'a [T]> {
    let (a, b) = l.contiguous_offsets().ok_or_else(|| {
        candle_core::Error::Msg(format!("fused KL+CE: {what} must be contiguous"))
    })?;
    Ok(&s.as_slice::<T>()?[a..b])
}

/// `(max, log Σ exp(x·scale − max))` of a row, for a stable log-softmax.
fn lse(row: &[f32], scale: f32) -> (f32, f32) {
    let m = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x * scale));
    let s: f32 = row.iter().map(|&x| (x * scale - m).exp()).sum();
    (m, s.ln())
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
        let zs = slice::<f32>(s1, l1, "student logits")?;
        let zt = slice::<f32>(s2, l2, "teacher logits")?;
        let y = slice::<u32>(s3, l3, "labels")?;
        let inv_t = 1.0 / self.temperature;
        let (kl, ce) = (0..n)
            .into_par_iter()
            .map(|i| {
                let (a, b) = (&zs[i * v..(i + 1) * v], &zt[i * v..(i + 1) * v]);
                let (ma, la) = lse(a, inv_t);
                let (mb, lb) = lse(b, inv_t);
                let mut kl = 0f64;
                for j in 0..v {
                    let lt = b[j] * inv_t - mb - lb;
                    let ls = a[j] * inv_t - ma - la;
                    kl += (lt.exp() * (lt - ls)) as f64;
                }
                let (m1, l1) = lse(a, 1.0);
                let ce = (m1 + l1 - a[y[i] as usize]) as f64;
                (kl, ce)
            })
            .reduce(|| (0.0, 0.0), |x, y| (x.0 + y.0, x.1 + y.1));
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
        let a: Vec<f32> = zs.flatten_all()?.to_vec1()?;
        let b: Vec<f32> = zt.flatten_all()?.to_vec1()?;
        let y: Vec<u32> = y.to_vec1()?;
        let t = self.temperature;
        let inv_t = 1.0 / t;
        let (g0, g1) = (g[0] * t / n as f32, g[1] / n as f32);
        let mut out = vec![0f32; n * v];
        out.par_chunks_mut(v).enumerate().for_each(|(i, o)| {
            let (ra, rb) = (&a[i * v..(i + 1) * v], &b[i * v..(i + 1) * v]);
            let (ma, la) = lse(ra, inv_t);
            let (mb, lb) = lse(rb, inv_t);
            let (m1, l1) = lse(ra, 1.0);
            for j in 0..v {
                let ps_t = (ra[j] * inv_t - ma - la).exp();
                let pt_t = (rb[j] * inv_t - mb - lb).exp();
                let ps = (ra[j] - m1 - l1).exp();
                o[j] = g0 * (ps_t - pt_t) + g1 * ps;
            }
            o[y[i] as usize] -= g1;
        });
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
        let (alpha, t) = (0.7, 2.5);

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
            assert!((a - b).abs() < 1e-5, "gradient {a} vs {b}");
        }
    }
}
