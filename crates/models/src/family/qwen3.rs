//! Qwen3: the Llama layout with RMSNorm over each head of q and k before the rotary embedding,
//! a head size independent of hidden, and no bias on q, k, v (Qwen2 had one).

use super::{llama, Layout};
use crate::gguf::{GgufTensorRef, NameMap};
use crate::llama::LlamaConfig;

pub const LAYOUT: Layout = Layout {
    qk_norm: true,
    ..llama::LAYOUT
};

/// llama.cpp's `qwen3` names: the Llama map (no Q/K permutation: the rotary embedding is
/// half-split) plus the q/k norms.
pub fn gguf_names(cfg: &LlamaConfig) -> NameMap {
    let base = llama::gguf_names(cfg, false);
    Box::new(move |name: &str| {
        let norm = |which: &str| {
            let (layer, rest) = super::split_layer_name(name)?;
            (rest == format!("self_attn.{which}_norm.weight"))
                .then(|| GgufTensorRef::plain(format!("blk.{layer}.attn_{which}_norm.weight")))
        };
        base(name).or_else(|| norm("q")).or_else(|| norm("k"))
    })
}
