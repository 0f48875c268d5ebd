//! Gemma 3's GGUF files: hyper-parameters from `gemma3.*` metadata (the pattern, the local
//! rotary base and the attention scale set as llama.cpp sets them), and llama.cpp's tensor
//! names; its converter stores every norm weight as `1 + w`, and reading subtracts the 1.

use super::{layer_types, GLOBAL_LAYERS_27B, LOCAL_ROPE_BASE};
use crate::error::{ModelError, Result};
use crate::family::llama::gguf::{
    check_full_rotary, gguf_vocab_size, refuse_rope_scaling, top_level_name,
};
use crate::family::names::split_layer_name;
use crate::family::Family;
use crate::gguf::{GgufFile, GgufTensorRef, NameMap};
use crate::llama::LlamaConfig;

/// Reads the hyper-parameters of a llama.cpp `gemma3` GGUF file.
pub fn config_from_gguf(g: &GgufFile) -> Result<LlamaConfig> {
    let arch = "gemma3";
    let k = |s: &str| format!("{arch}.{s}");
    let name = g.path().display().to_string();
    let hidden = g.get_usize(&k("embedding_length"))?;
    let heads = g.get_usize(&k("attention.head_count"))?;
    let layers = g.get_usize(&k("block_count"))?;
    let head_dim = g.get_usize(&k("attention.key_length"))?;
    if let Some(v) = g.get_usize_opt(&k("attention.value_length"))? {
        if v != head_dim {
            return Err(ModelError::Config {
                source_name: name,
                key: k("attention.value_length"),
                msg: format!(
                    "{v} differs from attention.key_length {head_dim}; both must be equal"
                ),
            });
        }
    }
    let window = g
        .get_usize_opt(&k("attention.sliding_window"))?
        .filter(|&w| w > 0);
    let activation = "gelu_pytorch_tanh".to_string();
    let cfg = LlamaConfig {
        model_type: Family::Gemma3.model_type().into(),
        vocab_size: gguf_vocab_size(g, arch)?,
        hidden_size: hidden,
        intermediate_size: g.get_usize(&k("feed_forward_length"))?,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: Some(
            g.get_usize_opt(&k("attention.head_count_kv"))?
                .unwrap_or(heads),
        ),
        head_dim: Some(head_dim),
        rms_norm_eps: g
            .get_f64_opt(&k("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-6),
        rope_theta: g.get_f64_opt(&k("rope.freq_base"))?.unwrap_or(1_000_000.0),
        max_position_embeddings: g.get_usize_opt(&k("context_length"))?.unwrap_or(32_768),
        tie_word_embeddings: !g.tensor_infos().contains_key("output.weight"),
        hidden_act: activation.clone(),
        hidden_activation: Some(activation),
        query_pre_attn_scalar: Some(if layers == GLOBAL_LAYERS_27B {
            (hidden / heads) as f64
        } else {
            head_dim as f64
        }),
        sliding_window: window,
        layer_types: window.map(|_| layer_types(layers)),
        rope_local_base_freq: window.map(|_| LOCAL_ROPE_BASE),
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
    cfg.validate(&name)?;
    Ok(cfg)
}

/// Maps Hugging Face names of a Gemma 3 checkpoint to llama.cpp's GGUF names (no Q/K
/// permutation: Gemma's rotary embedding is half-split on both sides); norms are shifted.
pub fn gguf_names(cfg: &LlamaConfig) -> NameMap {
    let tied = cfg.tie_word_embeddings;
    Box::new(move |name: &str| {
        if let Some(top) = top_level_name(name, tied) {
            let shift = if name == "model.norm.weight" {
                1.0
            } else {
                0.0
            };
            return Some(GgufTensorRef {
                shift,
                ..GgufTensorRef::plain(top)
            });
        }
        let (layer, rest) = split_layer_name(name)?;
        let (module, kind) = rest.rsplit_once('.')?;
        let gg = match module {
            "self_attn.q_proj" => "attn_q",
            "self_attn.k_proj" => "attn_k",
            "self_attn.v_proj" => "attn_v",
            "self_attn.o_proj" => "attn_output",
            "self_attn.q_norm" => "attn_q_norm",
            "self_attn.k_norm" => "attn_k_norm",
            "mlp.gate_proj" => "ffn_gate",
            "mlp.up_proj" => "ffn_up",
            "mlp.down_proj" => "ffn_down",
            "input_layernorm" => "attn_norm",
            "post_attention_layernorm" => "post_attention_norm",
            "pre_feedforward_layernorm" => "ffn_norm",
            "post_feedforward_layernorm" => "post_ffw_norm",
            _ => return None,
        };
        Some(GgufTensorRef {
            shift: if module.ends_with("norm") { 1.0 } else { 0.0 },
            ..GgufTensorRef::plain(format!("blk.{layer}.{gg}.{kind}"))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::family::LayerKind;

    /// google/gemma-3-270m's `config.json` as transformers writes it.
    pub(crate) const GEMMA3_270M_CONFIG: &str = r#"{
      "_sliding_window_pattern": 6, "architectures": ["Gemma3ForCausalLM"],
      "attention_bias": false, "attention_dropout": 0.0, "attn_logit_softcapping": null,
      "bos_token_id": 2, "eos_token_id": 1, "final_logit_softcapping": null, "head_dim": 256,
      "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 640, "initializer_range": 0.02,
      "intermediate_size": 2048,
      "layer_types": ["sliding_attention","sliding_attention","sliding_attention","sliding_attention",
        "sliding_attention","full_attention","sliding_attention","sliding_attention","sliding_attention",
        "sliding_attention","sliding_attention","full_attention","sliding_attention","sliding_attention",
        "sliding_attention","sliding_attention","sliding_attention","full_attention"],
      "max_position_embeddings": 32768, "model_type": "gemma3_text", "num_attention_heads": 4,
      "num_hidden_layers": 18, "num_key_value_heads": 1, "pad_token_id": 0,
      "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000.0,
      "rope_scaling": null, "rope_theta": 1000000.0, "sliding_window": 512,
      "torch_dtype": "bfloat16", "use_bidirectional_attention": false, "use_cache": true,
      "vocab_size": 262144
    }"#;

    #[test]
    fn the_hugging_face_config_reads_with_its_defaults_and_pattern() {
        let c = LlamaConfig::from_json(GEMMA3_270M_CONFIG, "config.json").unwrap();
        assert_eq!(c.family().unwrap(), Family::Gemma3);
        assert!(
            c.tie_word_embeddings,
            "gemma3_text ties embeddings by default"
        );
        assert_eq!(c.head_dim(), 256);
        let kinds: Vec<LayerKind> = (0..18).map(|i| c.layer_kind(i)).collect();
        for (i, k) in kinds.iter().enumerate() {
            let global = [5, 11, 17].contains(&i);
            assert_eq!(*k == LayerKind::Global, global, "layer {i}: {k:?}");
        }
        assert_eq!(c.layer_types.as_deref(), Some(layer_types(18).as_slice()));
        assert_eq!(
            c.query_scale(),
            None,
            "query_pre_attn_scalar equals head_dim"
        );
        // 268,098,176: the parameters `distill inspect` counts in the GGUF file's tensors.
        assert_eq!(c.param_count(), 268_098_176);
    }

    #[test]
    fn keys_the_forward_would_ignore_are_refused_by_name() {
        for (key, value) in [
            ("final_logit_softcapping", "30.0"),
            ("attn_logit_softcapping", "50.0"),
            ("use_bidirectional_attention", "true"),
            ("hidden_activation", "\"relu\""),
            (
                "rope_scaling",
                "{\"rope_type\": \"linear\", \"factor\": 8.0}",
            ),
            ("layer_types", "[\"sliding_attention\"]"),
            ("sliding_window", "0"),
            ("model_type", "\"gemma2\""),
        ] {
            let mut v: serde_json::Value = serde_json::from_str(GEMMA3_270M_CONFIG).unwrap();
            v[key] = serde_json::from_str(value).unwrap();
            let e = LlamaConfig::from_json(&v.to_string(), "config.json")
                .map(|_| ())
                .unwrap_err()
                .to_string();
            let named = if key == "model_type" { "gemma2" } else { key };
            assert!(e.contains(named) && e.contains("config.json"), "{key}: {e}");
        }
    }

    #[test]
    fn gguf_names_shift_every_norm_and_permute_nothing() {
        let c = LlamaConfig::from_json(GEMMA3_270M_CONFIG, "config.json").unwrap();
        let map = gguf_names(&c);
        for (hf, gguf, shift) in [
            ("model.embed_tokens.weight", "token_embd.weight", 0.0),
            ("lm_head.weight", "token_embd.weight", 0.0),
            ("model.norm.weight", "output_norm.weight", 1.0),
            (
                "model.layers.3.self_attn.q_proj.weight",
                "blk.3.attn_q.weight",
                0.0,
            ),
            (
                "model.layers.3.self_attn.k_norm.weight",
                "blk.3.attn_k_norm.weight",
                1.0,
            ),
            (
                "model.layers.3.post_attention_layernorm.weight",
                "blk.3.post_attention_norm.weight",
                1.0,
            ),
            (
                "model.layers.3.pre_feedforward_layernorm.weight",
                "blk.3.ffn_norm.weight",
                1.0,
            ),
            (
                "model.layers.3.post_feedforward_layernorm.weight",
                "blk.3.post_ffw_norm.weight",
                1.0,
            ),
            (
                "model.layers.3.mlp.down_proj.weight",
                "blk.3.ffn_down.weight",
                0.0,
            ),
        ] {
            let r = map(hf).unwrap_or_else(|| panic!("{hf} unmapped"));
            assert_eq!(
                (r.name.as_str(), r.shift, r.unpermute_heads),
                (gguf, shift, None),
                "{hf}"
            );
        }
        // Every tensor of the config has a GGUF name.
        for (name, _) in c.tensor_shapes() {
            assert!(map(&name).is_some(), "{name}");
        }
    }
}
