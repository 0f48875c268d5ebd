//! `config.json` of a decoder (any family of [`crate::family`]): the keys read, their
//! defaults, the checks the forward relies on, and the rotary settings of transformers ≥ 5.

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::family::gemma3::sliding_by_pattern;
use crate::family::layout::{LayerKind, Layout};
use crate::family::Family;

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
                None => sliding_by_pattern(i, self.sliding_window_pattern),
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
            let p = crate::family::names::layer_prefix(i);
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
