//! Each decoder family of `distill_models::family` read from a Hugging Face folder and run
//! against transformers itself: tiny random models with every trait of their family on, saved
//! and run by transformers (`scripts/ref-transformers-families.py`, committed fixtures). The
//! logits of every real position of a padded batch must equal transformers' within 1e-4.

use std::path::PathBuf;

use candle_core::{DType, Device};
use distill_models::{Family, Llama, LlamaConfig, SafetensorsWeights};

const TOLERANCE: f32 = 1e-4;

fn fixture(family: &str, file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/families")
        .join(family)
        .join(file)
}

/// Largest |ours − transformers| over the positions the mask keeps.
fn max_diff_at_real_positions(family: &str) -> (LlamaConfig, f32) {
    let config = fixture(family, "config.json");
    let cfg = LlamaConfig::from_json(
        &std::fs::read_to_string(&config).unwrap(),
        &config.display().to_string(),
    )
    .unwrap();
    let weights = SafetensorsWeights::open(
        &[fixture(family, "model.safetensors")],
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let model = Llama::load(&cfg, &weights).unwrap();
    let reference =
        candle_core::safetensors::load(fixture(family, "reference.safetensors"), &Device::Cpu)
            .unwrap();
    let ids = reference["ids"].to_dtype(DType::U32).unwrap();
    let mask = reference["attention_mask"].to_dtype(DType::U8).unwrap();
    let ours = model.forward(&ids, Some(&mask), false).unwrap().logits;
    let keep = mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
    let diff = ((ours - &reference["logits"]).unwrap().abs().unwrap())
        .broadcast_mul(&keep)
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    (cfg, diff)
}

#[test]
fn gemma3_folder_matches_transformers() {
    let (cfg, diff) = max_diff_at_real_positions("gemma3");
    eprintln!("Gemma 3 (tiny, transformers): max |Δlogit| {diff:.2e}");
    assert_eq!(cfg.family().unwrap(), Family::Gemma3);
    // transformers ≥ 5 writes the bases in rope_parameters, one entry per layer type.
    assert_eq!((cfg.rope_theta, cfg.rope_local_base_freq), (1e6, Some(1e4)));
    assert!(diff < TOLERANCE, "{diff}");
}

#[test]
fn qwen3_folder_matches_transformers() {
    let (cfg, diff) = max_diff_at_real_positions("qwen3");
    eprintln!("Qwen3 (tiny, transformers): max |Δlogit| {diff:.2e}");
    assert_eq!(cfg.family().unwrap(), Family::Qwen3);
    assert!(diff < TOLERANCE, "{diff}");
}

#[test]
fn phi3_folder_matches_transformers() {
    let (cfg, diff) = max_diff_at_real_positions("phi3");
    eprintln!("Phi-3 (tiny, transformers): max |Δlogit| {diff:.2e}");
    assert_eq!(cfg.family().unwrap(), Family::Phi3);
    assert!(diff < TOLERANCE, "{diff}");
}

/// The fixtures are not trivially equal: the same weights read as another family differ.
#[test]
fn a_family_read_as_another_does_not_match() {
    let config = fixture("qwen3", "config.json");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\"qwen3\"", "\"gemma3_text\"");
    let cfg = LlamaConfig::from_json(&text, "qwen3 as gemma3").unwrap();
    let weights = SafetensorsWeights::open(
        &[fixture("qwen3", "model.safetensors")],
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let e = Llama::load(&cfg, &weights)
        .err()
        .expect("Gemma's extra norms are missing");
    assert!(e.to_string().contains("pre_feedforward_layernorm"), "{e}");
}

/// A Qwen3 GGUF written with llama.cpp's own name table (`scripts/ref-llamacpp-qwen3.py`, from
/// the same tiny model) reads back with llama.cpp's logits: the family's GGUF names are
/// llama.cpp's.
#[test]
fn qwen3_gguf_matches_llamacpp() {
    use distill_models::{family, GgufFile, GgufMode, GgufWeights};
    let g = std::sync::Arc::new(GgufFile::open(&fixture("qwen3", "model.gguf")).unwrap());
    let cfg = LlamaConfig::from_gguf(&g).unwrap();
    assert_eq!(cfg.family().unwrap(), Family::Qwen3);
    let names = family::gguf_names(&cfg).unwrap();
    let weights = GgufWeights::new(g, names, GgufMode::Dequantized, DType::F32, &Device::Cpu);
    let model = Llama::load(&cfg, &weights).unwrap();
    let reference =
        candle_core::safetensors::load(fixture("qwen3", "llamacpp.safetensors"), &Device::Cpu)
            .unwrap();
    let ids = reference["ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let ours = model
        .forward(&ids, None, false)
        .unwrap()
        .logits
        .squeeze(0)
        .unwrap();
    let diff = (ours - &reference["logits"])
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    eprintln!("Qwen3 GGUF (llama.cpp's names) vs llama.cpp: max |Δlogit| {diff:.2e}");
    assert!(diff < TOLERANCE, "{diff}");
}
