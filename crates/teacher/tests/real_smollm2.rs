//! The real SmolLM2-135M-Instruct Q4_1 GGUF against llama.cpp itself (reference ids and logits
//! made by scripts/ref-llamacpp.py with llama-cpp-python, committed as fixtures).

#[path = "../../../tests/common/mod.rs"]
mod common;
mod llamacpp;

use candle_core::{DType, Device, Tensor, D};
use distill_teacher::{inspect, GgufCompute, HubOptions, Teacher, TeacherSource};
use sha2::{Digest, Sha256};

/// Largest |ours − llama.cpp| over the compared logits for the Q4_1 file through candle's
/// `QMatMul` (`gguf_weights: quantized`). Both sides quantise activations to Q8_1 before every
/// product with a Q4_1 matrix; a float difference of one ulp anywhere upstream (rope tables, exp,
/// summation order) flips some of those roundings, and the flips are amplified through 30 layers.
/// The `ggml` path removes every such difference and is compared bit for bit below.
const LOGIT_TOLERANCE: f32 = 2.5;
/// A disagreement on the top token is accepted only where llama.cpp's top two logits are this close.
const NEAR_TIE: f32 = 0.5;
/// The same for the F32 file, where neither side quantises anything.
const F32_LOGIT_TOLERANCE: f32 = 1e-3;

fn teacher(mode: GgufCompute) -> Teacher {
    llamacpp::teacher(&common::smollm2_gguf(), mode)
}

#[test]
fn real_smollm2_tokenizer_matches_llamacpp() {
    let tok = llamacpp::assert_tokenizer_matches(
        &common::fixture("smollm2-tokenizer.json"),
        &common::smollm2_gguf(),
        60,
    );
    // The prefix-space trap: "Once" is one token, 6403.
    assert_eq!(tok.encode("Once").unwrap(), vec![6403]);
}

struct Prompt {
    ids: Vec<u32>,
    argmax: Vec<u32>,
    topk_ids: Tensor,
    topk_logits: Tensor,
    sample_logits: Tensor,
}

fn reference_from(fixture: &str) -> (Vec<Prompt>, Tensor) {
    let st = candle_core::safetensors::load(common::fixture(fixture), &Device::Cpu).unwrap();
    let sample_ids = st["sample_ids"].to_dtype(DType::U32).unwrap();
    let mut prompts = vec![];
    for i in 0.. {
        let Some(ids) = st.get(&format!("p{i}.ids")) else {
            break;
        };
        let u = |t: &Tensor| -> Vec<u32> { t.to_dtype(DType::U32).unwrap().to_vec1().unwrap() };
        prompts.push(Prompt {
            ids: u(ids),
            argmax: u(&st[&format!("p{i}.argmax")]),
            topk_ids: st[&format!("p{i}.topk_ids")].to_dtype(DType::U32).unwrap(),
            topk_logits: st[&format!("p{i}.topk_logits")].clone(),
            sample_logits: st[&format!("p{i}.sample_logits")].clone(),
        });
    }
    assert!(prompts.len() >= 3);
    (prompts, sample_ids)
}

fn reference() -> (Vec<Prompt>, Tensor) {
    reference_from("smollm2-logits.safetensors")
}

/// Top-1 agreement, positions, and the largest |Δlogit| over each position's top-40 and over the
/// sampled vocabulary, of `t` against a llama.cpp reference.
fn compare(t: &Teacher, prompts: &[Prompt], sample_ids: &Tensor) -> (usize, usize, f32, f32) {
    let (mut agree, mut total, mut worst_top, mut worst_sample) = (0, 0, 0f32, 0f32);
    for p in prompts {
        let logits = t
            .logits(std::slice::from_ref(&p.ids))
            .unwrap()
            .squeeze(0)
            .unwrap(); // [n, V]
        let ours_top: Vec<u32> = logits.argmax(D::Minus1).unwrap().to_vec1().unwrap();
        agree += ours_top
            .iter()
            .zip(&p.argmax)
            .filter(|(a, b)| a == b)
            .count();
        total += p.ids.len();
        worst_top = worst_top.max(common::max_abs_diff(
            &logits
                .gather(&p.topk_ids.contiguous().unwrap(), D::Minus1)
                .unwrap(),
            &p.topk_logits,
        ));
        worst_sample = worst_sample.max(common::max_abs_diff(
            &logits.index_select(sample_ids, 1).unwrap(),
            &p.sample_logits,
        ));
    }
    (agree, total, worst_top, worst_sample)
}

#[test]
fn real_smollm2_dequantized_f32_matches_llamacpp_f32_at_every_position() {
    let t = teacher(GgufCompute::Dequantized);
    let (prompts, sample_ids) = reference_from("smollm2-f32-logits.safetensors");
    let (agree, total, worst_top, worst_sample) = compare(&t, &prompts, &sample_ids);
    eprintln!(
        "SmolLM2 dequantised to f32 vs llama.cpp on the F32 file: top-1 {agree}/{total}, \
         max |Δlogit| top-40 {worst_top:.5}, sampled {worst_sample:.5}"
    );
    assert_eq!(agree, total);
    assert!(
        worst_top.max(worst_sample) <= F32_LOGIT_TOLERANCE,
        "{}",
        worst_top.max(worst_sample)
    );
}

#[test]
fn real_smollm2_logits_match_llamacpp_at_every_position() {
    let t = teacher(GgufCompute::Quantized);
    let (prompts, sample_ids) = reference();
    let (agree, total, worst_top, worst_sample) = compare(&t, &prompts, &sample_ids);
    let rate = agree as f64 / total as f64;
    eprintln!(
        "SmolLM2 Q4_1 vs llama.cpp over {} prompts / {total} positions: top-1 agreement {agree}/{total} ({:.1}%), \
         max |Δlogit| over each position's top-40 {worst_top:.4}, over 1024 sampled vocab ids {worst_sample:.4}",
        prompts.len(),
        100.0 * rate
    );
    // Every disagreement must be a near-tie in llama.cpp's own logits, and our choice must be
    // one of llama.cpp's top 3 there: where llama.cpp is confident, we pick the same token.
    for (i, p) in prompts.iter().enumerate() {
        let ours: Vec<u32> = t
            .logits(std::slice::from_ref(&p.ids))
            .unwrap()
            .squeeze(0)
            .unwrap()
            .argmax(D::Minus1)
            .unwrap()
            .to_vec1()
            .unwrap();
        let top: Vec<Vec<f32>> = p.topk_logits.to_vec2().unwrap();
        let ids: Vec<Vec<u32>> = p.topk_ids.to_vec2().unwrap();
        for pos in 0..p.ids.len() {
            if ours[pos] != p.argmax[pos] {
                let margin = top[pos][0] - top[pos][1];
                eprintln!(
                    "  prompt {i} position {pos}: llama.cpp margin {margin:.3}, ours = its #{}",
                    ids[pos]
                        .iter()
                        .position(|&x| x == ours[pos])
                        .map_or(99, |r| r + 1)
                );
                assert!(
                    margin < NEAR_TIE,
                    "prompt {i} position {pos}: disagreement where llama.cpp's margin is {margin}"
                );
                assert!(
                    ids[pos][..3].contains(&ours[pos]),
                    "prompt {i} position {pos}: our token is not in llama.cpp's top 3"
                );
            }
        }
    }
    assert!(rate >= 0.95, "top-1 agreement {rate}");
    assert!(
        worst_top.max(worst_sample) <= LOGIT_TOLERANCE,
        "max abs logit difference {}",
        worst_top.max(worst_sample)
    );
}

/// llama.cpp's logits for four prompts (83 + 335 positions), from
/// `scripts/ref-llamacpp-exact.py`: per prompt the ids, the argmax and top-8 at every position,
/// and the SHA-256 of all `[n, 49152]` logits.
fn exact_reference() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(common::fixture("smollm2-exact-logits.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["prompts"].as_array().unwrap().clone()
}

fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn real_smollm2_ggml_path_reproduces_llamacpp_logits_bit_for_bit() {
    let t = teacher(GgufCompute::Ggml);
    let (mut agree, mut total) = (0, 0);
    for p in exact_reference() {
        let name = p["name"].as_str().unwrap();
        let ids = u32s(&p["ids"]);
        let logits = t
            .logits(std::slice::from_ref(&ids))
            .unwrap()
            .squeeze(0)
            .unwrap();
        let rows: Vec<Vec<f32>> = logits.to_vec2().unwrap();
        // The top 8 of every position, value for value.
        for (pos, row) in rows.iter().enumerate() {
            let top_ids = u32s(&p["top8_ids"][pos]);
            for (k, &id) in top_ids.iter().enumerate() {
                let theirs = p["top8_logits"][pos][k].as_f64().unwrap() as f32;
                assert_eq!(
                    row[id as usize].to_bits(),
                    theirs.to_bits(),
                    "{name} position {pos}, token {id}: {} vs llama.cpp {theirs}",
                    row[id as usize]
                );
            }
        }
        let ours: Vec<u32> = logits.argmax(D::Minus1).unwrap().to_vec1().unwrap();
        agree += ours
            .iter()
            .zip(u32s(&p["argmax"]))
            .filter(|(a, b)| **a == *b)
            .count();
        total += ids.len();
        // Every logit: the hash of all n × 49152 values, as llama.cpp's f32 bytes.
        let bytes: Vec<u8> = rows
            .iter()
            .flatten()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let digest: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            digest,
            p["sha256"].as_str().unwrap(),
            "{name}: logits differ"
        );
    }
    eprintln!(
        "SmolLM2 Q4_1, ggml path vs llama.cpp: top-1 {agree}/{total}, all logits bit-identical"
    );
    assert_eq!(agree, total);
    assert!(total >= 400, "{total} positions");
}

#[test]
fn real_smollm2_dequantized_agrees_with_quantized() {
    let (prompts, _) = reference();
    let q = teacher(GgufCompute::Quantized);
    let f = teacher(GgufCompute::Dequantized);
    let (mut agree, mut total) = (0, 0);
    for p in &prompts {
        let a: Vec<u32> = q
            .logits(std::slice::from_ref(&p.ids))
            .unwrap()
            .squeeze(0)
            .unwrap()
            .argmax(D::Minus1)
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<u32> = f
            .logits(std::slice::from_ref(&p.ids))
            .unwrap()
            .squeeze(0)
            .unwrap()
            .argmax(D::Minus1)
            .unwrap()
            .to_vec1()
            .unwrap();
        agree += a.iter().zip(&b).filter(|(x, y)| x == y).count();
        total += a.len();
    }
    eprintln!("SmolLM2 dequantised f32 vs quantised: top-1 agreement {agree}/{total}");
    assert!(agree as f64 >= 0.95 * total as f64, "{agree}/{total}");
}

#[test]
fn real_smollm2_batched_logits_equal_one_by_one() {
    // Dequantised, so that what is compared is padding and masking, not Q8 rounding flips.
    let t = teacher(GgufCompute::Dequantized);
    let (prompts, _) = reference();
    let batch: Vec<Vec<u32>> = prompts.iter().map(|p| p.ids.clone()).collect();
    let all = t.logits(&batch).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let one = t
            .logits(std::slice::from_ref(&p.ids))
            .unwrap()
            .squeeze(0)
            .unwrap();
        let part = all.get(i).unwrap().narrow(0, 0, p.ids.len()).unwrap();
        let d = common::max_abs_diff(&one, &part);
        assert!(d < 1e-3, "prompt {i}: batched logits differ by {d}");
    }
}

#[test]
fn real_smollm2_inspect() {
    let source = TeacherSource::parse(common::smollm2_gguf().to_str().unwrap()).unwrap();
    let info = inspect(&source, &HubOptions::default()).unwrap();
    assert_eq!(info.architecture, "llama");
    assert_eq!(
        (info.layers, info.hidden_size, info.intermediate_size),
        (30, 576, 1536)
    );
    assert_eq!(
        (
            info.attention_heads,
            info.kv_heads,
            info.head_dim,
            info.vocab_size
        ),
        (9, 3, 64, 49152)
    );
    assert_eq!(info.tied_embeddings, Some(true));
    assert!(
        (134_000_000..135_000_000).contains(&info.parameters),
        "{}",
        info.parameters
    );
    assert_eq!(info.bytes_on_disk, 98_362_432);
    let tok = info.tokenizer.unwrap();
    assert_eq!(
        (
            tok.kind.as_str(),
            tok.vocab_size,
            tok.pre_tokenizer.as_deref()
        ),
        ("BPE", 49152, Some("smollm"))
    );
    assert!(tok
        .special_tokens
        .iter()
        .any(|s| s.content == "<|im_start|>"));
    assert!(tok.has_chat_template);
}
