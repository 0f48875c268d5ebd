//! Gemma 3 (text): sandwich norms (RMSNorm before and after attention and the feed-forward
//! block, each scaling by `1 + w`), RMSNorm over each head of q and k, GeGLU with tanh-GELU,
//! the embedding scaled by √hidden, a head size independent of hidden, five sliding-window
//! layers (rotary base 10⁴) to each global one (the model's base), tied embeddings.

pub mod gguf;

use crate::family::layout::{LayerNorms, Layout};

pub const LAYOUT: Layout = Layout {
    norm_offset: 1.0,
    norms: LayerNorms {
        attention_input: "input_layernorm",
        attention_output: Some("post_attention_layernorm"),
        mlp_input: "pre_feedforward_layernorm",
        mlp_output: Some("post_feedforward_layernorm"),
    },
    qk_norm: true,
    scaled_embedding: true,
    fused_qkv: false,
    fused_gate_up: false,
};

/// Every `n`-th layer is global in Gemma 3 (llama.cpp's `set_swa_pattern(6)`).
const GLOBAL_EVERY: usize = 6;
/// The rotary base of the sliding-window layers (llama.cpp's `rope_freq_base_train_swa`).
pub(crate) const LOCAL_ROPE_BASE: f64 = 10_000.0;
/// Gemma 3 27B's layer count: the one size that scales scores by `(hidden/heads)^-½`.
pub(crate) const GLOBAL_LAYERS_27B: usize = 62;

/// Whether layer `i` slides when every `pattern`-th layer is global (older configs'
/// `sliding_window_pattern`; 6 when unset).
pub fn sliding_by_pattern(i: usize, pattern: Option<usize>) -> bool {
    let every = pattern.filter(|&n| n > 0).unwrap_or(GLOBAL_EVERY);
    !(i + 1).is_multiple_of(every)
}

/// The `layer_types` of `layers` layers: five sliding to one global.
pub fn layer_types(layers: usize) -> Vec<String> {
    (0..layers)
        .map(|i| {
            if sliding_by_pattern(i, None) {
                "sliding_attention"
            } else {
                "full_attention"
            }
            .to_string()
        })
        .collect()
}
