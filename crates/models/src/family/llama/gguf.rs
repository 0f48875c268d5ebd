//! The Llama family's GGUF files: hyper-parameters from `llama.*` / `qwen2.*` metadata, and
//! llama.cpp's tensor names with the converter's Q/K row permutation.

use crate::error::{ModelError, Result};
use crate::family::names::split_layer_name;
use crate::family::Family;
use crate::gguf::{GgufFile, GgufTensorRef, NameMap};
use crate::llama::LlamaConfig;

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
pub(crate) fn gguf_vocab_size(g: &GgufFile, arch: &str) -> Result<usize> {
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
pub(crate) fn check_full_rotary(g: &GgufFile, arch: &str, cfg: &LlamaConfig) -> Result<()> {
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
pub(crate) fn refuse_rope_scaling(g: &GgufFile, arch: &str) -> Result<()> {
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

/// llama.cpp's short names of a Llama-family layer's modules.
const LAYER_NAMES: [(&str, &str); 9] = [
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "ffn_norm"),
];

/// llama.cpp's name of the Hugging Face tensor `hf` of a Llama-family model (`tied`: the head
/// is the embedding), in both directions' one table.
pub fn tensor_name(hf: &str, tied: bool) -> Option<String> {
    if let Some(top) = top_level_name(hf, tied) {
        return Some(top);
    }
    let (layer, rest) = split_layer_name(hf)?;
    let (module, kind) = rest.rsplit_once('.')?; // kind: weight | bias
    let (_, short) = LAYER_NAMES.iter().find(|(m, _)| *m == module)?;
    Some(format!("blk.{layer}.{short}.{kind}"))
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
        let gguf = tensor_name(name, tied)?;
        let module_heads = match split_layer_name(name).map(|(_, rest)| rest) {
            Some(r) if r.starts_with("self_attn.q_proj.") => Some(heads),
            Some(r) if r.starts_with("self_attn.k_proj.") => Some(kv_heads),
            _ => None,
        };
        Some(GgufTensorRef {
            name: gguf,
            unpermute_heads: if permuted { module_heads } else { None },
            shift: 0.0,
        })
    })
}

/// The GGUF name of a tensor outside the layers (embedding, final norm, head).
pub(crate) fn top_level_name(name: &str, tied: bool) -> Option<String> {
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
