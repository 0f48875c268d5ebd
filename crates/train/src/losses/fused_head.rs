//! The output head, forward KL at temperature T and cross-entropy in one chunked pass, so that
//! memory does not grow with vocabulary × sequence: the `[N, V]` logits of student and teacher
//! (and their gradient) are never whole. Per chunk of rows, the student's and the teacher's
//! logits are multiplied out into two reused `[C, V]` buffers, the loss and its gradient with
//! respect to the student's logits computed in place by the row kernels of
//! [`super::fused_kd`], and the gradient pushed through the head at once: `∂h = g·W` for the
//! chunk's rows and `∂W += gᵀ·h`, accumulated in the weight's gradient buffer by the GEMM.
//!
//! The gradients are complete after the forward pass; the op that carries the loss into the
//! autograd graph hands them to the backward pass, scaled by the upstream gradient.
//! CPU and `f32` only: elsewhere the caller computes logits and uses the composed losses.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use distill_models::ops::with_cpu_f32;

use distill_cache::TopK;

use super::fused_kd::kl_ce_rows;
use super::top_k::top_k_kl_ce_rows;

/// Rows per chunk: two `[C, V]` buffers of 12.6 MB at V = 49,152.
const CHUNK: usize = 64;

/// What the fused head pass returns.
pub struct HeadLoss {
    /// `α·T²·KL + (1 − α)·CE`, differentiable in the student's features and head.
    pub total: Tensor,
    /// `T²·KL` (mean per position).
    pub soft: f32,
    /// Cross-entropy (mean per position).
    pub hard: f32,
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]`, each given by its row and column strides.
fn matmul(
    dst: &mut [f32],
    (m, n, k): (usize, usize, usize),
    (lhs, lhs_rs, lhs_cs): (&[f32], usize, usize),
    (rhs, rhs_rs, rhs_cs): (&[f32], usize, usize),
    accumulate: bool,
) {
    assert!(dst.len() >= m * n);
    assert!(m == 0 || k == 0 || lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    assert!(k == 0 || n == 0 || rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    let threads = rayon::current_num_threads();
    // SAFETY: the bounds of every operand were checked above; `dst` does not alias the inputs
    // (it is a distinct `&mut`).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            if threads > 1 {
                gemm::Parallelism::Rayon(threads)
            } else {
                gemm::Parallelism::None
            },
        )
    }
}

/// Carries the precomputed loss into the graph: forward returns it, backward the gradients.
struct Carry {
    value: f32,
    grads: Mutex<Option<(Tensor, Tensor)>>,
}

impl CustomOp2 for Carry {
    fn name(&self) -> &'static str {
        "fused-head-kl-ce"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(vec![self.value]), Shape::from_dims(&[])))
    }

    fn bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dh, dw) = self
            .grads
            .lock()
            .expect("fused head gradients")
            .take()
            .ok_or_else(|| candle_core::Error::Msg("fused head loss: backward twice".into()))?;
        let g = grad.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        if g == 1.0 {
            Ok((Some(dh), Some(dw)))
        } else {
            Ok((Some((dh * g as f64)?), Some((dw * g as f64)?)))
        }
    }
}

/// The students's head applied chunk by chunk to features `hs` `[N, d]` with head `ws`
/// `[V, d]`: `rows(start, zs, c0, c1)` turns each chunk's logits (rows `start..`) into their
/// gradient in place and returns the chunk's `(Σ KL at T, Σ CE)`; the result is
/// `α·T²·KL + (1 − α)·CE` (means over the `N` positions) with gradients for `hs` and `ws`.
fn head_pass(
    hs: &Tensor,
    ws: &Tensor,
    temperature: f64,
    alpha: f64,
    mut rows: impl FnMut(usize, &mut [f32], f32, f32) -> (f64, f64),
) -> Result<HeadLoss> {
    let (n, d) = hs.dims2()?;
    let (v, _) = ws.dims2()?;
    let t = temperature as f32;
    let (c0, c1) = (alpha as f32 * t / n as f32, (1.0 - alpha as f32) / n as f32);
    let (dh, dw, kl, ce) = with_cpu_f32(hs, "fused head loss: student features", |h| {
        with_cpu_f32(ws, "fused head loss: student head", |w| {
            let mut zs = vec![0f32; CHUNK.min(n) * v];
            let mut dh = vec![0f32; n * d];
            let mut dw = vec![0f32; v * d];
            let (mut kl, mut ce) = (0f64, 0f64);
            for start in (0..n).step_by(CHUNK) {
                let c = CHUNK.min(n - start);
                let zs = &mut zs[..c * v];
                let hc = &h[start * d..(start + c) * d];
                matmul(zs, (c, v, d), (hc, d, 1), (w, 1, d), false);
                let (k, e) = rows(start, zs, c0, c1);
                kl += k;
                ce += e;
                // zs now holds ∂loss/∂z for the chunk's rows.
                matmul(
                    &mut dh[start * d..(start + c) * d],
                    (c, d, v),
                    (zs, v, 1),
                    (w, d, 1),
                    false,
                );
                // The first chunk writes ∂W without reading it: reading the fresh zeroed buffer
                // would map the shared zero page and make every first write a copy-on-write
                // fault with a TLB shootdown across threads.
                matmul(&mut dw, (v, d, c), (zs, 1, v), (hc, d, 1), start > 0);
            }
            Ok((dh, dw, kl, ce))
        })
    })?;
    let soft = (t as f64 * t as f64 * kl / n as f64) as f32;
    let hard = (ce / n as f64) as f32;
    let value = alpha as f32 * soft + (1.0 - alpha as f32) * hard;
    let dev = hs.device();
    let grads = (
        Tensor::from_vec(dh, (n, d), dev)?.to_dtype(hs.dtype())?,
        Tensor::from_vec(dw, (v, d), dev)?.to_dtype(ws.dtype())?,
    );
    let total = hs.apply_op2(
        ws,
        Carry {
            value,
            grads: Mutex::new(Some(grads)),
        },
    )?;
    Ok(HeadLoss { total, soft, hard })
}

/// The labels as `u32`, each checked against the vocabulary.
fn labels_of(labels: &Tensor, v: usize) -> Result<Vec<u32>> {
    let y: Vec<u32> = labels.to_dtype(candle_core::DType::U32)?.to_vec1()?;
    if let Some(bad) = y.iter().find(|&&t| t as usize >= v) {
        candle_core::bail!("fused head loss: label {bad} outside a vocabulary of {v}");
    }
    Ok(y)
}

/// `α·T²·KL(teacher ‖ student) + (1 − α)·CE` over `N` positions from the student's features
/// `hs` `[N, d]` and head `ws` `[V, d]`, the teacher's `ht` `[N, dt]` and `wt` `[V, dt]`, and
/// next-token `labels` `[N]`; gradients flow to `hs` and `ws`.
pub fn fused_head_kl_ce(
    hs: &Tensor,
    ws: &Tensor,
    ht: &Tensor,
    wt: &Tensor,
    labels: &Tensor,
    temperature: f64,
    alpha: f64,
) -> Result<HeadLoss> {
    let (n, d) = hs.dims2()?;
    let (v, d2) = ws.dims2()?;
    let (nt, dt) = ht.dims2()?;
    let (vt, dt2) = wt.dims2()?;
    if d != d2 || dt != dt2 || nt != n || vt != v || labels.elem_count() != n {
        candle_core::bail!(
            "fused head loss: shapes differ: student {:?}·{:?}ᵀ, teacher {:?}·{:?}ᵀ, labels {:?}",
            hs.dims(),
            ws.dims(),
            ht.dims(),
            wt.dims(),
            labels.dims()
        );
    }
    let y = labels_of(labels, v)?;
    let t = temperature as f32;
    let mut zt = vec![0f32; CHUNK.min(n) * v];
    with_cpu_f32(ht, "fused head loss: teacher features", |th| {
        with_cpu_f32(wt, "fused head loss: teacher head", |tw| {
            head_pass(hs, ws, temperature, alpha, |start, zs, c0, c1| {
                let c = zs.len() / v;
                let zt = &mut zt[..c * v];
                matmul(
                    zt,
                    (c, v, dt),
                    (&th[start * dt..(start + c) * dt], dt, 1),
                    (tw, 1, dt),
                    false,
                );
                kl_ce_rows(zs, zt, &y[start..start + c], v, t, c0, c1)
            })
        })
    })
}

/// `α·T²·KL + (1 − α)·CE` as [`fused_head_kl_ce`], the teacher given by cached top-k targets
/// (one row per position, see [`super::top_k`]) instead of its features and head.
pub fn fused_head_top_k_kl_ce(
    hs: &Tensor,
    ws: &Tensor,
    targets: &TopK,
    labels: &Tensor,
    temperature: f64,
    alpha: f64,
) -> Result<HeadLoss> {
    let (n, d) = hs.dims2()?;
    let (v, d2) = ws.dims2()?;
    if d != d2 || targets.rows() != n || labels.elem_count() != n {
        candle_core::bail!(
            "fused head loss: shapes differ: student {:?}·{:?}ᵀ, {} cached rows of {} entries, labels {:?}",
            hs.dims(),
            ws.dims(),
            targets.rows(),
            targets.k,
            labels.dims()
        );
    }
    let y = labels_of(labels, v)?;
    if let Some(bad) = targets.ids.iter().find(|&&i| i as usize >= v) {
        candle_core::bail!("fused head loss: cached token id {bad} outside a vocabulary of {v}");
    }
    let t = temperature as f32;
    head_pass(hs, ws, temperature, alpha, |start, zs, c0, c1| {
        let c = zs.len() / v;
        top_k_kl_ce_rows(zs, targets, start, &y[start..start + c], v, t, c0, c1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::losses::fused_forward_kl_ce;
    use crate::losses::testing::max_abs_diff;
    use candle_core::{Device, Var};

    /// Equal, in value and in the gradients of features and head, to the logits path: the
    /// head applied whole, then the fused KL + CE; over more rows than one chunk.
    #[test]
    fn equals_the_unchunked_loss_in_value_and_gradients() {
        let dev = Device::Cpu;
        let (n, d, dt, v) = (CHUNK + 29, 24, 40, 301);
        let hs = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, d), &dev).unwrap()).unwrap();
        let ws = Var::from_tensor(&Tensor::randn(0f32, 0.5, (v, d), &dev).unwrap()).unwrap();
        let ht = Tensor::randn(0f32, 1.0, (n, dt), &dev).unwrap();
        let wt = Tensor::randn(0f32, 0.5, (v, dt), &dev).unwrap();
        let y = Tensor::from_vec(
            (0..n as u32).map(|i| i * 7 % v as u32).collect::<Vec<_>>(),
            n,
            &dev,
        )
        .unwrap();
        for (t, alpha) in [(1.0, 0.5), (2.0, 0.8)] {
            let fused = fused_head_kl_ce(&hs, &ws, &ht, &wt, &y, t, alpha).unwrap();
            let zs = hs.matmul(&ws.t().unwrap()).unwrap();
            let zt = ht.matmul(&wt.t().unwrap()).unwrap();
            let parts = fused_forward_kl_ce(&zs, &zt, &y, t).unwrap();
            let p: Vec<f32> = parts.to_vec1().unwrap();
            assert!(
                (fused.soft - p[0]).abs() < 1e-4 * p[0].abs().max(1.0),
                "{} {}",
                fused.soft,
                p[0]
            );
            assert!((fused.hard - p[1]).abs() < 1e-4 * p[1].abs().max(1.0));
            let total = ((parts.get(0).unwrap() * alpha).unwrap()
                + (parts.get(1).unwrap() * (1.0 - alpha)).unwrap())
            .unwrap();
            // Scaled, as gradient accumulation scales the loss.
            let gf = (fused.total * 0.5).unwrap().backward().unwrap();
            let gc = (total * 0.5).unwrap().backward().unwrap();
            for var in [&hs, &ws] {
                let a = gf.get(var.as_tensor()).unwrap();
                let b = gc.get(var.as_tensor()).unwrap();
                let diff = max_abs_diff(a, b);
                assert!(diff < 1e-5, "T = {t}: gradient differs by {diff}");
            }
        }
    }

    #[test]
    fn mismatched_shapes_and_bad_labels_are_errors() {
        let dev = Device::Cpu;
        let hs = Tensor::zeros((4, 8), candle_core::DType::F32, &dev).unwrap();
        let ws = Tensor::zeros((10, 8), candle_core::DType::F32, &dev).unwrap();
        let wt = Tensor::zeros((11, 8), candle_core::DType::F32, &dev).unwrap();
        let y = Tensor::new(&[0u32, 1, 2, 3], &dev).unwrap();
        let e = fused_head_kl_ce(&hs, &ws, &hs, &wt, &y, 1.0, 0.5)
            .err()
            .unwrap();
        assert!(e.to_string().contains("shapes differ"), "{e}");
        let y = Tensor::new(&[0u32, 1, 2, 10], &dev).unwrap();
        let e = fused_head_kl_ce(&hs, &ws, &hs, &ws, &y, 1.0, 0.5)
            .err()
            .unwrap();
        assert!(e.to_string().contains("label 10"), "{e}");
    }
}
