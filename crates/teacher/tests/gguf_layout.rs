//! A model written as llama.cpp writes GGUF (renamed tensors, permuted Q/K rows) and as a
//! Hugging Face folder gives the same logits: the name map and the un-permutation are right.

#[path = "../../../tests/common/mod.rs"]
mod common;

use candle_core::quantized::GgmlDType;
use candle_core::Tensor;
use common::tiny::{tiny_llama, tiny_llama_config, write_tiny_llama_folder, write_tiny_llama_gguf};
use distill_teacher::GgufCompute;
use distill_teacher::{LoadOptions, Teacher, TeacherSource};

fn load(path: &std::path::Path, mode: GgufCompute) -> distill_teacher::Result<Teacher> {
    Teacher::load(
        &TeacherSource::parse(path.to_str().unwrap()).unwrap(),
        &LoadOptions {
            gguf_mode: mode,
            ..Default::default()
        },
    )
}

fn logits(path: &std::path::Path, mode: GgufCompute) -> Tensor {
    let t = load(path, mode).unwrap();
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
    let reference = logits(&dir, GgufCompute::Quantized);

    let f32_gguf = tmp.path().join("f32.gguf");
    write_tiny_llama_gguf(&f32_gguf, &cfg, &vm, GgmlDType::F32, true);
    for mode in [GgufCompute::Quantized, GgufCompute::Dequantized] {
        let d = common::max_abs_diff(&reference, &logits(&f32_gguf, mode));
        assert!(
            d < 1e-5,
            "f32 GGUF ({mode:?}) differs from the HF folder by {d}"
        );
    }

    let q8 = tmp.path().join("q8.gguf");
    write_tiny_llama_gguf(&q8, &cfg, &vm, GgmlDType::Q8_0, true);
    let q = logits(&q8, GgufCompute::Quantized);
    let dq = logits(&q8, GgufCompute::Dequantized);
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

/// Logits of one sentence run alone (no padding), `[1, n, vocab]`.
fn logits_alone(path: &std::path::Path, mode: GgufCompute) -> Tensor {
    let t = load(path, mode).unwrap();
    let ids = t
        .tokenizer
        .encode("It is a way I have of driving off the spleen")
        .unwrap();
    t.logits(&[ids]).unwrap()
}

#[test]
fn ggml_path_runs_q8_0_and_f32_files_and_names_what_it_cannot_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_llama_config();
    let vm = tiny_llama(&cfg);
    // F32 matrices: nothing is quantised, so only summation orders differ from candle.
    let f32_gguf = tmp.path().join("f32.gguf");
    write_tiny_llama_gguf(&f32_gguf, &cfg, &vm, GgmlDType::F32, true);
    let d = common::max_abs_diff(
        &logits_alone(&f32_gguf, GgufCompute::Quantized),
        &logits_alone(&f32_gguf, GgufCompute::Ggml),
    );
    assert!(d < 1e-5, "F32 file: ggml path differs from candle by {d}");
    // Hidden states follow `Llama::forward`'s convention (the last one after the final norm).
    let g = distill_models::GgufFile::open(&f32_gguf).unwrap();
    let ggml = distill_models::GgmlDecoder::load(&g).unwrap();
    let ids = vec![5u32, 17, 200, 3, 99, 42, 7];
    let (_, hidden) = ggml
        .forward_tensors(std::slice::from_ref(&ids), true)
        .unwrap();
    let hidden = hidden.unwrap();
    let candle_model = distill_models::Llama::load(
        &cfg,
        &distill_models::GgufWeights::new(
            std::sync::Arc::new(g),
            distill_models::family::gguf_names(&cfg).unwrap(),
            distill_models::GgufMode::Dequantized,
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        ),
    )
    .unwrap();
    let input = Tensor::new(ids.as_slice(), &candle_core::Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let reference = candle_model
        .forward(&input, None, true)
        .unwrap()
        .hidden_states
        .unwrap();
    assert_eq!(hidden.len(), reference.len());
    for (i, (a, b)) in hidden.iter().zip(&reference).enumerate() {
        let d = common::max_abs_diff(a, b);
        assert!(d < 1e-4, "hidden state {i} differs by {d}");
    }
    // Q8_0: both quantise activations to Q8_0 before each product.
    let q8 = tmp.path().join("q8.gguf");
    write_tiny_llama_gguf(&q8, &cfg, &vm, GgmlDType::Q8_0, true);
    let d = common::max_abs_diff(
        &logits_alone(&q8, GgufCompute::Quantized),
        &logits_alone(&q8, GgufCompute::Ggml),
    );
    assert!(d < 1e-2, "Q8_0 file: ggml path differs from QMatMul by {d}");

    let f16_gguf = tmp.path().join("f16.gguf");
    write_tiny_llama_gguf(&f16_gguf, &cfg, &vm, GgmlDType::F16, true);
    let err = load(&f16_gguf, GgufCompute::Ggml)
        .err()
        .expect("F16 matrices are not a ggml-path format")
        .to_string();
    assert!(
        err.contains("blk.0.attn_q.weight") && err.contains("Q4_1, Q5_0, Q8_0, Q4_K, Q6_K and F32"),
        "{err}"
    );
}

/// The ggml path's key/value cache: a prompt prefilled in one batch and then extended a token at
/// a time gives, at every step, the logits of the whole sequence run at once — up to the one
/// thing llama.cpp itself does differently for a single query row (the value product's summation
/// order), so within float rounding, not bit for bit.
#[test]
fn ggml_path_cache_steps_agree_with_the_full_forward() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_llama_config();
    let vm = tiny_llama(&cfg);
    let path = tmp.path().join("f32.gguf");
    write_tiny_llama_gguf(&path, &cfg, &vm, GgmlDType::F32, true);
    let model =
        distill_models::GgmlDecoder::load(&distill_models::GgufFile::open(&path).unwrap()).unwrap();
    let ids = [5u32, 17, 200, 3, 99, 42, 7, 11, 64];
    let vocab = cfg.vocab_size;
    let full = model.forward_traced(&ids, &mut |_, _| {}).unwrap();
    let mut seq = model.new_sequence();
    let prefill = 4;
    let mut steps = vec![model
        .extend(&ids[..prefill], &mut seq, &mut |_, _| {})
        .unwrap()];
    for &id in &ids[prefill..] {
        steps.push(model.extend(&[id], &mut seq, &mut |_, _| {}).unwrap());
    }
    assert_eq!(seq.len(), ids.len());
    // The prefill is the full forward's first rows, bit for bit: the same kernels ran.
    assert_eq!(steps[0], full[..prefill * vocab]);
    for (i, step) in steps[1..].iter().enumerate() {
        let pos = prefill + i;
        let want = &full[pos * vocab..(pos + 1) * vocab];
        let worst = step
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "position {pos}: {worst}");
    }
}
