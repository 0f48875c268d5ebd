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
pub mod gguf;
pub mod layout;
pub mod llama;
pub mod names;
pub mod phi3;
pub mod qwen3;

pub use gguf::{gguf_names, of_gguf};
pub use layout::{LayerKind, LayerNorms, Layout};
pub use names::{
    is_layer_matrix, layer_name, layer_of, layer_prefix, split_layer_name, LAYER_MATRICES,
    LAYER_PREFIX,
};

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

    /// The transformers class its checkpoints name in `architectures`.
    pub fn hf_architecture(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Mistral => "MistralForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Qwen3 => "Qwen3ForCausalLM",
            Family::Phi3 => "Phi3ForCausalLM",
            Family::Gemma3 => "Gemma3ForCausalLM",
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
}
