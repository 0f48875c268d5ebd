//! Building blocks written on candle primitives so that every one has a backward pass.
//!
//! candle-nn's fused kernels (`rms_norm`, `layer_norm`, `softmax_last_dim`, `rope`) have no
//! gradient; a student trained through them silently stops learning. These are differentiable:
//! the fused ops of [`crate::ops`] (with analytic backward passes) for f32 on the CPU, candle
//! compositions elsewhere; statistics are computed in f32 whatever the activation dtype.

use candle_core::{DType, Device, Result, Tensor, D};

/// Additive mask value for positions that must not be attended to. Finite, so that a row with
/// every key masked (a padding query) gives a uniform distribution rather than NaN.
pub const MASK_VALUE: f32 = f32::MIN;

/// `x / sqrt(mean(x²) + eps) · w`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if let Some(y) = crate::ops::fused_rms_norm(x, weight, eps) {
        return y;
    }
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let x = x.broadcast_div(&(ms + eps)?.sqrt()?)?;
    x.to_dtype(dtype)?.broadcast_mul(weight)
}

/// `(x − mean) / sqrt(var + eps) · w + b`.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let x = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    x.to_dtype(dtype)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}

/// Softmax over the last dimension, computed in f32.
pub fn softmax_f32(x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    crate::ops::softmax_last_dim(&x.to_dtype(DType::F32)?)?.to_dtype(dtype)
}

/// Rotary position embeddings in the Hugging Face "half-split" layout
/// (`rotate_half`: the first half of each head is paired with the second).
#[derive(Clone, Debug)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    pub fn new(
        head_dim: usize,
        max_positions: usize,
        theta: f64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64) as f32)
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        let t = Tensor::arange(0u32, max_positions as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max_positions, 1))?;
        let freqs = t.broadcast_mul(&inv_freq)?;
        let freqs = Tensor::cat(&[&freqs, &freqs], D::Minus1)?;
        Ok(Self {
            cos: freqs.cos()?.to_dtype(dtype)?,
            sin: freqs.sin()?.to_dtype(dtype)?,
        })
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }

    /// Rotates `x` of shape `[batch, heads, seq, head_dim]` for positions `0..seq`.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        self.apply_at(x, 0)
    }

    /// [`Rope::apply`] to positions `offset..offset + seq`: the tokens after `offset` cached
    /// ones.
    pub fn apply_at(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let (_, _, seq, head_dim) = x.dims4()?;
        let cos = self.cos.narrow(0, offset, seq)?;
        let sin = self.sin.narrow(0, offset, seq)?;
        if let Some(y) = crate::ops::fused_rope(x, &cos, &sin) {
            return y;
        }
        let half = head_dim / 2;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        x.broadcast_mul(&cos)?
            .broadcast_add(&rotated.broadcast_mul(&sin)?)
    }
}

/// Additive attention bias of shape `[batch, 1, seq, seq]` (f32): causal when `causal`, and
/// keys where `attention_mask` (`[batch, seq]`, 1 = token, 0 = padding) is 0 are masked.
pub fn attention_bias(
    batch: usize,
    seq: usize,
    attention_mask: Option<&Tensor>,
    causal: bool,
    device: &Device,
) -> Result<Option<Tensor>> {
    let causal_bias = if causal {
        let v: Vec<f32> = (0..seq)
            .flat_map(|i| (0..seq).map(move |j| if j > i { MASK_VALUE } else { 0.0 }))
            .collect();
        Some(Tensor::from_vec(v, (1, 1, seq, seq), device)?)
    } else {
        None
    };
    let pad_bias = match attention_mask {
        Some(m) => {
            let m = m.to_dtype(DType::F32)?.reshape((batch, 1, 1, seq))?;
            // (1 − m) · MASK_VALUE without overflowing: select instead of multiplying.
            let zeros = m.zeros_like()?;
            let masked = (zeros.ones_like()? * MASK_VALUE as f64)?;
            Some(m.ge(0.5)?.where_cond(&zeros, &masked)?)
        }
        None => None,
    };
    Ok(match (causal_bias, pad_bias) {
        (Some(c), Some(p)) => Some(c.broadcast_add(&p)?.clamp(MASK_VALUE, 0f32)?),
        (Some(c), None) => Some(c),
        (None, Some(p)) => Some(p),
        (None, None) => None,
    })
}

/// Scaled dot-product attention. `q` is `[b, heads, s, d]`; `k` and `v` are `[b, kv_heads, s, d]`
/// with `heads` a multiple of `kv_heads` (grouped-query attention: query head `h` reads key/value
/// head `h / (heads / kv_heads)`). `bias` is broadcast to `[b, heads, s, s]`; `causal` also masks
/// every key after its query (inside the fused softmax on the CPU, as a bias elsewhere).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    causal: bool,
) -> Result<Tensor> {
    let (b, heads, s, d) = q.dims4()?;
    let kv_heads = k.dim(1)?;
    let group = heads / kv_heads;
    let scale = 1.0 / (d as f64).sqrt();
    // Fold the query heads of one group into the sequence axis so that K and V are not copied
    // `group` times: [b, kv, group·s, d] × [b, kv, d, s].
    let qg = q.reshape((b, kv_heads, group * s, d))?;
    let scores = (qg.matmul(&k.t()?)? * scale)?;
    let scores = scores
        .reshape((b, kv_heads, group, s, s))?
        .to_dtype(DType::F32)?;
    let fused_causal = causal && scores.device().is_cpu();
    let causal_bias = if causal && !fused_causal {
        attention_bias(b, s, None, true, scores.device())?
    } else {
        None
    };
    let mut scores = scores;
    for bias in [bias, causal_bias.as_ref()].into_iter().flatten() {
        let bias = bias.unsqueeze(1)?; // [b|1, 1, 1, s, s]
        scores = scores.broadcast_add(&bias)?;
    }
    let probs = if fused_causal {
        crate::ops::softmax::causal_softmax(&scores)?
    } else {
        crate::ops::softmax_last_dim(&scores)?
    };
    probs
        .to_dtype(v.dtype())?
        .reshape((b, kv_heads, group * s, s))?
        .matmul(v)?
        .reshape((b, heads, s, d))
}

/// Attention of `q` `[b, heads, s, d]` over keys and values `[b, kv_heads, L, d]` (L ≥ s: the
/// cached ones first) under an additive `bias` `[b, 1, s, L]` that carries causality, padding
/// and any window: what decoding with a key/value cache runs.
pub fn attention_over(q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (b, heads, s, d) = q.dims4()?;
    let (kv_heads, l) = (k.dim(1)?, k.dim(2)?);
    let group = heads / kv_heads;
    let scale = 1.0 / (d as f64).sqrt();
    let qg = q.reshape((b, kv_heads, group * s, d))?;
    let scores = (qg.matmul(&k.t()?)? * scale)?
        .reshape((b, kv_heads, group, s, l))?
        .to_dtype(DType::F32)?
        .broadcast_add(&bias.unsqueeze(1)?)?;
    crate::ops::softmax_last_dim(&scores)?
        .to_dtype(v.dtype())?
        .reshape((b, kv_heads, group * s, l))?
        .matmul(v)?
        .reshape((b, heads, s, d))
}
