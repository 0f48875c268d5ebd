//! The checks a decoder config passes before a forward relies on it, and the rotary settings
//! of transformers ≥ 5 read into the fields the forward uses.

use super::config::LlamaConfig;
use crate::error::{ModelError, Result};

impl LlamaConfig {
    /// Takes the rotary bases from `rope_parameters` (transformers ≥ 5), refusing a rotary
    /// embedding other than the default one.
    pub(super) fn read_rope_parameters(&mut self, source_name: &str) -> Result<()> {
        let Some(params) = self.rope_parameters.clone() else {
            return Ok(());
        };
        let err = |key: &str, msg: String| ModelError::Config {
            source_name: source_name.to_string(),
            key: format!("rope_parameters{key}"),
            msg,
        };
        let theta = |entry: &serde_json::Value, at: &str| -> Result<Option<f64>> {
            let kind = entry
                .get("rope_type")
                .and_then(|t| t.as_str())
                .unwrap_or("default");
            if kind != "default" {
                return Err(err(
                    &format!("{at}.rope_type"),
                    format!("`{kind}` is not supported yet"),
                ));
            }
            if let Some(f) = entry.get("partial_rotary_factor").and_then(|f| f.as_f64()) {
                if f != 1.0 {
                    return Err(err(
                        &format!("{at}.partial_rotary_factor"),
                        format!("partial rotary embeddings ({f}) are not supported"),
                    ));
                }
            }
            Ok(entry.get("rope_theta").and_then(|t| t.as_f64()))
        };
        match (
            params.get("full_attention"),
            params.get("sliding_attention"),
        ) {
            (None, None) => {
                if let Some(t) = theta(&params, "")? {
                    self.rope_theta = t;
                }
            }
            (full, sliding) => {
                if let Some(t) = full
                    .map(|e| theta(e, ".full_attention"))
                    .transpose()?
                    .flatten()
                {
                    self.rope_theta = t;
                }
                if let Some(t) = sliding
                    .map(|e| theta(e, ".sliding_attention"))
                    .transpose()?
                    .flatten()
                {
                    self.rope_local_base_freq = Some(t);
                }
            }
        }
        Ok(())
    }

    /// Checks the relations between sizes that the forward pass relies on.
    pub fn validate(&self, source_name: &str) -> Result<()> {
        let err = |key: &str, msg: String| ModelError::Config {
            source_name: source_name.to_string(),
            key: key.to_string(),
            msg,
        };
        self.family().map_err(|e| match e {
            ModelError::UnsupportedArchitecture {
                found, supported, ..
            } => ModelError::UnsupportedArchitecture {
                source_name: source_name.to_string(),
                found,
                supported,
            },
            e => e,
        })?;
        for (key, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(err(key, "must be positive".into()));
            }
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(err(
                "num_attention_heads",
                format!(
                    "{} heads do not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(err(
                "head_dim",
                format!(
                    "rotary embeddings need an even head_dim, got {}",
                    self.head_dim()
                ),
            ));
        }
        let kv = self.kv_heads();
        if kv == 0 || !self.num_attention_heads.is_multiple_of(kv) {
            return Err(err(
                "num_key_value_heads",
                format!(
                    "{kv} must divide num_attention_heads {}",
                    self.num_attention_heads
                ),
            ));
        }
        if let Err(msg) = self.activation() {
            let key = if self.hidden_activation.is_some() {
                "hidden_activation"
            } else {
                "hidden_act"
            };
            return Err(err(key, msg));
        }
        self.validate_gemma_keys(source_name)?;
        if let Some(s) = &self.rope_scaling {
            if !s.is_null() {
                return Err(err(
                    "rope_scaling",
                    format!("rope scaling is not supported yet: {s}"),
                ));
            }
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(self.rms_norm_eps) || !positive(self.rope_theta) {
            return Err(err("rms_norm_eps/rope_theta", "must be positive".into()));
        }
        Ok(())
    }

    /// The keys of sliding windows, local rotary bases and soft-capping: what the forward
    /// implements, and nothing it would silently ignore.
    fn validate_gemma_keys(&self, source_name: &str) -> Result<()> {
        let err = |key: &str, msg: String| ModelError::Config {
            source_name: source_name.to_string(),
            key: key.to_string(),
            msg,
        };
        for (key, v) in [
            ("final_logit_softcapping", self.final_logit_softcapping),
            ("attn_logit_softcapping", self.attn_logit_softcapping),
        ] {
            if let Some(v) = v {
                return Err(err(key, format!("soft-capping ({v}) is not supported")));
            }
        }
        let layout = self.layout();
        if (layout.fused_qkv && self.qkv_bias()) || (layout.fused_gate_up && self.mlp_bias) {
            return Err(err(
                "attention_bias/mlp_bias",
                "biases on fused projections are not supported".into(),
            ));
        }
        if self.use_sliding_window == Some(true) {
            return Err(err(
                "use_sliding_window",
                "Qwen's sliding window over the upper layers is not supported".into(),
            ));
        }
        if let Some(f) = self.partial_rotary_factor.filter(|&f| f != 1.0) {
            return Err(err(
                "partial_rotary_factor",
                format!("partial rotary embeddings ({f}) are not supported"),
            ));
        }
        if self.use_bidirectional_attention == Some(true) {
            return Err(err(
                "use_bidirectional_attention",
                "bidirectional attention (an embedding model) is not supported; the decoder is causal".into(),
            ));
        }
        if self.sliding_window == Some(0) {
            return Err(err("sliding_window", "must be positive".into()));
        }
        if let Some(types) = &self.layer_types {
            if types.len() != self.num_hidden_layers {
                return Err(err(
                    "layer_types",
                    format!(
                        "{} entries for {} layers",
                        types.len(),
                        self.num_hidden_layers
                    ),
                ));
            }
            if let Some(t) = types
                .iter()
                .find(|t| !matches!(t.as_str(), "sliding_attention" | "full_attention"))
            {
                return Err(err(
                    "layer_types",
                    format!("`{t}` is not one of sliding_attention, full_attention"),
                ));
            }
            if self.sliding_window.is_none() && types.iter().any(|t| t == "sliding_attention") {
                return Err(err(
                    "sliding_window",
                    "missing, but layer_types has sliding_attention layers".into(),
                ));
            }
        }
        for (key, v) in [
            ("rope_local_base_freq", self.rope_local_base_freq),
            ("query_pre_attn_scalar", self.query_pre_attn_scalar),
        ] {
            if v.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
                return Err(err(key, "must be positive".into()));
            }
        }
        Ok(())
    }
}
