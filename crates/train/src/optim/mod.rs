//! The optimiser: AdamW with decoupled weight decay, and global-norm gradient clipping.
//!
//! On the CPU both run as fused, multi-threaded loops over the raw `f32` buffers ([`host`]):
//! one pass per parameter reads the weight, gradient and both moments and writes them back in
//! place, with no temporary tensors. Elsewhere (CUDA, Metal, other dtypes) the same update runs
//! as composed tensor ops, so every device trains.

mod adamw;
mod clip;
mod host;

pub use adamw::{decays, AdamW, AdamWParams};
pub use clip::{clip_factor, clip_grad_norm, global_grad_norm};
