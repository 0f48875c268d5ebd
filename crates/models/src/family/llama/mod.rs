//! The Llama family (Llama, Mistral, Qwen2, SmolLM): pre-norm layers, SwiGLU, grouped-query
//! attention with a half-split rotary embedding; Qwen2 adds a bias to q, k and v.

pub mod gguf;

pub use gguf::tensor_name;

use crate::family::layout::{LayerNorms, Layout};

pub const LAYOUT: Layout = Layout {
    norm_offset: 0.0,
    norms: LayerNorms {
        attention_input: "input_layernorm",
        attention_output: None,
        mlp_input: "post_attention_layernorm",
        mlp_output: None,
    },
    qk_norm: false,
    scaled_embedding: false,
    fused_qkv: false,
    fused_gate_up: false,
};
