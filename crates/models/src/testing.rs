//! Tiny Llama configs for tests about logic (not about quality): one builder, each test naming
//! only the shape it needs.

use crate::LlamaConfig;

/// The shape of a tiny Llama; the rest is Llama's defaults with tied embeddings.
#[derive(Clone, Copy, Debug)]
pub struct TinyLlama {
    pub vocab: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub positions: usize,
    pub rms_norm_eps: f64,
}

impl TinyLlama {
    /// The config, checked as a `config.json` would be.
    pub fn config(&self) -> LlamaConfig {
        let cfg = LlamaConfig {
            model_type: "llama".into(),
            vocab_size: self.vocab,
            hidden_size: self.hidden,
            intermediate_size: self.ffn,
            num_hidden_layers: self.layers,
            num_attention_heads: self.heads,
            num_key_value_heads: Some(self.kv_heads),
            head_dim: None,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: 10_000.0,
            max_position_embeddings: self.positions,
            tie_word_embeddings: true,
            ..LlamaConfig::default()
        };
        cfg.validate("tiny").expect("a valid tiny config");
        cfg
    }
}
