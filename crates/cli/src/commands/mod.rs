//! One module per subcommand: arguments, a call into the library, printing.

pub mod auto;
pub mod cache_teacher;
pub mod chat;
pub mod compress;
pub mod eval;
pub mod generate;
pub mod inspect;
pub mod launch;
pub mod run;

use distill::models::{load_options, DTypeSpec, DeviceSpec, GgufMode};

/// Options shared by commands that load a model.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// auto | cpu | cuda | cuda:N | metal
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// auto | f32 | f16 | bf16 (auto: bf16 on CUDA, f16 on Metal, f32 on CPU)
    #[arg(long, default_value = "auto")]
    pub dtype: DTypeSpec,
    /// Dequantise a GGUF model instead of multiplying in its quantised format.
    #[arg(long, conflicts_with = "ggml")]
    pub dequantize: bool,
    /// Run a GGUF model with llama.cpp's CPU arithmetic: the logits llama.cpp computes from the
    /// same file, bit for bit (CPU; `llama` and `gemma3` architectures, Q4_1, Q5_0, Q8_0, Q4_K,
    /// Q6_K and F32 matrices).
    #[arg(long)]
    pub ggml: bool,
}

impl ModelArgs {
    pub fn load_options(&self) -> distill::Result<distill::models::LoadOptions> {
        load_options(
            self.device,
            self.dtype,
            if self.dequantize {
                GgufMode::Dequantized
            } else if self.ggml {
                GgufMode::Ggml
            } else {
                GgufMode::Quantized
            },
        )
    }
}

/// Where a command's progress goes: the terminal alone, or rank 0's of a data-parallel group
/// (`launch`, from the launcher's variables); the other ranks stay silent.
pub fn rank_observer<'a>(
    launch: Option<&distill::Launch>,
    progress: &'a crate::progress::Progress,
) -> &'a dyn distill::Observer {
    match launch {
        Some(l) if l.rank != 0 => &distill::Silent,
        _ => progress,
    }
}

/// A command that stopped on request (a signal) after saying so and how to continue: it exits
/// with the signal's code (`crate::signals::exit_code`), never 0.
#[derive(Debug, thiserror::Error)]
#[error("stopped on request")]
pub struct Stopped;
