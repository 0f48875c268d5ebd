//! RMS normalisation `y = x · r · w`, `r = 1/√(mean(x²) + ε)`, as one op with an analytic
//! backward pass:
//! `∂x = r·(g⊙w) − x·r³·Σ(g⊙w⊙x)/D` and `∂w = Σ_rows g⊙x·r`.
//! The composed form is seven ops forward and more backward, each a full-size temporary.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu_slice;
use crate::multiversion;

/// Rows per parallel task; also the unit in which `∂w` is summed, so its bits do not depend on
/// the thread count.
const ROWS: usize = 32;

struct RmsNorm {
    eps: f32,
}
struct RmsNormBackward {
    eps: f32,
}

multiversion! {
    /// Σ x², over 16 lanes.
    fn sum_sq(x: &[f32]) -> f32 {
        let mut acc = [0f32; 16];
        let n = x.len() / 16 * 16;
        for c in x[..n].chunks_exact(16) {
            for k in 0..16 {
                acc[k] += c[k] * c[k];
            }
        }
        let mut s = 0f32;
        for a in acc {
            s += a;
        }
        for &v in &x[n..] {
            s += v * v;
        }
        s
    }
}

multiversion! {
    fn forward_row(x: &[f32], w: &[f32], r: f32, o: &mut [f32]) {
        for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
            *o = x * r * w;
        }
    }
}

multiversion! {
    /// `∂x` of one row into `dx`, `g⊙x·r` added into `dw`.
    fn backward_row(x: &[f32], w: &[f32], g: &[f32], r: f32, dx: &mut [f32], dw: &mut [f32]) {
        let d = x.len();
        let mut acc = [0f32; 16];
        let n = d / 16 * 16;
        for ((xc, wc), gc) in x[..n].chunks_exact(16).zip(w[..n].chunks_exact(16)).zip(g[..n].chunks_exact(16)) {
            for k in 0..16 {
                acc[k] += gc[k] * wc[k] * xc[k];
            }
        }
        let mut dot = 0f32;
        for a in acc {
            dot += a;
        }
        for j in n..d {
            dot += g[j] * w[j] * x[j];
        }
        let c = r * r * r * dot / d as f32;
        for j in 0..d {
            dx[j] = r * g[j] * w[j] - x[j] * c;
            dw[j] += g[j] * x[j] * r;
        }
    }
}

fn inv_rms(x: &[f32], eps: f32) -> f32 {
    1.0 / (sum_sq(x) / x.len() as f32 + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice::<f32>(s1, l1, "rms_norm: input")?;
        let w = cpu_slice::<f32>(s2, l2, "rms_norm: weight")?;
        let d = w.len();
        if l1.shape().dims().last() != Some(&d) {
            candle_core::bail!("rms_norm: input {:?} vs weight [{d}]", l1.shape());
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(ROWS * d)
            .zip(x.par_chunks(ROWS * d))
            .for_each(|(o, x)| {
                for (o, x) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                    forward_row(x, w, inv_rms(x, self.eps), o);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let both = x.apply_op3_no_bwd(w, &g, &RmsNormBackward { eps: self.eps })?;
        let rows = x.elem_count() / w.elem_count();
        let dx = both.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = both.narrow(0, rows, 1)?.reshape(w.shape())?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for RmsNormBackward {
    fn name(&self) -> &'static str {
        "rms-norm-backward"
    }

    /// Output `[rows + 1, D]`: `∂x` row by row, then `∂w`.
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice::<f32>(s1, l1, "rms_norm: input")?;
        let w = cpu_slice::<f32>(s2, l2, "rms_norm: weight")?;
        let g = cpu_slice::<f32>(s3, l3, "rms_norm: gradient")?;
        let d = w.len();
        let rows = x.len() / d;
        let mut out = vec![0f32; x.len() + d];
        let (dx, dw) = out.split_at_mut(x.len());
        let partial: Vec<Vec<f32>> = dx
            .par_chunks_mut(ROWS * d)
            .zip(x.par_chunks(ROWS * d).zip(g.par_chunks(ROWS * d)))
            .map(|(dx, (x, g))| {
                let mut dw = vec![0f32; d];
                for ((dx, x), g) in dx
                    .chunks_exact_mut(d)
                    .zip(x.chunks_exact(d))
                    .zip(g.chunks_exact(d))
                {
                    backward_row(x, w, g, inv_rms(x, self.eps), dx, &mut dw);
                }
                dw
            })
            .collect();
        for p in partial {
            for (a, b) in dw.iter_mut().zip(p) {
                *a += b;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from_dims(&[rows + 1, d])))
    }
}

/// `x / √(mean(x²) + ε) · w` over the last dimension, differentiable in `x` and `w`. `f32`
/// on the CPU runs the fused op; otherwise `None`, and the caller composes.
pub fn fused_rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Option<Result<Tensor>> {
    let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == candle_core::DType::F32;
    if !(cpu_f32(x) && cpu_f32(w) && w.rank() == 1) {
        return None;
    }
    Some(
        x.contiguous()
            .and_then(|x| x.apply_op2(&w.contiguous()?, RmsNorm { eps: eps as f32 })),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::assert_same_values_and_gradients;
    use candle_core::{DType, Device, Var, D};

    fn composed(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
        let ms = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        x.broadcast_div(&(ms + eps).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(w)
            .unwrap()
    }

    #[test]
    fn values_and_gradients_equal_the_composed_norm() {
        let dev = Device::Cpu;
        // 70 rows: more than one task of ROWS, and a partial last one.
        let x = Var::from_tensor(&Tensor::randn(0f32, 2.0, (2, 35, 48), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, 48, &dev).unwrap()).unwrap();
        let fused = fused_rms_norm(&x, &w, 1e-5).unwrap().unwrap();
        assert_same_values_and_gradients(&[&x, &w], &fused, &composed(&x, &w, 1e-5), 1e-5);
        assert!(fused_rms_norm(&x.to_dtype(DType::F16).unwrap(), &w, 1e-5).is_none());
    }
}
