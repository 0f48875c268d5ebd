//! Rotary position embedding in the half-split layout as one op with an analytic backward
//! pass. With `r(x) = [−x₂, x₁]`, `y = x ⊙ cos + r(x) ⊙ sin`; the tables repeat each frequency
//! in both halves, so the transpose is the same rotation with `−sin`: `∂x = g ⊙ cos − r(g) ⊙ sin`.
//! The composed form is six ops (two narrows, a negation, a concatenation, two products and a
//! sum) forward and as many backward.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu_slice;
use crate::multiversion;

/// Rotates with `sin`, or with `−sin` for the backward pass.
struct Rope {
    inverse: bool,
}

multiversion! {
    /// One position's head vector: `o = x ⊙ cos + sign·r(x) ⊙ sin`.
    fn rotate(x: &[f32], cos: &[f32], sin: &[f32], sign: f32, o: &mut [f32]) {
        let h = x.len() / 2;
        let (x1, x2) = x.split_at(h);
        let (o1, o2) = o.split_at_mut(h);
        for j in 0..h {
            o1[j] = x1[j] * cos[j] - sign * x2[j] * sin[j];
            o2[j] = x2[j] * cos[h + j] + sign * x1[j] * sin[h + j];
        }
    }
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    /// `x` `[b, heads, seq, d]`; `cos`, `sin` `[seq, d]`.
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, _, seq, d) = l1.shape().dims4()?;
        if l2.shape().dims() != [seq, d] || l3.shape().dims() != [seq, d] || d % 2 != 0 {
            candle_core::bail!(
                "rope: input {:?} with tables {:?}, {:?}",
                l1.shape(),
                l2.shape(),
                l3.shape()
            );
        }
        let x = cpu_slice::<f32>(s1, l1, "rope: input")?;
        let cos = cpu_slice::<f32>(s2, l2, "rope: cos")?;
        let sin = cpu_slice::<f32>(s3, l3, "rope: sin")?;
        let sign = if self.inverse { -1.0 } else { 1.0 };
        let mut out = vec![0f32; x.len()];
        // One task per (batch, head): `seq` rows of `d`.
        out.par_chunks_mut(seq * d)
            .zip(x.par_chunks(seq * d))
            .for_each(|(o, x)| {
                for (p, (o, x)) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)).enumerate() {
                    let (c, s) = (&cos[p * d..(p + 1) * d], &sin[p * d..(p + 1) * d]);
                    rotate(x, c, s, sign, o);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = grad.contiguous()?.apply_op3(
            cos,
            sin,
            Rope {
                inverse: !self.inverse,
            },
        )?;
        Ok((Some(dx), None, None))
    }
}

/// Rotates `x` `[b, heads, seq, d]` by the tables `cos`, `sin` `[seq, d]` (each frequency in
/// both halves), differentiable in `x`. `None` unless all are `f32` on the CPU.
pub fn fused_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Option<Result<Tensor>> {
    let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if !(cpu_f32(x) && cpu_f32(cos) && cpu_f32(sin) && x.rank() == 4) {
        return None;
    }
    Some((|| {
        x.contiguous()?.apply_op3(
            &cos.contiguous()?.detach(),
            &sin.contiguous()?.detach(),
            Rope { inverse: false },
        )
    })())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::assert_same_values_and_gradients;
    use candle_core::{Device, Var, D};

    fn composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let half = x.dim(D::Minus1).unwrap() / 2;
        let x1 = x.narrow(D::Minus1, 0, half).unwrap();
        let x2 = x.narrow(D::Minus1, half, half).unwrap();
        let rotated = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
        x.broadcast_mul(cos)
            .unwrap()
            .broadcast_add(&rotated.broadcast_mul(sin).unwrap())
            .unwrap()
    }

    #[test]
    fn values_and_gradients_equal_the_composed_rope() {
        let dev = Device::Cpu;
        let (seq, d) = (9, 12);
        let freqs = Tensor::randn(0f32, 2.0, (seq, d / 2), &dev).unwrap();
        let freqs = Tensor::cat(&[&freqs, &freqs], 1).unwrap();
        let (cos, sin) = (freqs.cos().unwrap(), freqs.sin().unwrap());
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, seq, d), &dev).unwrap()).unwrap();
        let fused = fused_rope(&x, &cos, &sin).unwrap().unwrap();
        assert_same_values_and_gradients(&[&x], &fused, &composed(&x, &cos, &sin), 1e-6);
    }
}
