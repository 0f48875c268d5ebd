//! The decoder families, each described once: how its `config.json` and GGUF metadata read,
//! which tensors a layer has and under which names (Hugging Face ↔ GGUF, both ways, with the
//! value transforms llama.cpp's converter applies), and the architectural traits the one
//! decoder forward in [`crate::llama`] switches on. Loading, inspection and the GGUF reader ask
//! the family rather than knowing names themselves; adding a family is a file here plus the
//! ops its forward needs.
//!
//! The shape follows llama.cpp's per-architecture tensor tables (`LLM_TENSOR_NAMES`) and
//! candle-transformers' one-file-per-family models.

pub mod gemma3;
pub mod llama;
pub mod phi3;
pub mod qwen3;

use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, NameMap};
use crate::llama::LlamaConfig;

/// A decoder family this crate runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Phi3,
    Gemma3,
}

/// How a family's layers are built: what the shared decoder forward switches on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Layout {
    /// RMSNorm scales by `offset + w` (Gemma: `1 + w`, its weights stored around zero).
    pub norm_offset: f64,
    /// The four per-layer norms, by Hugging Face name after `model.layers.N.`.
    pub norms: LayerNorms,
    /// RMSNorm over each head of q and k before the rotary embedding (`self_attn.q_norm`).
    pub qk_norm: bool,
    /// The embedding output is multiplied by √hidden.
    pub scaled_embedding: bool,
    /// q, k and v stored as one matrix, `self_attn.qkv_proj` (rows q, then k, then v).
    pub fused_qkv: bool,
    /// gate and up stored as one matrix, `mlp.gate_up_proj` (rows gate, then up).
    pub fused_gate_up: bool,
}

/// The names of a layer's norms; `None` where the family has no such norm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerNorms {
    /// Before attention.
    pub attention_input: &'static str,
    /// On the attention's output, before the residual add (Gemma's sandwich norm).
    pub attention_output: Option<&'static str>,
    /// Before the feed-forward block.
    pub mlp_input: &'static str,
    /// On the feed-forward output, before the residual add.
    pub mlp_output: Option<&'static str>,
}

impl LayerNorms {
    /// Every norm of a layer, by name.
    pub fn names(&self) -> Vec<&'static str> {
        [
            Some(self.attention_input),
            self.attention_output,
            Some(self.mlp_input),
            self.mlp_output,
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// Whether a layer attends to every earlier position or to a window of the latest ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    Global,
    /// Attends to the keys less than `window` positions back (its own included).
    Sliding {
        window: usize,
    },
}

impl Family {
    pub const ALL: [Family; 6] = [
        Family::Llama,
        Family::Mistral,
        Family::Qwen2,
        Family::Qwen3,
        Family::Phi3,
        Family::Gemma3,
    ];

    /// The `model_type` of its `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Phi3 => "phi3",
            Family::Gemma3 => "gemma3_text",
        }
    }

    pub fn from_model_type(model_type: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.model_type() == model_type)
    }

    /// `general.architecture` of its GGUF files (llama.cpp writes Mistral as `llama`); `None`
    /// for a family whose GGUF files are not read yet (Phi-3's fused matrices).
    pub fn gguf_architecture(self) -> Option<&'static str> {
        match self {
            Family::Llama | Family::Mistral => Some("llama"),
            Family::Qwen2 => Some("qwen2"),
            Family::Qwen3 => Some("qwen3"),
            Family::Phi3 => None,
            Family::Gemma3 => Some("gemma3"),
        }
    }

    pub fn from_gguf_architecture(arch: &str) -> Option<Self> {
        match arch {
            "llama" => Some(Family::Llama),
            "qwen2" => Some(Family::Qwen2),
            "qwen3" => Some(Family::Qwen3),
            "gemma3" => Some(Family::Gemma3),
            _ => None,
        }
    }

    /// Every `model_type` known, for error messages.
    pub fn model_types() -> Vec<&'static str> {
        Self::ALL.into_iter().map(Family::model_type).collect()
    }

    /// Every GGUF architecture known, for error messages.
    pub fn gguf_architectures() -> Vec<&'static str> {
        let mut v: Vec<&str> = Self::ALL
            .into_iter()
            .filter_map(Family::gguf_architecture)
            .collect();
        v.dedup();
        v
    }

    pub fn layout(self) -> Layout {
        match self {
            Family::Llama | Family::Mistral | Family::Qwen2 => llama::LAYOUT,
            Family::Qwen3 => qwen3::LAYOUT,
            Family::Phi3 => phi3::LAYOUT,
            Family::Gemma3 => gemma3::LAYOUT,
        }
    }

    /// The config of a GGUF file of this family, from its metadata and tensor shapes.
    pub fn config_from_gguf(self, g: &GgufFile) -> Result<LlamaConfig> {
        match self {
            Family::Llama | Family::Mistral | Family::Qwen2 | Family::Qwen3 => {
                llama::config_from_gguf(g, self)
            }
            Family::Phi3 => Err(self.no_gguf(&g.path().display().to_string())),
            Family::Gemma3 => gemma3::config_from_gguf(g),
        }
    }

    /// Hugging Face name → the GGUF tensor holding it, for a file of this family.
    pub fn gguf_names(self, cfg: &LlamaConfig) -> Result<NameMap> {
        Ok(match self {
            Family::Llama | Family::Mistral => llama::gguf_names(cfg, true),
            Family::Qwen2 => llama::gguf_names(cfg, false),
            Family::Qwen3 => qwen3::gguf_names(cfg),
            Family::Phi3 => return Err(self.no_gguf("GGUF")),
            Family::Gemma3 => gemma3::gguf_names(cfg),
        })
    }

    fn no_gguf(self, source_name: &str) -> ModelError {
        ModelError::UnsupportedArchitecture {
            source_name: source_name.to_string(),
            found: format!("{} (as GGUF)", self.model_type()),
            supported: Family::gguf_architectures().join(", "),
        }
    }
}

/// The family of a GGUF file, or an error listing those known.
pub fn of_gguf(g: &GgufFile) -> Result<Family> {
    let arch = g.get_str("general.architecture")?;
    Family::from_gguf_architecture(arch).ok_or_else(|| ModelError::UnsupportedArchitecture {
        source_name: g.path().display().to_string(),
        found: arch.to_string(),
        supported: Family::gguf_architectures().join(", "),
    })
}

/// Hugging Face name → GGUF tensor for `cfg`'s family.
pub fn gguf_names(cfg: &LlamaConfig) -> Result<NameMap> {
    cfg.family()?.gguf_names(cfg)
}

/// The layer index and the rest of a per-layer Hugging Face name (`model.layers.3.mlp.up_proj.weight`
/// → `(3, "mlp.up_proj.weight")`).
pub fn split_layer_name(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix(LAYER_PREFIX)?;
    let (layer, rest) = rest.split_once('.')?;
    Some((layer.parse().ok()?, rest))
}

/// The prefix of every per-layer tensor name in the decoder families.
pub const LAYER_PREFIX: &str = "model.layers.";

/// The Hugging Face name of a per-layer tensor.
pub fn layer_name(layer: usize, rest: &str) -> String {
    format!("{LAYER_PREFIX}{layer}.{rest}")
}
