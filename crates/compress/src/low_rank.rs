//! Low-rank factorisation: a linear weight `W [out, in]` becomes `U [out, r] · V [r, in]` from
//! its truncated SVD (`U = U_r·√S_r`, `V = √S_r·V_rᵀ`), the best rank-`r` approximation in the
//! Frobenius norm (Eckart–Young). The model then runs the two factors one after the other, so
//! a factorised layer costs `r·(out + in)` multiply-adds per token instead of `out·in`.

use candle_core::{DType, Tensor};
use faer::Mat;
use serde::{Deserialize, Serialize};

use crate::error::CompressError;
use crate::pass::{Candidate, Context, Pass, PassReport};
use crate::sparsity::is_layer_matrix;
use crate::stored::Stored;
use crate::technique::{schema_of, settings, Built, Defaults, Settings, Technique};
use crate::tensors::TensorMap;

/// Settings of `low_rank`: exactly one of `rank` and `energy`.
#[derive(Clone, Debug, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LowRankSettings {
    /// The same rank for every layer matrix.
    #[serde(default)]
    pub rank: Option<usize>,
    /// Per matrix, the smallest rank keeping this share of the spectral energy, in (0, 1].
    #[serde(default)]
    pub energy: Option<f64>,
}

pub(crate) const TECHNIQUE: Technique = Technique {
    name: "low_rank",
    summary: "truncated SVD of the layer matrices, run as two factors",
    build,
    schema: schema_of::<LowRankSettings>,
};

fn build(s: &Settings, _: &Defaults) -> Result<Built, CompressError> {
    let c: LowRankSettings = settings("low_rank", s)?;
    let bad = |key: &str, msg: String| CompressError::Config {
        key: key.into(),
        msg,
    };
    let target = match (c.rank, c.energy) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(bad(
                "",
                "low_rank takes exactly one of `rank` and `energy`".into(),
            ))
        }
        (Some(0), _) => return Err(bad("rank", "must be >= 1".into())),
        (Some(r), _) => RankTarget::Rank(r),
        (_, Some(e)) if !(e > 0.0 && e <= 1.0) => {
            return Err(bad("energy", format!("{e} is outside (0, 1]")))
        }
        (_, Some(e)) => RankTarget::Energy(e),
    };
    Ok(Built::Pass(Box::new(LowRank(target))))
}

/// The low-rank pass over every layer matrix.
pub struct LowRank(pub RankTarget);

impl Pass for LowRank {
    fn name(&self) -> &'static str {
        "low_rank"
    }
    fn label(&self) -> String {
        match self.0 {
            RankTarget::Rank(r) => format!("low rank {r}"),
            RankTarget::Energy(e) => format!("low rank ({:.0}% energy)", e * 100.0),
        }
    }
    fn encodes(&self) -> bool {
        true
    }
    fn apply(&self, c: &mut Candidate, _: &Context) -> Result<PassReport, CompressError> {
        let done = low_rank(&mut c.weights, is_layer_matrix, self.0)?;
        let applied: Vec<_> = done.iter().filter(|f| f.applied).collect();
        let ranks: Vec<usize> = applied.iter().map(|f| f.rank).collect();
        Ok(PassReport::note(format!(
            "{} of {} matrices factorised, ranks {}..={}, mean energy kept {:.3}",
            applied.len(),
            done.len(),
            ranks.iter().min().unwrap_or(&0),
            ranks.iter().max().unwrap_or(&0),
            applied.iter().map(|f| f.energy).sum::<f64>() / applied.len().max(1) as f64
        )))
    }
}

/// How the rank of each factorised matrix is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RankTarget {
    /// The same rank for every matrix.
    Rank(usize),
    /// Per matrix, the smallest rank whose singular values keep this share of the spectral
    /// energy (sum of squared singular values), in (0, 1].
    Energy(f64),
}

/// What factorising one matrix did.
#[derive(Clone, Debug, Serialize)]
pub struct Factorised {
    pub tensor: String,
    pub shape: [usize; 2],
    pub rank: usize,
    /// Share of the spectral energy the kept singular values carry.
    pub energy: f64,
    /// Whether the factors replaced the matrix (only when they hold fewer values).
    pub applied: bool,
}

/// The rank-`r` factors `(U·√S, √S·Vᵀ)` of `w` and the share of energy they keep, with `r`
/// chosen by `target`.
pub fn factorise(
    name: &str,
    w: &Tensor,
    target: RankTarget,
) -> Result<(Tensor, Tensor, f64), CompressError> {
    let terr = |source| CompressError::Tensor {
        context: format!("factorising `{name}`"),
        source,
    };
    let (out, inp) = w.dims2().map_err(terr)?;
    let full = out.min(inp);
    match target {
        RankTarget::Rank(r) if r == 0 || r > full => {
            return Err(CompressError::Config {
                key: "low_rank.rank".into(),
                msg: format!(
                "rank {r} does not fit `{name}` of shape [{out}, {inp}]: it must be in 1..={full}"
            ),
            })
        }
        RankTarget::Energy(e) if !(e > 0.0 && e <= 1.0) => {
            return Err(CompressError::Config {
                key: "low_rank.energy".into(),
                msg: format!("{e} is outside (0, 1]"),
            })
        }
        _ => {}
    }
    let values = w
        .to_dtype(DType::F64)
        .and_then(|t| t.to_vec2::<f64>())
        .map_err(terr)?;
    let m = Mat::<f64>::from_fn(out, inp, |i, j| values[i][j]);
    let svd = m.thin_svd().map_err(|e| {
        CompressError::Unsupported(format!("SVD of `{name}` did not converge: {e:?}"))
    })?;
    let s: Vec<f64> = (0..full).map(|i| *svd.S().column_vector().get(i)).collect();
    let total: f64 = s.iter().map(|x| x * x).sum();
    let rank = match target {
        RankTarget::Rank(r) => r,
        RankTarget::Energy(e) => {
            let mut acc = 0.0;
            let mut r = full;
            for (i, x) in s.iter().enumerate() {
                acc += x * x;
                if acc >= e * total - 1e-12 * total {
                    r = i + 1;
                    break;
                }
            }
            r
        }
    };
    let kept: f64 = s[..rank].iter().map(|x| x * x).sum();
    let energy = if total > 0.0 { kept / total } else { 1.0 };
    let (u, v) = (svd.U(), svd.V());
    let roots: Vec<f64> = s[..rank].iter().map(|x| x.sqrt()).collect();
    let mut uf = Vec::with_capacity(out * rank);
    for i in 0..out {
        uf.extend(
            roots
                .iter()
                .enumerate()
                .map(|(k, r)| (*u.get(i, k) * r) as f32),
        );
    }
    let mut vf = Vec::with_capacity(rank * inp);
    for (k, r) in roots.iter().enumerate() {
        vf.extend((0..inp).map(|j| (*v.get(j, k) * r) as f32));
    }
    let dev = w.device();
    let u = Tensor::from_vec(uf, (out, rank), dev).map_err(terr)?;
    let v = Tensor::from_vec(vf, (rank, inp), dev).map_err(terr)?;
    Ok((u, v, energy))
}

/// Factorises every matrix of `map` that `select` names. A matrix whose factors would hold as
/// many values as itself stays dense (and is reported so).
pub fn low_rank(
    map: &mut TensorMap,
    select: impl Fn(&str) -> bool,
    target: RankTarget,
) -> Result<Vec<Factorised>, CompressError> {
    let names = map.dense_matrices(select, "low_rank")?;
    let mut done = vec![];
    for name in names {
        let w = &map.tensors[&name];
        let (out, inp) = (w.dims()[0], w.dims()[1]);
        let (u, v, energy) = factorise(&name, w, target)?;
        let rank = u.dims()[1];
        let applied = rank * (out + inp) < out * inp;
        if applied {
            let product = u.matmul(&v).map_err(|source| CompressError::Tensor {
                context: format!("multiplying the factors of `{name}`"),
                source,
            })?;
            map.tensors.insert(name.clone(), product);
            map.stored.insert(name.clone(), Stored::LowRank { u, v });
        }
        done.push(Factorised {
            tensor: name,
            shape: [out, inp],
            rank,
            energy,
            applied,
        });
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn a_rank_two_matrix_is_recovered_exactly_at_rank_two() {
        let d = Device::Cpu;
        let a = Tensor::randn(0f32, 1.0, (12, 2), &d).unwrap();
        let b = Tensor::randn(0f32, 1.0, (2, 9), &d).unwrap();
        let w = a.matmul(&b).unwrap();
        let (u, v, energy) = factorise("w", &w, RankTarget::Rank(2)).unwrap();
        assert_eq!((u.dims(), v.dims()), (&[12, 2][..], &[2, 9][..]));
        let diff = (u.matmul(&v).unwrap() - &w).unwrap().abs().unwrap();
        let max = diff.max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(max < 1e-4, "max diff {max}");
        assert!((energy - 1.0).abs() < 1e-9);
        // Energy targeting finds the same rank.
        let (u, _, _) = factorise("w", &w, RankTarget::Energy(0.999)).unwrap();
        assert_eq!(u.dims()[1], 2);
    }

    #[test]
    fn truncation_error_is_the_dropped_spectrum() {
        let d = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (16, 10), &d).unwrap();
        let (u, v, energy) = factorise("w", &w, RankTarget::Rank(4)).unwrap();
        let err = (u.matmul(&v).unwrap() - &w).unwrap().sqr().unwrap();
        let err = err.sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
        let total = w
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        // Eckart–Young: the squared error is exactly the energy left out.
        assert!(
            (err / total - (1.0 - energy)).abs() < 1e-4,
            "{err} {total} {energy}"
        );
        assert!(energy < 1.0 && energy > 0.4);
    }

    #[test]
    fn a_rank_larger_than_the_matrix_is_refused_by_name() {
        let w = Tensor::zeros((4, 6), DType::F32, &Device::Cpu).unwrap();
        let err = factorise("model.layers.0.mlp.up_proj.weight", &w, RankTarget::Rank(5))
            .unwrap_err()
            .to_string();
        assert!(err.contains("up_proj") && err.contains("1..=4"), "{err}");
        let err = factorise("w", &w, RankTarget::Energy(1.5))
            .unwrap_err()
            .to_string();
        assert!(err.contains("low_rank.energy"), "{err}");
    }

    #[test]
    fn factors_that_would_not_save_values_leave_the_matrix_dense() {
        let d = Device::Cpu;
        let mut map = TensorMap::from_tensors(
            [(
                "model.layers.0.mlp.up_proj.weight".to_string(),
                Tensor::randn(0f32, 1.0, (8, 8), &d).unwrap(),
            )]
            .into(),
            d.clone(),
        );
        let r = low_rank(&mut map, |_| true, RankTarget::Rank(4)).unwrap();
        assert!(!r[0].applied && map.stored.is_empty());
        let r = low_rank(&mut map, |_| true, RankTarget::Rank(2)).unwrap();
        assert!(r[0].applied && map.stored.len() == 1);
    }
}
