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

use candle_core::{CpuStorage, Layout, WithDType};

/// The contiguous elements of a CPU storage as `T`, or an error naming `what` (an op's input):
/// what every fused op reads its operands with.
pub fn cpu_slice<'a, T: WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [T]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what} must be contiguous")))?;
    s.as_slice::<T>()
        .map(|v| &v[a..b])
        .map_err(|_| candle_core::Error::Msg(format!("{what} must be {:?}", T::DTYPE)))
}

/// Runs `f` on the `f32` elements of a CPU tensor (copied first only when its layout is not
/// contiguous), or an error naming `what` when it is on another device or of another dtype.
pub fn with_cpu_f32<R>(
    t: &candle_core::Tensor,
    what: &str,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("{what} must be on the CPU, is on {:?}", t.device())
    };
    f(cpu_slice::<f32>(cpu, layout, what)?)
}

#[cfg(test)]
pub(crate) mod testing;

pub use rms_norm::fused_rms_norm;
pub use rope::fused_rope;
pub use softmax::softmax_last_dim;
pub use swiglu::swiglu;
