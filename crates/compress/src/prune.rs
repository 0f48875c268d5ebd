//! Weight pruning of Llama-family models held as named dense tensors (Hugging Face names).
//!
//! * Unstructured magnitude pruning zeroes the smallest weights of the layers' linear
//!   matrices, per tensor or with one global threshold.
//! * 2:4 semi-structured pruning keeps the two largest of every four consecutive weights along
//!   a row (the input dimension), the pattern sparse tensor cores accelerate.
//! * Structured pruning removes whole FFN neurons or attention heads (whole key/value groups
//!   with their query heads), so tensors and the config really shrink; every layer keeps the
//!   same shape, so the result is still a standard architecture.
//!
//! Embeddings, norms and the LM head are never pruned.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, D};
use distill_models::LlamaConfig;

use crate::error::CompressError;

/// Named dense tensors of a model.
pub type Tensors = BTreeMap<String, Tensor>;

fn terr(what: impl Into<String>) -> impl FnOnce(candle_core::Error) -> CompressError {
    let context = what.into();
    move |source| CompressError::Tensor { context, source }
}

/// Whether `name` is a linear matrix inside a transformer layer (the prunable weights): a Llama
/// decoder layer's attention or MLP projection, or a BERT encoder layer's dense weight.
pub fn is_layer_matrix(name: &str) -> bool {
    let llama = name.starts_with("model.layers.")
        && (name.contains(".self_attn.") || name.contains(".mlp."));
    let bert = name.contains("encoder.layer.") && !name.contains("LayerNorm");
    (llama || bert) && name.ends_with(".weight")
}

/// How a sparsity target is shared among tensors.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PruneScope {
    /// Every matrix loses the same share of its weights.
    PerTensor,
    /// One magnitude threshold over all matrices.
    Global,
}

fn check_sparsity(sparsity: f64) -> Result<(), CompressError> {
    if !(0.0..1.0).contains(&sparsity) || sparsity.is_nan() {
        return Err(CompressError::Config {
            key: "sparsity".into(),
            msg: format!("must be in [0, 1), got {sparsity}"),
        });
    }
    Ok(())
}

/// The magnitude below which `share` of `values` lie (by sorting a copy).
fn threshold(mut values: Vec<f32>, share: f64) -> f32 {
    let k = ((values.len() as f64) * share).floor() as usize;
    if k == 0 {
        return -1.0;
    }
    let k = k.min(values.len()) - 1;
    let (_, kth, _) = values.select_nth_unstable_by(k, |a, b| a.total_cmp(b));
    *kth
}

/// Zeroes the smallest-magnitude weights of every layer matrix so that `sparsity` of them are
/// zero. Returns the sparsity reached per tensor.
pub fn magnitude_prune(
    tensors: &mut Tensors,
    sparsity: f64,
    scope: PruneScope,
) -> Result<BTreeMap<String, f64>, CompressError> {
    check_sparsity(sparsity)?;
    let names: Vec<String> = tensors
        .keys()
        .filter(|n| is_layer_matrix(n))
        .cloned()
        .collect();
    if names.is_empty() {
        return Err(CompressError::Unsupported(
            "no layer matrices (model.layers.N.self_attn/mlp or encoder.layer.N) to prune".into(),
        ));
    }
    let abs = |t: &Tensor, n: &str| -> Result<Vec<f32>, CompressError> {
        t.abs()
            .and_then(|a| a.to_dtype(DType::F32))
            .and_then(|a| a.flatten_all())
            .and_then(|a| a.to_vec1::<f32>())
            .map_err(terr(n))
    };
    let global = match scope {
        PruneScope::Global => {
            let mut all = vec![];
            for n in &names {
                all.extend(abs(&tensors[n], n)?);
            }
            Some(threshold(all, sparsity))
        }
        PruneScope::PerTensor => None,
    };
    let mut reached = BTreeMap::new();
    for n in names {
        let t = &tensors[&n];
        let cut = match global {
            Some(c) => c,
            None => threshold(abs(t, &n)?, sparsity),
        };
        let keep = t
            .abs()
            .and_then(|a| a.gt(cut as f64))
            .and_then(|m| m.to_dtype(t.dtype()))
            .map_err(terr(&n))?;
        let pruned = t.mul(&keep).map_err(terr(&n))?;
        reached.insert(n.clone(), zero_share(&pruned).map_err(terr(&n))?);
        tensors.insert(n, pruned);
    }
    Ok(reached)
}

/// Share of exact zeros in `t`.
pub fn zero_share(t: &Tensor) -> candle_core::Result<f64> {
    let zeros = t
        .eq(0.0)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()? as f64;
    Ok(zeros / t.elem_count().max(1) as f64)
}

/// 2:4 sparsity: in each group of four consecutive weights of a row, the two smallest
/// magnitudes become zero. Rows whose length is not a multiple of 4 are an error naming the
/// tensor.
pub fn two_four_prune(tensors: &mut Tensors) -> Result<usize, CompressError> {
    let names: Vec<String> = tensors
        .keys()
        .filter(|n| is_layer_matrix(n))
        .cloned()
        .collect();
    for n in &names {
        let t = &tensors[n];
        let (rows, cols) = t.dims2().map_err(terr(n))?;
        if cols % 4 != 0 {
            return Err(CompressError::Config {
                key: "two_four".into(),
                msg: format!("{n}: rows of {cols} values do not split into groups of 4"),
            });
        }
        let g = t.reshape((rows, cols / 4, 4)).map_err(terr(n))?;
        let a = g.abs().map_err(terr(n))?;
        // Rank within each group: keep entries with at most one larger neighbour (ties go to
        // the earlier index, so exactly two survive).
        let vals = a
            .to_dtype(DType::F32)
            .and_then(|x| x.flatten_all())
            .and_then(|x| x.to_vec1::<f32>())
            .map_err(terr(n))?;
        let mut mask = vec![0f32; vals.len()];
        for (gi, grp) in vals.chunks(4).enumerate() {
            let mut idx = [0usize, 1, 2, 3];
            idx.sort_by(|&x, &y| grp[y].total_cmp(&grp[x]).then(x.cmp(&y)));
            mask[gi * 4 + idx[0]] = 1.0;
            mask[gi * 4 + idx[1]] = 1.0;
        }
        let m = Tensor::from_vec(mask, (rows, cols / 4, 4), t.device())
            .and_then(|m| m.to_dtype(t.dtype()))
            .map_err(terr(n))?;
        let pruned = g
            .mul(&m)
            .and_then(|x| x.reshape((rows, cols)))
            .map_err(terr(n))?;
        tensors.insert(n.clone(), pruned);
    }
    Ok(names.len())
}

fn l2_rows(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(DType::F32)?
        .sqr()?
        .sum(D::Minus1)?
        .sqrt()?
        .to_vec1()
}

/// Indices of the `k` largest scores, ascending (slices keep the layout).
fn top_k(scores: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut keep: Vec<u32> = idx[..k].iter().map(|&i| i as u32).collect();
    keep.sort_unstable();
    keep
}

/// Keeps `intermediate` FFN neurons in every layer, chosen per layer by the product of the
/// L2 norms of their gate and up rows and their down column (or by `activation` importance
/// when given: per layer, one score per neuron from a calibration set). Returns the new config.
pub fn prune_ffn_neurons(
    cfg: &LlamaConfig,
    tensors: &mut Tensors,
    intermediate: usize,
    activation: Option<&[Vec<f32>]>,
) -> Result<LlamaConfig, CompressError> {
    if intermediate == 0 {
        return Err(CompressError::Config {
            key: "ffn_neurons".into(),
            msg: "would leave zero FFN neurons".into(),
        });
    }
    if intermediate > cfg.intermediate_size {
        return Err(CompressError::Config {
            key: "ffn_neurons".into(),
            msg: format!(
                "{intermediate} is more than the model's {}",
                cfg.intermediate_size
            ),
        });
    }
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}.mlp");
        let get = |n: &str| {
            tensors
                .get(&format!("{p}.{n}.weight"))
                .cloned()
                .ok_or_else(|| CompressError::Config {
                    key: "ffn_neurons".into(),
                    msg: format!("missing tensor {p}.{n}.weight"),
                })
        };
        let (gate, up, down) = (get("gate_proj")?, get("up_proj")?, get("down_proj")?);
        let scores: Vec<f32> = match activation {
            Some(a) => a[i].clone(),
            None => {
                let g = l2_rows(&gate).map_err(terr(&p))?;
                let u = l2_rows(&up).map_err(terr(&p))?;
                let d = l2_rows(&down.t().map_err(terr(&p))?).map_err(terr(&p))?;
                (0..g.len()).map(|j| g[j] * u[j] * d[j]).collect()
            }
        };
        let keep = Tensor::new(top_k(&scores, intermediate), gate.device()).map_err(terr(&p))?;
        let sel0 = |t: &Tensor| t.index_select(&keep, 0);
        tensors.insert(
            format!("{p}.gate_proj.weight"),
            sel0(&gate).map_err(terr(&p))?,
        );
        tensors.insert(format!("{p}.up_proj.weight"), sel0(&up).map_err(terr(&p))?);
        tensors.insert(
            format!("{p}.down_proj.weight"),
            down.index_select(&keep, 1).map_err(terr(&p))?,
        );
        for b in ["gate_proj", "up_proj"] {
            let name = format!("{p}.{b}.bias");
            if let Some(bias) = tensors.get(&name).cloned() {
                tensors.insert(name.clone(), sel0(&bias).map_err(terr(&name))?);
            }
        }
    }
    Ok(LlamaConfig {
        intermediate_size: intermediate,
        ..cfg.clone()
    })
}

/// Keeps `kv_heads` key/value groups (with all their query heads) in every layer, chosen per
/// layer by the summed norms of the group's query, key and value rows and output columns.
/// Returns the new config (the head size is unchanged).
pub fn prune_heads(
    cfg: &LlamaConfig,
    tensors: &mut Tensors,
    kv_heads: usize,
) -> Result<LlamaConfig, CompressError> {
    let (heads, kv) = (cfg.num_attention_heads, cfg.kv_heads());
    if kv_heads == 0 {
        return Err(CompressError::Config {
            key: "heads".into(),
            msg: "would leave zero attention heads".into(),
        });
    }
    if kv_heads > kv {
        return Err(CompressError::Config {
            key: "heads".into(),
            msg: format!("{kv_heads} key/value heads is more than the model's {kv}"),
        });
    }
    let hd = cfg.head_dim();
    let group = heads / kv;
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}.self_attn");
        let get = |n: &str| {
            tensors
                .get(&format!("{p}.{n}.weight"))
                .cloned()
                .ok_or_else(|| CompressError::Config {
                    key: "heads".into(),
                    msg: format!("missing tensor {p}.{n}.weight"),
                })
        };
        let (q, k, v, o) = (
            get("q_proj")?,
            get("k_proj")?,
            get("v_proj")?,
            get("o_proj")?,
        );
        let (qn, kn, vn) = (
            l2_rows(&q).map_err(terr(&p))?,
            l2_rows(&k).map_err(terr(&p))?,
            l2_rows(&v).map_err(terr(&p))?,
        );
        let on = l2_rows(&o.t().map_err(terr(&p))?).map_err(terr(&p))?;
        let sq = |x: &[f32], r: std::ops::Range<usize>| x[r].iter().map(|a| a * a).sum::<f32>();
        let score: Vec<f32> = (0..kv)
            .map(|g| {
                let kvr = g * hd..(g + 1) * hd;
                let qr = g * group * hd..(g + 1) * group * hd;
                sq(&kn, kvr.clone()) + sq(&vn, kvr) + sq(&qn, qr.clone()) + sq(&on, qr)
            })
            .collect();
        let groups = top_k(&score, kv_heads);
        let kv_rows: Vec<u32> = groups
            .iter()
            .flat_map(|&g| (g * hd as u32)..((g + 1) * hd as u32))
            .collect();
        let q_rows: Vec<u32> = groups
            .iter()
            .flat_map(|&g| (g * (group * hd) as u32)..((g + 1) * (group * hd) as u32))
            .collect();
        let dev = q.device().clone();
        let kv_t = Tensor::new(kv_rows, &dev).map_err(terr(&p))?;
        let q_t = Tensor::new(q_rows, &dev).map_err(terr(&p))?;
        tensors.insert(
            format!("{p}.q_proj.weight"),
            q.index_select(&q_t, 0).map_err(terr(&p))?,
        );
        tensors.insert(
            format!("{p}.k_proj.weight"),
            k.index_select(&kv_t, 0).map_err(terr(&p))?,
        );
        tensors.insert(
            format!("{p}.v_proj.weight"),
            v.index_select(&kv_t, 0).map_err(terr(&p))?,
        );
        tensors.insert(
            format!("{p}.o_proj.weight"),
            o.index_select(&q_t, 1).map_err(terr(&p))?,
        );
        for b in ["q_proj", "k_proj", "v_proj"] {
            let name = format!("{p}.{b}.bias");
            if let Some(bias) = tensors.get(&name).cloned() {
                let idx = if b == "q_proj" { &q_t } else { &kv_t };
                tensors.insert(
                    name.clone(),
                    bias.index_select(idx, 0).map_err(terr(&name))?,
                );
            }
        }
    }
    Ok(LlamaConfig {
        num_attention_heads: kv_heads * group,
        num_key_value_heads: Some(kv_heads),
        head_dim: Some(hd),
        ..cfg.clone()
    })
}

/// Removes decoder layers `drop` (renumbering the rest). Returns the new config.
pub fn drop_layers(
    cfg: &LlamaConfig,
    tensors: &mut Tensors,
    drop: &[usize],
) -> Result<LlamaConfig, CompressError> {
    let n = cfg.num_hidden_layers;
    if let Some(bad) = drop.iter().find(|&&l| l >= n) {
        return Err(CompressError::Config {
            key: "layers".into(),
            msg: format!("layer {bad} does not exist (the model has {n})"),
        });
    }
    let keep: Vec<usize> = (0..n).filter(|l| !drop.contains(l)).collect();
    if keep.is_empty() {
        return Err(CompressError::Config {
            key: "layers".into(),
            msg: "would leave zero layers".into(),
        });
    }
    let old = std::mem::take(tensors);
    for (name, t) in old {
        match name
            .strip_prefix("model.layers.")
            .and_then(|r| r.split_once('.'))
        {
            Some((l, rest)) => {
                let l: usize = l
                    .parse()
                    .map_err(|_| CompressError::Unsupported(format!("tensor name {name}")))?;
                if let Some(new) = keep.iter().position(|&k| k == l) {
                    tensors.insert(format!("model.layers.{new}.{rest}"), t);
                }
            }
            None => {
                tensors.insert(name, t);
            }
        }
    }
    Ok(LlamaConfig {
        num_hidden_layers: keep.len(),
        ..cfg.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensors::TensorMap;
    use candle_core::{Device, IndexOp};
    use distill_models::Llama;

    fn cfg() -> LlamaConfig {
        LlamaConfig::from_json(
            r#"{"model_type":"llama","vocab_size":50,"hidden_size":32,"intermediate_size":64,
                "num_hidden_layers":3,"num_attention_heads":4,"num_key_value_heads":2,
                "max_position_embeddings":64,"tie_word_embeddings":true}"#,
            "tiny",
        )
        .unwrap()
    }

    fn random(cfg: &LlamaConfig) -> Tensors {
        let dev = Device::Cpu;
        cfg.tensor_shapes()
            .into_iter()
            .map(|(n, s)| {
                let t = if n.contains("norm") {
                    Tensor::ones(s.as_slice(), DType::F32, &dev).unwrap()
                } else {
                    (Tensor::randn(0f32, 1.0, s.as_slice(), &dev).unwrap() * 0.1).unwrap()
                };
                (n, t)
            })
            .collect()
    }

    fn logits(cfg: &LlamaConfig, t: &Tensors) -> Tensor {
        let src = TensorMap::from_tensors(t.clone(), Device::Cpu);
        let m = Llama::load(cfg, &src).unwrap();
        let ids = Tensor::new(&[[1u32, 5, 9, 2, 7]], &Device::Cpu).unwrap();
        m.forward(&ids, None, false).unwrap().logits
    }

    #[test]
    fn magnitude_pruning_reaches_the_target_and_spares_embeddings_and_norms() {
        let c = cfg();
        for scope in [PruneScope::PerTensor, PruneScope::Global] {
            let mut t = random(&c);
            let before = t.clone();
            let reached = magnitude_prune(&mut t, 0.5, scope).unwrap();
            assert_eq!(reached.len(), 3 * 7);
            let total: f64 = reached.values().sum::<f64>() / reached.len() as f64;
            assert!((total - 0.5).abs() < 0.02, "{scope:?}: {total}");
            if scope == PruneScope::PerTensor {
                assert!(
                    reached.values().all(|r| (r - 0.5).abs() < 0.02),
                    "{reached:?}"
                );
            }
            for n in [
                "model.embed_tokens.weight",
                "model.norm.weight",
                "model.layers.0.input_layernorm.weight",
            ] {
                assert_eq!(zero_share(&t[n]).unwrap(), 0.0, "{n}");
                assert_eq!(t[n].to_vec1::<f32>().ok(), before[n].to_vec1::<f32>().ok());
            }
            // The surviving weights are the largest ones, unchanged.
            let w = &t["model.layers.1.mlp.up_proj.weight"];
            let b = &before["model.layers.1.mlp.up_proj.weight"];
            let kept_min = w
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .filter(|&x| x > 0.0)
                .fold(f32::MAX, f32::min);
            let dropped_max = (b.abs().unwrap() * w.eq(0.0).unwrap().to_dtype(DType::F32).unwrap())
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            if scope == PruneScope::PerTensor {
                assert!(dropped_max <= kept_min, "{dropped_max} > {kept_min}");
            }
        }
        let mut t = random(&c);
        for bad in [1.0, -0.1, f64::NAN] {
            let e = magnitude_prune(&mut t, bad, PruneScope::Global)
                .unwrap_err()
                .to_string();
            assert!(e.contains("sparsity"), "{e}");
        }
    }

    #[test]
    fn two_four_keeps_the_two_largest_of_every_four() {
        let c = cfg();
        let mut t = random(&c);
        let before = t["model.layers.0.self_attn.q_proj.weight"].clone();
        assert_eq!(two_four_prune(&mut t).unwrap(), 21);
        let after = &t["model.layers.0.self_attn.q_proj.weight"];
        let a = after.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = before.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (ga, gb) in a.chunks(4).zip(b.chunks(4)) {
            assert_eq!(ga.iter().filter(|x| **x == 0.0).count(), 2);
            let mut mags: Vec<f32> = gb.iter().map(|x| x.abs()).collect();
            mags.sort_by(|x, y| y.total_cmp(x));
            for (x, y) in ga.iter().zip(gb) {
                assert!(*x == 0.0 || (x == y && y.abs() >= mags[1]));
            }
        }
        let mut odd = Tensors::new();
        odd.insert(
            "model.layers.0.mlp.up_proj.weight".into(),
            Tensor::zeros((4, 6), DType::F32, &Device::Cpu).unwrap(),
        );
        let e = two_four_prune(&mut odd).unwrap_err().to_string();
        assert!(e.contains("up_proj") && e.contains("groups of 4"), "{e}");
    }

    #[test]
    fn structured_pruning_shrinks_tensors_and_config_and_still_loads() {
        let c = cfg();
        let t0 = random(&c);
        // Keeping everything changes nothing.
        let mut same = t0.clone();
        let c_same = prune_ffn_neurons(&c, &mut same, 64, None).unwrap();
        let c_same = prune_heads(&c_same, &mut same, 2).unwrap();
        let d = (logits(&c_same, &same) - logits(&c, &t0))
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5, "{d}");

        let mut t = t0.clone();
        let c1 = prune_ffn_neurons(&c, &mut t, 24, None).unwrap();
        let c2 = prune_heads(&c1, &mut t, 1).unwrap();
        let c3 = drop_layers(&c2, &mut t, &[1]).unwrap();
        assert_eq!(
            (
                c3.intermediate_size,
                c3.num_attention_heads,
                c3.kv_heads(),
                c3.num_hidden_layers
            ),
            (24, 2, 1, 2)
        );
        assert_eq!(t["model.layers.0.mlp.down_proj.weight"].dims(), &[32, 24]);
        assert_eq!(
            t["model.layers.1.self_attn.q_proj.weight"].dims(),
            &[16, 32]
        );
        assert!(!t.contains_key("model.layers.2.mlp.up_proj.weight"));
        // Layer 2 became layer 1.
        let a = t["model.layers.1.input_layernorm.weight"]
            .i(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(a, 1.0);
        assert_eq!(logits(&c3, &t).dims(), &[1, 5, 50]);

        let mut t = t0.clone();
        for e in [
            prune_ffn_neurons(&c, &mut t, 0, None)
                .unwrap_err()
                .to_string(),
            prune_heads(&c, &mut t, 0).unwrap_err().to_string(),
            drop_layers(&c, &mut t, &[0, 1, 2]).unwrap_err().to_string(),
        ] {
            assert!(e.contains("zero"), "{e}");
        }
        let e = drop_layers(&c, &mut t, &[5]).unwrap_err().to_string();
        assert!(e.contains("layer 5"), "{e}");
        let e = prune_heads(&c, &mut t, 3).unwrap_err().to_string();
        assert!(e.contains("more than"), "{e}");
    }
}
