//! Compressed model folders round trip: a tiny random Llama is factorised, shared and
//! quantised to int8 in memory, written with `write_model_folder`, and the folder — loaded the
//! way every command loads a model — gives exactly the logits of the in-memory model, with the
//! bytes the encodings promise.

#[path = "../../../tests/common/mod.rs"]
mod common;

use candle_core::{DType, Device, Tensor};
use common::tiny::{tiny_llama, tiny_llama_config, write_tiny_llama_folder};
use distill_compress::passes::low_rank::{low_rank, RankTarget};
use distill_compress::passes::pruning::sparsity::is_layer_matrix;
use distill_compress::passes::quantization::int8::quantize_int8;
use distill_compress::passes::sharing::{share_weights, share_weights_with, Codebook};
use distill_compress::{write_model_folder, Stored, TensorMap};
use distill_models::{Llama, LlamaConfig, Matrix, SafetensorsWeights, WeightSource};
use distill_teacher::{LoadOptions, Teacher, TeacherSource};

/// A tiny random Llama saved as a Hugging Face folder under `dir`, and its weights.
fn tiny_folder(dir: &std::path::Path) -> (LlamaConfig, std::path::PathBuf, SafetensorsWeights) {
    let cfg = tiny_llama_config();
    let folder = dir.join("model");
    write_tiny_llama_folder(&folder, &cfg, &tiny_llama(&cfg));
    let src = SafetensorsWeights::open(
        &[folder.join("model.safetensors")],
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    (cfg, folder, src)
}

/// Input channels of the tiny model's matrix `name`.
fn m_cols(name: &str) -> usize {
    if name.contains("down_proj") {
        64
    } else {
        32
    }
}

#[test]
fn every_encoding_reloads_to_the_model_it_was_measured_as() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, folder, src) = tiny_folder(tmp.path());
    let original_bytes = std::fs::metadata(folder.join("model.safetensors"))
        .unwrap()
        .len();
    let ids = Tensor::new(&[[3u32, 17, 256, 99, 42, 7, 200, 1]], &Device::Cpu).unwrap();
    let config = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(folder.join("config.json")).unwrap(),
    )
    .unwrap();

    type Pass = fn(&mut TensorMap);
    let passes: [(&str, Pass); 4] = [
        ("low-rank", |m| {
            let r = low_rank(m, is_layer_matrix, RankTarget::Rank(4)).unwrap();
            assert!(r.iter().any(|f| f.applied));
        }),
        ("shared", |m| {
            share_weights(m, |_| true, 4).unwrap();
        }),
        ("int8", |m| {
            quantize_int8(m, |_| true).unwrap();
        }),
        ("shared-per-row", |m| {
            // Importance on every other input channel, as calibration would give it.
            let imp = |n: &str| {
                n.contains("layers.")
                    .then(|| (0..64).map(|j| 1.0 + (j % 2) as f32 * 9.0).collect())
            };
            share_weights_with(m, |_| true, 3, Codebook::PerRow, &|n| {
                imp(n).map(|v: Vec<f32>| v[..m_cols(n)].to_vec())
            })
            .unwrap();
        }),
    ];
    for (what, pass) in passes {
        let mut map = TensorMap::read(&src, cfg.tensor_shapes()).unwrap();
        pass(&mut map);
        assert!(!map.stored.is_empty(), "{what}: nothing encoded");
        let in_memory = Llama::load(&cfg, &map).unwrap();
        let want = in_memory.forward(&ids, None, false).unwrap().logits;

        let out = tmp.path().join(what);
        let bytes = write_model_folder(&out, &folder, &config, &map, DType::F32).unwrap();
        assert!(
            bytes < original_bytes,
            "{what}: {bytes} bytes is not smaller than {original_bytes}"
        );
        for f in ["tokenizer.json", "config.json", "model.safetensors"] {
            assert!(out.join(f).exists(), "{what}: {f} missing");
        }
        let teacher = Teacher::load(
            &TeacherSource::parse(out.to_str().unwrap()).unwrap(),
            &LoadOptions {
                device: Device::Cpu,
                dtype: DType::F32,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        let got = teacher
            .logits(&[ids.to_vec2::<u32>().unwrap()[0].clone()])
            .unwrap();
        let d = common::max_abs_diff(&want, &got);
        assert!(d < 1e-4, "{what}: reloaded logits differ by {d}");

        // Low-rank matrices are run as two factors, not multiplied out.
        if what == "low-rank" {
            let st = SafetensorsWeights::open(
                &[out.join("model.safetensors")],
                DType::F32,
                &Device::Cpu,
            )
            .unwrap();
            let (name, Stored::LowRank { u, .. }) = map.stored.iter().next().unwrap() else {
                panic!("not low rank")
            };
            let (o, i) = (map.tensors[name].dims()[0], map.tensors[name].dims()[1]);
            let m = st.matrix(name, o, i, candle_nn::Init::Const(0.0)).unwrap();
            assert!(matches!(m, Matrix::LowRank { .. }), "{name} loaded dense");
            assert_eq!(u.dims()[1], 4);
        }
    }
}

#[test]
fn a_damaged_encoding_is_an_error_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, folder, src) = tiny_folder(tmp.path());
    let mut map = TensorMap::read(&src, cfg.tensor_shapes()).unwrap();
    share_weights(&mut map, is_layer_matrix, 3).unwrap();
    // Cut the indices of one matrix short.
    let name = "model.layers.0.mlp.up_proj.weight";
    let Some(Stored::Shared { indices, .. }) = map.stored.get_mut(name) else {
        panic!("not shared")
    };
    indices.truncate(indices.len() / 2);
    let config = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(folder.join("config.json")).unwrap(),
    )
    .unwrap();
    let out = tmp.path().join("damaged");
    write_model_folder(&out, &folder, &config, &map, DType::F32).unwrap();
    let err = match Teacher::load(
        &TeacherSource::parse(out.to_str().unwrap()).unwrap(),
        &LoadOptions::default(),
    ) {
        Ok(_) => panic!("a damaged codebook loaded"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("up_proj.weight_indices"), "{err}");
}
