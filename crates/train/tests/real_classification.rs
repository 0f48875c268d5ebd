//! Classification inputs on real assets: every SpamAssassin message decodes, the MiniLM
//! tokenizer path truncates exactly as transformers does, and the `cls` pooler gives
//! transformers' `pooler_output` (references from scripts/ref-minilm.py, committed fixtures).

#[path = "../../../tests/common/mod.rs"]
mod common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Init, VarMap};
use distill_models::{
    BertClassifier, BertConfig, Pooling, SafetensorsWeights, VarMapWeights, WeightSource,
};
use distill_train::data::encode_examples;
use distill_train::data::{
    load_labelled, split_stratified, Example, LabelledDataConfig, LabelledSource, TextFormat,
};

fn minilm_tokenizer() -> tokenizers::Tokenizer {
    let mut t =
        tokenizers::Tokenizer::from_file(common::minilm_dir().join("tokenizer.json")).unwrap();
    // The file pads and truncates to 128; the data pipeline does its own truncation.
    t.with_truncation(None).unwrap();
    t.with_padding(None);
    t
}

fn spam_config() -> LabelledDataConfig {
    spam_data(&common::asset("spam-assassin"))
}

/// The data section of configs/spam-minilm.yaml, built in code.
fn spam_data(path: &std::path::Path) -> LabelledDataConfig {
    LabelledDataConfig {
        source: LabelledSource::ClassFolders {
            path: path.to_path_buf(),
            classes: [
                ("easy-ham-1", "ham"),
                ("easy-ham-2", "ham"),
                ("hard-ham-1", "ham"),
                ("spam-1", "spam"),
                ("spam-2", "spam"),
            ]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
            pattern: "*".into(),
        },
        format: TextFormat::Email,
        email: Default::default(),
        labels: Some(vec!["ham".into(), "spam".into()]),
        max_length: 64,
        validation_fraction: 0.1,
        test_fraction: 0.1,
        seed: 0,
        max_per_class: None,
    }
}

#[test]
fn every_spamassassin_message_decodes_and_the_split_is_stratified() {
    let set = load_labelled(&spam_config()).unwrap();
    assert_eq!(set.examples.len() + set.skipped.len(), 6046);
    assert!(
        set.skipped.is_empty(),
        "undecodable: {:?}",
        &set.skipped[..set.skipped.len().min(5)]
    );
    assert_eq!(set.class_counts(), vec![4150, 1896]);
    // Every message has its subject line first and some body text.
    let no_subject = set
        .examples
        .iter()
        .filter(|e| !e.text.starts_with("Subject: "))
        .count();
    assert!(
        no_subject < 20,
        "{no_subject} messages without a Subject header"
    );
    // Transfer encodings are decoded: few base64 body lines, no quoted-printable `=3D` escapes.
    // Checked by hand, the dozen that remain are PGP key blocks pasted as text and messages
    // whose MIME parts sit in a body without a multipart Content-Type header (plain text by
    // RFC 2045); a decoding regression would flag hundreds.
    let b64_line = |l: &str| {
        l.len() >= 60
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    };
    let undecoded: Vec<&str> = set
        .examples
        .iter()
        .filter(|e| {
            (e.text.lines().filter(|l| b64_line(l)).count() > 3
                && !e.text.contains("PGP SIGNATURE"))
                || e.text.contains("=3D")
        })
        .map(|e| e.id.as_str())
        .collect();
    assert!(
        undecoded.len() < 20,
        "{} messages look undecoded: {:?}",
        undecoded.len(),
        &undecoded[..undecoded.len().min(5)]
    );
    // HTML-only messages became text.
    let tags = set
        .examples
        .iter()
        .filter(|e| e.text.matches("<td").count() + e.text.matches("<font").count() > 5)
        .count();
    assert!(tags < 10, "{tags} messages still full of HTML tags");
    eprintln!(
        "SpamAssassin: {} messages, {} with unknown charsets",
        set.examples.len(),
        set.unknown_charset.len()
    );
    let s = split_stratified(&set, 0.1, 0.1, 0, None);
    let spam_share = |idx: &[usize]| {
        idx.iter().filter(|&&i| set.examples[i].label == 1).count() as f64 / idx.len() as f64
    };
    for part in [&s.train, &s.validation, &s.test] {
        assert!((spam_share(part) - 1896.0 / 6046.0).abs() < 0.01);
    }
}

#[test]
fn truncation_keeps_the_head_and_sep_exactly_as_transformers() {
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("minilm-embeddings.json")).unwrap(),
    )
    .unwrap();
    let max_len = fixture["max_length"].as_u64().unwrap() as usize;
    let cases = fixture["cases"].as_array().unwrap();
    let examples: Vec<Example> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| Example {
            id: i.to_string(),
            text: c["text"].as_str().unwrap().to_string(),
            label: 0,
        })
        .collect();
    let idx: Vec<usize> = (0..examples.len()).collect();
    let enc = encode_examples(&minilm_tokenizer(), &examples, &idx, max_len, 30522).unwrap();
    assert!(
        enc.truncated >= 1,
        "the fixture has a text longer than {max_len} tokens"
    );
    for (case, ids) in cases.iter().zip(&enc.ids) {
        let expected: Vec<u32> = case["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids, &expected, "{:?}", case["text"]);
    }
}

#[test]
fn cls_pooling_equals_transformers_pooler_output() {
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("minilm-cls-head.json")).unwrap(),
    )
    .unwrap();
    let dir = common::minilm_dir();
    let cfg = BertConfig::from_json(
        &std::fs::read_to_string(dir.join("config.json")).unwrap(),
        "config.json",
    )
    .unwrap();
    let dev = Device::Cpu;
    let st = SafetensorsWeights::open(&[dir.join("model.safetensors")], DType::F32, &dev).unwrap();
    // The encoder and pooler as trainable variables, a fresh head: the fine-tuning start.
    let vm = VarMap::new();
    for (name, _, shape) in st.tensor_infos() {
        if name.ends_with("position_ids") {
            continue;
        }
        let t = st.tensor(&name, &shape, Init::Const(0.0)).unwrap();
        vm.data()
            .lock()
            .unwrap()
            .insert(name, Var::from_tensor(&t).unwrap());
    }
    let model = BertClassifier::load(
        &cfg,
        &VarMapWeights::new(&vm, DType::F32, &dev),
        2,
        Pooling::Cls,
    )
    .unwrap();
    let mut worst = 0f32;
    for case in fixture["cases"].as_array().unwrap() {
        let ids: Vec<u32> = case["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let n = ids.len();
        let ids = Tensor::new(ids.as_slice(), &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mask = Tensor::ones((1, n), DType::U8, &dev).unwrap();
        let hidden = model
            .bert
            .forward(&ids, None, Some(&mask), false)
            .unwrap()
            .last_hidden;
        let pooled: Vec<f32> = model
            .pool(&hidden, &mask)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        let expected: Vec<f32> = case["pooler_output"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(pooled.len(), expected.len());
        for (a, b) in pooled.iter().zip(&expected) {
            worst = worst.max((a - b).abs());
        }
    }
    eprintln!("MiniLM cls pooler: max abs diff vs transformers = {worst:.3e}");
    assert!(worst < 1e-4, "{worst}");
    assert!(!WeightSource::contains(&st, "classifier.weight"));
}
