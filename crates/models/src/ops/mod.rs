//! Fused CPU ops for training and inference, each with an analytic backward pass and tested
//! against the composed candle ops for values and gradients. Every entry point falls back to
//! the composed form on other devices and dtypes (CUDA, Metal, f16/bf16), whose ops every
//! backend has kernels for, so models built on them train everywhere.
//!
//! The row kernels are compiled for AVX-512F, AVX2 + FMA and the baseline and picked at run
//! time ([`simd`]); they compute the same bits on each.

pub mod rms_norm;
pub mod rope;
pub mod rows;
pub mod simd;
pub mod softmax;
pub mod swiglu;

pub use rms_norm::fused_rms_norm;
pub use rope::fused_rope;
pub use softmax::softmax_last_dim;
pub use swiglu::swiglu;
