//! One module per subcommand.

pub mod classify;
pub mod compress;
pub mod eval;
pub mod inspect;
pub mod pipeline;
pub mod run;
pub mod tokenize;

use distill_teacher::{parse_device, parse_dtype, GgufCompute, HubOptions, LoadOptions};

/// Options shared by commands that load a model.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// auto | cpu | cuda | cuda:N | metal
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// auto | f32 | f16 | bf16 (auto: bf16 on CUDA, f16 on Metal, f32 on CPU)
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Dequantise a GGUF model instead of multiplying in its quantised format.
    #[arg(long, conflicts_with = "ggml")]
    pub dequantize: bool,
    /// Run a GGUF model with llama.cpp's CPU arithmetic: the logits llama.cpp computes from the
    /// same file, bit for bit (CPU; `llama` architecture with Q4_1/Q8_0 matrices).
    #[arg(long)]
    pub ggml: bool,
}

impl ModelArgs {
    pub fn load_options(&self) -> anyhow::Result<LoadOptions> {
        let device = parse_device(&self.device)?;
        let dtype = parse_dtype(&self.dtype, &device)?;
        Ok(LoadOptions {
            device,
            dtype,
            gguf_mode: if self.dequantize {
                GgufCompute::Dequantized
            } else if self.ggml {
                GgufCompute::Ggml
            } else {
                GgufCompute::Quantized
            },
            hub: HubOptions::from_env(),
        })
    }
}
