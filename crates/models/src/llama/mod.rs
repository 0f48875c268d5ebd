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
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result, TensorContext};
use crate::family::{Family, LayerKind, Layout};
use crate::gguf::GgufFile;
use crate::model::ModelOutput;
use crate::nn::{attention_bias, Rope, MASK_VALUE};
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
    /// Gemma's name for the activation (`hidden_act` elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_activation: Option<String>,
    /// Gemma: attention scores are scaled by `query_pre_attn_scalar^-½` (not `head_dim^-½`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_pre_attn_scalar: Option<f64>,
    /// The window of sliding-window layers (Gemma 3's local layers; every layer of a Mistral
    /// that sets it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// Gemma 3 (older configs): every `n`-th layer is global, the others sliding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window_pattern: Option<usize>,
    /// Gemma 3: `sliding_attention` or `full_attention` for each layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    /// Gemma 3: the rotary base of sliding-window layers (`rope_theta` is the global layers').
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_local_base_freq: Option<f64>,
    /// Gemma 2: logits squashed by `cap·tanh(x/cap)` (refused: not implemented).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_logit_softcapping: Option<f64>,
    /// Gemma 2: attention scores squashed likewise (refused: not implemented).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_logit_softcapping: Option<f64>,
    /// transformers ≥ 5 writes the rotary settings here (`rope_theta`, `rope_type`,
    /// `partial_rotary_factor`; Gemma 3: one entry per layer type); read into `rope_theta` and
    /// `rope_local_base_freq`, anything but the default rotary embedding refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<serde_json::Value>,
    /// Qwen: whether `sliding_window` applies to the upper layers (refused when true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_sliding_window: Option<bool>,
    /// A share of each head rotated (refused unless 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_rotary_factor: Option<f64>,
    /// EmbeddingGemma: attention in both directions (refused: a decoder here is causal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_bidirectional_attention: Option<bool>,
}

impl Default for LlamaConfig {
    /// The `config.json` defaults with every size zero: a base for struct updates, not a
    /// valid model.
    fn default() -> Self {
        Self {
            model_type: default_model_type(),
            vocab_size: 0,
            hidden_size: 0,
            intermediate_size: 0,
            num_hidden_layers: 0,
            num_attention_heads: 0,
            num_key_value_heads: None,
            head_dim: None,
            rms_norm_eps: default_rms_norm_eps(),
            rope_theta: default_rope_theta(),
            max_position_embeddings: default_max_positions(),
            tie_word_embeddings: false,
            attention_bias: false,
            mlp_bias: false,
            hidden_act: default_act(),
            rope_scaling: None,
            bos_token_id: None,
            eos_token_id: None,
            hidden_activation: None,
            query_pre_attn_scalar: None,
            sliding_window: None,
            sliding_window_pattern: None,
            layer_types: None,
            rope_local_base_freq: None,
            final_logit_softcapping: None,
            attn_logit_softcapping: None,
            use_bidirectional_attention: None,
            rope_parameters: None,
            use_sliding_window: None,
            partial_rotary_factor: None,
        }
    }
}

/// The gate's activation in the feed-forward block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU: `silu(gate)·up`.
    Silu,
    /// GeGLU with the tanh approximation of GELU (`gelu_pytorch_tanh`).
    GeluTanh,
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
        let mut cfg: Self = serde_json::from_str(text).map_err(|e| ModelError::Config {
            source_name: source_name.to_string(),
            key: json_error_key(&e),
            msg: e.to_string(),
        })?;
        // Gemma's configs tie the embeddings unless they say otherwise (transformers' default
        // for `gemma3_text`); the others untie them.
        if cfg.model_type == Family::Gemma3.model_type() && !has_key(text, "tie_word_embeddings") {
            cfg.tie_word_embeddings = true;
        }
        cfg.read_rope_parameters(source_name)?;
        cfg.validate(source_name)?;
        Ok(cfg)
    }

    /// Takes the rotary bases from `rope_parameters` (transformers ≥ 5), refusing a rotary
    /// embedding other than the default one.
    fn read_rope_parameters(&mut self, source_name: &str) -> Result<()> {
        let Some(params) = self.rope_parameters.clone() else {
            return Ok(());
        };
        let err = |key: &str, msg: String| ModelError::Config {
            source_name: source_name.to_string(),
            key: format!("rope_parameters{key}"),
            msg,
        };
        let theta = |entry: &serde_json::Value, at: &str| -> Result<Option<f64>> {
            let kind = entry
                .get("rope_type")
                .and_then(|t| t.as_str())
                .unwrap_or("default");
            if kind != "default" {
                return Err(err(
                    &format!("{at}.rope_type"),
                    format!("`{kind}` is not supported yet"),
                ));
            }
            if let Some(f) = entry.get("partial_rotary_factor").and_then(|f| f.as_f64()) {
                if f != 1.0 {
                    return Err(err(
                        &format!("{at}.partial_rotary_factor"),
                        format!("partial rotary embeddings ({f}) are not supported"),
                    ));
                }
            }
            Ok(entry.get("rope_theta").and_then(|t| t.as_f64()))
        };
        match (
            params.get("full_attention"),
            params.get("sliding_attention"),
        ) {
            (None, None) => {
                if let Some(t) = theta(&params, "")? {
                    self.rope_theta = t;
                }
            }
            (full, sliding) => {
                if let Some(t) = full
                    .map(|e| theta(e, ".full_attention"))
                    .transpose()?
                    .flatten()
                {
                    self.rope_theta = t;
                }
                if let Some(t) = sliding
                    .map(|e| theta(e, ".sliding_attention"))
                    .transpose()?
                    .flatten()
                {
                    self.rope_local_base_freq = Some(t);
                }
            }
        }
        Ok(())
    }

    /// Reads the hyper-parameters of a GGUF file of any family in [`Family`].
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        crate::family::of_gguf(g)?.config_from_gguf(g)
    }

    /// The family its `model_type` names.
    pub fn family(&self) -> Result<Family> {
        Family::from_model_type(&self.model_type).ok_or_else(|| {
            ModelError::UnsupportedArchitecture {
                source_name: "config".into(),
                found: self.model_type.clone(),
                supported: Family::model_types().join(", "),
            }
        })
    }

    /// The family's layout (Llama's for a config that names no known family; `validate`
    /// refuses those).
    pub fn layout(&self) -> Layout {
        self.family()
            .map_or(crate::family::llama::LAYOUT, Family::layout)
    }

    /// The feed-forward activation (`hidden_activation` where the family uses that key).
    pub fn activation(&self) -> std::result::Result<Activation, String> {
        let name = self
            .hidden_activation
            .as_deref()
            .unwrap_or(&self.hidden_act);
        match name {
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu_pytorch_tanh" | "gelu_tanh" => Ok(Activation::GeluTanh),
            other => Err(format!(
                "activation `{other}` is not supported; supported: silu, gelu_pytorch_tanh"
            )),
        }
    }

    /// Whether layer `i` is global or sliding-window.
    pub fn layer_kind(&self, i: usize) -> LayerKind {
        let Some(window) = self.sliding_window else {
            return LayerKind::Global;
        };
        let sliding = match self.family() {
            Ok(Family::Gemma3) => match &self.layer_types {
                Some(types) => types.get(i).is_some_and(|t| t == "sliding_attention"),
                None => crate::family::gemma3::sliding_by_pattern(i, self.sliding_window_pattern),
            },
            Ok(Family::Mistral | Family::Phi3) => true,
            _ => false,
        };
        if sliding {
            LayerKind::Sliding { window }
        } else {
            LayerKind::Global
        }
    }

    /// The factor the fixed `head_dim^-½` attention scale is multiplied by, where the family
    /// scales otherwise (Gemma's `query_pre_attn_scalar`).
    pub fn query_scale(&self) -> Option<f64> {
        let qpas = self.query_pre_attn_scalar?;
        let hd = self.head_dim() as f64;
        (qpas != hd).then(|| (hd / qpas).sqrt())
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
        self.family().map_err(|e| match e {
            ModelError::UnsupportedArchitecture {
                found, supported, ..
            } => ModelError::UnsupportedArchitecture {
                source_name: source_name.to_string(),
                found,
                supported,
            },
            e => e,
        })?;
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
        if let Err(msg) = self.activation() {
            let key = if self.hidden_activation.is_some() {
                "hidden_activation"
            } else {
                "hidden_act"
            };
            return Err(err(key, msg));
        }
        self.validate_gemma_keys(source_name)?;
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

    /// The keys of sliding windows, local rotary bases and soft-capping: what the forward
    /// implements, and nothing it would silently ignore.
    fn validate_gemma_keys(&self, source_name: &str) -> Result<()> {
        let err = |key: &str, msg: String| ModelError::Config {
            source_name: source_name.to_string(),
            key: key.to_string(),
            msg,
        };
        for (key, v) in [
            ("final_logit_softcapping", self.final_logit_softcapping),
            ("attn_logit_softcapping", self.attn_logit_softcapping),
        ] {
            if let Some(v) = v {
                return Err(err(key, format!("soft-capping ({v}) is not supported")));
            }
        }
        let layout = self.layout();
        if (layout.fused_qkv && self.qkv_bias()) || (layout.fused_gate_up && self.mlp_bias) {
            return Err(err(
                "attention_bias/mlp_bias",
                "biases on fused projections are not supported".into(),
            ));
        }
        if self.use_sliding_window == Some(true) {
            return Err(err(
                "use_sliding_window",
                "Qwen's sliding window over the upper layers is not supported".into(),
            ));
        }
        if let Some(f) = self.partial_rotary_factor.filter(|&f| f != 1.0) {
            return Err(err(
                "partial_rotary_factor",
                format!("partial rotary embeddings ({f}) are not supported"),
            ));
        }
        if self.use_bidirectional_attention == Some(true) {
            return Err(err(
                "use_bidirectional_attention",
                "bidirectional attention (an embedding model) is not supported; the decoder is causal".into(),
            ));
        }
        if self.sliding_window == Some(0) {
            return Err(err("sliding_window", "must be positive".into()));
        }
        if let Some(types) = &self.layer_types {
            if types.len() != self.num_hidden_layers {
                return Err(err(
                    "layer_types",
                    format!(
                        "{} entries for {} layers",
                        types.len(),
                        self.num_hidden_layers
                    ),
                ));
            }
            if let Some(t) = types
                .iter()
                .find(|t| !matches!(t.as_str(), "sliding_attention" | "full_attention"))
            {
                return Err(err(
                    "layer_types",
                    format!("`{t}` is not one of sliding_attention, full_attention"),
                ));
            }
            if self.sliding_window.is_none() && types.iter().any(|t| t == "sliding_attention") {
                return Err(err(
                    "sliding_window",
                    "missing, but layer_types has sliding_attention layers".into(),
                ));
            }
        }
        for (key, v) in [
            ("rope_local_base_freq", self.rope_local_base_freq),
            ("query_pre_attn_scalar", self.query_pre_attn_scalar),
        ] {
            if v.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
                return Err(err(key, "must be positive".into()));
            }
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
            let layout = self.layout();
            if layout.fused_qkv {
                v.push((
                    format!("{p}.self_attn.qkv_proj.weight"),
                    vec![q + 2 * kv, h],
                ));
            } else {
                v.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
                v.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
                v.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
            }
            if self.qkv_bias() {
                v.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
                v.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
                v.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
            }
            v.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
            if self.attention_bias {
                v.push((format!("{p}.self_attn.o_proj.bias"), vec![h]));
            }
            if layout.fused_gate_up {
                v.push((format!("{p}.mlp.gate_up_proj.weight"), vec![2 * f, h]));
            } else {
                v.push((format!("{p}.mlp.gate_proj.weight"), vec![f, h]));
                v.push((format!("{p}.mlp.up_proj.weight"), vec![f, h]));
            }
            v.push((format!("{p}.mlp.down_proj.weight"), vec![h, f]));
            if self.mlp_bias {
                v.push((format!("{p}.mlp.gate_proj.bias"), vec![f]));
                v.push((format!("{p}.mlp.up_proj.bias"), vec![f]));
                v.push((format!("{p}.mlp.down_proj.bias"), vec![h]));
            }
            for norm in layout.norms.names() {
                v.push((format!("{p}.{norm}.weight"), vec![h]));
            }
            if layout.qk_norm {
                v.push((format!("{p}.self_attn.q_norm.weight"), vec![hd]));
                v.push((format!("{p}.self_attn.k_norm.weight"), vec![hd]));
            }
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
        let mlp = 3 * h * self.intermediate_size
            + if self.mlp_bias {
                2 * self.intermediate_size + h
            } else {
                0
            }
            + if self.attention_bias { h } else { 0 };
        let layout = self.layout();
        let norms = layout.norms.names().len() * h + if layout.qk_norm { 2 * hd } else { 0 };
        let layer = attn + mlp + norms;
        let embed = self.vocab_size * h;
        embed
            + self.num_hidden_layers * layer
            + h
            + if self.tie_word_embeddings { 0 } else { embed }
    }
}

/// Whether the JSON object `text` has `key` at its top level.
fn has_key(text: &str, key: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .is_some_and(|v| v.get(key).is_some())
}

/// The key a serde_json error is about, when it says (`missing field `x``, `unknown variant`).
pub(crate) fn json_error_key(e: &serde_json::Error) -> String {
    let s = e.to_string();
    s.split('`')
        .nth(1)
        .map(str::to_string)
        .unwrap_or_else(|| "(document)".into())
}

mod layer;

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

    /// A tiny Gemma 3: head size independent of hidden, a query scale of its own, one
    /// sliding-window layer (window 3, its own rotary base) and one global.
    fn tiny_gemma() -> LlamaConfig {
        LlamaConfig {
            model_type: "gemma3_text".into(),
            hidden_activation: Some("gelu_pytorch_tanh".into()),
            head_dim: Some(8),
            query_pre_attn_scalar: Some(6.0),
            sliding_window: Some(3),
            layer_types: Some(vec!["sliding_attention".into(), "full_attention".into()]),
            rope_local_base_freq: Some(100.0),
            ..tiny_config()
        }
    }

    /// Both layouts: Llama's and Gemma 3's.
    fn tiny_configs() -> [LlamaConfig; 2] {
        [tiny_config(), tiny_gemma()]
    }

    fn tiny(cfg: &LlamaConfig) -> (VarMap, Llama) {
        let vm = VarMap::new();
        let m = Llama::load(cfg, &VarMapWeights::new(&vm, DType::F32, &Device::Cpu)).unwrap();
        (vm, m)
    }

    #[test]
    fn every_trainable_variable_gets_a_gradient() {
        for (tied, base) in [true, false]
            .into_iter()
            .flat_map(|t| tiny_configs().map(|c| (t, c)))
        {
            let cfg = LlamaConfig {
                tie_word_embeddings: tied,
                ..base
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
            let expected = match cfg.family().unwrap() {
                Family::Gemma3 => (if tied { 1 } else { 2 }) + 2 * 13 + 1,
                _ => (if tied { 1 } else { 2 }) + 2 * 9 + 1,
            };
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
        for cfg in tiny_configs() {
            right_padding_does_not_change_real_positions(&cfg);
        }
    }

    fn right_padding_does_not_change_real_positions(cfg: &LlamaConfig) {
        let (_, m) = tiny(cfg);
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
        for (tied, base) in [true, false]
            .into_iter()
            .flat_map(|t| tiny_configs().map(|c| (t, c)))
        {
            let cfg = LlamaConfig {
                tie_word_embeddings: tied,
                ..base
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
        for (tied, base) in [true, false]
            .into_iter()
            .flat_map(|t| tiny_configs().map(|c| (t, c)))
        {
            let cfg = LlamaConfig {
                tie_word_embeddings: tied,
                ..base
            };
            let (vm, _) = tiny(&cfg);
            let n: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
            assert_eq!(cfg.param_count(), n);
        }
    }

    /// A one-layer tiny Gemma whose layer is `layer_type`.
    fn one_layer(layer_type: &str) -> Llama {
        let cfg = LlamaConfig {
            num_hidden_layers: 1,
            layer_types: Some(vec![layer_type.into()]),
            ..tiny_gemma()
        };
        tiny(&cfg).1
    }

    /// The last position's logits of `ids`.
    fn last_logits(m: &Llama, ids: &[u32]) -> Tensor {
        let ids = Tensor::new(ids, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let out = m.forward(&ids, None, false).unwrap().logits;
        let n = out.dim(1).unwrap();
        out.narrow(1, n - 1, 1).unwrap().flatten_all().unwrap()
    }

    #[test]
    fn a_sliding_window_layer_sees_only_its_window() {
        let ids = [1u32, 5, 7, 2, 9, 3, 4, 8];
        let diff = |kind: &str| {
            let m = one_layer(kind);
            let all = last_logits(&m, &ids);
            let window = last_logits(&m, &ids[ids.len() - 3..]);
            (all - window)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        // Relative rotary positions and a window of 3: the last three tokens decide alone.
        assert!(
            diff("sliding_attention") < 1e-5,
            "{}",
            diff("sliding_attention")
        );
        // A global layer sees the earlier tokens too.
        assert!(diff("full_attention") > 1e-4, "{}", diff("full_attention"));
    }
}
