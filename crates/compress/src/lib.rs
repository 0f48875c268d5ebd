//! # distill-compress
//!
//! Owns compression and export: magnitude and 2:4 pruning, structured pruning of heads, FFN
//! neurons and layers, low-rank factorisation, weight sharing, post-training quantisation
//! (int8, GGUF Q8_0/Q4_K/...), export to Hugging Face safetensors and to GGUF with the metadata
//! llama.cpp expects, and the size/speed/quality report. Each technique is a pass with its own
//! config and report; a pipeline is a list of passes.
//!
//! Today: unstructured and 2:4 magnitude pruning, structured pruning of FFN neurons, key/value
//! head groups and layers (`prune`), and GGUF export with quantised matrices (`export_gguf`).

mod error;
pub mod gguf_export;
pub mod prune;
pub mod tensors;

pub use error::CompressError;
pub use gguf_export::{export_gguf, parse_qtype, tokenizer_metadata, GgufExport, GgufSummary};
pub use tensors::TensorMap;
