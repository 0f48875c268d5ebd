//! The decoder every family of [`crate::family`] runs on (Llama, Mistral, Qwen2, SmolLM,
//! Gemma 3): RMSNorm, rotary embeddings, a gated feed-forward (SwiGLU or GeGLU),
//! grouped-query attention, tied or untied embeddings, and the traits a family's
//! [`Layout`](crate::family::Layout) switches on (sandwich norms, q/k norms, `1 + w` norm
//! scales, a scaled embedding, sliding-window layers with their own rotary base).
//!
//! Tensor names are those of the Hugging Face checkpoints (`model.layers.N.self_attn.q_proj`),
//! so loading safetensors is a lookup; [`crate::family::gguf_names`] maps them to llama.cpp's.

use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::Init;

use crate::error::{ModelError, Result, TensorContext};
use crate::family::layout::LayerKind;
use crate::model::ModelOutput;
use crate::nn::{attention_bias, Rope, MASK_VALUE};
use crate::weights::{Linear, Matrix, WeightSource};

mod cache;
mod checks;
mod config;
mod layer;

pub use crate::site::LinearSite;
pub use cache::KvCache;
pub(crate) use config::json_error_key;
pub use config::{Activation, LlamaConfig};

use layer::{Block, Norm, Observe};

/// A decoder of any family in [`Family`] with its language-model head.
pub struct Llama {
    cfg: LlamaConfig,
    embed: Tensor,
    /// √hidden where the family scales the embedding output (Gemma).
    embed_scale: Option<f64>,
    blocks: Vec<Block>,
    norm: Norm,
    lm_head: Linear,
    rope: Arc<Rope>,
    /// The sliding-window layers' rotary table, where their base differs (Gemma 3).
    rope_local: Option<Arc<Rope>>,
    device: Device,
}

impl Llama {
    /// Builds the model from `src`, checking every tensor's presence and shape.
    pub fn load(cfg: &LlamaConfig, src: &dyn WeightSource) -> Result<Self> {
        cfg.validate(&src.source_name())?;
        let h = cfg.hidden_size;
        let embed = src.tensor(
            "model.embed_tokens.weight",
            &[cfg.vocab_size, h],
            Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        )?;
        let blocks = (0..cfg.num_hidden_layers)
            .map(|i| Block::load(cfg, src, i))
            .collect::<Result<Vec<_>>>()?;
        let norm = Norm::load(src, "model.norm.weight", h, cfg)?;
        let lm_head = if cfg.tie_word_embeddings {
            if src.keeps_quantized() {
                // The head multiplies by the stored (quantised) embedding matrix, as llama.cpp does.
                Linear::new(
                    src.matrix("lm_head.weight", cfg.vocab_size, h, Init::Const(0.0))?,
                    None,
                )
            } else {
                Linear::new(crate::weights::Matrix::Dense(embed.clone()), None)
            }
        } else {
            Linear::load(src, "lm_head", h, cfg.vocab_size, false)?
        };
        let rope_table = |theta: f64| -> Result<Arc<Rope>> {
            Rope::new(
                cfg.head_dim(),
                cfg.max_position_embeddings,
                theta,
                src.dtype(),
                src.device(),
            )
            .map(Arc::new)
            .context(|| "building rotary embedding tables".into())
        };
        let rope_local = match cfg.rope_local_base_freq {
            Some(theta) if theta != cfg.rope_theta => Some(rope_table(theta)?),
            _ => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            embed_scale: cfg.layout().scaled_embedding.then(|| (h as f64).sqrt()),
            blocks,
            norm,
            lm_head,
            rope: rope_table(cfg.rope_theta)?,
            rope_local,
            device: src.device().clone(),
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Multiplies every layer's projections in `dtype` (`None`: the weights' own), the weights
    /// staying as they are: a student trains f32 master weights with bf16 products. The
    /// embedding, norms, attention scores and the head stay in the weights' dtype.
    pub fn set_matmul_dtype(&mut self, dtype: Option<DType>) {
        for b in &mut self.blocks {
            for l in [
                &mut b.attn.q,
                &mut b.attn.k,
                &mut b.attn.v,
                &mut b.attn.o,
                &mut b.mlp.gate,
                &mut b.mlp.up,
                &mut b.mlp.down,
            ] {
                l.set_compute_dtype(dtype);
            }
        }
    }

    /// Logits for every position of `input_ids` (`[batch, seq]`, u32), and on request the hidden
    /// states: the embedding output, then each layer's output, the last one after the final norm
    /// (the convention of transformers' `output_hidden_states`). `attention_mask` (`[batch, seq]`,
    /// 1 = token, 0 = padding) is for right-padded batches.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        want_hidden: bool,
    ) -> Result<ModelOutput> {
        let (x, hidden) = self.features(input_ids, attention_mask, want_hidden)?;
        let logits = self
            .lm_head
            .forward(&x)
            .context(|| "llama forward (lm head)".into())?;
        Ok(ModelOutput {
            logits,
            hidden_states: hidden,
        })
    }

    /// The final-norm output `[batch, seq, hidden]` the head multiplies, and the hidden states.
    fn features(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        want_hidden: bool,
    ) -> Result<(Tensor, Option<Vec<Tensor>>)> {
        let (b, s) = input_ids
            .dims2()
            .context(|| "input_ids must be [batch, seq]".into())?;
        if s > self.rope.max_positions() {
            return Err(ModelError::Config {
                source_name: "input".into(),
                key: "max_position_embeddings".into(),
                msg: format!(
                    "sequence of {s} tokens exceeds the model's {} positions",
                    self.rope.max_positions()
                ),
            });
        }
        let ctx = |what: &str| format!("llama forward ({what})");
        let mut x = self.embed_ids(input_ids)?;
        let biases =
            LayerBiases::new(b, s, attention_mask, &self.device).context(|| ctx("mask"))?;
        let mut hidden = want_hidden.then(|| vec![x.clone()]);
        for (i, block) in self.blocks.iter().enumerate() {
            x = self
                .run_block(block, &x, &biases, &mut |_, _| Ok(()))
                .context(|| format!("llama forward (layer {i})"))?;
            if let Some(h) = hidden.as_mut() {
                h.push(x.clone());
            }
        }
        let x = self.norm.forward(&x).context(|| ctx("final norm"))?;
        if let Some(h) = hidden.as_mut() {
            *h.last_mut().expect("at least the embedding output") = x.clone();
        }
        Ok((x, hidden))
    }

    /// `block` on `x` with the rotary table and mask of its kind.
    fn run_block(
        &self,
        block: &Block,
        x: &Tensor,
        biases: &LayerBiases,
        observe: &mut Observe,
    ) -> candle_core::Result<Tensor> {
        let (rope, bias) = match block.kind {
            LayerKind::Global => (&self.rope, biases.global.clone()),
            LayerKind::Sliding { window } => (
                self.rope_local.as_ref().unwrap_or(&self.rope),
                biases.sliding(window)?,
            ),
        };
        block.forward_observed(x, rope, bias.as_ref(), observe)
    }
}

/// The additive attention masks of one forward: padding for every layer, and the padding
/// plus the window for sliding-window layers (made only when the sequence is longer than the
/// window).
struct LayerBiases {
    global: Option<Tensor>,
    seq: usize,
    device: Device,
}

impl LayerBiases {
    fn new(
        batch: usize,
        seq: usize,
        attention_mask: Option<&Tensor>,
        device: &Device,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            global: attention_bias(batch, seq, attention_mask, false, device)?,
            seq,
            device: device.clone(),
        })
    }

    /// The mask of a layer that sees the keys less than `window` positions back.
    fn sliding(&self, window: usize) -> candle_core::Result<Option<Tensor>> {
        if self.seq <= window {
            return Ok(self.global.clone());
        }
        let s = self.seq;
        let v: Vec<f32> = (0..s)
            .flat_map(|i| (0..s).map(move |j| if i >= j + window { MASK_VALUE } else { 0.0 }))
            .collect();
        let w = Tensor::from_vec(v, (1, 1, s, s), &self.device)?;
        Ok(Some(match &self.global {
            Some(g) => g.broadcast_add(&w)?.clamp(MASK_VALUE, 0f32)?,
            None => w,
        }))
    }
}

impl crate::model::Model for Llama {
    fn run(&self, input: &crate::model::Input) -> Result<ModelOutput> {
        input.refuse_dropout("a Llama-family decoder")?;
        self.forward(input.ids, input.mask, input.hidden)
    }
    fn dense_head(&self) -> Option<&Tensor> {
        match self.lm_head.weight() {
            Matrix::Dense(head) if self.lm_head.bias().is_none() => Some(head),
            _ => None,
        }
    }
    fn run_features(&self, input: &crate::model::Input) -> Option<Result<crate::model::Features>> {
        let head = self.dense_head()?;
        Some(
            input
                .refuse_dropout("a Llama-family decoder")
                .and_then(|_| {
                    let (features, hidden_states) =
                        self.features(input.ids, input.mask, input.hidden)?;
                    Ok(crate::model::Features {
                        features,
                        head: head.clone(),
                        hidden_states,
                    })
                }),
        )
    }
    fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }
    fn device(&self) -> &Device {
        &self.device
    }
}

/// Running a decoder one layer at a time, for compression methods that calibrate each layer on
/// the output of the layers before it (already compressed), as GPTQ and SparseGPT do.
impl Llama {
    pub fn num_layers(&self) -> usize {
        self.blocks.len()
    }

    /// The embedding output for `ids` (`[batch, seq]`): the first layer's input.
    pub fn embed_ids(&self, ids: &Tensor) -> Result<Tensor> {
        let ctx = || "llama embedding lookup".to_string();
        let x = embed(&self.embed, ids).context(ctx)?;
        match self.embed_scale {
            Some(scale) => (x * scale).context(ctx),
            None => Ok(x),
        }
    }

    /// Layer `i` on `x` (`[batch, seq, hidden]`, causal, no padding), handing every linear
    /// projection's input to `observe`.
    pub fn layer_forward(&self, i: usize, x: &Tensor, observe: &mut Observe) -> Result<Tensor> {
        let block = self.blocks.get(i).ok_or_else(|| ModelError::Config {
            source_name: "llama".into(),
            key: "num_hidden_layers".into(),
            msg: format!(
                "layer {i} does not exist (the model has {})",
                self.blocks.len()
            ),
        })?;
        let ctx = || format!("llama layer {i}");
        let (b, s, _) = x.dims3().context(ctx)?;
        let biases = LayerBiases::new(b, s, None, &self.device).context(ctx)?;
        self.run_block(block, x, &biases, observe).context(ctx)
    }

    /// The final norm's output for the last layer's output `x`: the head's input.
    pub fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        self.norm.forward(x).context(|| "llama final norm".into())
    }
}

/// Rows of `table` (`[vocab, hidden]`) for `ids` (`[batch, seq]`), checking the ids first so a
/// bad id is an error rather than an out-of-bounds read.
pub fn embed(table: &Tensor, ids: &Tensor) -> candle_core::Result<Tensor> {
    let (b, s) = ids.dims2()?;
    let vocab = table.dim(0)?;
    let flat = ids.flatten_all()?;
    if flat.elem_count() == 0 {
        candle_core::bail!("empty input: no token ids");
    }
    let max = flat.max(0)?.to_dtype(DType::U32)?.to_scalar::<u32>()? as usize;
    if max >= vocab {
        candle_core::bail!("token id {max} is out of range for a vocabulary of {vocab}");
    }
    table.index_select(&flat, 0)?.reshape((b, s, table.dim(1)?))
}

/// Log-softmax over the vocabulary, in f32.
pub fn log_probs(logits: &Tensor) -> candle_core::Result<Tensor> {
    candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)
}

#[cfg(test)]
mod tests;
