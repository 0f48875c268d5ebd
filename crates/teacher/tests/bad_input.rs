//! Bad input gives an error that names the file, key or tensor and what was expected; never a
//! panic, never an out-of-bounds read.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::Path;

use candle_core::quantized::GgmlDType;
use common::tiny::{tiny_llama, tiny_llama_config, write_tiny_llama_folder, write_tiny_llama_gguf};
use distill_teacher::{LoadOptions, Teacher, TeacherSource};

fn load_err(path: &Path) -> String {
    let source = match TeacherSource::parse(path.to_str().unwrap()) {
        Ok(s) => s,
        Err(e) => return e.to_string(),
    };
    match Teacher::load(&source, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded but should not have", path.display()),
        Err(e) => e.to_string(),
    }
}

fn truncate(path: &Path, keep: f64) {
    let data = std::fs::read(path).unwrap();
    std::fs::write(path, &data[..(data.len() as f64 * keep) as usize]).unwrap();
}

#[test]
fn truncated_and_corrupted_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_llama_config();
    let p = tmp.path().join("t.gguf");
    write_tiny_llama_gguf(&p, &cfg, &tiny_llama(&cfg), GgmlDType::Q8_0, true);
    truncate(&p, 0.6);
    let e = load_err(&p);
    assert!(
        e.contains("t.gguf") && e.contains("truncated") && e.contains("tensor `"),
        "{e}"
    );

    // Header cut inside the metadata.
    write_tiny_llama_gguf(&p, &cfg, &tiny_llama(&cfg), GgmlDType::Q8_0, true);
    truncate(&p, 0.01);
    let e = load_err(&p);
    assert!(
        e.contains("t.gguf") && e.contains("not a valid GGUF file"),
        "{e}"
    );

    // Garbage after a valid magic: huge counts must not allocate or read out of bounds.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&u64::MAX.to_le_bytes());
    bytes.extend_from_slice(&u64::MAX.to_le_bytes());
    bytes.extend_from_slice(&[0xAB; 64]);
    std::fs::write(&p, &bytes).unwrap();
    let e = load_err(&p);
    assert!(
        e.contains("t.gguf") && e.contains("not a valid GGUF file"),
        "{e}"
    );

    std::fs::write(&p, b"").unwrap();
    assert!(load_err(&p).contains("t.gguf"));
}

#[test]
fn gguf_without_tokenizer_and_of_unknown_architecture() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_llama_config();
    let p = tmp.path().join("notok.gguf");
    write_tiny_llama_gguf(&p, &cfg, &tiny_llama(&cfg), GgmlDType::F32, false);
    let e = load_err(&p);
    assert!(
        e.contains("notok.gguf") && e.contains("tokenizer.ggml.model"),
        "{e}"
    );

    // A complete file with another architecture name.
    write_tiny_llama_gguf(&p, &cfg, &tiny_llama(&cfg), GgmlDType::F32, true);
    let data = std::fs::read(&p).unwrap();
    let pos = data.windows(5).position(|w| w == b"llama").unwrap();
    let mut patched = data.clone();
    patched[pos..pos + 5].copy_from_slice(b"gptj_");
    let q = tmp.path().join("arch.gguf");
    std::fs::write(&q, patched).unwrap();
    let e = load_err(&q);
    assert!(
        e.contains("arch.gguf") && e.contains("gptj_") && e.contains("supported: llama"),
        "{e}"
    );
}

#[test]
fn truncated_and_corrupted_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_llama_config();
    let dir = tmp.path().join("m");
    write_tiny_llama_folder(&dir, &cfg, &tiny_llama(&cfg));
    let st = dir.join("model.safetensors");
    truncate(&st, 0.7);
    let e = load_err(&dir);
    assert!(
        e.contains("model.safetensors") && e.contains("safetensors"),
        "{e}"
    );

    let mut garbage = 1000u64.to_le_bytes().to_vec();
    garbage.extend_from_slice(b"{\"a\": not json");
    std::fs::write(&st, garbage).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors file"),
        "{e}"
    );
    std::fs::write(&st, b"abc").unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("model.safetensors") && e.contains("too short"),
        "{e}"
    );
}

#[test]
fn wrong_shape_and_missing_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_llama_config();
    let dir = tmp.path().join("m");
    let mut other = cfg.clone();
    other.intermediate_size = 96;
    write_tiny_llama_folder(&dir, &cfg, &tiny_llama(&other));
    let e = load_err(&dir);
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight")
            && e.contains("[96, 32]")
            && e.contains("[64, 32]"),
        "{e}"
    );

    let fewer = distill_models::LlamaConfig {
        num_hidden_layers: 1,
        ..cfg.clone()
    };
    write_tiny_llama_folder(&dir, &cfg, &tiny_llama(&fewer));
    let e = load_err(&dir);
    assert!(
        e.contains("missing tensor `model.layers.1.self_attn.q_proj.weight`"),
        "{e}"
    );
}

#[test]
fn bad_config_json() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_llama_config();
    let dir = tmp.path().join("m");
    write_tiny_llama_folder(&dir, &cfg, &tiny_llama(&cfg));
    let config = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();

    let mut missing = v.clone();
    missing
        .as_object_mut()
        .unwrap()
        .remove("num_attention_heads");
    std::fs::write(&config, missing.to_string()).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("config.json") && e.contains("num_attention_heads"),
        "{e}"
    );

    v["model_type"] = "gpt_neox".into();
    std::fs::write(&config, v.to_string()).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("gpt_neox") && e.contains("llama") && e.contains("bert"),
        "{e}"
    );

    v["model_type"] = "llama".into();
    v["hidden_size"] = "wide".into();
    std::fs::write(&config, v.to_string()).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("config.json") && e.contains("wide"), "{e}");

    std::fs::write(&config, "{not json").unwrap();
    assert!(load_err(&dir).contains("not valid JSON"));
    std::fs::remove_file(&config).unwrap();
    assert!(load_err(&dir).contains("no config.json"));
}

#[test]
fn missing_paths_and_missing_tokenizer() {
    let e = load_err(Path::new("/no/such/model.gguf"));
    assert!(
        e.contains("/no/such/model.gguf") && e.contains("no such file"),
        "{e}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_llama_config();
    let dir = tmp.path().join("m");
    write_tiny_llama_folder(&dir, &cfg, &tiny_llama(&cfg));
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("no tokenizer.json"), "{e}");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("no model.safetensors"), "{e}");
}
