//! Low-rank factorisation: a linear weight `W [out, in]` becomes `U [out, r] · V [r, in]` from
//! its truncated SVD (`U = U_r·√S_r`, `V = √S_r·V_rᵀ`), the best rank-`r` approximation in the
//! Frobenius norm (Eckart–Young). The model then runs the two factors one after the other, so
//! a factorised layer costs `r·(out + in)` multiply-adds per token instead of `out·in`.
//!
//! `method: svd_llm` (Wang et al. 2024) truncates the *whitened* weight instead: with `S` the
//! Cholesky factor of the layer inputs' `XᵀX` (damped), the SVD of `W·S` truncated to rank `r`
//! and mapped back through `S⁻¹` is the rank-`r` matrix that minimises the error of the layer's
//! *outputs* `‖(W − Ŵ)X‖`, not of its weights; the calibration walk supplies `XᵀX` layer by
//! layer on the already factorised earlier layers. Trained matrices have flat spectra, so the
//! rank comes from a parameter target (`keep`) rather than spectral energy, which on them
//! keeps nearly full rank and saves nothing.

use candle_core::{DType, Tensor};
use faer::{Mat, Side};
use serde::{Deserialize, Serialize};

use crate::calibration::obs::{add_damping, hessian_matrix};
use crate::calibration::walk::{walk, Collect, SiteStats};
use crate::error::CompressError;
use crate::formats::folder::Stored;
use crate::framework::pass::{Candidate, Context, Pass, PassReport};
use crate::framework::technique::{schema_of, settings, Built, Defaults, Settings, Technique};
use crate::model::tensors::TensorMap;
use crate::passes::pruning::sparsity::is_layer_matrix;

/// How the factors are chosen.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LowRankMethod {
    /// Truncated SVD of the weight (no data).
    #[default]
    Svd,
    /// SVD-LLM: truncated SVD of the weight whitened by the Cholesky factor of its inputs'
    /// `XᵀX` on the calibration blocks.
    SvdLlm,
}

/// Settings of `low_rank`: exactly one of `rank`, `energy` and `keep`.
#[derive(Clone, Debug, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LowRankSettings {
    /// The same rank for every layer matrix.
    #[serde(default)]
    pub rank: Option<usize>,
    /// Per matrix, the smallest rank keeping this share of the spectral energy, in (0, 1].
    #[serde(default)]
    pub energy: Option<f64>,
    /// Per matrix, the rank whose factors hold this share of the matrix's parameters, in
    /// (0, 1): `keep: 0.8` saves 20% of every factorised matrix.
    #[serde(default)]
    pub keep: Option<f64>,
    #[serde(default)]
    pub method: LowRankMethod,
    /// SVD-LLM's dampening of `XᵀX`, a share of its mean diagonal.
    #[serde(default = "d_damp")]
    pub damp: f64,
}

fn d_damp() -> f64 {
    crate::calibration::obs::DAMP
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
    let target = match (c.rank, c.energy, c.keep) {
        (Some(0), None, None) => return Err(bad("rank", "must be >= 1".into())),
        (Some(r), None, None) => RankTarget::Rank(r),
        (None, Some(e), None) if !(e > 0.0 && e <= 1.0) => {
            return Err(bad("energy", format!("{e} is outside (0, 1]")))
        }
        (None, Some(e), None) => RankTarget::Energy(e),
        (None, None, Some(k)) if !(k > 0.0 && k < 1.0) => {
            return Err(bad("keep", format!("{k} is outside (0, 1)")))
        }
        (None, None, Some(k)) => RankTarget::Keep(k),
        _ => {
            return Err(bad(
                "",
                "low_rank takes exactly one of `rank`, `energy` and `keep`".into(),
            ))
        }
    };
    if !(c.damp > 0.0 && c.damp < 10.0) {
        return Err(bad("damp", format!("{} is outside (0, 10)", c.damp)));
    }
    Ok(Built::Pass(Box::new(LowRank {
        target,
        method: c.method,
        damp: c.damp,
    })))
}

/// The low-rank pass over every layer matrix.
pub(crate) struct LowRank {
    pub target: RankTarget,
    pub method: LowRankMethod,
    pub damp: f64,
}

impl Pass for LowRank {
    fn name(&self) -> &'static str {
        "low_rank"
    }
    fn label(&self) -> String {
        let by = match self.method {
            LowRankMethod::Svd => "",
            LowRankMethod::SvdLlm => " by svd-llm",
        };
        match self.target {
            RankTarget::Rank(r) => format!("low rank {r}{by}"),
            RankTarget::Energy(e) => format!("low rank ({:.0}% energy){by}", e * 100.0),
            RankTarget::Keep(k) => format!("low rank ({:.0}% of parameters){by}", k * 100.0),
        }
    }
    fn encodes(&self) -> bool {
        true
    }
    fn apply(&self, c: &mut Candidate, cx: &Context) -> Result<PassReport, CompressError> {
        let done = match self.method {
            LowRankMethod::Svd => low_rank(&mut c.weights, is_layer_matrix, self.target)?,
            LowRankMethod::SvdLlm => {
                let blocks = cx.calibration.tokens().ok_or_else(|| {
                    CompressError::Unsupported(
                        "method: svd_llm needs calibration tokens, which this task does not provide".into(),
                    )
                })?;
                let mut done = vec![];
                walk(c, &blocks, Collect::Hessians, &mut |stage, c| {
                    for (name, stats) in &stage.matrices {
                        if !is_layer_matrix(name) {
                            continue;
                        }
                        let s = whitening(name, stats, self.damp)?;
                        done.push(factorise_into(&mut c.weights, name, self.target, Some(&s))?);
                    }
                    Ok(())
                })?;
                done
            }
        };
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
    /// Per matrix, the rank whose factors hold this share of its parameters, in (0, 1).
    Keep(f64),
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
    factorise_whitened(name, w, target, None)
}

/// The lower Cholesky factor `S` of the damped `XᵀX` of `stats` (`XᵀX + λI = S·Sᵀ`), SVD-LLM's
/// whitening; an error naming the matrix when it is not positive definite.
pub(crate) fn whitening(
    name: &str,
    stats: &SiteStats,
    damp: f64,
) -> Result<Mat<f64>, CompressError> {
    let mut m = hessian_matrix(name, stats)?;
    let lambda = add_damping(&mut m, damp);
    let l = m.llt(Side::Lower).map_err(|_| {
        CompressError::Unsupported(format!(
            "{name}: XᵀX of the calibration inputs is not positive definite after dampening by λ = {lambda:.3e}; raise `damp`"
        ))
    })?;
    Ok(l.L().to_owned())
}

/// [`factorise`] of `w·S` when `whiten` gives `S`, the factor `V` mapped back through `S⁻¹`.
pub(crate) fn factorise_whitened(
    name: &str,
    w: &Tensor,
    target: RankTarget,
    whiten: Option<&Mat<f64>>,
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
        RankTarget::Keep(k) if keep_rank(k, out, inp) == 0 => {
            return Err(CompressError::Config {
                key: "low_rank.keep".into(),
                msg: format!(
                    "{k} of `{name}` [{out}, {inp}] leaves rank 0: its factors could not hold a single row"
                ),
            })
        }
        _ => {}
    }
    let values = w
        .to_dtype(DType::F64)
        .and_then(|t| t.to_vec2::<f64>())
        .map_err(terr)?;
    let mut m = Mat::<f64>::from_fn(out, inp, |i, j| values[i][j]);
    if let Some(s) = whiten {
        m = &m * s;
    }
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
        RankTarget::Keep(k) => keep_rank(k, out, inp).min(full),
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
    // V [inp, rank] scaled by √S; with whitening, Sᵀ⁻¹ of it (V_rᵀ·S⁻¹ transposed).
    let mut vs = Mat::<f64>::from_fn(inp, rank, |j, k| *v.get(j, k) * roots[k]);
    if let Some(s) = whiten {
        faer::linalg::triangular_solve::solve_upper_triangular_in_place(
            s.transpose(),
            vs.as_mut(),
            faer::Par::Seq,
        );
    }
    let mut vf = Vec::with_capacity(rank * inp);
    for k in 0..rank {
        vf.extend((0..inp).map(|j| vs[(j, k)] as f32));
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
        done.push(factorise_into(map, &name, target, None)?);
    }
    Ok(done)
}

/// The rank whose factors of an `[out, inp]` matrix hold `keep` of its parameters.
fn keep_rank(keep: f64, out: usize, inp: usize) -> usize {
    ((keep * (out * inp) as f64) / (out + inp) as f64).floor() as usize
}

/// Factorises `name` of `map` in place (whitened by `whiten`), unless the factors would not
/// hold fewer values.
fn factorise_into(
    map: &mut TensorMap,
    name: &str,
    target: RankTarget,
    whiten: Option<&Mat<f64>>,
) -> Result<Factorised, CompressError> {
    let w = &map.tensors[name];
    let (out, inp) = (w.dims()[0], w.dims()[1]);
    let (u, v, energy) = factorise_whitened(name, w, target, whiten)?;
    let rank = u.dims()[1];
    let applied = rank * (out + inp) < out * inp;
    if applied {
        let product = u.matmul(&v).map_err(|source| CompressError::Tensor {
            context: format!("multiplying the factors of `{name}`"),
            source,
        })?;
        map.tensors.insert(name.to_string(), product);
        map.stored
            .insert(name.to_string(), Stored::LowRank { u, v });
    }
    Ok(Factorised {
        tensor: name.to_string(),
        shape: [out, inp],
        rank,
        energy,
        applied,
    })
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
    fn whitened_factors_lower_the_output_error_at_the_same_rank() {
        let (rows, n, t) = (24, 32, 256);
        let (x, st) = crate::calibration::obs::tests::stats(t, n, 5);
        let d = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (rows, n), &d).unwrap();
        let xt = Tensor::from_vec(x, (t, n), &d).unwrap();
        let out_err = |u: &Tensor, v: &Tensor| {
            let diff = (u.matmul(v).unwrap() - &w).unwrap();
            diff.matmul(&xt.t().unwrap())
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let target = RankTarget::Keep(0.5);
        let (u, v, _) = factorise("w", &w, target).unwrap();
        let s = whitening("w", &st, crate::calibration::obs::DAMP).unwrap();
        let (uw, vw, _) = factorise_whitened("w", &w, target, Some(&s)).unwrap();
        // keep 0.5 of 24 × 32 values: rank ⌊384 / 56⌋ = 6.
        assert_eq!((u.dims()[1], uw.dims()[1]), (6, 6));
        let (plain, whitened) = (out_err(&u, &v), out_err(&uw, &vw));
        assert!(whitened < 0.7 * plain, "svd-llm {whitened} vs svd {plain}");
        let e = factorise(
            "model.layers.0.mlp.up_proj.weight",
            &w,
            RankTarget::Keep(0.01),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("up_proj") && e.contains("rank 0"), "{e}");
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
