//! Fixtures shared by the train crate's tests of causal-LM learning: tiny random decoders, a
//! learnable token stream, and the weights of a var map as plain numbers.
#![allow(dead_code)]

use candle_core::{DType, Device};
use candle_nn::VarMap;
use distill_models::{Llama, LlamaConfig, VarMapWeights};
use distill_train::data::BlockSet;

/// A Llama of `layers` layers of width `hidden` over 64 tokens (4 heads, 2 key/value heads).
pub fn cfg(layers: usize, hidden: usize) -> LlamaConfig {
    LlamaConfig::from_json(
        &format!(
            r#"{{"model_type":"llama","vocab_size":64,"hidden_size":{hidden},"intermediate_size":64,
                "num_hidden_layers":{layers},"num_attention_heads":4,"num_key_value_heads":2,
                "tie_word_embeddings":true,"max_position_embeddings":64}}"#
        ),
        "tiny",
    )
    .unwrap()
}

/// The model of `c` with fresh random weights, and the var map that holds them.
pub fn model(c: &LlamaConfig) -> (VarMap, Llama) {
    let vm = VarMap::new();
    let m = Llama::load(c, &VarMapWeights::new(&vm, DType::F32, &Device::Cpu)).unwrap();
    (vm, m)
}

/// `n` blocks of `s` tokens from a linear congruential stream seeded by `seed`.
pub fn blocks(n: usize, s: usize, seed: u32) -> BlockSet {
    let mut x = seed;
    let blocks = (0..n)
        .map(|_| {
            (0..s)
                .map(|_| {
                    x = x.wrapping_mul(1103515245).wrapping_add(12345);
                    (x >> 16) % 64
                })
                .collect()
        })
        .collect();
    BlockSet {
        block_size: s,
        blocks,
        stream_tokens: n * s,
        targets: None,
    }
}

/// Variable names and values, in name order.
pub type Weights = Vec<(String, Vec<f32>)>;

/// The values of every variable of `vm`, in name order.
pub fn weights(vm: &VarMap) -> Weights {
    let mut v: Vec<_> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let t = v.as_tensor().flatten_all().unwrap();
            (k.clone(), t.to_vec1::<f32>().unwrap())
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}
