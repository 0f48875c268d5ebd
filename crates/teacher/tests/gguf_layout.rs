//! A model written as llama.cpp writes GGUF (renamed tensors, permuted Q/K rows) and as a
//! Hugging Face folder gives the same logits: the name map and the un-permutation are right.

#[path = "../../../tests/common/mod.rs"]
mod common;

use candle_core::quantized::GgmlDType;
use candle_core::Tensor;
use common::tiny::{tiny_llama, tiny_llama_config, write_tiny_llama_folder, write_tiny_llama_gguf};
use distill_models::GgufMode;
use distill_teacher::{LoadOptions, Teacher, TeacherSource};

fn logits(path: &std::path::Path, mode: GgufMode) -> Tensor {
    let t = Teacher::load(
        &TeacherSource::parse(path.to_str().unwrap()).unwrap(),
        &LoadOptions {
            gguf_mode: mode,
            ..Default::default()
        },
    )
    .unwrap();
    let a = t
        .tokenizer
        .encode("It is a way I have of driving off the spleen")
        .unwrap();
    let b = t
        .tokenizer
        .encode("and regulating the circulation.")
        .unwrap();
    t.logits(&[a, b]).unwrap()
}

#[test]
fn gguf_and_hf_folder_of_the_same_weights_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_llama_config();
    let vm = tiny_llama(&cfg);
    let dir = tmp.path().join("hf");
    write_tiny_llama_folder(&dir, &cfg, &vm);
    let reference = logits(&dir, GgufMode::Quantized);

    let f32_gguf = tmp.path().join("f32.gguf");
    write_tiny_llama_gguf(&f32_gguf, &cfg, &vm, GgmlDType::F32, true);
    for mode in [GgufMode::Quantized, GgufMode::Dequantized] {
        let d = common::max_abs_diff(&reference, &logits(&f32_gguf, mode));
        assert!(
            d < 1e-5,
            "f32 GGUF ({mode:?}) differs from the HF folder by {d}"
        );
    }

    let q8 = tmp.path().join("q8.gguf");
    write_tiny_llama_gguf(&q8, &cfg, &vm, GgmlDType::Q8_0, true);
    let q = logits(&q8, GgufMode::Quantized);
    let dq = logits(&q8, GgufMode::Dequantized);
    let scale: f32 = reference
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(
        common::max_abs_diff(&reference, &q) < 0.05 * scale,
        "Q8_0 quantised logits drift {}",
        common::max_abs_diff(&reference, &q)
    );
    assert!(
        common::max_abs_diff(&reference, &dq) < 0.05 * scale,
        "Q8_0 dequantised logits drift {}",
        common::max_abs_diff(&reference, &dq)
    );
    // The QMatMul path and the dequantised path read the same rows.
    assert!(common::max_abs_diff(&q, &dq) < 0.05 * scale);
}
