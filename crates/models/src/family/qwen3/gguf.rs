//! Qwen3's GGUF names: the Llama family's plus the q/k norms.

use crate::family::llama;
use crate::gguf::{GgufTensorRef, NameMap};
use crate::llama::LlamaConfig;

/// llama.cpp's `qwen3` names: the Llama map (no Q/K permutation: the rotary embedding is
/// half-split) plus the q/k norms.
pub fn gguf_names(cfg: &LlamaConfig) -> NameMap {
    let base = llama::gguf::gguf_names(cfg, false);
    Box::new(move |name: &str| {
        let norm = |which: &str| {
            let (layer, rest) = crate::family::names::split_layer_name(name)?;
            (rest == format!("self_attn.{which}_norm.weight"))
                .then(|| GgufTensorRef::plain(format!("blk.{layer}.attn_{which}_norm.weight")))
        };
        base(name).or_else(|| norm("q")).or_else(|| norm("k"))
    })
}
