//! The real Gemma 3 270M Q4_K_M GGUF against llama.cpp itself (reference ids and logits made by
//! scripts/ref-llamacpp-gemma3.py with llama-cpp-python, committed as fixtures): the
//! SentencePiece tokenizer rebuilt from the GGUF's metadata, and the Gemma 3 forward (sandwich
//! and q/k norms, GeGLU, the scaled embedding, sliding-window layers with their own rotary base)
//! on 640 positions, more than the 512-token window.

#[path = "../../../tests/common/mod.rs"]
mod common;
mod llamacpp;

use candle_core::{DType, Device, Tensor, D};
use distill_models::{GgmlDecoder, GgufFile};
use distill_teacher::tokenizer::tokenizer_from_gguf;
use distill_teacher::{GgufCompute, Teacher};

/// Largest |ours − llama.cpp| for the file dequantised to f32 on both sides (no quantisation
/// anywhere; measured 0.0147 on logits of magnitude ~20): float arithmetic done in another
/// order (rotary tables, tanh-GELU, summation) over 18 layers and 640 positions.
const F32_LOGIT_TOLERANCE: f32 = 0.03;
/// Where the quantised file's top token differs from llama.cpp's, llama.cpp's own top two
/// must be this close: both sides quantise activations before each product with a quantised
/// matrix, and roundings that differ by one step flip near-ties.
const NEAR_TIE: f32 = 0.5;
/// The share of positions whose top token must equal llama.cpp's on the quantised file.
const TOP1_AGREEMENT: f64 = 0.95;

fn teacher(mode: GgufCompute) -> Teacher {
    llamacpp::teacher(&common::gemma3_gguf(), mode)
}

#[test]
fn real_gemma3_tokenizer_matches_llamacpp() {
    let tok = llamacpp::assert_tokenizer_matches(
        &common::fixture("gemma3-tokenizer.json"),
        &common::gemma3_gguf(),
        40,
    );
    // No prefix space: "Hello" at the start of a text is the piece without `▁`.
    let hello = tok.encode_continuation("Hello").unwrap();
    assert_eq!(tok.decode(&hello).unwrap(), "Hello");
}

struct Reference {
    ids: Vec<u32>,
    argmax: Vec<u32>,
    topk_ids: Tensor,
    topk_logits: Tensor,
    sample_ids: Tensor,
    sample_logits: Tensor,
}

fn reference(fixture: &str) -> Reference {
    let st = candle_core::safetensors::load(common::fixture(fixture), &Device::Cpu).unwrap();
    let u32s = |name: &str| st[name].to_dtype(DType::U32).unwrap();
    Reference {
        ids: u32s("ids").to_vec1().unwrap(),
        argmax: u32s("argmax").to_vec1().unwrap(),
        topk_ids: u32s("topk_ids"),
        topk_logits: st["topk_logits"].clone(),
        sample_ids: u32s("sample_ids"),
        sample_logits: st["sample_logits"].clone(),
    }
}

/// Top-1 agreement and the largest |Δlogit| over each position's top-20 and over the sampled
/// ids, of `t` against `r`; also the positions where the top token differs, with llama.cpp's
/// margin there.
struct Comparison {
    agree: usize,
    total: usize,
    worst: f32,
    disagreements: Vec<(usize, f32)>,
}

fn compare(t: &Teacher, r: &Reference) -> Comparison {
    let logits = t
        .logits(std::slice::from_ref(&r.ids))
        .unwrap()
        .squeeze(0)
        .unwrap();
    let ours: Vec<u32> = logits.argmax(D::Minus1).unwrap().to_vec1().unwrap();
    let top: Vec<Vec<f32>> = r.topk_logits.to_vec2().unwrap();
    let disagreements: Vec<(usize, f32)> = (0..r.ids.len())
        .filter(|&p| ours[p] != r.argmax[p])
        .map(|p| (p, top[p][0] - top[p][1]))
        .collect();
    let worst_top = common::max_abs_diff(
        &logits
            .gather(&r.topk_ids.contiguous().unwrap(), D::Minus1)
            .unwrap(),
        &r.topk_logits,
    );
    let worst_sample = common::max_abs_diff(
        &logits.index_select(&r.sample_ids, 1).unwrap(),
        &r.sample_logits,
    );
    Comparison {
        agree: r.ids.len() - disagreements.len(),
        total: r.ids.len(),
        worst: worst_top.max(worst_sample),
        disagreements,
    }
}

#[test]
fn real_gemma3_dequantized_matches_llamacpp_f32_at_every_position() {
    let r = reference("gemma3-f32-logits.safetensors");
    assert!(r.ids.len() > 512, "the window must be exercised");
    let c = compare(&teacher(GgufCompute::Dequantized), &r);
    eprintln!(
        "Gemma 3 dequantised vs llama.cpp on the F32 file: top-1 {}/{}, max |Δlogit| {:.5}",
        c.agree, c.total, c.worst
    );
    assert_eq!(c.agree, c.total, "{:?}", c.disagreements);
    assert!(c.worst <= F32_LOGIT_TOLERANCE, "{}", c.worst);
}

#[test]
fn real_gemma3_quantized_matches_llamacpp_at_every_position() {
    let r = reference("gemma3-logits.safetensors");
    let mut rates = vec![];
    for (name, mode) in [
        ("QMatMul", GgufCompute::Quantized),
        ("dequantised", GgufCompute::Dequantized),
    ] {
        let c = compare(&teacher(mode), &r);
        let rate = c.agree as f64 / c.total as f64;
        eprintln!(
            "Gemma 3 Q4_K_M, {name} path vs llama.cpp: top-1 {}/{} ({:.1}%), max |Δlogit| {:.4}, \
             disagreements (position, llama.cpp margin) {:?}",
            c.agree,
            c.total,
            100.0 * rate,
            c.worst,
            c.disagreements
        );
        rates.push((name, rate, c));
    }
    for (name, rate, c) in rates {
        assert!(rate >= TOP1_AGREEMENT, "{name}: top-1 agreement {rate}");
        for (pos, margin) in c.disagreements {
            assert!(
                margin < NEAR_TIE,
                "{name}, position {pos}: disagreement where llama.cpp's margin is {margin}"
            );
        }
    }
}

/// Runs the ggml path on a fixture's ids and requires every node of llama.cpp's graph stored in
/// it (dumped by `scripts/dump-llamacpp-tensors.py`) to be the same, bit for bit.
fn assert_nodes_bit_for_bit(fixture: &str) {
    let st = candle_core::safetensors::load(common::fixture(fixture), &Device::Cpu).unwrap();
    let ids: Vec<u32> = st["ids"].to_dtype(DType::U32).unwrap().to_vec1().unwrap();
    let model = GgmlDecoder::load(&GgufFile::open(&common::gemma3_gguf()).unwrap()).unwrap();
    let mut checked = vec![];
    model
        .forward_traced(&ids, &mut |name, ours| {
            let Some(theirs) = st.get(name) else {
                return;
            };
            let theirs: Vec<f32> = theirs.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(theirs.len(), ours.len(), "{fixture}: {name}");
            let differ = theirs
                .iter()
                .zip(ours)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            assert_eq!(
                differ,
                0,
                "{fixture}: {name}: {differ} of {} differ",
                ours.len()
            );
            checked.push(name.to_string());
        })
        .unwrap();
    assert_eq!(
        checked.len(),
        st.len() - 1,
        "{fixture}: compared {checked:?}"
    );
}

/// 8 tokens: every node of layer 0 (embedding scale, norms, the `Q5_0`/`Q8_0` products, q/k
/// norms, NEOX rotary, attention, the `Q4_K` product in groups of four, the sandwich norms,
/// GeGLU through ggml's f16 GELU table, the tiled `Q6_K` product), the last layer's output and
/// the final norm.
#[test]
fn real_gemma3_ggml_path_computes_llamacpp_nodes_bit_for_bit() {
    assert_nodes_bit_for_bit("gemma3-nodes-8.safetensors");
}

/// 9 tokens: the ninth row's `Q4_K` product goes through llama.cpp's one-row kernel. (Its
/// `Q6_K` product does too, and that kernel's last bits are not reproduced yet, so the fixture
/// stops before `ffn_out-0`.)
#[test]
fn real_gemma3_ggml_path_matches_llamacpp_on_a_row_outside_the_groups_of_four() {
    assert_nodes_bit_for_bit("gemma3-nodes-9.safetensors");
}

#[test]
fn real_gemma3_ggml_path_reproduces_llamacpp_logits_at_every_position() {
    let r = reference("gemma3-logits.safetensors");
    let c = compare(&teacher(GgufCompute::Ggml), &r);
    eprintln!(
        "Gemma 3 Q4_K_M, ggml path vs llama.cpp: top-1 {}/{}, max |Δlogit| {}",
        c.agree, c.total, c.worst
    );
    assert_eq!(c.agree, c.total, "{:?}", c.disagreements);
    assert_eq!(
        c.worst, 0.0,
        "every stored logit must be llama.cpp's, bit for bit"
    );
}

#[test]
fn token_byte_lengths_add_up_to_the_text_for_both_real_tokenizers() {
    let text = std::fs::read_to_string(common::asset("moby-dick/chapter_2.txt")).unwrap();
    let mixed = "Größe, 你好，世界！ 👨‍👩‍👧‍👦\n\n\tcode();  \u{00a0}end";
    for gguf in [common::gemma3_gguf(), common::smollm2_gguf()] {
        let tok = tokenizer_from_gguf(&GgufFile::open(&gguf).unwrap()).unwrap();
        let lengths = tok.byte_lengths();
        for sample in [text.as_str(), mixed] {
            // BOS is added and stands for no text.
            let ids = tok.encode(sample).unwrap();
            let bytes: u64 = ids.iter().map(|&id| u64::from(lengths[id as usize])).sum();
            assert_eq!(
                bytes,
                sample.len() as u64,
                "{}: {sample:.40?}",
                gguf.display()
            );
        }
    }
}
