//! llama.cpp's CPU arithmetic for quantised GGUF teachers, reproduced in Rust.
//!
//! candle's `QMatMul` quantises activations and sums in its own orders; through thirty layers a
//! one-ulp difference flips some activation roundings, and near-tied logits swap. This module
//! runs a `llama` or `gemma3` GGUF with the operations llama.cpp's x86 CPU backend performs
//! (AVX2 + FMA build, f32 KV cache, no flash attention), each written lane for lane: `Q8_1`,
//! `Q8_0` and `Q8_K` activation quantisation, the block dot products, RMS norm with its double
//! sum, the rope angle recurrence (both pair layouts), `ggml_v_expf` in softmax and SwiGLU,
//! ggml's f16 GELU table, and both f32 dot-product orders of attention. The result is
//! llama.cpp's logits bit for bit on Llama files (see `tests/real_smollm2.rs`) and every Gemma 3
//! node up to its `Q4_K` products (`tests/real_gemma3.rs`), on any CPU: every step is exact
//! integer arithmetic or a correctly rounded IEEE operation.

mod attention;
mod blocks;
mod kquants;
mod layer;
mod matrix;
mod model;
mod rope;
mod simd;
pub(crate) mod vec;

pub use model::{GgmlDecoder, GgmlOutput, SequenceCache};
