//! Phi-3: the Llama layout with q, k and v in one matrix (`self_attn.qkv_proj`) and gate and
//! up in one (`mlp.gate_up_proj`); a `sliding_window`, when set, applies to every layer. Read
//! from Hugging Face folders; its GGUF files are not read yet.

use crate::family::layout::Layout;
use crate::family::llama;

pub const LAYOUT: Layout = Layout {
    fused_qkv: true,
    fused_gate_up: true,
    ..llama::LAYOUT
};
