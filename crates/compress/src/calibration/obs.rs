//! The optimal-brain-surgeon column sweep SparseGPT and GPTQ share (Frantar & Alistarh 2022,
//! 2023; the structure of IST-DASLab's `fasterprune` and `fasterquant`).
//!
//! A layer's weights `W [rows, cols]` are changed column by column to minimise the layer-wise
//! reconstruction error `‖WX − ŴX‖²`, whose Hessian is `H = XᵀX`. With `U` the upper Cholesky
//! factor of `H⁻¹`, replacing column `i` by `q` (zeros where pruned, grid values where
//! quantised) and spreading the error `(w − q) / U_ii` over the columns not yet visited
//! through row `i` of `U` is the exact OBS update; columns go in blocks so that the update of
//! the columns beyond the block is one matrix product.

use faer::linalg::solvers::DenseSolveCore;
use faer::{Accum, Mat, MatMut, MatRef, Par, Side};

use crate::calibration::walk::SiteStats;
use crate::error::CompressError;

/// Default dampening: `λ = 1%` of the mean Hessian diagonal, the references' `percdamp`.
pub(crate) const DAMP: f64 = 0.01;

/// The upper Cholesky factor of a layer's damped inverse Hessian, ready for a sweep.
pub(crate) struct InverseHessian {
    /// `U` with `(H + λI)⁻¹ = UᵀU`.
    pub u: Mat<f32>,
    /// Input channels no calibration token used (`H_jj = 0`): their weights become zero.
    pub dead: Vec<usize>,
}

/// Prepares `stats`' Hessian for the matrix `name` ([`hessian_matrix`]): dead channels get
/// `H_jj = 1`, `λ = damp · mean(diag H)` is added to the diagonal, and a Hessian still not
/// positive definite is an error naming the matrix.
pub(crate) fn inverse_hessian(
    name: &str,
    stats: &SiteStats,
    damp: f64,
) -> Result<InverseHessian, CompressError> {
    let n = stats.columns;
    let mut m = hessian_matrix(name, stats)?;
    let mut dead = vec![];
    for j in 0..n {
        if m[(j, j)] == 0.0 {
            m[(j, j)] = 1.0;
            dead.push(j);
        }
    }
    let lambda = add_damping(&mut m, damp);
    let singular = |what: &str| {
        CompressError::Unsupported(format!(
            "{name}: the calibration Hessian is not positive definite after dampening by λ = {lambda:.3e} ({what}); raise `damp` or use more calibration blocks"
        ))
    };
    let inv = m
        .llt(Side::Lower)
        .map_err(|_| singular("Cholesky of H failed"))?
        .inverse();
    let l = inv
        .llt(Side::Lower)
        .map_err(|_| singular("Cholesky of H⁻¹ failed"))?;
    let l = l.L();
    let u = Mat::<f32>::from_fn(n, n, |i, j| if j >= i { l[(j, i)] as f32 } else { 0.0 });
    if (0..n).any(|i| !u[(i, i)].is_finite() || u[(i, i)] <= 0.0) {
        return Err(singular("non-finite factor"));
    }
    Ok(InverseHessian { u, dead })
}

/// `stats`' Hessian `XᵀX` of the matrix `name` as a dense matrix; an error when the walk
/// collected none, and a warning when fewer calibration tokens than input channels make it
/// rank-deficient (dampening makes it invertible, but the solution is poorer).
pub(crate) fn hessian_matrix(name: &str, stats: &SiteStats) -> Result<Mat<f64>, CompressError> {
    let n = stats.columns;
    let h = stats.hessian.as_ref().ok_or_else(|| {
        CompressError::Unsupported(format!("{name}: the calibration walk collected no Hessian"))
    })?;
    if stats.tokens < n {
        tracing::warn!(
            "{name}: {} calibration tokens for {n} input channels, so its Hessian has rank at most {}; dampening makes it invertible, but more calibration blocks give a better solution",
            stats.tokens,
            stats.tokens
        );
    }
    Ok(Mat::<f64>::from_fn(n, n, |i, j| h[i * n + j]))
}

/// Adds `λ = damp · mean(diag m)` to the diagonal of `m`; returns `λ`.
pub(crate) fn add_damping(m: &mut Mat<f64>, damp: f64) -> f64 {
    let n = m.nrows();
    let mean = (0..n).map(|j| m[(j, j)]).sum::<f64>() / n as f64;
    let lambda = damp * mean.max(f64::MIN_POSITIVE);
    for j in 0..n {
        m[(j, j)] += lambda;
    }
    lambda
}

/// What a sweep puts in place of each weight.
pub(crate) trait ColumnRule {
    /// Called before column `i` (of the whole matrix) is replaced; `block` holds the current
    /// values of the columns `start..start + block.ncols()` (column `i - start` is next) and
    /// `diag` the matching diagonal of `U`.
    fn before_column(&mut self, i: usize, start: usize, block: MatRef<f32>, diag: &[f32]);
    /// The value weight `(row, i)` is replaced with, given its current value.
    fn replace(&mut self, row: usize, i: usize, w: f32) -> f32;
}

/// Sweeps `w` (`[rows, cols]`, column-major) in blocks of `block` columns with `rule`; returns
/// the OBS estimate of the added reconstruction loss, `Σ (w − q)² / U_ii²` / 2.
pub(crate) fn sweep(
    w: &mut Mat<f32>,
    hinv: &InverseHessian,
    block: usize,
    rule: &mut dyn ColumnRule,
) -> f64 {
    let (rows, cols) = (w.nrows(), w.ncols());
    for &j in &hinv.dead {
        w.col_mut(j).fill(0.0);
    }
    let u = &hinv.u;
    let mut loss = 0f64;
    let mut start = 0;
    while start < cols {
        let end = (start + block).min(cols);
        let count = end - start;
        let diag: Vec<f32> = (start..end).map(|i| u[(i, i)]).collect();
        let mut err = Mat::<f32>::zeros(rows, count);
        for k in 0..count {
            let i = start + k;
            rule.before_column(i, start, w.as_ref().subcols(start, count), &diag);
            let d = diag[k];
            for r in 0..rows {
                let x = w[(r, i)];
                let q = rule.replace(r, i, x);
                w[(r, i)] = q;
                let e = (x - q) / d;
                err[(r, k)] = e;
                loss += (e as f64) * (e as f64) / 2.0;
            }
            // The columns left in this block absorb the error now.
            for j in k + 1..count {
                let h = u[(i, start + j)];
                if h == 0.0 {
                    continue;
                }
                let col = start + j;
                for r in 0..rows {
                    w[(r, col)] -= err[(r, k)] * h;
                }
            }
        }
        if end < cols {
            let rest: MatMut<f32> = w.as_mut().subcols_mut(end, cols - end);
            faer::linalg::matmul::matmul(
                rest,
                Accum::Add,
                err.as_ref(),
                u.as_ref().submatrix(start, end, count, cols - end),
                -1.0f32,
                Par::Seq,
            );
        }
        start = end;
    }
    loss
}

/// A row-major `[rows, cols]` slice as a column-major matrix.
pub(crate) fn to_mat(values: &[f32], rows: usize, cols: usize) -> Mat<f32> {
    Mat::from_fn(rows, cols, |r, c| values[r * cols + c])
}

/// A column-major matrix back to row-major values.
pub(crate) fn from_mat(m: &Mat<f32>) -> Vec<f32> {
    let (rows, cols) = (m.nrows(), m.ncols());
    let mut out = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        out.extend((0..cols).map(|c| m[(r, c)]));
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Statistics of random inputs `X [t, n]` with correlated channels.
    pub(crate) fn stats(t: usize, n: usize, seed: u64) -> (Vec<f32>, SiteStats) {
        let mut s = seed;
        let mut rnd = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        };
        // Channels mix a few shared factors plus noise, as real activations do: correlated
        // inputs are where compensating updates pay.
        let factors: Vec<f32> = (0..4 * n).map(|_| rnd()).collect();
        let mut x = vec![0f32; t * n];
        for r in 0..t {
            let z: Vec<f32> = (0..4).map(|_| rnd()).collect();
            for c in 0..n {
                let shared: f32 = (0..4).map(|k| z[k] * factors[k * n + c]).sum();
                x[r * n + c] = shared * (1.0 + c as f32 / n as f32) + 0.2 * rnd();
            }
        }
        let mut h = vec![0f64; n * n];
        let mut sq = vec![0f64; n];
        for r in 0..t {
            for i in 0..n {
                sq[i] += (x[r * n + i] as f64).powi(2);
                for j in 0..n {
                    h[i * n + j] += x[r * n + i] as f64 * x[r * n + j] as f64;
                }
            }
        }
        (
            x,
            SiteStats {
                columns: n,
                tokens: t,
                abs_sums: vec![0.0; n],
                sq_norms: sq,
                hessian: Some(h),
            },
        )
    }

    #[test]
    fn the_factor_inverts_the_damped_hessian() {
        let (_, st) = stats(64, 8, 1);
        let inv = inverse_hessian("w", &st, DAMP).unwrap();
        let h = st.hessian.as_ref().unwrap();
        let mean: f64 = (0..8).map(|j| h[j * 8 + j]).sum::<f64>() / 8.0;
        // (UᵀU)(H + λI) = I
        for i in 0..8 {
            for j in 0..8 {
                let mut acc = 0f64;
                for k in 0..8 {
                    let mut hinv_ik = 0f64;
                    for m in 0..8 {
                        hinv_ik += inv.u[(m, i)] as f64 * inv.u[(m, k)] as f64;
                    }
                    let hkj = h[k * 8 + j] + if k == j { DAMP * mean } else { 0.0 };
                    acc += hinv_ik * hkj;
                }
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((acc - want).abs() < 1e-3, "({i},{j}) = {acc}");
            }
        }
    }

    #[test]
    fn dead_channels_are_zeroed_and_a_non_finite_hessian_is_refused() {
        let (_, mut st) = stats(64, 6, 2);
        let h = st.hessian.as_mut().unwrap();
        for k in 0..6 {
            h[2 * 6 + k] = 0.0;
            h[k * 6 + 2] = 0.0;
        }
        st.sq_norms[2] = 0.0;
        let inv = inverse_hessian("w", &st, DAMP).unwrap();
        assert_eq!(inv.dead, vec![2]);
        let mut st2 = st.clone();
        st2.hessian.as_mut().unwrap()[0] = f64::NAN;
        let e = inverse_hessian("model.layers.3.mlp.up_proj.weight", &st2, DAMP)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("up_proj") && e.contains("positive definite"),
            "{e}"
        );
    }
}
