//! Weight sharing (Deep Compression): each matrix keeps `2^b` distinct values, the centroids of
//! a k-means clustering of its weights, and stores a `b`-bit index per weight.
//!
//! k-means in one dimension is solved exactly per Lloyd iteration on the sorted values: each
//! cluster is a contiguous run between the midpoints of neighbouring centroids, so assignment
//! is a binary search and the update a difference of prefix sums. Centroids start at evenly
//! spaced quantiles (deterministic, and dense where the weights are).

use serde::{Deserialize, Serialize};

use candle_core::Tensor;

use crate::error::CompressError;
use crate::pass::{Candidate, Context, Pass, PassReport};
use crate::stored::Stored;
use crate::technique::{schema_of, settings, Built, Defaults, Settings, Technique};
use crate::tensors::{values_f32, TensorMap};

/// Settings of `share`.
#[derive(Clone, Debug, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShareSettings {
    /// k-means weight sharing with `2^bits` values per matrix (1 to 8).
    pub bits: u32,
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
pub struct Share(pub ShareSettings);

impl Pass for Share {
    fn name(&self) -> &'static str {
        "share"
    }
    fn label(&self) -> String {
        format!("k-means {}-bit", self.0.bits)
    }
    fn encodes(&self) -> bool {
        true
    }
    fn apply(&self, c: &mut Candidate, _: &Context) -> Result<PassReport, CompressError> {
        let done = share_weights(&mut c.weights, |_| true, self.0.bits)?;
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
    let k = 1usize << bits;
    let mut sorted: Vec<f32> = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let n = sorted.len();
    if n == 0 {
        return (vec![0.0; k], vec![]);
    }
    let mut prefix = Vec::with_capacity(n + 1);
    prefix.push(0f64);
    for v in &sorted {
        prefix.push(prefix.last().copied().unwrap_or(0.0) + *v as f64);
    }
    let mut c: Vec<f64> = (0..k)
        .map(|i| sorted[((2 * i + 1) * n / (2 * k)).min(n - 1)] as f64)
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
            if b > a {
                let mean = (prefix[b] - prefix[a]) / (b - a) as f64;
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
        .map(|&x| {
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
        })
        .collect();
    (centroids, index)
}

/// Replaces every dense matrix of `map` that `select` names by `2^bits` shared values.
pub fn share_weights(
    map: &mut TensorMap,
    select: impl Fn(&str) -> bool,
    bits: u32,
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
        let t = &map.tensors[&name];
        let terr = |source| CompressError::Tensor {
            context: format!("sharing `{name}`"),
            source,
        };
        let shape = t.dims().to_vec();
        let values = values_f32(&name, t)?;
        let (codebook, indices) = kmeans_1d(&values, bits);
        let decoded: Vec<f32> = indices.iter().map(|&i| codebook[i as usize]).collect();
        let sq: f64 = values
            .iter()
            .zip(&decoded)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let rms_error = (sq / values.len().max(1) as f64).sqrt();
        let dense = Tensor::from_vec(decoded, shape, t.device()).map_err(terr)?;
        map.tensors.insert(name.clone(), dense);
        map.stored.insert(
            name.clone(),
            Stored::Shared {
                codebook,
                indices,
                bits,
            },
        );
        done.push(Shared {
            tensor: name,
            bits,
            rms_error,
        });
    }
    Ok(done)
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
