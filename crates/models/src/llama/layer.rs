//! One decoder layer: attention and a gated feed-forward block, each behind its norm, with
//! the traits a family's layout adds (output norms, q/k norms, `1 + w` norm scales).

use candle_core::{Module, Tensor};
use candle_nn::Init;

use super::{Activation, LinearSite, LlamaConfig};
use crate::error::{Result, TensorContext};
use crate::family::{layer_name, LayerKind};
use crate::nn::{attention, attention_over, rms_norm, Rope};
use crate::weights::{Linear, Matrix, WeightSource};

/// Receives every linear projection's input, by site.
pub type Observe<'a> = dyn FnMut(LinearSite, &Tensor) -> candle_core::Result<()> + 'a;

/// An RMSNorm whose scale is `offset + weight` (Gemma stores `w` around zero for `1 + w`).
pub(super) struct Norm {
    pub(super) weight: Tensor,
    offset: f64,
    eps: f64,
}

impl Norm {
    pub(super) fn load(
        src: &dyn WeightSource,
        name: &str,
        size: usize,
        cfg: &LlamaConfig,
    ) -> Result<Self> {
        let offset = cfg.layout().norm_offset;
        // A fresh norm starts as the identity: scale 1 whatever the offset.
        let init = Init::Const(1.0 - offset);
        Ok(Self {
            weight: src.tensor(name, &[size], init)?,
            offset,
            eps: cfg.rms_norm_eps,
        })
    }

    pub(super) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.offset == 0.0 {
            rms_norm(x, &self.weight, self.eps)
        } else {
            rms_norm(x, &(&self.weight + self.offset)?, self.eps)
        }
    }
}

pub(super) struct Attention {
    pub(super) q: Linear,
    pub(super) k: Linear,
    pub(super) v: Linear,
    pub(super) o: Linear,
    q_norm: Option<Norm>,
    k_norm: Option<Norm>,
    /// Multiplies q where the family's score scale is not `head_dim^-½`.
    query_scale: Option<f64>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

pub(super) struct Mlp {
    pub(super) gate: Linear,
    pub(super) up: Linear,
    pub(super) down: Linear,
    activation: Activation,
}

pub(super) struct Block {
    pub(super) attn: Attention,
    pub(super) mlp: Mlp,
    attn_norm: Norm,
    attn_out_norm: Option<Norm>,
    mlp_norm: Norm,
    mlp_out_norm: Option<Norm>,
    pub(super) kind: LayerKind,
}

impl Block {
    /// Layer `i` of `cfg` from `src`, every tensor checked for presence and shape.
    pub(super) fn load(cfg: &LlamaConfig, src: &dyn WeightSource, i: usize) -> Result<Self> {
        let h = cfg.hidden_size;
        let layout = cfg.layout();
        let name = |rest: &str| layer_name(i, rest);
        let norm =
            |rest: &str, size: usize| Norm::load(src, &name(&format!("{rest}.weight")), size, cfg);
        let optional_norm = |rest: Option<&str>| rest.map(|r| norm(r, h)).transpose();
        Ok(Self {
            attn: Attention::load(cfg, src, i)?,
            mlp: Mlp::load(cfg, src, i)?,
            attn_norm: norm(layout.norms.attention_input, h)?,
            attn_out_norm: optional_norm(layout.norms.attention_output)?,
            mlp_norm: norm(layout.norms.mlp_input, h)?,
            mlp_out_norm: optional_norm(layout.norms.mlp_output)?,
            kind: cfg.layer_kind(i),
        })
    }

    /// The layer on the positions after those in `cache` (their keys and values appended).
    pub(super) fn forward_cached(
        &self,
        x: &Tensor,
        rope: &Rope,
        bias: &Tensor,
        cache: &mut Option<(Tensor, Tensor)>,
    ) -> candle_core::Result<Tensor> {
        let h = self.attn_norm.forward(x)?;
        let a = self.attn.forward_cached(&h, rope, bias, cache)?;
        self.finish(x, a, &mut |_, _| Ok(()))
    }

    /// The residual around attention output `a`, then the feed-forward half.
    fn finish(&self, x: &Tensor, a: Tensor, observe: &mut Observe) -> candle_core::Result<Tensor> {
        let a = match &self.attn_out_norm {
            Some(n) => n.forward(&a)?,
            None => a,
        };
        let x = (x + a)?;
        let h = self.mlp_norm.forward(&x)?;
        observe(LinearSite::MlpInput, &h)?;
        let m = self.mlp.forward(&h, observe)?;
        let m = match &self.mlp_out_norm {
            Some(n) => n.forward(&m)?,
            None => m,
        };
        x + m
    }

    /// The layer's forward pass, handing every linear projection's input to `observe`.
    pub(super) fn forward_observed(
        &self,
        x: &Tensor,
        rope: &Rope,
        bias: Option<&Tensor>,
        observe: &mut Observe,
    ) -> candle_core::Result<Tensor> {
        let h = self.attn_norm.forward(x)?;
        observe(LinearSite::AttentionInput, &h)?;
        let a = self.attn.forward(&h, rope, bias, observe)?;
        self.finish(x, a, observe)
    }
}

impl Attention {
    fn load(cfg: &LlamaConfig, src: &dyn WeightSource, i: usize) -> Result<Self> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim());
        let (nh, nkv) = (cfg.num_attention_heads, cfg.kv_heads());
        let name = |rest: &str| layer_name(i, rest);
        let qkv_bias = cfg.qkv_bias();
        let qk_norm = |which: &str| -> Result<Option<Norm>> {
            cfg.layout()
                .qk_norm
                .then(|| {
                    Norm::load(
                        src,
                        &name(&format!("self_attn.{which}_norm.weight")),
                        hd,
                        cfg,
                    )
                })
                .transpose()
        };
        let [q, k, v] = if cfg.layout().fused_qkv {
            let rows = [nh * hd, nkv * hd, nkv * hd];
            split_rows(src, &name("self_attn.qkv_proj.weight"), rows, h)?
        } else {
            [
                Linear::load(src, &name("self_attn.q_proj"), h, nh * hd, qkv_bias)?,
                Linear::load(src, &name("self_attn.k_proj"), h, nkv * hd, qkv_bias)?,
                Linear::load(src, &name("self_attn.v_proj"), h, nkv * hd, qkv_bias)?,
            ]
        };
        Ok(Self {
            q,
            k,
            v,
            o: Linear::load(
                src,
                &name("self_attn.o_proj"),
                nh * hd,
                h,
                cfg.attention_bias,
            )?,
            q_norm: qk_norm("q")?,
            k_norm: qk_norm("k")?,
            query_scale: cfg.query_scale(),
            heads: nh,
            kv_heads: nkv,
            head_dim: hd,
        })
    }

    /// Queries, keys and values of `x` `[b, s, hidden]` as `[b, heads, s, head_dim]`, rotated
    /// to positions `offset..offset + s`.
    fn qkv(
        &self,
        x: &Tensor,
        rope: &Rope,
        offset: usize,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (b, s, _) = x.dims3()?;
        let split = |t: Tensor, heads: usize, norm: Option<&Norm>| -> candle_core::Result<Tensor> {
            let t = t
                .reshape((b, s, heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?;
            match norm {
                Some(n) => n.forward(&t),
                None => Ok(t),
            }
        };
        let q = rope.apply_at(
            &split(self.q.forward(x)?, self.heads, self.q_norm.as_ref())?,
            offset,
        )?;
        let q = match self.query_scale {
            Some(f) => (q * f)?,
            None => q,
        };
        let k = rope.apply_at(
            &split(self.k.forward(x)?, self.kv_heads, self.k_norm.as_ref())?,
            offset,
        )?;
        let v = split(self.v.forward(x)?, self.kv_heads, None)?;
        Ok((q, k, v))
    }

    /// `[b, heads, s, head_dim]` → the output projection's `[b, s, hidden]`.
    fn output(&self, y: &Tensor, observe: &mut Observe) -> candle_core::Result<Tensor> {
        let (b, _, s, _) = y.dims4()?;
        let y = y
            .transpose(1, 2)?
            .reshape((b, s, self.heads * self.head_dim))?;
        observe(LinearSite::AttentionOutput, &y)?;
        self.o.forward(&y)
    }

    fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        bias: Option<&Tensor>,
        observe: &mut Observe,
    ) -> candle_core::Result<Tensor> {
        let (q, k, v) = self.qkv(x, rope, 0)?;
        let y = attention(&q, &k, &v, bias, true)?;
        self.output(&y, observe)
    }

    /// Attention of `x` (the positions after the `cache`d ones) over the cached keys and
    /// values and its own, under `bias` `[b, 1, s, cached + s]`; appends its keys and values.
    fn forward_cached(
        &self,
        x: &Tensor,
        rope: &Rope,
        bias: &Tensor,
        cache: &mut Option<(Tensor, Tensor)>,
    ) -> candle_core::Result<Tensor> {
        let offset = cache.as_ref().map_or(Ok(0), |(k, _)| k.dim(2))?;
        let (q, k, v) = self.qkv(x, rope, offset)?;
        let (k, v) = match cache.take() {
            Some((ck, cv)) => (Tensor::cat(&[&ck, &k], 2)?, Tensor::cat(&[&cv, &v], 2)?),
            None => (k, v),
        };
        let y = attention_over(&q, &k, &v, bias)?;
        *cache = Some((k, v));
        self.output(&y, &mut |_, _| Ok(()))
    }
}

impl Mlp {
    fn load(cfg: &LlamaConfig, src: &dyn WeightSource, i: usize) -> Result<Self> {
        let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
        let name = |rest: &str| layer_name(i, rest);
        let [gate, up] = if cfg.layout().fused_gate_up {
            split_rows(src, &name("mlp.gate_up_proj.weight"), [f, f], h)?
        } else {
            [
                Linear::load(src, &name("mlp.gate_proj"), h, f, cfg.mlp_bias)?,
                Linear::load(src, &name("mlp.up_proj"), h, f, cfg.mlp_bias)?,
            ]
        };
        Ok(Self {
            gate,
            up,
            down: Linear::load(src, &name("mlp.down_proj"), f, h, cfg.mlp_bias)?,
            activation: cfg.activation().unwrap_or(Activation::Silu),
        })
    }

    fn forward(&self, x: &Tensor, observe: &mut Observe) -> candle_core::Result<Tensor> {
        let gate = self.gate.forward(x)?;
        let up = self.up.forward(x)?;
        let act = match self.activation {
            Activation::Silu => crate::ops::swiglu(&gate, &up)?,
            Activation::GeluTanh => (gate.gelu()? * up)?,
        };
        observe(LinearSite::MlpOutput, &act)?;
        self.down.forward(&act)
    }
}

/// Linear layers over consecutive row ranges of one stored matrix `[Σ rows, inp]` (Phi-3's fused
/// `qkv_proj` and `gate_up_proj`); gradients reach the stored matrix through the views.
fn split_rows<const N: usize>(
    src: &dyn WeightSource,
    name: &str,
    rows: [usize; N],
    inp: usize,
) -> Result<[Linear; N]> {
    let total: usize = rows.iter().sum();
    let init = Init::Randn {
        mean: 0.0,
        stdev: 0.02,
    };
    let fused = src.tensor(name, &[total, inp], init)?;
    let mut start = 0;
    let mut out = Vec::with_capacity(N);
    for n in rows {
        let part = fused
            .narrow(0, start, n)
            .context(|| format!("splitting `{name}`"))?;
        out.push(Linear::new(Matrix::Dense(part), None));
        start += n;
    }
    Ok(out
        .try_into()
        .unwrap_or_else(|_| unreachable!("N parts made")))
}
