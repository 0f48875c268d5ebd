//! GGUF export round trips: a tiny random Llama saved as a Hugging Face folder, exported to GGUF
//! (f32, Q8_0, Q4_K with fallbacks), read back by this project's GGUF loader and by candle's
//! `quantized_llama`, gives the folder model's logits.

#[path = "../../../tests/common/mod.rs"]
mod common;

use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::{DType, Device, Tensor};
use common::tiny::{tiny_llama, tiny_llama_config, write_tiny_llama_folder, write_tiny_llama_gguf};
use distill_compress::{export_gguf, tokenizer_metadata, GgufExport};
use distill_models::SafetensorsWeights;
use distill_teacher::GgufCompute;
use distill_teacher::{LoadOptions, Teacher, TeacherSource};

fn load(path: &std::path::Path) -> Teacher {
    let src = TeacherSource::parse(path.to_str().unwrap()).unwrap();
    Teacher::load(
        &src,
        &LoadOptions {
            device: Device::Cpu,
            dtype: DType::F32,
            gguf_mode: GgufCompute::Quantized,
            ..Default::default()
        },
    )
    .unwrap()
}

#[test]
fn exported_gguf_reproduces_the_folder_model_in_both_readers() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_llama_config();
    let vm = tiny_llama(&cfg);
    let folder = tmp.path().join("model");
    write_tiny_llama_folder(&folder, &cfg, &vm);
    // The tokenizer metadata comes from a GGUF "teacher" of the same vocabulary.
    let teacher_gguf = tmp.path().join("teacher.gguf");
    write_tiny_llama_gguf(&teacher_gguf, &cfg, &vm, GgmlDType::F32, true);
    let tok = tokenizer_metadata(&teacher_gguf).unwrap();

    let dense = SafetensorsWeights::open(
        &[folder.join("model.safetensors")],
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let reference = load(&folder);
    let ids = vec![vec![3u32, 17, 256, 99, 42, 7, 200, 1, 5, 8, 13, 21]];
    let want = reference.logits(&ids).unwrap();

    // `tol`: vs the dense folder model (weight quantisation error); `cross`: between the two
    // GGUF readers. Both multiply quantised weights by activations rounded to 8-bit blocks, and
    // their float paths before that rounding differ in the last bits (fused vs composed
    // RMSNorm, interleaved rope on permuted rows vs half-split rope), which can move an
    // activation across a rounding boundary: the readers agree to within that rounding step,
    // which coarser weight types amplify, rather than to float precision (f32 has no rounding).
    for (qtype, tol, cross) in [
        (GgmlDType::F32, 1e-4f32, 1e-4f32),
        (GgmlDType::Q8_0, 0.05, 1e-3),
        (GgmlDType::Q4K, 0.5, 1e-2),
    ] {
        let out = tmp.path().join(format!("student-{qtype:?}.gguf"));
        let summary = export_gguf(
            &out,
            &GgufExport {
                config: &cfg,
                weights: &dense,
                tokenizer: tok.clone(),
                qtype,
                name: "tiny-student".into(),
                embeddings: None,
                encoded: None,
                search: Default::default(),
            },
        )
        .unwrap();
        // Rows of 32 or 64 values cannot hold 256-value K-quant blocks: every matrix falls back.
        assert_eq!(
            summary.fallbacks.is_empty(),
            qtype != GgmlDType::Q4K,
            "{:?}",
            summary.fallbacks
        );
        assert!(!tmp.path().read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".tmp-")));

        // Our reader: same logits, same tokenizer.
        let back = load(&out);
        let got = back.logits(&ids).unwrap();
        let d = common::max_abs_diff(&got, &want);
        assert!(d < tol, "{qtype:?}: max |Δlogit| {d}");
        assert_eq!(
            back.tokenizer.encode("abc ab <|endoftext|>").unwrap(),
            reference.tokenizer.encode("abc ab <|endoftext|>").unwrap()
        );

        // candle's quantized_llama (llama.cpp's layout and rope): the last position's logits.
        let mut f = std::fs::File::open(&out).unwrap();
        let content = gguf_file::Content::read(&mut f).unwrap();
        assert_eq!(
            content.metadata["general.architecture"]
                .to_string()
                .unwrap(),
            "llama"
        );
        let mut model = candle_transformers::models::quantized_llama::ModelWeights::from_gguf(
            content,
            &mut f,
            &Device::Cpu,
        )
        .unwrap();
        let input = Tensor::new(ids[0].as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let last = model.forward(&input, 0).unwrap().squeeze(0).unwrap();
        let ours_last = got.get(0).unwrap().get(ids[0].len() - 1).unwrap();
        let d = common::max_abs_diff(&last, &ours_last);
        assert!(
            d < cross,
            "{qtype:?}: quantized_llama differs from our reader by {d}"
        );
    }
}

#[test]
fn export_refuses_what_it_cannot_write_and_leaves_no_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_llama_config();
    let vm = tiny_llama(&cfg);
    let folder = tmp.path().join("model");
    write_tiny_llama_folder(&folder, &cfg, &vm);
    let dense = SafetensorsWeights::open(
        &[folder.join("model.safetensors")],
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let out = tmp.path().join("x.gguf");
    let e = export_gguf(
        &out,
        &GgufExport {
            config: &cfg,
            weights: &dense,
            tokenizer: Default::default(),
            qtype: GgmlDType::Q8_0,
            name: "x".into(),
            embeddings: None,
            encoded: None,
            search: Default::default(),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("tokenizer"), "{e}");
    let mut qwen = cfg.clone();
    qwen.model_type = "qwen2".into();
    let teacher_gguf = tmp.path().join("t.gguf");
    write_tiny_llama_gguf(&teacher_gguf, &cfg, &vm, GgmlDType::F32, true);
    let tok = tokenizer_metadata(&teacher_gguf).unwrap();
    let e = export_gguf(
        &out,
        &GgufExport {
            config: &qwen,
            weights: &dense,
            tokenizer: tok.clone(),
            qtype: GgmlDType::Q8_0,
            name: "x".into(),
            embeddings: None,
            encoded: None,
            search: Default::default(),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("qwen2") && e.contains("llama"), "{e}");
    // A tensor missing from the weights: an error naming it, and no file left behind.
    let mut wide = cfg.clone();
    wide.num_hidden_layers = 3;
    let e = export_gguf(
        &out,
        &GgufExport {
            config: &wide,
            weights: &dense,
            tokenizer: tok,
            qtype: GgmlDType::Q8_0,
            name: "x".into(),
            embeddings: None,
            encoded: None,
            search: Default::default(),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("model.layers.2"), "{e}");
    assert!(!out.exists());
    assert!(!std::fs::read_dir(tmp.path()).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains(".tmp-")));
    // A GGUF without tokenizer metadata cannot lend one.
    let bare = tmp.path().join("bare.gguf");
    write_tiny_llama_gguf(&bare, &cfg, &vm, GgmlDType::F32, false);
    let e = tokenizer_metadata(&bare).unwrap_err().to_string();
    assert!(
        e.contains("bare.gguf") && e.contains("tokenizer.ggml.tokens"),
        "{e}"
    );
}

/// Blocks a pass encoded are written as they are, Q/K rows moved for llama.cpp's rope as
/// whole rows of bytes: encoding every matrix up front gives the very file the exporter writes
/// when it rounds them itself.
#[test]
fn pre_encoded_blocks_give_the_file_the_exporter_would_write() {
    use distill_compress::formats::gguf::blocks::{quantize_rows, Format};
    use distill_compress::{Stored, TensorMap};
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_llama_config();
    let vm = tiny_llama(&cfg);
    let folder = tmp.path().join("model");
    write_tiny_llama_folder(&folder, &cfg, &vm);
    let teacher_gguf = tmp.path().join("teacher.gguf");
    write_tiny_llama_gguf(&teacher_gguf, &cfg, &vm, GgmlDType::F32, true);
    let tok = tokenizer_metadata(&teacher_gguf).unwrap();
    let src = SafetensorsWeights::open(
        &[folder.join("model.safetensors")],
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let map = TensorMap::read(&src, cfg.tensor_shapes()).unwrap();
    let mut stored = std::collections::BTreeMap::new();
    for (name, t) in &map.tensors {
        if t.rank() == 2 {
            let cols = t.dims()[1];
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            stored.insert(
                name.clone(),
                Stored::Gguf {
                    dtype: GgmlDType::Q4_0,
                    data: quantize_rows(Format::Q4_0, &v, cols, None),
                    importance: None,
                    chunks: 0,
                },
            );
        }
    }
    let write = |path: &std::path::Path, encoded| {
        export_gguf(
            path,
            &GgufExport {
                config: &cfg,
                weights: &map,
                tokenizer: tok.clone(),
                qtype: GgmlDType::Q4_0,
                name: "same".into(),
                embeddings: None,
                encoded,
                search: Default::default(),
            },
        )
        .unwrap()
    };
    let (a, b) = (tmp.path().join("a.gguf"), tmp.path().join("b.gguf"));
    write(&a, None);
    write(&b, Some(&stored));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

/// The real SmolLM2 tokenizer, as a student folder holds it (`tokenizer.json` and
/// `tokenizer_config.json` written from the teacher's GGUF, as `save_hf` does), gives back the
/// teacher GGUF's own `tokenizer.*` keys: the GGUF written for a student of a Hugging Face
/// teacher carries the tokenizer llama.cpp's converter would have written.
#[test]
fn a_student_folder_tokenizer_gives_the_teachers_gguf_tokenizer_keys() {
    let gguf = common::smollm2_gguf();
    let file = distill_models::GgufFile::open(&gguf).unwrap();
    let loaded = distill_teacher::tokenizer::tokenizer_from_gguf(&file).unwrap();
    let dir = tempfile::tempdir().unwrap();
    loaded
        .tokenizer
        .save(dir.path().join("tokenizer.json"), false)
        .unwrap();
    let token = |id: Option<u32>| id.and_then(|i| loaded.tokenizer.id_to_token(i));
    let cfg = serde_json::json!({
        "bos_token": token(loaded.info.bos_token_id),
        "eos_token": token(loaded.info.eos_token_id),
        "chat_template": loaded.chat_template,
    });
    std::fs::write(dir.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let ours = distill_compress::tokenizer_metadata_from_folder(dir.path(), 49152).unwrap();
    let theirs = tokenizer_metadata(&gguf).unwrap();
    let show = |v: &gguf_file::Value| format!("{v:?}");
    for (k, v) in &theirs {
        // The original checkpoint's unk/pad tokens are not in a student folder's files.
        if k.ends_with("unknown_token_id") || k.ends_with("padding_token_id") {
            continue;
        }
        let ours = ours.get(k).unwrap_or_else(|| panic!("{k} missing"));
        assert_eq!(show(ours), show(v), "{k}");
    }
    assert!(theirs.len() >= 10, "{:?}", theirs.keys());
}
