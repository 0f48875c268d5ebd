//! A tiny random Llama and BERT classifier for the unit tests of the passes.

use candle_core::{DType, Device, Tensor};
use distill_models::LlamaConfig;

use distill_models::surgery::Tensors;

pub fn tiny_config() -> LlamaConfig {
    distill_models::testing::TinyLlama {
        vocab: 50,
        hidden: 32,
        ffn: 64,
        layers: 3,
        heads: 4,
        kv_heads: 2,
        positions: 64,
        rms_norm_eps: 1e-6,
    }
    .config()
}

/// Unit norms and small random matrices.
pub fn random_tensors(cfg: &LlamaConfig) -> Tensors {
    let dev = Device::Cpu;
    cfg.tensor_shapes()
        .into_iter()
        .map(|(n, s)| {
            let t = if n.contains("norm") {
                Tensor::ones(s.as_slice(), DType::F32, &dev).unwrap()
            } else {
                (Tensor::randn(0f32, 1.0, s.as_slice(), &dev).unwrap() * 0.1).unwrap()
            };
            (n, t)
        })
        .collect()
}

/// A tiny BERT classifier's config (2 layers, 4 heads of 4).
pub fn tiny_bert_config() -> distill_models::BertConfig {
    distill_models::BertConfig::from_json(
        r#"{"model_type":"bert","vocab_size":40,"hidden_size":16,"num_hidden_layers":2,
            "num_attention_heads":4,"intermediate_size":32,"max_position_embeddings":20}"#,
        "tiny-bert",
    )
    .unwrap()
}

/// Random weights of a 2-class `BertForSequenceClassification` (`bert.*`, `classifier.*`),
/// as a fresh trainable classifier creates them.
pub fn random_bert(cfg: &distill_models::BertConfig) -> Tensors {
    use distill_models::{BertClassifier, Pooling, VarMapWeights};
    let vm = candle_nn::VarMap::new();
    BertClassifier::load(
        cfg,
        &VarMapWeights::new(&vm, DType::F32, &Device::Cpu),
        2,
        Pooling::Cls,
    )
    .unwrap();
    let data = vm.data().lock().unwrap();
    data.iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect()
}
