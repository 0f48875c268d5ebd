//! Structured surgery: a smaller model of the same family cut out of a larger one by keeping
//! whole layers, attention heads, FFN neurons and residual-stream channels.
//!
//! Initialising a student from a teacher (some of its layers, narrower) and structured pruning
//! (without the least important parts) are the same cut with different choices of what to
//! keep, so both go through [`llama::cut`] and [`bert::cut`]. Every kept layer keeps the same
//! number of heads and neurons, so the result is always a standard checkpoint of its family
//! that transformers and llama.cpp load. The `*_norms` functions give the weight-norm
//! importance the callers rank parts by when they have nothing better (activations).

pub mod bert;
pub mod llama;

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, D};

use crate::error::{ModelError, Result, TensorContext};

/// Named dense tensors of a model (checkpoint names).
pub type Tensors = BTreeMap<String, Tensor>;

/// What one kept layer keeps; `None` keeps all of a part.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayerKeep {
    /// Query heads, ascending.
    pub heads: Option<Vec<u32>>,
    /// Key/value heads, ascending (grouped-query attention; BERT has none apart from `heads`).
    pub kv_heads: Option<Vec<u32>>,
    /// FFN neurons, ascending.
    pub neurons: Option<Vec<u32>>,
}

/// What a cut keeps of a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keep {
    /// The source layer of every layer of the result, in order.
    pub layers: Vec<usize>,
    /// Residual-stream channels, ascending; `None` keeps all.
    pub residual: Option<Vec<u32>>,
    /// One entry per layer of the result.
    pub per_layer: Vec<LayerKeep>,
}

impl Keep {
    /// The listed source layers, each whole, at full width.
    pub fn layers(layers: Vec<usize>) -> Self {
        let per_layer = vec![LayerKeep::default(); layers.len()];
        Self {
            layers,
            residual: None,
            per_layer,
        }
    }

    /// All `n` layers, each whole (a cut that changes nothing until parts are narrowed).
    pub fn all(n: usize) -> Self {
        Self::layers((0..n).collect())
    }

    /// Checks the selections against the source's sizes and that every layer keeps as many
    /// heads, key/value heads and neurons as the others. Returns the kept counts
    /// `(residual, heads, kv_heads, neurons)`.
    pub(crate) fn sizes(&self, src: SourceSizes) -> Result<(usize, usize, usize, usize)> {
        let bad = |key: &str, msg: String| ModelError::Config {
            source_name: "structured cut".into(),
            key: key.into(),
            msg,
        };
        if self.layers.is_empty() {
            return Err(bad("layers", "would leave zero layers".into()));
        }
        if self.per_layer.len() != self.layers.len() {
            return Err(bad(
                "layers",
                format!(
                    "{} per-layer selections for {} layers",
                    self.per_layer.len(),
                    self.layers.len()
                ),
            ));
        }
        if let Some(l) = self.layers.iter().find(|&&l| l >= src.layers) {
            return Err(bad(
                "layers",
                format!("layer {l} does not exist (the model has {})", src.layers),
            ));
        }
        let check = |key: &str, sel: Option<&Vec<u32>>, of: usize| -> Result<usize> {
            match sel {
                None => Ok(of),
                Some(s) => {
                    if s.is_empty() {
                        return Err(bad(key, format!("would leave zero {key}")));
                    }
                    if s.windows(2).any(|w| w[0] >= w[1]) {
                        return Err(bad(key, "indices must be ascending and distinct".into()));
                    }
                    if let Some(i) = s.iter().find(|&&i| i as usize >= of) {
                        return Err(bad(
                            key,
                            format!("index {i} is out of range (there are {of})"),
                        ));
                    }
                    Ok(s.len())
                }
            }
        };
        let residual = check("residual channels", self.residual.as_ref(), src.hidden)?;
        let mut counts: Option<(usize, usize, usize)> = None;
        for (i, l) in self.per_layer.iter().enumerate() {
            let c = (
                check("attention heads", l.heads.as_ref(), src.heads)?,
                check("key/value heads", l.kv_heads.as_ref(), src.kv_heads)?,
                check("FFN neurons", l.neurons.as_ref(), src.neurons)?,
            );
            match counts {
                None => counts = Some(c),
                Some(first) if first != c => {
                    return Err(bad(
                        "layers",
                        format!("layer {i} keeps {c:?} heads/kv heads/neurons, layer 0 {first:?}: every layer must keep the same, or the result is no standard architecture"),
                    ))
                }
                Some(_) => {}
            }
        }
        let (h, kv, f) = counts.expect("at least one layer");
        Ok((residual, h, kv, f))
    }
}

/// The sizes of the model a cut reads.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SourceSizes {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub neurons: usize,
}

/// Indices of the `k` largest scores, ascending (so slices keep the layout); of equal scores
/// the lower index wins.
pub fn top_k(scores: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut keep: Vec<u32> = idx[..k.min(idx.len())].iter().map(|&i| i as u32).collect();
    keep.sort_unstable();
    keep
}

/// L2 norm of every row of a matrix (in f32).
pub fn row_norms(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(DType::F32)?
        .sqr()?
        .sum(D::Minus1)?
        .sqrt()?
        .to_vec1()
}

/// L2 norm of every column of a matrix (in f32).
pub fn column_norms(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.sqr()?.sum(0)?.sqrt()?.to_vec1()
}

/// The rows `i·size .. (i+1)·size` of every block `i` in `blocks` (heads to their rows).
pub(crate) fn block_rows(blocks: &[u32], size: usize) -> Vec<u32> {
    blocks
        .iter()
        .flat_map(|&b| (b as usize * size..(b as usize + 1) * size).map(|r| r as u32))
        .collect()
}

/// Index-selects `t` along `dim` when a selection is given; the tensor as it is otherwise.
pub(crate) fn select(t: &Tensor, dim: usize, idx: Option<&Tensor>, name: &str) -> Result<Tensor> {
    match idx {
        None => Ok(t.clone()),
        Some(i) => t
            .index_select(i, dim)
            .context(|| format!("slicing `{name}`")),
    }
}

/// An index tensor on the tensors' device.
pub(crate) fn index(
    sel: Option<&Vec<u32>>,
    device: &candle_core::Device,
) -> Result<Option<Tensor>> {
    sel.map(|s| Tensor::new(s.as_slice(), device).context(|| "index".into()))
        .transpose()
}

/// Named tensors as a frozen weight source, for tests of cuts.
#[cfg(test)]
pub(crate) fn tests_source(tensors: Tensors) -> impl crate::WeightSource {
    struct Map(Tensors, candle_core::Device);
    impl crate::WeightSource for Map {
        fn source_name(&self) -> String {
            "cut".into()
        }
        fn device(&self) -> &candle_core::Device {
            &self.1
        }
        fn dtype(&self) -> DType {
            DType::F32
        }
        fn contains(&self, name: &str) -> bool {
            self.0.contains_key(name)
        }
        fn tensor(&self, name: &str, shape: &[usize], _: candle_nn::Init) -> Result<Tensor> {
            let t = self.0.get(name).ok_or_else(|| ModelError::MissingTensor {
                source_name: "cut".into(),
                name: name.into(),
            })?;
            assert_eq!(t.dims(), shape, "{name}");
            Ok(t.clone())
        }
    }
    Map(tensors, candle_core::Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_the_largest_in_ascending_order() {
        assert_eq!(top_k(&[0.1, 5.0, 3.0, 5.0, -1.0], 3), vec![1, 2, 3]);
        assert_eq!(top_k(&[1.0, 1.0, 1.0], 2), vec![0, 1]);
        assert_eq!(block_rows(&[0, 2], 3), vec![0, 1, 2, 6, 7, 8]);
    }
}
