//! Students of a Gemma 3 teacher (the tiny transformers-made fixture: three layers, sliding,
//! global, sliding): cut from its layers with their sandwich and q/k norms, each student layer
//! keeping its teacher layer's attention kind; a cut that keeps everything is the teacher.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use distill_models::{Input, LlamaConfig, Model, SafetensorsWeights};
use distill_student::{build_student, InitConfig, StudentConfig};

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

fn logits(m: &dyn Model) -> Tensor {
    let ids = Tensor::new(
        &[[5u32, 17, 33, 2, 90, 11, 64, 7, 8, 120, 3, 44]],
        &Device::Cpu,
    )
    .unwrap();
    m.run(&Input::new(&ids)).unwrap().logits
}

#[test]
fn a_cut_keeping_every_layer_is_the_teacher() {
    let (cfg, w) = teacher();
    let teacher = distill_models::Llama::load(&cfg, &w).unwrap();
    let spec = StudentConfig {
        init: InitConfig::default(),
        ..Default::default()
    };
    let s = build_student(&cfg, Some(&w), &spec, &Device::Cpu).unwrap();
    assert_eq!(s.config.head_dim(), cfg.head_dim());
    assert_eq!(s.config.hidden_size, cfg.hidden_size);
    assert_eq!(s.config.layer_types, cfg.layer_types);
    let diff = (logits(&s.model) - logits(&teacher))
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
fn each_student_layer_keeps_its_teacher_layers_attention_kind() {
    let (cfg, w) = teacher();
    for (layers, kinds) in [
        (vec![1, 2], ["full_attention", "sliding_attention"]),
        (vec![0, 2], ["sliding_attention", "sliding_attention"]),
    ] {
        let spec = StudentConfig {
            layers: Some(2),
            hidden: Some(48),
            intermediate: Some(64),
            init: InitConfig::FromTeacher {
                layers: Some(layers.clone()),
                importance: Default::default(),
            },
            ..Default::default()
        };
        let s = build_student(&cfg, Some(&w), &spec, &Device::Cpu).unwrap();
        assert_eq!(
            s.config.layer_types.as_deref().unwrap(),
            kinds,
            "{layers:?}"
        );
        assert_eq!(s.config.head_dim(), cfg.head_dim(), "the head size is kept");
        let l = logits(&s.model);
        assert!(l
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|v| v.is_finite()));
    }
}

#[test]
fn a_random_gemma_student_starts_with_identity_norms() {
    let (cfg, _) = teacher();
    let spec = StudentConfig {
        layers: Some(2),
        init: InitConfig::Random { seed: 1 },
        ..Default::default()
    };
    let s = build_student(&cfg, None, &spec, &Device::Cpu).unwrap();
    let vars = distill_models::weights::vars(&s.varmap);
    // Gemma scales by 1 + w: a fresh norm is w = 0.
    let norm = vars["model.layers.0.pre_feedforward_layernorm.weight"]
        .as_tensor()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(norm, 0.0);
    assert_eq!(s.config.layer_types.as_ref().map(Vec::len), Some(2));
}
