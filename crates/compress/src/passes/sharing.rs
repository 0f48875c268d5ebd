//! Weight sharing (Deep Compression): each matrix keeps `2^b` distinct values, the centroids of
//! a k-means clustering of its weights, and stores a `b`-bit index per weight.
//!
//! k-means in one dimension is solved exactly per Lloyd iteration on the sorted values: each
//! cluster is a contiguous run between the midpoints of neighbouring centroids, so assignment
//! is a binary search and the update a difference of prefix sums. Centroids start at evenly
//! spaced quantiles (deterministic, and dense where the weights are).

use serde::{Deserialize, Serialize};

use candle_core::Tensor;

use std::collections::BTreeMap;

use crate::calibration::walk::{walk, Collect};
use crate::error::CompressError;
use crate::formats::folder::Stored;
use crate::framework::pass::{Candidate, Context, Pass, PassReport};
use crate::framework::technique::{schema_of, settings, Built, Defaults, Settings, Technique};
use crate::model::tensors::{values_f32, TensorMap};

/// Settings of `share`.
#[derive(Clone, Debug, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ShareSettings {
    /// k-means weight sharing with `2^bits` values per codebook (1 to 8).
    pub bits: u32,
    /// One codebook per matrix, or one per output row (stored as f16).
    #[serde(default)]
    pub codebook: Codebook,
    /// What the clustering weighs each weight by.
    #[serde(default)]
    pub weights: ShareWeights,
}

/// Where codebooks are shared.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Codebook {
    #[default]
    PerMatrix,
    /// A small codebook per output row (SqueezeLLM's layout): rows differ in scale, so a
    /// codebook each fits them far better for `2^bits` f16 values per row.
    PerRow,
}

/// What k-means minimises.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ShareWeights {
    /// The plain squared error of the weights.
    #[default]
    None,
    /// The squared error weighted by the input channel's mean `x²` on the calibration blocks:
    /// the diagonal of the layer's Hessian, a sensitivity in the spirit of SqueezeLLM's Fisher
    /// weighting (which needs gradients this step does not take).
    Activations,
    /// The activation-weighted codebooks, then every weight rounded to its codebook column by
    /// column with the error spread over the columns not yet rounded through the inverse
    /// Hessian of the layer's inputs (GPTQ's compensation with a lookup table as the grid),
    /// layer by layer on the earlier layers as already shared.
    Hessian,
}

pub(crate) const TECHNIQUE: Technique = Technique {
    name: "share",
    summary: "k-means weight sharing: 2^bits shared values per matrix, bit-packed indices",
    build,
    schema: schema_of::<ShareSettings>,
};

fn build(s: &Settings, _: &Defaults) -> Result<Built, CompressError> {
    let c: ShareSettings = settings("share", s)?;
    if !(1..=8).contains(&c.bits) {
        return Err(CompressError::Config {
            key: "bits".into(),
            msg: format!("{}: expected 1 to 8", c.bits),
        });
    }
    Ok(Built::Pass(Box::new(Share(c))))
}

/// The k-means sharing pass over every dense matrix.
pub(crate) struct Share(pub ShareSettings);

impl Pass for Share {
    fn name(&self) -> &'static str {
        "share"
    }
    fn label(&self) -> String {
        let per = match self.0.codebook {
            Codebook::PerMatrix => "",
            Codebook::PerRow => " per row",
        };
        let by = match self.0.weights {
            ShareWeights::None => "",
            ShareWeights::Activations => ", activation-weighted",
            ShareWeights::Hessian => ", Hessian-compensated",
        };
        format!("k-means {}-bit{per}{by}", self.0.bits)
    }
    fn encodes(&self) -> bool {
        true
    }
    fn apply(&self, c: &mut Candidate, cx: &Context) -> Result<PassReport, CompressError> {
        let s = &self.0;
        let done = match s.weights {
            ShareWeights::None => {
                share_weights_with(&mut c.weights, |_| true, s.bits, s.codebook, &|_| None)?
            }
            ShareWeights::Hessian => {
                let blocks = cx.calibration.tokens().ok_or_else(|| {
                    CompressError::Unsupported(
                        "weights: hessian needs calibration tokens, which this task does not provide".into(),
                    )
                })?;
                let mut done = vec![];
                walk(c, &blocks, Collect::Hessians, &mut |stage, c| {
                    for (name, st) in &stage.matrices {
                        let hinv = crate::calibration::obs::inverse_hessian(
                            name,
                            st,
                            crate::calibration::obs::DAMP,
                        )?;
                        let imp = st.importance();
                        done.push(share_one(
                            &mut c.weights,
                            name,
                            s.bits,
                            s.codebook,
                            Some(&imp),
                            Some(&hinv),
                        )?);
                    }
                    Ok(())
                })?;
                // Whatever no stage covered (an untied embedding, a lookup table).
                if let Ok(rest) = c.weights.dense_matrices(|_| true, "share") {
                    for name in rest {
                        done.push(share_one(
                            &mut c.weights,
                            &name,
                            s.bits,
                            s.codebook,
                            None,
                            None,
                        )?);
                    }
                }
                done
            }
            ShareWeights::Activations => {
                let blocks = cx.calibration.tokens().ok_or_else(|| {
                    CompressError::Unsupported(
                        "weights: activations needs calibration tokens, which this task does not provide".into(),
                    )
                })?;
                // The importance of every matrix's inputs, then one clustering pass (sharing
                // changes no activation a later layer's importance would see much).
                let mut importance: BTreeMap<String, Vec<f32>> = BTreeMap::new();
                walk(c, &blocks, Collect::Norms, &mut |stage, _| {
                    for (name, st) in &stage.matrices {
                        importance.insert(name.clone(), st.importance());
                    }
                    Ok(())
                })?;
                share_weights_with(&mut c.weights, |_| true, s.bits, s.codebook, &|n| {
                    importance.get(n).cloned()
                })?
            }
        };
        Ok(PassReport::note(format!(
            "{} matrices, mean RMS error {:.2e}",
            done.len(),
            done.iter().map(|s| s.rms_error).sum::<f64>() / done.len().max(1) as f64
        )))
    }
}

/// Lloyd iterations; the assignment rarely changes after a few dozen.
const ITERATIONS: usize = 30;

/// What sharing one matrix did.
#[derive(Clone, Debug, Serialize)]
pub struct Shared {
    pub tensor: String,
    pub bits: u32,
    /// Root-mean-square error of the shared weights against the originals.
    pub rms_error: f64,
}

/// Clusters `values` into `2^bits` centroids. Returns the centroids (ascending) and each value's
/// centroid index.
pub fn kmeans_1d(values: &[f32], bits: u32) -> (Vec<f32>, Vec<u16>) {
    kmeans_1d_weighted(values, None, bits)
}

/// [`kmeans_1d`] minimising the `weights`-weighted squared error (uniform when `None`):
/// centroids are weighted means, initialised at weighted quantiles.
pub(crate) fn kmeans_1d_weighted(
    values: &[f32],
    weights: Option<&[f32]>,
    bits: u32,
) -> (Vec<f32>, Vec<u16>) {
    let k = 1usize << bits;
    let n = values.len();
    if n == 0 {
        return (vec![0.0; k], vec![]);
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let sorted: Vec<f32> = order.iter().map(|&i| values[i]).collect();
    // A floor keeps channels no calibration token used in the clustering at all.
    let w = |i: usize| weights.map_or(1.0, |w| w[i].max(1e-12) as f64);
    let mut prefix = Vec::with_capacity(n + 1);
    let mut wprefix = Vec::with_capacity(n + 1);
    prefix.push(0f64);
    wprefix.push(0f64);
    for &i in &order {
        prefix.push(prefix.last().copied().unwrap_or(0.0) + w(i) * values[i] as f64);
        wprefix.push(wprefix.last().copied().unwrap_or(0.0) + w(i));
    }
    let total = wprefix[n];
    let mut c: Vec<f64> = (0..k)
        .map(|i| {
            let q = total * (2 * i + 1) as f64 / (2 * k) as f64;
            let at = wprefix.partition_point(|&p| p < q).clamp(1, n) - 1;
            sorted[at] as f64
        })
        .collect();
    for _ in 0..ITERATIONS {
        // Cluster i holds sorted[start_i..start_{i+1}].
        let mut starts = vec![0usize; k + 1];
        starts[k] = n;
        for i in 1..k {
            let mid = (c[i - 1] + c[i]) / 2.0;
            starts[i] = sorted
                .partition_point(|&x| (x as f64) < mid)
                .max(starts[i - 1]);
        }
        let mut moved = false;
        for i in 0..k {
            let (a, b) = (starts[i], starts[i + 1]);
            if b > a && wprefix[b] > wprefix[a] {
                let mean = (prefix[b] - prefix[a]) / (wprefix[b] - wprefix[a]);
                moved |= mean != c[i];
                c[i] = mean;
            }
        }
        c.sort_by(|a, b| a.total_cmp(b));
        if !moved {
            break;
        }
    }
    let centroids: Vec<f32> = c.iter().map(|&x| x as f32).collect();
    let index = values
        .iter()
        .map(|&x| nearest_centroid(&centroids, x))
        .collect();
    (centroids, index)
}

/// Index of the centroid (of ascending `centroids`) nearest to `x`.
fn nearest_centroid(centroids: &[f32], x: f32) -> u16 {
    let k = centroids.len();
    let p = centroids.partition_point(|&m| m < x);
    let nearest = if p == 0 {
        0
    } else if p == k {
        k - 1
    } else if (x - centroids[p - 1]).abs() <= (centroids[p] - x).abs() {
        p - 1
    } else {
        p
    };
    nearest as u16
}

/// Replaces every dense matrix of `map` that `select` names by `2^bits` shared values.
pub fn share_weights(
    map: &mut TensorMap,
    select: impl Fn(&str) -> bool,
    bits: u32,
) -> Result<Vec<Shared>, CompressError> {
    share_weights_with(map, select, bits, Codebook::PerMatrix, &|_| None)
}

/// [`share_weights`] with a codebook per matrix or per row, clustering each matrix's weights
/// weighted by `importance(name)` of its input channels (uniform when `None`).
pub fn share_weights_with(
    map: &mut TensorMap,
    select: impl Fn(&str) -> bool,
    bits: u32,
    codebook_of: Codebook,
    importance: &dyn Fn(&str) -> Option<Vec<f32>>,
) -> Result<Vec<Shared>, CompressError> {
    if !(1..=8).contains(&bits) {
        return Err(CompressError::Config {
            key: "share.bits".into(),
            msg: format!("{bits} bits: expected 1 to 8 (2 to 256 centroids)"),
        });
    }
    let names = map.dense_matrices(select, "share")?;
    let mut done = vec![];
    for name in names {
        let imp = importance(&name);
        done.push(share_one(
            map,
            &name,
            bits,
            codebook_of,
            imp.as_deref(),
            None,
        )?);
    }
    Ok(done)
}

/// OBS compensation with a fixed codebook: each weight becomes its row's nearest centroid and
/// the error goes to the columns not yet visited (GPTQ with a lookup table as the grid).
struct CodebookRule<'a> {
    codebook: &'a [f32],
    k: usize,
    per_row: bool,
    cols: usize,
    indices: Vec<u16>,
}

impl crate::calibration::obs::ColumnRule for CodebookRule<'_> {
    fn before_column(&mut self, _: usize, _: usize, _: faer::MatRef<f32>, _: &[f32]) {}
    fn replace(&mut self, row: usize, i: usize, w: f32) -> f32 {
        let base = if self.per_row { row * self.k } else { 0 };
        let c = &self.codebook[base..base + self.k];
        let j = nearest_centroid(c, w);
        self.indices[row * self.cols + i] = j;
        c[j as usize]
    }
}

/// Shares one matrix of `map`: codebooks by k-means weighted by `importance` (its input
/// channels' mean x², when it fits), and with `hinv` the weights rounded to them column by
/// column with OBS error compensation.
fn share_one(
    map: &mut TensorMap,
    name: &str,
    bits: u32,
    codebook_of: Codebook,
    importance: Option<&[f32]>,
    hinv: Option<&crate::calibration::obs::InverseHessian>,
) -> Result<Shared, CompressError> {
    let t = &map.tensors[name];
    let terr = |source| CompressError::Tensor {
        context: format!("sharing `{name}`"),
        source,
    };
    let shape = t.dims().to_vec();
    let values = values_f32(name, t)?;
    let cols = shape.last().copied().unwrap_or(1).max(1);
    let rows = values.len() / cols;
    let imp = importance.filter(|w| w.len() == cols);
    let k = 1usize << bits;
    let (codebook, mut indices, codebook_rows) = match codebook_of {
        Codebook::PerMatrix => {
            let w: Option<Vec<f32>> = imp.map(|w| (0..values.len()).map(|i| w[i % cols]).collect());
            let (cb, idx) = kmeans_1d_weighted(&values, w.as_deref(), bits);
            (cb, idx, 1)
        }
        Codebook::PerRow => {
            let mut cb = Vec::with_capacity(rows << bits);
            let mut idx = Vec::with_capacity(values.len());
            for r in 0..rows {
                let row = &values[r * cols..(r + 1) * cols];
                let (c, _) = kmeans_1d_weighted(row, imp, bits);
                // Stored as f16: assign to the centroids as they will be read back.
                let c: Vec<f32> = c.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
                idx.extend(row.iter().map(|&x| nearest_centroid(&c, x)));
                cb.extend(c);
            }
            (cb, idx, rows)
        }
    };
    if let Some(hinv) = hinv {
        let mut m = crate::calibration::obs::to_mat(&values, rows, cols);
        let mut rule = CodebookRule {
            codebook: &codebook,
            k,
            per_row: codebook_rows != 1,
            cols,
            indices: vec![0; values.len()],
        };
        crate::calibration::obs::sweep(
            &mut m,
            hinv,
            crate::passes::pruning::sparsegpt::BLOCK,
            &mut rule,
        );
        indices = rule.indices;
    }
    let decoded: Vec<f32> = indices
        .iter()
        .enumerate()
        .map(|(j, &i)| {
            let base = if codebook_rows == 1 {
                0
            } else {
                (j / cols) * k
            };
            codebook[base + i as usize]
        })
        .collect();
    let sq: f64 = values
        .iter()
        .zip(&decoded)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let rms_error = (sq / values.len().max(1) as f64).sqrt();
    let dense = Tensor::from_vec(decoded, shape, t.device()).map_err(terr)?;
    map.tensors.insert(name.to_string(), dense);
    map.stored.insert(
        name.to_string(),
        Stored::Shared {
            codebook,
            indices,
            bits,
            rows: codebook_rows,
        },
    );
    Ok(Shared {
        tensor: name.to_string(),
        bits,
        rms_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_separated_clusters_are_found_exactly() {
        let mut v = vec![];
        for (i, c) in [-3.0f32, -1.0, 0.5, 2.0].iter().enumerate() {
            for j in 0..50 {
                v.push(c + 0.01 * ((j * (i + 3)) % 7) as f32 - 0.03);
            }
        }
        let (cb, idx) = kmeans_1d(&v, 2);
        assert_eq!(cb.len(), 4);
        for (c, want) in cb.iter().zip([-3.0f32, -1.0, 0.5, 2.0]) {
            assert!((c - want).abs() < 0.02, "{cb:?}");
        }
        for (x, i) in v.iter().zip(&idx) {
            assert!((cb[*i as usize] - x).abs() < 0.05);
        }
    }

    #[test]
    fn per_row_weighted_codebooks_fit_rows_of_different_scale_where_it_matters() {
        let d = candle_core::Device::Cpu;
        // Rows of very different scales; channel 0 of every row carries most of the input.
        let (rows, cols) = (8, 64);
        let v: Vec<f32> = (0..rows * cols)
            .map(|i| {
                let (r, c) = (i / cols, i % cols);
                (1.0 + r as f32 * 3.0) * (((c * 7 + r * 3) % 17) as f32 / 17.0 - 0.5)
            })
            .collect();
        let imp: Vec<f32> = (0..cols)
            .map(|j| if j == 0 { 1000.0 } else { 1.0 })
            .collect();
        let weighted_err = |codebook, imp: Option<Vec<f32>>| {
            let w = Tensor::from_vec(v.clone(), (rows, cols), &d).unwrap();
            let mut map = TensorMap::from_tensors([("m.weight".to_string(), w)].into(), d.clone());
            share_weights_with(&mut map, |_| true, 2, codebook, &|_| imp.clone()).unwrap();
            let got = values_f32("m", &map.tensors["m.weight"]).unwrap();
            if codebook == Codebook::PerRow {
                let Stored::Shared {
                    codebook, rows: r, ..
                } = &map.stored["m.weight"]
                else {
                    panic!("not shared")
                };
                assert_eq!((codebook.len(), *r), (rows * 4, rows));
            }
            v.iter()
                .zip(&got)
                .enumerate()
                .map(|(i, (a, b))| imp_at(i % cols) * ((a - b) as f64).powi(2))
                .sum::<f64>()
        };
        fn imp_at(j: usize) -> f64 {
            if j == 0 {
                1000.0
            } else {
                1.0
            }
        }
        let per_matrix = weighted_err(Codebook::PerMatrix, None);
        let per_row = weighted_err(Codebook::PerRow, None);
        let per_row_weighted = weighted_err(Codebook::PerRow, Some(imp));
        assert!(per_row < per_matrix, "{per_row} vs {per_matrix}");
        assert!(
            per_row_weighted < per_row,
            "{per_row_weighted} vs {per_row}"
        );
    }

    #[test]
    fn hessian_compensation_lowers_the_output_error_of_the_same_codebooks() {
        let d = candle_core::Device::Cpu;
        let (rows, n, t) = (16, 64, 512);
        let (x, st) = crate::calibration::obs::tests::stats(t, n, 3);
        let hinv =
            crate::calibration::obs::inverse_hessian("w", &st, crate::calibration::obs::DAMP)
                .unwrap();
        let w = Tensor::randn(0f32, 1.0, (rows, n), &d).unwrap();
        let want = values_f32("w", &w).unwrap();
        let imp = st.importance();
        let out_err = |hinv| {
            let mut map = TensorMap::from_tensors([("w".to_string(), w.clone())].into(), d.clone());
            share_one(&mut map, "w", 2, Codebook::PerRow, Some(&imp), hinv).unwrap();
            let got = values_f32("w", &map.tensors["w"]).unwrap();
            let mut e = 0f64;
            for s in 0..t {
                for r in 0..rows {
                    let dot: f64 = (0..n)
                        .map(|j| (want[r * n + j] - got[r * n + j]) as f64 * x[s * n + j] as f64)
                        .sum();
                    e += dot * dot;
                }
            }
            e
        };
        let (plain, compensated) = (out_err(None), out_err(Some(&hinv)));
        assert!(compensated < 0.8 * plain, "{compensated} vs {plain}");
    }

    #[test]
    fn more_bits_never_hurt_and_bits_are_range_checked() {
        let d = candle_core::Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (32, 48), &d).unwrap();
        let mut errs = vec![];
        for bits in [2, 4, 6] {
            let mut map = TensorMap::from_tensors(
                [("encoder.layer.0.w.weight".to_string(), w.clone())].into(),
                d.clone(),
            );
            let r = share_weights(&mut map, |_| true, bits).unwrap();
            errs.push(r[0].rms_error);
            let Stored::Shared { codebook, .. } = &map.stored["encoder.layer.0.w.weight"] else {
                panic!("not shared")
            };
            assert_eq!(codebook.len(), 1 << bits);
        }
        assert!(errs[0] > errs[1] && errs[1] > errs[2], "{errs:?}");
        let mut map = TensorMap::from_tensors([("w".to_string(), w)].into(), d);
        let err = share_weights(&mut map, |_| true, 9)
            .unwrap_err()
            .to_string();
        assert!(err.contains("share.bits"), "{err}");
    }
}
