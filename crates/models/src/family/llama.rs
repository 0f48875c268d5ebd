//! The Llama family (Llama, Mistral, Qwen2, SmolLM): pre-norm layers, SwiGLU, grouped-query
//! attention with a half-split rotary embedding; Qwen2 adds a bias to q, k and v.

use super::{split_layer_name, Family, LayerNorms, Layout};
use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, GgufTensorRef, NameMap};
use crate::llama::LlamaConfig;

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

/// Reads the hyper-parameters of a llama.cpp `llama` or `qwen2` GGUF file.
pub fn config_from_gguf(g: &GgufFile, family: Family) -> Result<LlamaConfig> {
    let arch = family.gguf_architecture().unwrap_or("llama");
    let k = |s: &str| format!("{arch}.{s}");
    let hidden = g.get_usize(&k("embedding_length"))?;
    let heads = g.get_usize(&k("attention.head_count"))?;
    let kv_heads = g
        .get_usize_opt(&k("attention.head_count_kv"))?
        .unwrap_or(heads);
    let head_dim = g.get_usize_opt(&k("attention.key_length"))?;
    let cfg = LlamaConfig {
        model_type: family.model_type().into(),
        vocab_size: gguf_vocab_size(g, arch)?,
        hidden_size: hidden,
        intermediate_size: g.get_usize(&k("feed_forward_length"))?,
        num_hidden_layers: g.get_usize(&k("block_count"))?,
        num_attention_heads: heads,
        num_key_value_heads: Some(kv_heads),
        head_dim: head_dim.filter(|&d| d != hidden / heads),
        rms_norm_eps: g
            .get_f64_opt(&k("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-5),
        rope_theta: g.get_f64_opt(&k("rope.freq_base"))?.unwrap_or(10_000.0),
        max_position_embeddings: g.get_usize_opt(&k("context_length"))?.unwrap_or(2048),
        tie_word_embeddings: !g.tensor_infos().contains_key("output.weight"),
        bos_token_id: g
            .get_usize_opt("tokenizer.ggml.bos_token_id")?
            .map(Into::into),
        eos_token_id: g
            .get_usize_opt("tokenizer.ggml.eos_token_id")?
            .map(Into::into),
        ..LlamaConfig::default()
    };
    check_full_rotary(g, arch, &cfg)?;
    refuse_rope_scaling(g, arch)?;
    cfg.validate(&g.path().display().to_string())?;
    Ok(cfg)
}

/// The vocabulary size: the metadata's, else the embedding's rows, else the token list's.
pub(super) fn gguf_vocab_size(g: &GgufFile, arch: &str) -> Result<usize> {
    Ok(
        match (
            g.get_usize_opt(&format!("{arch}.vocab_size"))?,
            g.tensor_infos().get("token_embd.weight"),
        ) {
            (Some(v), _) => v,
            (None, Some(info)) => info.shape.dims()[0],
            (None, None) => g.get_strings("tokenizer.ggml.tokens")?.len(),
        },
    )
}

/// Partial rotary embeddings (`rope.dimension_count` below the head size) are refused.
pub(super) fn check_full_rotary(g: &GgufFile, arch: &str, cfg: &LlamaConfig) -> Result<()> {
    let key = format!("{arch}.rope.dimension_count");
    match g.get_usize_opt(&key)? {
        Some(n) if n != cfg.head_dim() => Err(ModelError::Config {
            source_name: g.path().display().to_string(),
            key,
            msg: format!(
                "partial rotary embeddings ({n} of {} dims) are not supported",
                cfg.head_dim()
            ),
        }),
        _ => Ok(()),
    }
}

/// A GGUF file that scales its rotary positions (`rope.scaling.type` other than `none`) is
/// refused: the forward does not implement it.
pub(super) fn refuse_rope_scaling(g: &GgufFile, arch: &str) -> Result<()> {
    let key = format!("{arch}.rope.scaling.type");
    match g.get(&key) {
        None => Ok(()),
        Some(_) => match g.get_str(&key)? {
            "none" => Ok(()),
            other => Err(ModelError::Config {
                source_name: g.path().display().to_string(),
                key,
                msg: format!("rope scaling `{other}` is not supported yet"),
            }),
        },
    }
}

/// Maps Hugging Face names of a Llama-family checkpoint to llama.cpp's GGUF names. With
/// `permuted` (the `llama` architecture) the Q and K rows are un-permuted (llama.cpp's
/// converter permutes them for its interleaved rope); `qwen2` uses the half-split rope and is
/// left as is.
pub fn gguf_names(cfg: &LlamaConfig, permuted: bool) -> NameMap {
    let heads = cfg.num_attention_heads;
    let kv_heads = cfg.kv_heads();
    let tied = cfg.tie_word_embeddings;
    Box::new(move |name: &str| {
        if let Some(top) = top_level_name(name, tied) {
            return Some(GgufTensorRef::plain(top));
        }
        let (layer, rest) = split_layer_name(name)?;
        let (module, kind) = rest.rsplit_once('.')?; // kind: weight | bias
        let (gg, heads) = match module {
            "self_attn.q_proj" => ("attn_q", Some(heads)),
            "self_attn.k_proj" => ("attn_k", Some(kv_heads)),
            "self_attn.v_proj" => ("attn_v", None),
            "self_attn.o_proj" => ("attn_output", None),
            "mlp.gate_proj" => ("ffn_gate", None),
            "mlp.up_proj" => ("ffn_up", None),
            "mlp.down_proj" => ("ffn_down", None),
            "input_layernorm" => ("attn_norm", None),
            "post_attention_layernorm" => ("ffn_norm", None),
            _ => return None,
        };
        Some(GgufTensorRef {
            name: format!("blk.{layer}.{gg}.{kind}"),
            unpermute_heads: if permuted { heads } else { None },
            shift: 0.0,
        })
    })
}

/// The GGUF name of a tensor outside the layers (embedding, final norm, head).
pub(super) fn top_level_name(name: &str, tied: bool) -> Option<String> {
    Some(
        match name {
            "model.embed_tokens.weight" => "token_embd.weight",
            "model.norm.weight" => "output_norm.weight",
            "lm_head.weight" if tied => "token_embd.weight",
            "lm_head.weight" => "output.weight",
            _ => return None,
        }
        .to_string(),
    )
}
