//! What the real-GGUF tests share: a teacher loaded from a file on a weight path, and the
//! comparison of a rebuilt tokenizer with llama.cpp's ids for a fixture's strings.
#![allow(dead_code)]

use std::path::Path;

use candle_core::{DType, Device};
use distill_models::GgufFile;
use distill_teacher::tokenizer::tokenizer_from_gguf;
use distill_teacher::{GgufCompute, LoadOptions, Teacher, TeacherSource};

/// The GGUF teacher at `gguf`, in f32 on the CPU, its matrices as `mode` says.
pub fn teacher(gguf: &Path, mode: GgufCompute) -> Teacher {
    let source = TeacherSource::parse(gguf.to_str().unwrap()).unwrap();
    Teacher::load(
        &source,
        &LoadOptions {
            gguf_mode: mode,
            dtype: DType::F32,
            device: Device::Cpu,
            ..Default::default()
        },
    )
    .unwrap()
}

/// Asserts that the tokenizer rebuilt from `gguf` gives llama.cpp's ids for every one of the
/// fixture's cases, of which there must be at least `min_cases`; returns the tokenizer.
pub fn assert_tokenizer_matches(
    fixture: &Path,
    gguf: &Path,
    min_cases: usize,
) -> distill_teacher::LoadedTokenizer {
    let (cases, mismatches) = tokenizer_mismatches(fixture, gguf);
    assert!(cases >= min_cases, "only {cases} cases");
    eprintln!(
        "{}: tokenizer agreement with llama.cpp {}/{cases}",
        gguf.display(),
        cases - mismatches.len()
    );
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    tokenizer_from_gguf(&GgufFile::open(gguf).unwrap()).unwrap()
}

/// The fixture's cases (`{"cases": [{"text", "ids"}]}`) whose ids the tokenizer rebuilt from
/// `gguf` does not reproduce, each with both id lists; and how many cases there are.
pub fn tokenizer_mismatches(fixture: &Path, gguf: &Path) -> (usize, Vec<String>) {
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let tok = tokenizer_from_gguf(&GgufFile::open(gguf).unwrap()).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    let mismatches = cases
        .iter()
        .filter_map(|case| {
            let text = case["text"].as_str().unwrap();
            let expected: Vec<u32> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let got = tok.encode(text).unwrap();
            (got != expected)
                .then(|| format!("{text:?}\n  llama.cpp {expected:?}\n  ours      {got:?}"))
        })
        .collect();
    (cases.len(), mismatches)
}
