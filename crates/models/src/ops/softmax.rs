//! Softmax over the last dimension as one op with an analytic backward pass
//! (`∂x = p ⊙ (g − Σ g ⊙ p)`), rows in parallel. The composed form (max, subtract, exp, sum,
//! divide, and as many ops backward) allocates a tensor per step and calls libm's `expf` per
//! element; this one makes one pass for the max and one for exp-and-sum per row.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::cpu_slice;
use super::rows::{exp_into, row_max};
use crate::multiversion;

struct Softmax {
    causal: bool,
}
struct SoftmaxBackward;

/// Rows per parallel task: attention rows are short.
fn rows_per_task(d: usize) -> usize {
    (16_384 / d.max(1)).max(1)
}

/// Softmax of each row of `d`; with `causal`, rows are the queries of `[.., d, d]` score
/// matrices and row `i` (mod `d`) keeps only its first `i + 1` entries, the rest exactly 0.
fn softmax_rows(x: &[f32], d: usize, causal: bool) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    // Whole matrices per task when causal, so that a row's position is its index in the task.
    let per = if causal {
        rows_per_task(d).div_ceil(d).max(1) * d
    } else {
        rows_per_task(d)
    };
    out.par_chunks_mut(per * d)
        .zip(x.par_chunks(per * d))
        .for_each(|(o, x)| {
            for (i, (o, x)) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)).enumerate() {
                let keep = if causal { i % d + 1 } else { d };
                let (o, x) = (&mut o[..keep], &x[..keep]);
                let m = row_max(x);
                let s = exp_into(x, 1.0, m, o);
                scale(o, 1.0 / s);
            }
        });
    out
}

multiversion! {
    fn scale(x: &mut [f32], by: f32) {
        for v in x.iter_mut() {
            *v *= by;
        }
    }
}

multiversion! {
    /// `o = p ⊙ (g − Σ g ⊙ p)` for one row.
    fn backward_row(p: &[f32], g: &[f32], o: &mut [f32]) {
        let mut acc = [0f32; 16];
        let n = p.len() / 16 * 16;
        for (pc, gc) in p[..n].chunks_exact(16).zip(g[..n].chunks_exact(16)) {
            for k in 0..16 {
                acc[k] += pc[k] * gc[k];
            }
        }
        let mut dot = 0f32;
        for a in acc {
            dot += a;
        }
        for j in n..p.len() {
            dot += p[j] * g[j];
        }
        for ((o, &p), &g) in o.iter_mut().zip(p).zip(g) {
            *o = p * (g - dot);
        }
    }
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice::<f32>(s, l, "softmax: input")?;
        let dims = l.shape().dims();
        let d = dims.last().copied().unwrap_or(1);
        if self.causal && (dims.len() < 2 || dims[dims.len() - 2] != d) {
            candle_core::bail!("causal softmax: scores {dims:?} are not [.., s, s]");
        }
        Ok((
            CpuStorage::F32(softmax_rows(x, d, self.causal)),
            l.shape().clone(),
        ))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        Ok(Some(res.apply_op2_no_bwd(&g, &SoftmaxBackward)?))
    }
}

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "softmax-last-dim-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let p = cpu_slice::<f32>(s1, l1, "softmax: probabilities")?;
        let g = cpu_slice::<f32>(s2, l2, "softmax: gradient")?;
        let d = l1.shape().dims().last().copied().unwrap_or(1);
        let mut out = vec![0f32; p.len()];
        let per = rows_per_task(d) * d;
        out.par_chunks_mut(per)
            .zip(p.par_chunks(per).zip(g.par_chunks(per)))
            .for_each(|(o, (p, g))| {
                for ((o, p), g) in o
                    .chunks_exact_mut(d)
                    .zip(p.chunks_exact(d))
                    .zip(g.chunks_exact(d))
                {
                    backward_row(p, g, o);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Softmax over the last dimension, differentiable. `f32` on the CPU runs the fused op; other
/// dtypes and devices the composed candle ops (which every backend has kernels for).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(Softmax { causal: false })
    } else {
        candle_nn::ops::softmax(x, D::Minus1)
    }
}

/// Softmax of causal attention scores `[.., s, s]` (query × key): key `j` of query `i` counts
/// only for `j ≤ i`; the others get probability 0 without a mask tensor. CPU, `f32`.
pub fn causal_softmax(x: &Tensor) -> Result<Tensor> {
    if !(x.device().is_cpu() && x.dtype() == DType::F32) {
        candle_core::bail!("causal_softmax: f32 on the CPU only (compose a bias elsewhere)");
    }
    x.contiguous()?.apply_op1(Softmax { causal: true })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::assert_same_values_and_gradients;
    use candle_core::{Device, Var};

    #[test]
    fn causal_softmax_equals_masking_with_a_bias() {
        let dev = Device::Cpu;
        let s = 13;
        let x = Var::from_tensor(&Tensor::randn(0f32, 2.0, (2, 3, s, s), &dev).unwrap()).unwrap();
        let bias = crate::nn::attention_bias(1, s, None, true, &dev)
            .unwrap()
            .unwrap();
        let fused = causal_softmax(&x).unwrap();
        let composed =
            candle_nn::ops::softmax(&x.broadcast_add(&bias).unwrap(), D::Minus1).unwrap();
        let row: Vec<f32> = fused
            .get(1)
            .unwrap()
            .get(2)
            .unwrap()
            .get(3)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(row[4..].iter().all(|&p| p == 0.0), "{row:?}");
        assert_same_values_and_gradients(&[&x], &fused, &composed, 1e-6);
    }

    #[test]
    fn values_and_gradients_equal_the_composed_softmax() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(Tensor::randn(0f32, 3.0, (3, 4, 37), &dev).unwrap())).unwrap();
        // A masked entry, as padded attention has.
        let mask = Tensor::from_vec(
            (0..37)
                .map(|j| if j > 30 { f32::MIN } else { 0.0 })
                .collect::<Vec<_>>(),
            37,
            &dev,
        )
        .unwrap();
        let xm = x.broadcast_add(&mask).unwrap();
        let fused = softmax_last_dim(&xm).unwrap();
        let composed = candle_nn::ops::softmax(&xm, D::Minus1).unwrap();
        assert_same_values_and_gradients(&[&x], &fused, &composed, 1e-6);
    }
}
