//! A model under compression: a [`Candidate`] — its config and a [`TensorMap`] of weights
//! (dense values plus how each is stored) that is itself a weight source, so any pass's output
//! runs at once.

pub mod candidate;
pub mod tensors;

pub use candidate::Candidate;
pub use tensors::TensorMap;
