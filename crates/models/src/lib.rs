//! # distill-models
//!
//! Architecture families with one forward each, written on candle primitives so gradients
//! reach every weight: decoders ([`llama`], one forward for the families of [`family`]: Llama,
//! Mistral, Qwen2, SmolLM, Gemma 3)
//! and BERT encoders ([`bert`]). A forward returns logits for **every** position (not only the
//! last) and, on request, the hidden states of every layer, honouring an attention mask.
//!
//! Weights come from a [`WeightSource`]: memory-mapped safetensors (frozen,
//! [`SafetensorsWeights`]), a GGUF file kept quantised through `QMatMul` or dequantised
//! ([`GgufWeights`]), or the variables of a `VarMap` (trainable, [`VarMapWeights`]).
//! Models name their tensors as the Hugging Face checkpoint does; GGUF names are mapped.

pub mod bert;
pub mod bert_classifier;
pub mod encoded;
pub mod error;
pub mod family;
pub mod finite;
pub mod generate;
pub mod ggml_cpu;
pub mod gguf;
pub mod gguf_vocab;
pub mod llama;
pub mod model;
pub mod nn;
pub mod ops;
pub mod precision;
pub mod site;
pub mod surgery;
#[doc(hidden)]
pub mod testing;
pub mod weights;

pub use bert::{Bert, BertConfig, BertOutput};
pub use bert_classifier::{encoder_prefix, BertClassifier, Pooling};
pub use error::{ModelError, Result};
pub use family::Family;
pub use ggml_cpu::GgmlDecoder;
pub use gguf::{GgufFile, GgufMode, GgufWeights};
pub use llama::{Activation, KvCache, LinearSite, Llama, LlamaConfig};
pub use model::{pad_batch, Features, Input, Model, ModelOutput, Padded};
pub use precision::{FloatType, MatmulType};
pub use weights::{Linear, Matrix, SafetensorsWeights, VarMapWeights, WeightSource};

/// The architecture named by a `config.json`, with its parsed config.
#[derive(Clone, Debug)]
// Built once per model load: the size of the larger config does not matter, and boxing it
// would only add noise at every match.
#[allow(clippy::large_enum_variant)]
pub enum ArchConfig {
    Llama(LlamaConfig),
    Bert(BertConfig),
}

/// Every `model_type` this crate implements, for error messages.
pub fn supported_model_types() -> String {
    family::Family::model_types()
        .into_iter()
        .chain(bert::BERT_MODEL_TYPES.iter().copied())
        .collect::<Vec<_>>()
        .join(", ")
}

impl ArchConfig {
    /// Reads `model_type` from a `config.json` text and parses the matching config.
    pub fn from_config_json(text: &str, source_name: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| ModelError::Config {
            source_name: source_name.to_string(),
            key: "(document)".into(),
            msg: format!("not valid JSON: {e}"),
        })?;
        let model_type = v
            .get("model_type")
            .and_then(|m| m.as_str())
            .ok_or_else(|| ModelError::Config {
                source_name: source_name.to_string(),
                key: "model_type".into(),
                msg: format!("missing; expected one of: {}", supported_model_types()),
            })?;
        if family::Family::from_model_type(model_type).is_some() {
            Ok(Self::Llama(LlamaConfig::from_json(text, source_name)?))
        } else if bert::BERT_MODEL_TYPES.contains(&model_type) {
            Ok(Self::Bert(BertConfig::from_json(text, source_name)?))
        } else {
            Err(ModelError::UnsupportedArchitecture {
                source_name: source_name.to_string(),
                found: model_type.to_string(),
                supported: supported_model_types(),
            })
        }
    }

    pub fn family(&self) -> &'static str {
        match self {
            Self::Llama(_) => "llama",
            Self::Bert(_) => "bert",
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Llama(c) => c.vocab_size,
            Self::Bert(c) => c.vocab_size,
        }
    }
}
