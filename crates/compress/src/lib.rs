//! # distill-compress
//!
//! Owns compression and export: magnitude and 2:4 pruning, structured pruning of heads, FFN
//! neurons and layers, low-rank factorisation, weight sharing, post-training quantisation
//! (int8, GGUF Q8_0/Q4_K/...), export to Hugging Face safetensors and to GGUF with the metadata
//! llama.cpp expects, and the size/speed/quality report. Each technique is a pass with its own
//! config and report; a pipeline is a list of passes.
//!
//! Passes work on a [`TensorMap`] (dense values plus how each is stored): [`prune`]
//! (unstructured, 2:4, structured FFN neurons / key-value head groups / layers), [`low_rank`]
//! (truncated SVD), [`share`] (k-means codebooks), [`int8`] (per-channel), and the exports
//! [`stored::write_model_folder`] (safetensors) and [`export_gguf`] (llama.cpp).

pub mod config;
mod error;
pub mod gguf_export;
pub mod int8;
pub mod low_rank;
pub mod prune;
pub mod share;
pub mod stored;
pub mod tensors;

pub use error::CompressError;
pub use gguf_export::{export_gguf, parse_qtype, tokenizer_metadata, GgufExport, GgufSummary};
pub use stored::{write_model_folder, Stored};
pub use tensors::TensorMap;
