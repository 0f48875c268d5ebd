//! Fused CPU kernels for the optimiser: the AdamW update in place over weight, gradient and
//! moments in one pass, and a sum of squares, both split over rayon's threads in fixed chunks
//! (so results do not depend on the thread count).

use std::cell::RefCell;

use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Tensor};
use distill_models::ops::cpu_slice;
use rayon::prelude::*;

/// Elements per parallel task: large enough to amortise scheduling, small enough to balance.
const CHUNK: usize = 1 << 15;

/// The scalars of one AdamW update of one parameter.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Hyper {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    /// Bias corrections `1 − β₁ᵗ` and `1 − β₂ᵗ`.
    pub bc1: f32,
    pub bc2: f32,
    pub eps: f32,
    /// `1 − lr·wd` for decayed parameters, 1 otherwise.
    pub shrink: f32,
    /// Applied to the gradient first (the clipping factor).
    pub grad_scale: f32,
}

/// Whether `t` can take the host path: an `f32` tensor on the CPU.
pub(crate) fn on_host(t: &Tensor) -> bool {
    matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32
}

/// The update itself, element by element; `w`, `g`, `m`, `v` have one length.
pub(crate) fn adamw_update(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: &Hyper) {
    let (c1, c2) = (1.0 - h.beta1, 1.0 - h.beta2);
    w.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((w, g), m), v)| {
            for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                let g = g * h.grad_scale;
                *m = h.beta1 * *m + c1 * g;
                *v = h.beta2 * *v + c2 * (g * g);
                let step = (*m / h.bc1) / ((*v / h.bc2).sqrt() + h.eps);
                *w = *w * h.shrink - h.lr * step;
            }
        });
}

/// Σ x², accumulated in `f64` per chunk and the chunks summed in order.
pub(crate) fn sum_squares(x: &[f32]) -> f64 {
    let parts: Vec<f64> = x
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|&a| (a as f64) * (a as f64)).sum::<f64>())
        .collect();
    parts.iter().sum()
}

/// The in-place op that runs [`adamw_update`] on a variable's own storage, with the gradient as
/// its source and the moments held by the caller.
pub(crate) struct FusedAdamW<'a> {
    pub moments: RefCell<(&'a mut [f32], &'a mut [f32])>,
    pub hyper: Hyper,
}

impl InplaceOp2 for FusedAdamW<'_> {
    fn name(&self) -> &'static str {
        "fused-adamw"
    }

    fn cpu_fwd(
        &self,
        w: &mut CpuStorage,
        wl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<()> {
        let g = cpu_slice::<f32>(g, gl, "fused AdamW: the gradient")?;
        let CpuStorage::F32(w) = w else {
            candle_core::bail!("fused AdamW: expected an f32 weight")
        };
        let (a, b) = wl
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("fused AdamW: weight not contiguous".into()))?;
        let w = &mut w[a..b];
        let mut moments = self.moments.borrow_mut();
        let (m, v) = &mut *moments;
        if w.len() != g.len() || m.len() != w.len() || v.len() != w.len() {
            candle_core::bail!(
                "fused AdamW: lengths differ (weight {}, gradient {}, moments {}/{})",
                w.len(),
                g.len(),
                m.len(),
                v.len()
            );
        }
        adamw_update(w, g, m, v, &self.hyper);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_of_squares_is_independent_of_chunking() {
        let x: Vec<f32> = (0..(3 * CHUNK + 17)).map(|i| (i as f32).sin()).collect();
        let want: f64 = x.iter().map(|&a| (a as f64) * (a as f64)).sum();
        let got = sum_squares(&x);
        assert!((got - want).abs() < 1e-9 * want, "{got} vs {want}");
    }
}
