//! # distill-compress
//!
//! Owns compression and export. Every technique has the same shape — its settings, the
//! function that applies it, and a [`Pass`] registered under the name configs use
//! ([`registry::TECHNIQUES`]) — and a variant is a list of passes closed by a [`Sink`] that
//! writes the artifact:
//!
//! * [`prune`]: structured ([`structured`]: layers, heads, FFN neurons, through the family's
//!   cut in `distill_models::surgery`) and unstructured ([`sparsity`]: magnitude, 2:4);
//! * [`heal`]: distillation after pruning, through the task's [`pass::Trainer`], keeping
//!   pruned weights at zero after every step;
//! * [`low_rank`] (truncated SVD), [`share`] (k-means codebooks), [`int8`] (per channel);
//! * sinks: compressed safetensors folders ([`stored`]) and GGUF files ([`gguf_export`]).
//!
//! Passes work on a [`Candidate`]: a config and a [`TensorMap`] (dense values plus how each is
//! stored), which is itself a weight source, so any pass's output runs at once.
//! [`pipeline::run`] runs a `compress:` section given the task's [`pipeline::Evaluator`].

pub mod auto;
pub mod calibrate;
pub mod config;
mod error;
pub mod ggml_quant;
pub mod gguf_export;
pub mod gguf_tokenizer;
pub mod gptq;
pub mod heal;
pub mod importance;
pub mod int8;
pub mod low_rank;
pub mod obs;
pub mod pass;
pub mod pipeline;
pub mod prune;
pub mod quantize;
pub mod registry;
pub mod share;
pub mod sink;
pub mod sparsegpt;
pub mod sparsity;
pub mod stored;
pub mod structured;
pub mod technique;
pub mod tensors;
#[cfg(test)]
mod test_util;
pub mod wanda;

pub use calibrate::CalibrationTokens;
pub use config::{CompressConfig, Defaults, Plan};
pub use error::CompressError;
pub use gguf_export::{
    export_gguf, parse_qtype, tokenizer_metadata, GgufExport, GgufSummary, GgufType,
};
pub use gguf_tokenizer::tokenizer_metadata_from_folder;
pub use pass::{Calibration, Candidate, Context, Length, Pass, PassReport, StepHook, Trainer};
pub use sink::{Output, Sink};
pub use stored::{write_model_folder, Stored};
pub use tensors::TensorMap;
