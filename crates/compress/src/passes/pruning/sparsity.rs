//! Sparsity: weights set to exactly zero inside the layers' linear matrices, the shapes kept.
//!
//! * Unstructured magnitude pruning zeroes the smallest weights, per tensor or with one global
//!   threshold.
//! * 2:4 semi-structured pruning keeps the two largest of every four consecutive weights along
//!   a row (the input dimension), the pattern sparse tensor cores accelerate.
//!
//! Embeddings, norms and heads are never pruned. [`zero_masks`] records which weights are
//! zero, so that training after pruning (healing) can keep them so after every step.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};

use crate::error::CompressError;

/// Named dense tensors of a model.
pub use distill_models::surgery::Tensors;

fn terr(what: impl Into<String>) -> impl FnOnce(candle_core::Error) -> CompressError {
    let context = what.into();
    move |source| CompressError::Tensor { context, source }
}

/// Whether `name` is a linear matrix inside a transformer layer (the prunable weights): a Llama
/// decoder layer's attention or MLP projection, or a BERT encoder layer's dense weight.
pub fn is_layer_matrix(name: &str) -> bool {
    let llama = distill_models::family::is_layer_matrix(name);
    let bert = name.contains("encoder.layer.") && !name.contains("LayerNorm");
    (llama || bert) && name.ends_with(".weight")
}

/// Which weights of a matrix a sparsity method zeroes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum SparsityPattern {
    /// This share of the weights, in [0, 1).
    Share(f64),
    /// Two of every four consecutive weights of a row.
    TwoFour,
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
pub(crate) fn zero_share(t: &Tensor) -> candle_core::Result<f64> {
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

/// For every tensor that holds exact zeros, a 0/1 mask of its non-zeros (same dtype): what
/// training must multiply the weights by after each step to keep a pruned model pruned.
pub fn zero_masks(tensors: &Tensors) -> Result<BTreeMap<String, Tensor>, CompressError> {
    let mut masks = BTreeMap::new();
    for (n, t) in tensors {
        if zero_share(t).map_err(terr(n))? > 0.0 {
            let m = t
                .ne(0.0)
                .and_then(|m| m.to_dtype(t.dtype()))
                .map_err(terr(n))?;
            masks.insert(n.clone(), m);
        }
    }
    Ok(masks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{random_tensors as random, tiny_config as cfg};
    use candle_core::Device;

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
    fn zero_masks_mark_exactly_the_pruned_weights() {
        let c = cfg();
        let mut t = random(&c);
        assert!(zero_masks(&t).unwrap().is_empty());
        magnitude_prune(&mut t, 0.5, PruneScope::PerTensor).unwrap();
        let masks = zero_masks(&t).unwrap();
        assert_eq!(masks.len(), 3 * 7);
        let n = "model.layers.2.self_attn.o_proj.weight";
        let kept = (&t[n] * &masks[n]).unwrap();
        assert_eq!(
            kept.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            t[n].flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
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
}
