//! Qwen3: the Llama layout with RMSNorm over each head of q and k before the rotary embedding,
//! a head size independent of hidden, and no bias on q, k, v (Qwen2 had one).

pub mod gguf;

use crate::family::layout::Layout;
use crate::family::llama;

pub const LAYOUT: Layout = Layout {
    qk_norm: true,
    ..llama::LAYOUT
};
