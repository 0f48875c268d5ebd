//! One decoder layer's tensors as the GGUF stores them, and the checks made before reading them.

use super::blocks::QK;
use super::matrix::{read_matrix, read_norm, BlockMatrix};
use crate::error::{ModelError, Result};
use crate::family::{Family, LayerKind};
use crate::gguf::GgufFile;
use crate::llama::LlamaConfig;

/// One decoder layer's norms and matrices; Gemma's extra norms where the family has them.
pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub q: BlockMatrix,
    pub k: BlockMatrix,
    pub v: BlockMatrix,
    /// RMS norms over each head of q and k (Gemma).
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub o: BlockMatrix,
    /// The sandwich norms on the attention and feed-forward outputs (Gemma).
    pub attn_post_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub gate: BlockMatrix,
    pub up: BlockMatrix,
    pub down: BlockMatrix,
    pub ffn_post_norm: Option<Vec<f32>>,
    /// Index into the model's rotary caches (global or local base).
    pub rope: usize,
    /// The attention window of a sliding-window layer.
    pub window: Option<usize>,
}

/// Refuses widths that the activation blocks cannot cover (32 values per block).
pub fn check_widths(cfg: &LlamaConfig, arch: &str, source: &str) -> Result<()> {
    let widths = [
        ("embedding_length", cfg.hidden_size),
        (
            "attention.head_count",
            cfg.num_attention_heads * cfg.head_dim(),
        ),
        ("feed_forward_length", cfg.intermediate_size),
    ];
    for (key, width) in widths {
        if width % QK != 0 {
            return Err(ModelError::Config {
                source_name: source.into(),
                key: format!("{arch}.{key}"),
                msg: format!(
                    "the ggml path quantises activations in blocks of {QK}; this width is {width}"
                ),
            });
        }
    }
    Ok(())
}

/// The tensors of layer `i`, with Gemma's extra norms where the family has them.
pub fn load_layer(
    g: &GgufFile,
    cfg: &LlamaConfig,
    family: Family,
    i: usize,
    local_rope: usize,
) -> Result<Layer> {
    let window = match cfg.layer_kind(i) {
        LayerKind::Global => None,
        LayerKind::Sliding { window } => Some(window),
    };
    let rope = if window.is_some() { local_rope } else { 0 };
    let (h, hd, ffn) = (cfg.hidden_size, cfg.head_dim(), cfg.intermediate_size);
    let q_out = cfg.num_attention_heads * hd;
    let kv_out = cfg.kv_heads() * hd;
    let p = |s: &str| format!("blk.{i}.{s}.weight");
    let matrix = |s: &str, rows: usize, cols: usize| read_matrix(g, &p(s), rows, cols);
    let norm = |s: &str, len: usize| read_norm(g, &p(s), len);
    let gemma = family == Family::Gemma3;
    let gemma_norm = |s: &str, len: usize| gemma.then(|| norm(s, len)).transpose();
    Ok(Layer {
        attn_norm: norm("attn_norm", h)?,
        q: matrix("attn_q", q_out, h)?,
        k: matrix("attn_k", kv_out, h)?,
        v: matrix("attn_v", kv_out, h)?,
        q_norm: gemma_norm("attn_q_norm", hd)?,
        k_norm: gemma_norm("attn_k_norm", hd)?,
        o: matrix("attn_output", h, q_out)?,
        attn_post_norm: gemma_norm("post_attention_norm", h)?,
        ffn_norm: norm("ffn_norm", h)?,
        gate: matrix("ffn_gate", ffn, h)?,
        up: matrix("ffn_up", ffn, h)?,
        down: matrix("ffn_down", h, ffn)?,
        ffn_post_norm: gemma_norm("post_ffw_norm", h)?,
        rope,
        window,
    })
}
