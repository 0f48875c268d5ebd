//! A Gemma 3 model exported as GGUF (the tiny transformers-made fixture cut to two layers):
//! llama.cpp's names, norms stored as `1 + w`, no Q/K permutation, `gemma3.*` metadata; read
//! back by the GGUF reader it gives the folder model's logits. A model whose layer kinds differ
//! from the fixed pattern llama.cpp assumes is refused.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use distill_compress::{export_gguf, GgufExport};
use distill_models::surgery::{Keep, LayerKeep};
use distill_models::{
    family, GgufFile, GgufMode, GgufWeights, Input, Llama, LlamaConfig, Model, SafetensorsWeights,
    WeightSource,
};

fn fixture(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/families/gemma3")
        .join(file)
}

fn teacher() -> (LlamaConfig, SafetensorsWeights) {
    let text = std::fs::read_to_string(fixture("config.json")).unwrap();
    let cfg = LlamaConfig::from_json(&text, "gemma3/config.json").unwrap();
    let w = SafetensorsWeights::open(&[fixture("model.safetensors")], DType::F32, &Device::Cpu)
        .unwrap();
    (cfg, w)
}

/// SentencePiece-style tokenizer keys for a vocabulary of `n` made-up pieces.
fn tokenizer_keys(n: usize) -> BTreeMap<String, Value> {
    let tokens: Vec<Value> = (0..n)
        .map(|i| {
            Value::String(
                ["<pad>", "<eos>", "<bos>", "<unk>"]
                    .get(i)
                    .map_or(format!("p{i}"), |s| s.to_string()),
            )
        })
        .collect();
    BTreeMap::from([
        ("tokenizer.ggml.model".into(), Value::String("llama".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
        (
            "tokenizer.ggml.scores".into(),
            Value::Array((0..n).map(|i| Value::F32(-(i as f32))).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(
                (0..n)
                    .map(|i| Value::I32(if i < 4 { 3 } else { 1 }))
                    .collect(),
            ),
        ),
    ])
}

fn export(
    cfg: &LlamaConfig,
    weights: &SafetensorsWeights,
    out: &std::path::Path,
) -> Result<(), String> {
    export_gguf(
        out,
        &GgufExport {
            config: cfg,
            weights,
            tokenizer: tokenizer_keys(cfg.vocab_size),
            qtype: GgmlDType::F32,
            name: "tiny-gemma3".into(),
            embeddings: None,
            encoded: None,
            search: Default::default(),
        },
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

fn logits(m: &dyn Model) -> Tensor {
    let ids = Tensor::new(
        &[[5u32, 17, 33, 2, 90, 11, 64, 7, 8, 120, 3, 44]],
        &Device::Cpu,
    )
    .unwrap();
    m.run(&Input::new(&ids)).unwrap().logits
}

#[test]
fn an_exported_gemma3_reads_back_as_the_folder_model() {
    let tmp = tempfile::tempdir().unwrap();
    let (t, w) = teacher();
    // Layers 0 and 2 of the teacher: both sliding, as llama.cpp reads a two-layer file.
    let keep = Keep {
        layers: vec![0, 2],
        residual: None,
        per_layer: vec![LayerKeep::default(), LayerKeep::default()],
    };
    let (mut cfg, tensors) = distill_models::surgery::llama::cut(&t, &w, &keep).unwrap();
    // llama.cpp scales a Gemma 3 file's scores by head_dim (as every released size but 27B
    // does); the fixture's own scalar is refused below.
    let refused = export(
        &cfg,
        &SafetensorsWeights::open(&[fixture("model.safetensors")], DType::F32, &Device::Cpu)
            .unwrap(),
        &tmp.path().join("x.gguf"),
    );
    assert!(refused.unwrap_err().contains("query_pre_attn_scalar"));
    cfg.query_pre_attn_scalar = Some(cfg.head_dim() as f64);
    let path = tmp.path().join("student.safetensors");
    candle_core::safetensors::save(&tensors.into_iter().collect::<HashMap<_, _>>(), &path).unwrap();
    let folder = SafetensorsWeights::open(&[path], DType::F32, &Device::Cpu).unwrap();
    let gguf = tmp.path().join("student.gguf");
    export(&cfg, &folder, &gguf).unwrap();

    let g = Arc::new(GgufFile::open(&gguf).unwrap());
    assert_eq!(g.get_str("general.architecture").unwrap(), "gemma3");
    let read = LlamaConfig::from_gguf(&g).unwrap();
    assert_eq!(
        (read.head_dim(), read.sliding_window, read.num_hidden_layers),
        (cfg.head_dim(), cfg.sliding_window, 2)
    );
    // Stored as 1 + w.
    let stored = g
        .qtensor("blk.0.post_ffw_norm.weight", &Device::Cpu)
        .unwrap()
        .dequantize(&Device::Cpu)
        .unwrap();
    let w0 = folder
        .tensor(
            "model.layers.0.post_feedforward_layernorm.weight",
            &[cfg.hidden_size],
            candle_nn::Init::Const(0.0),
        )
        .unwrap();
    let shift = ((stored - w0)
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        - 1.0)
        .abs();
    assert!(shift < 1e-6, "{shift}");

    let names = family::gguf_names(&read).unwrap();
    let weights = GgufWeights::new(g, names, GgufMode::Dequantized, DType::F32, &Device::Cpu);
    let from_gguf = Llama::load(&read, &weights).unwrap();
    let from_folder = Llama::load(&cfg, &folder).unwrap();
    let diff = (logits(&from_gguf) - logits(&from_folder))
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-5, "{diff}");
}

#[test]
fn a_layer_pattern_llama_cpp_would_misread_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut t, w) = teacher();
    t.query_pre_attn_scalar = Some(t.head_dim() as f64);
    // Sliding, global, sliding: llama.cpp would run three sliding layers.
    let out = tmp.path().join("teacher.gguf");
    let e = export(&t, &w, &out).unwrap_err();
    assert!(
        e.contains("every sixth") && e.contains("student.init.layers"),
        "{e}"
    );
    assert!(!out.exists());
}
