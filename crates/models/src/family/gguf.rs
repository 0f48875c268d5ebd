//! Reading a decoder from a GGUF file: its family from `general.architecture`, its config
//! from the family's metadata keys, and the map from Hugging Face names to its tensors.

use super::{gemma3, llama, qwen3, Family};
use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, NameMap};
use crate::llama::LlamaConfig;

/// The family of a GGUF file, or an error listing those known.
pub fn of_gguf(g: &GgufFile) -> Result<Family> {
    let arch = g.get_str("general.architecture")?;
    Family::from_gguf_architecture(arch).ok_or_else(|| ModelError::UnsupportedArchitecture {
        source_name: g.path().display().to_string(),
        found: arch.to_string(),
        supported: Family::gguf_architectures().join(", "),
    })
}

impl LlamaConfig {
    /// Reads the hyper-parameters of a GGUF file of any family in [`Family`].
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        match of_gguf(g)? {
            f @ (Family::Llama | Family::Mistral | Family::Qwen2 | Family::Qwen3) => {
                llama::gguf::config_from_gguf(g, f)
            }
            Family::Gemma3 => gemma3::gguf::config_from_gguf(g),
            f @ Family::Phi3 => Err(no_gguf(f, &g.path().display().to_string())),
        }
    }
}

/// Hugging Face name → the GGUF tensor holding it, for a file of `cfg`'s family.
pub fn gguf_names(cfg: &LlamaConfig) -> Result<NameMap> {
    Ok(match cfg.family()? {
        Family::Llama | Family::Mistral => llama::gguf::gguf_names(cfg, true),
        Family::Qwen2 => llama::gguf::gguf_names(cfg, false),
        Family::Qwen3 => qwen3::gguf::gguf_names(cfg),
        Family::Gemma3 => gemma3::gguf::gguf_names(cfg),
        f @ Family::Phi3 => return Err(no_gguf(f, "GGUF")),
    })
}

/// A family whose GGUF files are not read yet.
fn no_gguf(f: Family, source_name: &str) -> ModelError {
    ModelError::UnsupportedArchitecture {
        source_name: source_name.to_string(),
        found: format!("{} (as GGUF)", f.model_type()),
        supported: Family::gguf_architectures().join(", "),
    }
}
