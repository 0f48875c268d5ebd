//! # distill-compress
//!
//! Owns compression and export, in layers a newcomer can read as the architecture:
//!
//! * [`model`]: the [`Candidate`] every pass changes — a config and a [`TensorMap`] (dense
//!   values plus how each is stored), itself a weight source, so any pass's output runs at once;
//! * [`framework`]: the [`Pass`] every technique is, the table that names them
//!   ([`framework::registry`]), plans of passes closed by a [`Sink`] that writes the artifact,
//!   and [`framework::pipeline::run`], which runs a `compress:` section given the task's
//!   [`framework::pipeline::Evaluator`];
//! * [`passes`]: the techniques by kind — pruning (structured cuts through the family's
//!   `distill_models::surgery`, magnitude, 2:4, Wanda, SparseGPT), quantisation (int8, GGUF
//!   types by round-to-nearest, importance matrix or GPTQ), low rank, weight sharing, healing;
//! * [`calibration`]: the layer-by-layer walk that gathers activation statistics and Hessians,
//!   and the optimal-brain-surgeon arithmetic over them;
//! * [`formats`]: safetensors folders and GGUF files (llama.cpp's block formats included);
//! * [`auto`]: `distill auto`, the search for the smallest artifact within a quality budget.

pub mod auto;
pub mod calibration;
mod error;
pub mod formats;
pub mod framework;
pub mod model;
pub mod passes;
#[cfg(test)]
mod test_util;

pub use calibration::walk::CalibrationTokens;
pub use error::CompressError;
pub use formats::folder::{write_model_folder, Stored};
pub use formats::gguf::export::{
    export_gguf, parse_qtype, tokenizer_metadata, GgufExport, GgufSummary, GgufType,
};
pub use formats::gguf::tokenizer::tokenizer_metadata_from_folder;
pub use framework::pass::{Calibration, Context, Length, Pass, PassReport, StepHook, Trainer};
pub use framework::plan::{CompressConfig, Defaults, Plan};
pub use framework::sink::{Output, Sink};
pub use model::{Candidate, TensorMap};
