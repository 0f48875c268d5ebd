//! The unit every pass changes.

use distill_models::ArchConfig;

use super::tensors::TensorMap;

/// A model under compression: its architecture and its weights (dense values plus how each is
/// stored).
#[derive(Clone)]
pub struct Candidate {
    pub arch: ArchConfig,
    pub weights: TensorMap,
}
