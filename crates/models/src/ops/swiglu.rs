//! SwiGLU `silu(gate) ⊙ up` as one op with an analytic backward pass:
//! `∂up = g ⊙ silu(gate)`, `∂gate = g ⊙ up ⊙ σ(gate)·(1 + gate·(1 − σ(gate)))`.
//! The composed form (silu, multiply, and six ops backward) makes a full-size temporary per
//! op and calls libm's `expf` per element.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu_slice;
use crate::ggml_cpu::vec::v_expf;
use crate::multiversion;

const CHUNK: usize = 1 << 14;

struct SwiGlu;
struct SwiGluBackward;

/// `σ(x)` with ggml's `expf`, so that SiLU is computed as llama.cpp computes it
/// (`x / (1 + e^−x)`): a quantised teacher run here then agrees with llama.cpp on more
/// near-tied tokens.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + v_expf(-x))
}

multiversion! {
    fn forward_chunk(g: &[f32], u: &[f32], o: &mut [f32]) {
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            *o = (g / (1.0 + v_expf(-g))) * u;
        }
    }
}

multiversion! {
    fn backward_chunk(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32]) {
        for i in 0..g.len() {
            let s = sigmoid(g[i]);
            du[i] = dy[i] * g[i] * s;
            dg[i] = dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
        }
    }
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("swiglu: gate {:?} vs up {:?}", l1.shape(), l2.shape());
        }
        let g = cpu_slice::<f32>(s1, l1, "swiglu: gate")?;
        let u = cpu_slice::<f32>(s2, l2, "swiglu: up")?;
        let mut out = vec![0f32; g.len()];
        out.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(o, (g, u))| forward_chunk(g, u, o));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both = gate.apply_op3_no_bwd(up, &grad.contiguous()?, &SwiGluBackward)?;
        let dg = both.get(0)?.reshape(gate.shape())?;
        let du = both.get(1)?.reshape(up.shape())?;
        Ok((Some(dg), Some(du)))
    }
}

impl CustomOp3 for SwiGluBackward {
    fn name(&self) -> &'static str {
        "swiglu-backward"
    }

    /// Output `[2, n]`: `∂gate`, then `∂up`.
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = cpu_slice::<f32>(s1, l1, "swiglu: gate")?;
        let u = cpu_slice::<f32>(s2, l2, "swiglu: up")?;
        let dy = cpu_slice::<f32>(s3, l3, "swiglu: gradient")?;
        let n = g.len();
        let mut out = vec![0f32; 2 * n];
        let (dg, du) = out.split_at_mut(n);
        dg.par_chunks_mut(CHUNK)
            .zip(du.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .zip(dy.par_chunks(CHUNK))
            .for_each(|(((dg, du), (g, u)), dy)| backward_chunk(g, u, dy, dg, du));
        Ok((CpuStorage::F32(out), Shape::from_dims(&[2, n])))
    }
}

/// `silu(gate) ⊙ up`, differentiable in both. `f32` on the CPU runs the fused op; otherwise
/// the composed candle ops.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if cpu_f32(gate) && cpu_f32(up) {
        gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
    } else {
        gate.silu()? * up
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::assert_same_values_and_gradients;
    use candle_core::{Device, Var};

    #[test]
    fn values_and_gradients_equal_the_composed_swiglu() {
        let dev = Device::Cpu;
        let g = Var::from_tensor(&Tensor::randn(0f32, 3.0, (3, 7, 50), &dev).unwrap()).unwrap();
        let u = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 7, 50), &dev).unwrap()).unwrap();
        let fused = swiglu(&g, &u).unwrap();
        let composed = (g.silu().unwrap() * u.as_tensor()).unwrap();
        assert_same_values_and_gradients(&[&g, &u], &fused, &composed, 1e-5);
    }
}
