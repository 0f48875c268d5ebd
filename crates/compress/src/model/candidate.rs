//! The unit every pass changes.

use distill_models::{ArchConfig, LlamaConfig};

use super::tensors::TensorMap;
use crate::error::CompressError;

/// A model under compression: its architecture and its weights (dense values plus how each is
/// stored).
#[derive(Clone)]
pub struct Candidate {
    pub arch: ArchConfig,
    pub weights: TensorMap,
}

impl Candidate {
    /// The config of a Llama-family decoder; a classifier is an error.
    pub fn llama(&self) -> Result<&LlamaConfig, CompressError> {
        match &self.arch {
            ArchConfig::Llama(c) => Ok(c),
            ArchConfig::Bert(_) => Err(CompressError::Unsupported(
                "expected a Llama-family decoder".into(),
            )),
        }
    }
}
