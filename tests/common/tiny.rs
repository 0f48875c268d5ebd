//! Tiny random models written to disk in real formats (HF folder, GGUF), for tests about logic.

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use distill_models::{Llama, LlamaConfig, VarMapWeights};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

pub const TINY_VOCAB: usize = 260;
pub const EOS: &str = "<|endoftext|>";

pub fn tiny_llama_config() -> LlamaConfig {
    distill_models::testing::TinyLlama {
        vocab: TINY_VOCAB,
        hidden: 32,
        ffn: 64,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        positions: 128,
        rms_norm_eps: 1e-5,
    }
    .config()
}

/// The byte-level alphabet as tokens 0..256, then the EOS token, then one merged token `ab`.
pub fn tiny_tokens() -> Vec<String> {
    let mut chars: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    chars.sort();
    let mut v: Vec<String> = chars.into_iter().map(|c| c.to_string()).collect();
    v.push(EOS.to_string());
    v.push("ab".to_string());
    v
}

pub fn tiny_tokenizer() -> Tokenizer {
    let vocab: Vocab = tiny_tokens()
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, vec![("a".to_string(), "b".to_string())])
        .build()
        .unwrap();
    let mut t = Tokenizer::new(bpe);
    t.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    t.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
    t.add_special_tokens([AddedToken::from(EOS, true)]).unwrap();
    t
}

/// A random tiny Llama (seeded by the VarMap's init) and its variables.
pub fn tiny_llama(cfg: &LlamaConfig) -> VarMap {
    let vm = VarMap::new();
    Llama::load(cfg, &VarMapWeights::new(&vm, DType::F32, &Device::Cpu)).unwrap();
    vm
}

/// Writes `config.json`, `model.safetensors` and `tokenizer.json` of a tiny Llama into `dir`.
pub fn write_tiny_llama_folder(dir: &Path, cfg: &LlamaConfig, vm: &VarMap) {
    std::fs::create_dir_all(dir).unwrap();
    let mut config = serde_json::to_value(cfg).unwrap();
    config["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    vm.save(dir.join("model.safetensors")).unwrap();
    tiny_tokenizer()
        .save(dir.join("tokenizer.json"), false)
        .unwrap();
}

/// llama.cpp's conversion-time permutation of Q/K rows.
fn permute(t: &Tensor, heads: usize) -> Tensor {
    let (rows, cols) = t.dims2().unwrap();
    let hd = rows / heads;
    t.reshape((heads, 2, hd / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

/// Writes a tiny Llama as a GGUF file the way llama.cpp's converter does (names, permuted Q/K,
/// metadata, tokenizer), with matrices in `dtype`. `with_tokenizer = false` leaves the
/// tokenizer metadata out.
pub fn write_tiny_llama_gguf(
    path: &Path,
    cfg: &LlamaConfig,
    vm: &VarMap,
    dtype: GgmlDType,
    with_tokenizer: bool,
) {
    let data = vm.data().lock().unwrap();
    let get = |n: &str| {
        data.get(n)
            .unwrap_or_else(|| panic!("{n}"))
            .as_tensor()
            .clone()
    };
    let mut tensors: Vec<(String, QTensor)> = vec![];
    let q = |t: &Tensor, dt: GgmlDType| QTensor::quantize(t, dt).unwrap();
    tensors.push((
        "token_embd.weight".into(),
        q(&get("model.embed_tokens.weight"), GgmlDType::F32),
    ));
    tensors.push((
        "output_norm.weight".into(),
        q(&get("model.norm.weight"), GgmlDType::F32),
    ));
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let mut m = |gg: &str, hf: &str, permute_heads: Option<usize>, dt: GgmlDType| {
            let t = get(&format!("{p}.{hf}.weight"));
            let t = match permute_heads {
                Some(h) => permute(&t, h),
                None => t,
            };
            tensors.push((format!("blk.{i}.{gg}.weight"), q(&t, dt)));
        };
        m(
            "attn_q",
            "self_attn.q_proj",
            Some(cfg.num_attention_heads),
            dtype,
        );
        m("attn_k", "self_attn.k_proj", Some(cfg.kv_heads()), dtype);
        m("attn_v", "self_attn.v_proj", None, dtype);
        m("attn_output", "self_attn.o_proj", None, dtype);
        m("ffn_gate", "mlp.gate_proj", None, dtype);
        m("ffn_up", "mlp.up_proj", None, dtype);
        m("ffn_down", "mlp.down_proj", None, dtype);
        m("attn_norm", "input_layernorm", None, GgmlDType::F32);
        m("ffn_norm", "post_attention_layernorm", None, GgmlDType::F32);
    }
    let u32v = |v: usize| Value::U32(v as u32);
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("general.name".into(), Value::String("tiny".into())),
        ("llama.block_count".into(), u32v(cfg.num_hidden_layers)),
        (
            "llama.context_length".into(),
            u32v(cfg.max_position_embeddings),
        ),
        ("llama.embedding_length".into(), u32v(cfg.hidden_size)),
        (
            "llama.feed_forward_length".into(),
            u32v(cfg.intermediate_size),
        ),
        (
            "llama.attention.head_count".into(),
            u32v(cfg.num_attention_heads),
        ),
        ("llama.attention.head_count_kv".into(), u32v(cfg.kv_heads())),
        ("llama.rope.dimension_count".into(), u32v(cfg.head_dim())),
        (
            "llama.rope.freq_base".into(),
            Value::F32(cfg.rope_theta as f32),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
    ];
    if with_tokenizer {
        let tokens = tiny_tokens();
        let types: Vec<Value> = (0..tokens.len())
            .map(|i| Value::I32(if i == 256 { 3 } else { 1 }))
            .collect();
        md.extend([
            ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
            ("tokenizer.ggml.pre".into(), Value::String("default".into())),
            (
                "tokenizer.ggml.tokens".into(),
                Value::Array(tokens.into_iter().map(Value::String).collect()),
            ),
            ("tokenizer.ggml.token_type".into(), Value::Array(types)),
            (
                "tokenizer.ggml.merges".into(),
                Value::Array(vec![Value::String("a b".into())]),
            ),
            ("tokenizer.ggml.eos_token_id".into(), u32v(256)),
            ("tokenizer.ggml.bos_token_id".into(), u32v(256)),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ]);
    }
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
}

/// Six short text documents in `dir` (`doc_0.txt`…), enough for a few blocks of 32 tokens of
/// the tiny tokenizer in both splits.
pub fn write_tiny_documents(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..6 {
        std::fs::write(
            dir.join(format!("doc_{i}.txt")),
            format!(
                "Document {i}. Call me Ishmael. Some years ago, never mind how long precisely. "
            )
            .repeat(5),
        )
        .unwrap();
    }
}
