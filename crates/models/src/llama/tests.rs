//! The decoder forward on tiny models of the Llama and Gemma 3 layouts.

use super::*;
use crate::family::Family;
use crate::weights::VarMapWeights;
use candle_core::Var;
use candle_nn::VarMap;

pub(crate) fn tiny_config() -> LlamaConfig {
    crate::testing::TinyLlama {
        vocab: 32,
        hidden: 16,
        ffn: 24,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        positions: 64,
        rms_norm_eps: 1e-5,
    }
    .config()
}

/// A tiny Gemma 3: head size independent of hidden, a query scale of its own, one
/// sliding-window layer (window 3, its own rotary base) and one global.
fn tiny_gemma() -> LlamaConfig {
    LlamaConfig {
        model_type: "gemma3_text".into(),
        hidden_activation: Some("gelu_pytorch_tanh".into()),
        head_dim: Some(8),
        query_pre_attn_scalar: Some(6.0),
        sliding_window: Some(3),
        layer_types: Some(vec!["sliding_attention".into(), "full_attention".into()]),
        rope_local_base_freq: Some(100.0),
        ..tiny_config()
    }
}

/// Both layouts: Llama's and Gemma 3's.
fn tiny_configs() -> [LlamaConfig; 2] {
    [tiny_config(), tiny_gemma()]
}

fn tiny(cfg: &LlamaConfig) -> (VarMap, Llama) {
    let vm = VarMap::new();
    let m = Llama::load(cfg, &VarMapWeights::new(&vm, DType::F32, &Device::Cpu)).unwrap();
    (vm, m)
}

#[test]
fn every_trainable_variable_gets_a_gradient() {
    for (tied, base) in [true, false]
        .into_iter()
        .flat_map(|t| tiny_configs().map(|c| (t, c)))
    {
        let cfg = LlamaConfig {
            tie_word_embeddings: tied,
            ..base
        };
        let (vm, m) = tiny(&cfg);
        let ids = Tensor::new(&[[1u32, 5, 7, 2, 9, 3], [4, 4, 8, 1, 0, 0]], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1u8, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], &Device::Cpu).unwrap();
        let out = m.forward(&ids, Some(&mask), false).unwrap();
        let logp = log_probs(&out.logits).unwrap();
        let loss = logp
            .narrow(2, 3, 1)
            .unwrap()
            .mean_all()
            .unwrap()
            .neg()
            .unwrap();
        let grads = loss.backward().unwrap();
        let vars: Vec<(String, Var)> = vm
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let expected = match cfg.family().unwrap() {
            Family::Gemma3 => (if tied { 1 } else { 2 }) + 2 * 13 + 1,
            _ => (if tied { 1 } else { 2 }) + 2 * 9 + 1,
        };
        assert_eq!(vars.len(), expected);
        for (name, var) in vars {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                norm > 0.0 && norm.is_finite(),
                "gradient of {name} is {norm}"
            );
        }
    }
}

#[test]
fn right_padding_does_not_change_real_positions_and_hidden_states_follow_transformers() {
    for cfg in tiny_configs() {
        right_padding_does_not_change_real_positions(&cfg);
    }
}

fn right_padding_does_not_change_real_positions(cfg: &LlamaConfig) {
    let (_, m) = tiny(cfg);
    let a = Tensor::new(&[[1u32, 5, 7, 2]], &Device::Cpu).unwrap();
    let alone = m.forward(&a, None, true).unwrap();
    assert_eq!(alone.hidden_states.as_ref().unwrap().len(), 3);
    assert_eq!(alone.logits.dims(), &[1, 4, 32]);
    let padded = Tensor::new(&[[1u32, 5, 7, 2, 0, 0], [3, 3, 3, 3, 3, 3]], &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[1u8, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], &Device::Cpu).unwrap();
    let batch = m.forward(&padded, Some(&mask), false).unwrap();
    let diff = (batch
        .logits
        .narrow(0, 0, 1)
        .unwrap()
        .narrow(1, 0, 4)
        .unwrap()
        - &alone.logits)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-5, "padding changed logits by {diff}");
}

#[test]
fn out_of_range_ids_and_overlong_input_are_errors() {
    let (_, m) = tiny(&tiny_config());
    let bad = Tensor::new(&[[1u32, 99]], &Device::Cpu).unwrap();
    let e = m.forward(&bad, None, false).unwrap_err().to_string();
    assert!(e.contains("99") && e.contains("32"), "{e}");
    let long = Tensor::zeros((1, 65), DType::U32, &Device::Cpu).unwrap();
    let e = m.forward(&long, None, false).unwrap_err().to_string();
    assert!(e.contains("65") && e.contains("64"), "{e}");
}

#[test]
fn config_errors_name_the_key() {
    let e = LlamaConfig::from_json(r#"{"model_type":"llama","vocab_size":10}"#, "x/config.json")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("x/config.json") && e.contains("hidden_size"),
        "{e}"
    );
    let mut c = tiny_config();
    c.num_key_value_heads = Some(3);
    let e = c.validate("cfg").unwrap_err().to_string();
    assert!(e.contains("num_key_value_heads"), "{e}");
    let mut c = tiny_config();
    c.rope_scaling = Some(serde_json::json!({"rope_type": "llama3"}));
    assert!(c
        .validate("cfg")
        .unwrap_err()
        .to_string()
        .contains("rope_scaling"));
}

#[test]
fn tensor_shapes_list_exactly_the_variables() {
    for (tied, base) in [true, false]
        .into_iter()
        .flat_map(|t| tiny_configs().map(|c| (t, c)))
    {
        let cfg = LlamaConfig {
            tie_word_embeddings: tied,
            ..base
        };
        let (vm, _) = tiny(&cfg);
        let data = vm.data().lock().unwrap();
        let shapes = cfg.tensor_shapes();
        assert_eq!(shapes.len(), data.len());
        for (name, shape) in shapes {
            assert_eq!(data[&name].as_tensor().dims(), shape.as_slice(), "{name}");
        }
    }
}

#[test]
fn param_count_matches_the_variables() {
    for (tied, base) in [true, false]
        .into_iter()
        .flat_map(|t| tiny_configs().map(|c| (t, c)))
    {
        let cfg = LlamaConfig {
            tie_word_embeddings: tied,
            ..base
        };
        let (vm, _) = tiny(&cfg);
        let n: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
        assert_eq!(cfg.param_count(), n);
    }
}

/// A one-layer tiny Gemma whose layer is `layer_type`.
fn one_layer(layer_type: &str) -> Llama {
    let cfg = LlamaConfig {
        num_hidden_layers: 1,
        layer_types: Some(vec![layer_type.into()]),
        ..tiny_gemma()
    };
    tiny(&cfg).1
}

/// The last position's logits of `ids`.
fn last_logits(m: &Llama, ids: &[u32]) -> Tensor {
    let ids = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let out = m.forward(&ids, None, false).unwrap().logits;
    let n = out.dim(1).unwrap();
    out.narrow(1, n - 1, 1).unwrap().flatten_all().unwrap()
}

#[test]
fn a_sliding_window_layer_sees_only_its_window() {
    let ids = [1u32, 5, 7, 2, 9, 3, 4, 8];
    let diff = |kind: &str| {
        let m = one_layer(kind);
        let all = last_logits(&m, &ids);
        let window = last_logits(&m, &ids[ids.len() - 3..]);
        (all - window)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    // Relative rotary positions and a window of 3: the last three tokens decide alone.
    assert!(
        diff("sliding_attention") < 1e-5,
        "{}",
        diff("sliding_attention")
    );
    // A global layer sees the earlier tokens too.
    assert!(diff("full_attention") > 1e-4, "{}", diff("full_attention"));
}

/// Decoding through the key/value cache gives, at every step and for every row of a batch of
/// unequal prompts (left-padded), the logits a full forward of that row's sequence alone gives
/// at its last position — on the Llama layout and on Gemma 3's (a sliding window of 3 that the
/// sequences outgrow, its own rotary base). Rows leave the batch as they finish.
#[test]
fn cached_decoding_equals_full_forwards_for_a_batch_of_unequal_prompts() {
    use crate::generate::{argmax, generate, GenerateOptions, Sampling};
    for cfg in tiny_configs() {
        let (_, m) = tiny(&cfg);
        let prompts: Vec<Vec<u32>> = vec![
            vec![1, 5, 7, 2, 9],
            vec![4, 8, 1, 6, 3, 3, 2, 11, 30],
            vec![12],
        ];
        let full_last = |seq: &[u32]| -> Vec<f32> {
            let ids = Tensor::new(seq, &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let l = m.forward(&ids, None, false).unwrap().logits;
            l.narrow(1, seq.len() - 1, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        // Step by step: every row's cached logits against its full forward.
        let mut cache = m.new_cache();
        let mut seqs = prompts.clone();
        let rows: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        let mut logits: Vec<Vec<f32>> = m.step(&rows, &mut cache).unwrap().to_vec2().unwrap();
        let mut worst = 0f32;
        for step in 0..7 {
            let mut next = vec![];
            for (r, seq) in seqs.iter_mut().enumerate() {
                let want = full_last(seq);
                let gap = want
                    .iter()
                    .zip(&logits[r])
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                worst = worst.max(gap);
                assert!(
                    gap < 1e-4,
                    "{}: step {step}, row {r}: {gap}",
                    cfg.model_type
                );
                let t = argmax(&logits[r]);
                seq.push(t);
                next.push([t]);
            }
            let rows: Vec<&[u32]> = next.iter().map(|r| r.as_slice()).collect();
            logits = m.step(&rows, &mut cache).unwrap().to_vec2().unwrap();
        }
        assert_eq!(cache.len(), 9 + 7);
        // The engine, greedy: rows of different budgets leave the batch at different steps;
        // each answer is the greedy continuation of its prompt run alone.
        let opts = GenerateOptions {
            max_new_tokens: 6,
            sampling: Sampling::default(),
            stop_ids: vec![],
        };
        let mut stop_after = [usize::MAX, 2, usize::MAX];
        let out = generate(&m, &prompts, &opts, &mut |p, _| {
            stop_after[p] = stop_after[p].saturating_sub(1);
            stop_after[p] == 0
        })
        .unwrap();
        for (p, g) in out.iter().enumerate() {
            let mut seq = prompts[p].clone();
            for &t in &g.tokens {
                assert_eq!(t, argmax(&full_last(&seq)), "prompt {p}");
                seq.push(t);
            }
        }
        assert_eq!(out[1].tokens.len(), 2);
        assert_eq!(out[1].finish, crate::generate::Finish::Stopped);
        assert_eq!(
            (out[0].tokens.len(), out[0].finish),
            (6, crate::generate::Finish::Budget)
        );
        eprintln!(
            "{}: cached vs full logits, max |Δ| {worst:.2e}",
            cfg.model_type
        );
    }
}

#[test]
fn generation_refuses_what_it_cannot_do() {
    use crate::generate::{generate, GenerateOptions, Sampling};
    let (_, m) = tiny(&tiny_config());
    let opts = |n| GenerateOptions {
        max_new_tokens: n,
        sampling: Sampling::default(),
        stop_ids: vec![],
    };
    let err = |prompts: Vec<Vec<u32>>, n| {
        generate(&m, &prompts, &opts(n), &mut |_, _| false)
            .unwrap_err()
            .to_string()
    };
    assert!(err(vec![vec![1]], 0).contains("max_new_tokens"));
    assert!(err(vec![vec![1; 60]], 10).contains("context of 64"));
    assert!(err(vec![vec![]], 3).contains("no tokens"));
    let sampled = |sampling: Sampling| {
        let o = GenerateOptions {
            sampling,
            ..opts(3)
        };
        generate(&m, &[vec![1]], &o, &mut |_, _| false)
            .unwrap_err()
            .to_string()
    };
    let bad = |t, k, p| Sampling {
        temperature: t,
        top_k: k,
        top_p: p,
        seed: 0,
    };
    assert!(sampled(bad(-1.0, None, None)).contains("temperature"));
    assert!(sampled(bad(f64::NAN, None, None)).contains("temperature"));
    assert!(sampled(bad(1.0, Some(0), None)).contains("top_k"));
    assert!(sampled(bad(1.0, None, Some(1.5))).contains("top_p"));
    assert!(sampled(bad(1.0, None, Some(0.0))).contains("top_p"));
}
