//! The Llama family of decoders (Llama, Mistral, Qwen2, SmolLM): RMSNorm, rotary embeddings,
//! SwiGLU feed-forward, grouped-query attention, tied or untied embeddings.
//!
//! Tensor names are those of `LlamaForCausalLM` checkpoints (`model.layers.N.self_attn.q_proj`),
//! so loading safetensors is a lookup; [`gguf_names`] maps them to llama.cpp's names.

use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::Init;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result, TensorContext};
use crate::gguf::{GgufFile, GgufTensorRef, NameMap};
use crate::model::ModelOutput;
use crate::nn::{attention, attention_bias, rms_norm, Rope};
use crate::weights::{Linear, Matrix, WeightSource};

/// `config.json` of a Llama-family checkpoint (the keys this implementation reads).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LlamaConfig {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v/o projections (Llama's `attention_bias`).
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<serde_json::Value>,
}

fn default_model_type() -> String {
    "llama".into()
}
fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_max_positions() -> usize {
    2048
}
fn default_act() -> String {
    "silu".into()
}

impl LlamaConfig {
    /// Parses a `config.json`; `source_name` is used in errors.
    pub fn from_json(text: &str, source_name: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(text).map_err(|e| ModelError::Config {
            source_name: source_name.to_string(),
            key: json_error_key(&e),
            msg: e.to_string(),
        })?;
        cfg.validate(source_name)?;
        Ok(cfg)
    }

    /// Reads the hyper-parameters of a llama.cpp `llama` (or `qwen2`) GGUF file.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let arch = g.get_str("general.architecture")?.to_string();
        if !GGUF_ARCHITECTURES.contains(&arch.as_str()) {
            return Err(ModelError::UnsupportedArchitecture {
                source_name: g.path().display().to_string(),
                found: arch,
                supported: GGUF_ARCHITECTURES.join(", "),
            });
        }
        let k = |s: &str| format!("{arch}.{s}");
        let hidden = g.get_usize(&k("embedding_length"))?;
        let heads = g.get_usize(&k("attention.head_count"))?;
        let kv_heads = g
            .get_usize_opt(&k("attention.head_count_kv"))?
            .unwrap_or(heads);
        let vocab = match (
            g.get_usize_opt(&k("vocab_size"))?,
            g.tensor_infos().get("token_embd.weight"),
        ) {
            (Some(v), _) => v,
            (None, Some(info)) => info.shape.dims()[0],
            (None, None) => g.get_strings("tokenizer.ggml.tokens")?.len(),
        };
        let head_dim = g.get_usize_opt(&k("attention.key_length"))?;
        let tied = !g.tensor_infos().contains_key("output.weight");
        let cfg = Self {
            model_type: if arch == "qwen2" {
                "qwen2".into()
            } else {
                "llama".into()
            },
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: g.get_usize(&k("feed_forward_length"))?,
            num_hidden_layers: g.get_usize(&k("block_count"))?,
            num_attention_heads: heads,
            num_key_value_heads: Some(kv_heads),
            head_dim: head_dim.filter(|&d| d != hidden / heads),
            rms_norm_eps: g
                .get_f64_opt(&k("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5),
            rope_theta: g.get_f64_opt(&k("rope.freq_base"))?.unwrap_or(10_000.0),
            max_position_embeddings: g.get_usize_opt(&k("context_length"))?.unwrap_or(2048),
            tie_word_embeddings: tied,
            attention_bias: false,
            mlp_bias: false,
            hidden_act: "silu".into(),
            rope_scaling: None,
            bos_token_id: g
                .get_usize_opt("tokenizer.ggml.bos_token_id")?
                .map(Into::into),
            eos_token_id: g
                .get_usize_opt("tokenizer.ggml.eos_token_id")?
                .map(Into::into),
        };
        let name = g.path().display().to_string();
        if let Some(n) = g.get_usize_opt(&k("rope.dimension_count"))? {
            if n != cfg.head_dim() {
                return Err(ModelError::Config {
                    source_name: name,
                    key: k("rope.dimension_count"),
                    msg: format!(
                        "partial rotary embeddings ({n} of {} dims) are not supported",
                        cfg.head_dim()
                    ),
                });
            }
        }
        cfg.validate(&name)?;
        Ok(cfg)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Qwen2 puts a bias on q/k/v (not o) without saying so in its config.
    pub fn qkv_bias(&self) -> bool {
        self.attention_bias || self.model_type == "qwen2"
    }

    /// Checks the relations between sizes that the forward pass relies on.
    pub fn validate(&self, source_name: &str) -> Result<()> {
        let err = |key: &str, msg: String| ModelError::Config {
            source_name: source_name.to_string(),
            key: key.to_string(),
            msg,
        };
        if !LLAMA_MODEL_TYPES.contains(&self.model_type.as_str()) {
            return Err(ModelError::UnsupportedArchitecture {
                source_name: source_name.to_string(),
                found: self.model_type.clone(),
                supported: LLAMA_MODEL_TYPES.join(", "),
            });
        }
        for (key, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(err(key, "must be positive".into()));
            }
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(err(
                "num_attention_heads",
                format!(
                    "{} heads do not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(err(
                "head_dim",
                format!(
                    "rotary embeddings need an even head_dim, got {}",
                    self.head_dim()
                ),
            ));
        }
        let kv = self.kv_heads();
        if kv == 0 || !self.num_attention_heads.is_multiple_of(kv) {
            return Err(err(
                "num_key_value_heads",
                format!(
                    "{kv} must divide num_attention_heads {}",
                    self.num_attention_heads
                ),
            ));
        }
        if self.hidden_act != "silu" {
            return Err(err(
                "hidden_act",
                format!("only `silu` is supported, got `{}`", self.hidden_act),
            ));
        }
        if let Some(s) = &self.rope_scaling {
            if !s.is_null() {
                return Err(err(
                    "rope_scaling",
                    format!("rope scaling is not supported yet: {s}"),
                ));
            }
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(self.rms_norm_eps) || !positive(self.rope_theta) {
            return Err(err("rms_norm_eps/rope_theta", "must be positive".into()));
        }
        Ok(())
    }

    /// Every tensor of a checkpoint of this config, by Hugging Face name, with its shape.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let h = self.hidden_size;
        let hd = self.head_dim();
        let (q, kv, f) = (
            self.num_attention_heads * hd,
            self.kv_heads() * hd,
            self.intermediate_size,
        );
        let mut v = vec![(
            "model.embed_tokens.weight".to_string(),
            vec![self.vocab_size, h],
        )];
        for i in 0..self.num_hidden_layers {
            let p = format!("model.layers.{i}");
            v.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
            v.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
            v.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
            if self.qkv_bias() {
                v.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
                v.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
                v.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
            }
            v.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
            if self.attention_bias {
                v.push((format!("{p}.self_attn.o_proj.bias"), vec![h]));
            }
            v.push((format!("{p}.mlp.gate_proj.weight"), vec![f, h]));
            v.push((format!("{p}.mlp.up_proj.weight"), vec![f, h]));
            v.push((format!("{p}.mlp.down_proj.weight"), vec![h, f]));
            if self.mlp_bias {
                v.push((format!("{p}.mlp.gate_proj.bias"), vec![f]));
                v.push((format!("{p}.mlp.up_proj.bias"), vec![f]));
                v.push((format!("{p}.mlp.down_proj.bias"), vec![h]));
            }
            v.push((format!("{p}.input_layernorm.weight"), vec![h]));
            v.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        }
        v.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie_word_embeddings {
            v.push(("lm_head.weight".to_string(), vec![self.vocab_size, h]));
        }
        v
    }

    /// Number of parameters (tied embeddings counted once).
    pub fn param_count(&self) -> usize {
        let h = self.hidden_size;
        let hd = self.head_dim();
        let q = self.num_attention_heads * hd;
        let kv = self.kv_heads() * hd;
        let attn = h * q + 2 * h * kv + q * h + if self.qkv_bias() { q + 2 * kv } else { 0 };
        let mlp = 3 * h * self.intermediate_size;
        let layer = attn + mlp + 2 * h;
        let embed = self.vocab_size * h;
        embed
            + self.num_hidden_layers * layer
            + h
            + if self.tie_word_embeddings { 0 } else { embed }
    }
}

/// `model_type` values this family implements.
pub const LLAMA_MODEL_TYPES: &[&str] = &["llama", "mistral", "qwen2"];
/// `general.architecture` values of GGUF files this family implements.
pub const GGUF_ARCHITECTURES: &[&str] = &["llama", "qwen2"];

/// The key a serde_json error is about, when it says (`missing field `x``, `unknown variant`).
pub(crate) fn json_error_key(e: &serde_json::Error) -> String {
    let s = e.to_string();
    s.split('`')
        .nth(1)
        .map(str::to_string)
        .unwrap_or_else(|| "(document)".into())
}

/// Maps Hugging Face names of a Llama-family checkpoint to llama.cpp's GGUF names.
/// For the `llama` architecture the Q and K rows are un-permuted (llama.cpp's converter
/// permutes them for its interleaved rope); `qwen2` uses the half-split rope and is left as is.
pub fn gguf_names(cfg: &LlamaConfig, gguf_arch: &str) -> NameMap {
    let heads = cfg.num_attention_heads;
    let kv_heads = cfg.kv_heads();
    let permuted = gguf_arch == "llama";
    let tied = cfg.tie_word_embeddings;
    Box::new(move |name: &str| {
        let plain = |n: String| {
            Some(GgufTensorRef {
                name: n,
                unpermute_heads: None,
            })
        };
        match name {
            "model.embed_tokens.weight" => return plain("token_embd.weight".into()),
            "model.norm.weight" => return plain("output_norm.weight".into()),
            "lm_head.weight" if tied => return plain("token_embd.weight".into()),
            "lm_head.weight" => return plain("output.weight".into()),
            _ => {}
        }
        let rest = name.strip_prefix("model.layers.")?;
        let (layer, rest) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let (module, kind) = rest.rsplit_once('.')?; // kind: weight | bias
        let (gg, heads) = match module {
            "self_attn.q_proj" => ("attn_q", Some(heads)),
            "self_attn.k_proj" => ("attn_k", Some(kv_heads)),
            "self_attn.v_proj" => ("attn_v", None),
            "self_attn.o_proj" => ("attn_output", None),
            "mlp.gate_proj" => ("ffn_gate", None),
            "mlp.up_proj" => ("ffn_up", None),
            "mlp.down_proj" => ("ffn_down", None),
            "input_layernorm" => ("attn_norm", None),
            "post_attention_layernorm" => ("ffn_norm", None),
            _ => return None,
        };
        Some(GgufTensorRef {
            name: format!("blk.{layer}.{gg}.{kind}"),
            unpermute_heads: if permuted { heads } else { None },
        })
    })
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

struct Block {
    attn: Attention,
    mlp: Mlp,
    input_norm: Tensor,
    post_norm: Tensor,
}

/// A Llama-family decoder with its language-model head.
pub struct Llama {
    cfg: LlamaConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Linear,
    rope: Arc<Rope>,
    device: Device,
}

impl Llama {
    /// Builds the model from `src`, checking every tensor's presence and shape.
    pub fn load(cfg: &LlamaConfig, src: &dyn WeightSource) -> Result<Self> {
        cfg.validate(&src.source_name())?;
        let h = cfg.hidden_size;
        let hd = cfg.head_dim();
        let (nh, nkv) = (cfg.num_attention_heads, cfg.kv_heads());
        let ones = Init::Const(1.0);
        let embed = src.tensor(
            "model.embed_tokens.weight",
            &[cfg.vocab_size, h],
            Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        )?;
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let qkv_bias = cfg.qkv_bias();
            let attn = Attention {
                q: Linear::load(src, &format!("{p}.self_attn.q_proj"), h, nh * hd, qkv_bias)?,
                k: Linear::load(src, &format!("{p}.self_attn.k_proj"), h, nkv * hd, qkv_bias)?,
                v: Linear::load(src, &format!("{p}.self_attn.v_proj"), h, nkv * hd, qkv_bias)?,
                o: Linear::load(
                    src,
                    &format!("{p}.self_attn.o_proj"),
                    nh * hd,
                    h,
                    cfg.attention_bias,
                )?,
                heads: nh,
                kv_heads: nkv,
                head_dim: hd,
            };
            let f = cfg.intermediate_size;
            let mlp = Mlp {
                gate: Linear::load(src, &format!("{p}.mlp.gate_proj"), h, f, cfg.mlp_bias)?,
                up: Linear::load(src, &format!("{p}.mlp.up_proj"), h, f, cfg.mlp_bias)?,
                down: Linear::load(src, &format!("{p}.mlp.down_proj"), f, h, cfg.mlp_bias)?,
            };
            blocks.push(Block {
                attn,
                mlp,
                input_norm: src.tensor(&format!("{p}.input_layernorm.weight"), &[h], ones)?,
                post_norm: src.tensor(
                    &format!("{p}.post_attention_layernorm.weight"),
                    &[h],
                    ones,
                )?,
            });
        }
        let norm = src.tensor("model.norm.weight", &[h], ones)?;
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
        let rope = Rope::new(
            hd,
            cfg.max_position_embeddings,
            cfg.rope_theta,
            src.dtype(),
            src.device(),
        )
        .context(|| "building rotary embedding tables".into())?;
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            blocks,
            norm,
            lm_head,
            rope: Arc::new(rope),
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
        let mut x = embed(&self.embed, input_ids).context(|| ctx("embedding lookup"))?;
        let bias =
            attention_bias(b, s, attention_mask, false, &self.device).context(|| ctx("mask"))?;
        let mut hidden = want_hidden.then(|| vec![x.clone()]);
        for (i, block) in self.blocks.iter().enumerate() {
            x = block
                .forward(&x, &self.rope, bias.as_ref(), self.cfg.rms_norm_eps)
                .context(|| format!("llama forward (layer {i})"))?;
            if let Some(h) = hidden.as_mut() {
                h.push(x.clone());
            }
        }
        let x = rms_norm(&x, &self.norm, self.cfg.rms_norm_eps).context(|| ctx("final norm"))?;
        if let Some(h) = hidden.as_mut() {
            *h.last_mut().expect("at least the embedding output") = x.clone();
        }
        Ok((x, hidden))
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

impl Block {
    fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        bias: Option<&Tensor>,
        eps: f64,
    ) -> candle_core::Result<Tensor> {
        self.forward_observed(x, rope, bias, eps, &mut |_, _| Ok(()))
    }

    /// The layer's forward pass, handing every linear projection's input to `observe`.
    fn forward_observed(
        &self,
        x: &Tensor,
        rope: &Rope,
        bias: Option<&Tensor>,
        eps: f64,
        observe: &mut dyn FnMut(LinearSite, &Tensor) -> candle_core::Result<()>,
    ) -> candle_core::Result<Tensor> {
        let h = rms_norm(x, &self.input_norm, eps)?;
        observe(LinearSite::AttentionInput, &h)?;
        let x = (x + self.attn.forward(&h, rope, bias, observe)?)?;
        let h = rms_norm(&x, &self.post_norm, eps)?;
        observe(LinearSite::MlpInput, &h)?;
        x + self.mlp.forward(&h, observe)?
    }
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        bias: Option<&Tensor>,
        observe: &mut dyn FnMut(LinearSite, &Tensor) -> candle_core::Result<()>,
    ) -> candle_core::Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let split = |t: Tensor, heads: usize| -> candle_core::Result<Tensor> {
            t.reshape((b, s, heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = rope.apply(&split(self.q.forward(x)?, self.heads)?)?;
        let k = rope.apply(&split(self.k.forward(x)?, self.kv_heads)?)?;
        let v = split(self.v.forward(x)?, self.kv_heads)?;
        let y = attention(&q, &k, &v, bias, true)?;
        let y = y
            .transpose(1, 2)?
            .reshape((b, s, self.heads * self.head_dim))?;
        observe(LinearSite::AttentionOutput, &y)?;
        self.o.forward(&y)
    }
}

impl Mlp {
    fn forward(
        &self,
        x: &Tensor,
        observe: &mut dyn FnMut(LinearSite, &Tensor) -> candle_core::Result<()>,
    ) -> candle_core::Result<Tensor> {
        let act = crate::ops::swiglu(&self.gate.forward(x)?, &self.up.forward(x)?)?;
        observe(LinearSite::MlpOutput, &act)?;
        self.down.forward(&act)
    }
}

/// Where a layer's linear projections read their input (a Llama decoder's or a BERT encoder's:
/// both have these four): what calibration statistics (activation norms, Hessians) are
/// collected at. Projections at one site share its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinearSite {
    /// The input norm's output (BERT: the layer's input, already normalised), read by the
    /// q, k and v projections.
    AttentionInput,
    /// The attention heads' output, read by the o projection.
    AttentionOutput,
    /// The post-attention norm's output, read by the gate and up (BERT: intermediate)
    /// projections.
    MlpInput,
    /// `silu(gate)·up` (BERT: `gelu(intermediate)`), read by the down (output) projection.
    MlpOutput,
}

impl LinearSite {
    pub const ALL: [LinearSite; 4] = [
        LinearSite::AttentionInput,
        LinearSite::AttentionOutput,
        LinearSite::MlpInput,
        LinearSite::MlpOutput,
    ];

    /// The projections reading this input, as tensor-name suffixes after `model.layers.N.`.
    pub fn projections(self) -> &'static [&'static str] {
        match self {
            LinearSite::AttentionInput => {
                &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
            }
            LinearSite::AttentionOutput => &["self_attn.o_proj"],
            LinearSite::MlpInput => &["mlp.gate_proj", "mlp.up_proj"],
            LinearSite::MlpOutput => &["mlp.down_proj"],
        }
    }

    /// The projections reading this input in a BERT layer, as tensor-name suffixes after
    /// `encoder.layer.N.` (the intermediate activation is GELU's output).
    pub fn bert_projections(self) -> &'static [&'static str] {
        match self {
            LinearSite::AttentionInput => &[
                "attention.self.query",
                "attention.self.key",
                "attention.self.value",
            ],
            LinearSite::AttentionOutput => &["attention.output.dense"],
            LinearSite::MlpInput => &["intermediate.dense"],
            LinearSite::MlpOutput => &["output.dense"],
        }
    }

    /// The site whose input the matrix `model.layers.N.<suffix>.weight` reads, if any.
    pub fn of_matrix(name: &str) -> Option<(usize, LinearSite)> {
        let rest = name.strip_prefix("model.layers.")?;
        let (layer, rest) = rest.split_once('.')?;
        let suffix = rest.strip_suffix(".weight")?;
        let layer = layer.parse().ok()?;
        LinearSite::ALL
            .into_iter()
            .find(|s| s.projections().contains(&suffix))
            .map(|s| (layer, s))
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
        embed(&self.embed, ids).context(|| "llama embedding lookup".into())
    }

    /// Layer `i` on `x` (`[batch, seq, hidden]`, causal, no padding), handing every linear
    /// projection's input to `observe`.
    pub fn layer_forward(
        &self,
        i: usize,
        x: &Tensor,
        observe: &mut dyn FnMut(LinearSite, &Tensor) -> candle_core::Result<()>,
    ) -> Result<Tensor> {
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
        let bias = attention_bias(b, s, None, false, &self.device).context(ctx)?;
        block
            .forward_observed(x, &self.rope, bias.as_ref(), self.cfg.rms_norm_eps, observe)
            .context(ctx)
    }

    /// The final norm's output for the last layer's output `x`: the head's input.
    pub fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        rms_norm(x, &self.norm, self.cfg.rms_norm_eps).context(|| "llama final norm".into())
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
mod tests {
    use super::*;
    use crate::weights::VarMapWeights;
    use candle_core::Var;
    use candle_nn::VarMap;

    pub(crate) fn tiny_config() -> LlamaConfig {
        crate::testing::TinyLlama {
            vocab: 32,
            hidden: 16,
            ffn: 24,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            positions: 64,
            rms_norm_eps: 1e-5,
        }
        .config()
    }

    fn tiny(cfg: &LlamaConfig) -> (VarMap, Llama) {
        let vm = VarMap::new();
        let m = Llama::load(cfg, &VarMapWeights::new(&vm, DType::F32, &Device::Cpu)).unwrap();
        (vm, m)
    }

    #[test]
    fn every_trainable_variable_gets_a_gradient() {
        for tied in [true, false] {
            let cfg = LlamaConfig {
                tie_word_embeddings: tied,
                ..tiny_config()
            };
            let (vm, m) = tiny(&cfg);
            let ids =
                Tensor::new(&[[1u32, 5, 7, 2, 9, 3], [4, 4, 8, 1, 0, 0]], &Device::Cpu).unwrap();
            let mask =
                Tensor::new(&[[1u8, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], &Device::Cpu).unwrap();
            let out = m.forward(&ids, Some(&mask), false).unwrap();
            let logp = log_probs(&out.logits).unwrap();
            let loss = logp
                .narrow(2, 3, 1)
                .unwrap()
                .mean_all()
                .unwrap()
                .neg()
                .unwrap();
            let grads = loss.backward().unwrap();
            let vars: Vec<(String, Var)> = vm
                .data()
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let expected = if tied { 1 + 2 * 9 + 1 } else { 2 + 2 * 9 + 1 };
            assert_eq!(vars.len(), expected);
            for (name, var) in vars {
                let g = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("no gradient for {name}"));
                let norm = g
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(
                    norm > 0.0 && norm.is_finite(),
                    "gradient of {name} is {norm}"
                );
            }
        }
    }

    #[test]
    fn right_padding_does_not_change_real_positions_and_hidden_states_follow_transformers() {
        let (_, m) = tiny(&tiny_config());
        let a = Tensor::new(&[[1u32, 5, 7, 2]], &Device::Cpu).unwrap();
        let alone = m.forward(&a, None, true).unwrap();
        assert_eq!(alone.hidden_states.as_ref().unwrap().len(), 3);
        assert_eq!(alone.logits.dims(), &[1, 4, 32]);
        let padded =
            Tensor::new(&[[1u32, 5, 7, 2, 0, 0], [3, 3, 3, 3, 3, 3]], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1u8, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], &Device::Cpu).unwrap();
        let batch = m.forward(&padded, Some(&mask), false).unwrap();
        let diff = (batch
            .logits
            .narrow(0, 0, 1)
            .unwrap()
            .narrow(1, 0, 4)
            .unwrap()
            - &alone.logits)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "padding changed logits by {diff}");
    }

    #[test]
    fn out_of_range_ids_and_overlong_input_are_errors() {
        let (_, m) = tiny(&tiny_config());
        let bad = Tensor::new(&[[1u32, 99]], &Device::Cpu).unwrap();
        let e = m.forward(&bad, None, false).unwrap_err().to_string();
        assert!(e.contains("99") && e.contains("32"), "{e}");
        let long = Tensor::zeros((1, 65), DType::U32, &Device::Cpu).unwrap();
        let e = m.forward(&long, None, false).unwrap_err().to_string();
        assert!(e.contains("65") && e.contains("64"), "{e}");
    }

    #[test]
    fn config_errors_name_the_key() {
        let e =
            LlamaConfig::from_json(r#"{"model_type":"llama","vocab_size":10}"#, "x/config.json")
                .unwrap_err()
                .to_string();
        assert!(
            e.contains("x/config.json") && e.contains("hidden_size"),
            "{e}"
        );
        let mut c = tiny_config();
        c.num_key_value_heads = Some(3);
        let e = c.validate("cfg").unwrap_err().to_string();
        assert!(e.contains("num_key_value_heads"), "{e}");
        let mut c = tiny_config();
        c.rope_scaling = Some(serde_json::json!({"rope_type": "llama3"}));
        assert!(c
            .validate("cfg")
            .unwrap_err()
            .to_string()
            .contains("rope_scaling"));
    }

    #[test]
    fn tensor_shapes_list_exactly_the_variables() {
        for tied in [true, false] {
            let cfg = LlamaConfig {
                tie_word_embeddings: tied,
                ..tiny_config()
            };
            let (vm, _) = tiny(&cfg);
            let data = vm.data().lock().unwrap();
            let shapes = cfg.tensor_shapes();
            assert_eq!(shapes.len(), data.len());
            for (name, shape) in shapes {
                assert_eq!(data[&name].as_tensor().dims(), shape.as_slice(), "{name}");
            }
        }
    }

    #[test]
    fn param_count_matches_the_variables() {
        for tied in [true, false] {
            let cfg = LlamaConfig {
                tie_word_embeddings: tied,
                ..tiny_config()
            };
            let (vm, _) = tiny(&cfg);
            let n: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
            assert_eq!(cfg.param_count(), n);
        }
    }
}
