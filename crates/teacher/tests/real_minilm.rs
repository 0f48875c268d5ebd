//! all-MiniLM-L6-v2 loaded from its Hugging Face folder gives the sentence embeddings that
//! transformers gives (reference made by scripts/ref-minilm.py, committed as a fixture).

#[path = "../../../tests/common/mod.rs"]
mod common;

use candle_core::{DType, Device, Tensor};
use distill_models::bert::mean_pool;
use distill_teacher::{pad_batch, LoadOptions, Teacher, TeacherModel, TeacherSource};

#[test]
fn real_minilm_mean_pooled_embeddings_match_transformers() {
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("minilm-embeddings.json")).unwrap(),
    )
    .unwrap();
    let max_len = fixture["max_length"].as_u64().unwrap() as usize;
    let source = TeacherSource::parse(common::minilm_dir().to_str().unwrap()).unwrap();
    let teacher = Teacher::load(
        &source,
        &LoadOptions {
            dtype: DType::F32,
            device: Device::Cpu,
            ..Default::default()
        },
    )
    .unwrap();
    let TeacherModel::Bert(bert) = &teacher.model else {
        panic!("expected a BERT encoder")
    };

    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    let mut ids_batch = vec![];
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let mut ids = teacher.tokenizer.encode(text).unwrap();
        // Truncation to the model's window is the data pipeline's job; the reference truncated
        // at 128 keeping [SEP], so do the same here.
        if ids.len() > max_len {
            let sep = *ids.last().unwrap();
            ids.truncate(max_len - 1);
            ids.push(sep);
        }
        let expected: Vec<u32> = case["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids, expected, "token ids of {text:?}");
        ids_batch.push(ids);
    }
    // One padded batch, as the reference ran it: padding must not change any embedding.
    let (ids, mask) = pad_batch(&ids_batch, &Device::Cpu).unwrap();
    let mask = mask.unwrap();
    let out = bert.forward(&ids, None, Some(&mask), false).unwrap();
    let pooled = mean_pool(&out.last_hidden, &mask).unwrap();
    let mut worst = 0f32;
    for (i, case) in cases.iter().enumerate() {
        let expected: Vec<f32> = case["mean_pooled"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let got: Vec<f32> = pooled.get(i).unwrap().to_vec1().unwrap();
        let diff = got
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        worst = worst.max(diff);
    }
    eprintln!("MiniLM mean-pooled embeddings: max abs diff vs transformers over {} sentences = {worst:.3e}", cases.len());
    assert!(worst < 1e-4, "max abs diff {worst} exceeds 1e-4");

    // And each sentence alone, unpadded, gives the same vector as in the batch.
    let first = Tensor::new(ids_batch[0].as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let alone = bert.forward(&first, None, None, false).unwrap();
    let ones = Tensor::ones((1, ids_batch[0].len()), DType::U8, &Device::Cpu).unwrap();
    let a = mean_pool(&alone.last_hidden, &ones)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let d = (a - pooled.get(0).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d < 1e-5, "padding changed the first embedding by {d}");
}
