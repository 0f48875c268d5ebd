//! SparseGPT (Frantar & Alistarh 2023, IST-DASLab/sparsegpt): pruning with weight updates.
//! Columns are visited in order; the weights pruned in a column are chosen by the OBS saliency
//! `w² / [H⁻¹]_jj²` (per block of 128 columns for unstructured sparsity, the paper's adaptive
//! mask selection; per group of 4 for 2:4), and the error their removal makes is compensated
//! by updating the weights not yet visited, through the inverse Hessian of the layer's inputs.

use faer::MatRef;

use crate::calibration::obs::{sweep, ColumnRule, InverseHessian};
use crate::passes::pruning::sparsity::SparsityPattern;

/// Columns per block: the references' `blocksize`.
pub(crate) const BLOCK: usize = 128;

struct Mask {
    pattern: SparsityPattern,
    /// `pruned[r * block + (i - start)]` for the current block.
    pruned: Vec<bool>,
    start: usize,
    width: usize,
}

impl ColumnRule for Mask {
    fn before_column(&mut self, i: usize, start: usize, block: MatRef<f32>, diag: &[f32]) {
        let rows = block.nrows();
        let count = block.ncols();
        let saliency = |r: usize, k: usize| {
            let w = block[(r, k)];
            w * w / (diag[k] * diag[k])
        };
        if i == start {
            self.start = start;
            self.width = count;
            self.pruned = vec![false; rows * count];
            if let SparsityPattern::Share(share) = self.pattern {
                let n = ((rows * count) as f64 * share).floor() as usize;
                if n > 0 {
                    let mut all: Vec<(f32, usize)> = (0..rows)
                        .flat_map(|r| (0..count).map(move |k| (r, k)))
                        .map(|(r, k)| (saliency(r, k), r * count + k))
                        .collect();
                    all.select_nth_unstable_by(n - 1, |a, b| {
                        a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))
                    });
                    for &(_, idx) in &all[..n] {
                        self.pruned[idx] = true;
                    }
                }
            }
        }
        let k = i - start;
        if self.pattern == SparsityPattern::TwoFour && k.is_multiple_of(4) {
            for r in 0..rows {
                let mut idx = [k, k + 1, k + 2, k + 3];
                idx.sort_by(|&a, &b| saliency(r, a).total_cmp(&saliency(r, b)).then(a.cmp(&b)));
                self.pruned[r * count + idx[0]] = true;
                self.pruned[r * count + idx[1]] = true;
            }
        }
    }

    fn replace(&mut self, row: usize, i: usize, w: f32) -> f32 {
        if self.pruned[row * self.width + (i - self.start)] {
            0.0
        } else {
            w
        }
    }
}

/// Prunes the column-major `w [rows, cols]` to `pattern` with SparseGPT's updates; returns the
/// OBS estimate of the reconstruction loss it added.
pub(crate) fn sparsegpt_prune(
    w: &mut faer::Mat<f32>,
    hinv: &InverseHessian,
    pattern: SparsityPattern,
) -> f64 {
    let mut rule = Mask {
        pattern,
        pruned: vec![],
        start: 0,
        width: 0,
    };
    sweep(w, hinv, BLOCK, &mut rule)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibration::obs::tests::stats;
    use crate::calibration::obs::{inverse_hessian, to_mat, DAMP};

    /// `‖(W − Ŵ) Xᵀ‖²` for row-major `X [t, n]`.
    fn output_error(w: &faer::Mat<f32>, w_hat: &faer::Mat<f32>, x: &[f32], t: usize) -> f64 {
        let (rows, n) = (w.nrows(), w.ncols());
        let mut e = 0f64;
        for s in 0..t {
            for r in 0..rows {
                let mut d = 0f64;
                for j in 0..n {
                    d += (w[(r, j)] - w_hat[(r, j)]) as f64 * x[s * n + j] as f64;
                }
                e += d * d;
            }
        }
        e
    }

    fn random_w(rows: usize, cols: usize) -> faer::Mat<f32> {
        faer::Mat::from_fn(rows, cols, |r, c| {
            (((r * 31 + c * 17) % 23) as f32 - 11.0) / 10.0
        })
    }

    #[test]
    fn the_update_lowers_the_output_error_below_masking_alone() {
        let (rows, n, t) = (12, 32, 256);
        let (x, st) = stats(t, n, 7);
        let hinv = inverse_hessian("w", &st, DAMP).unwrap();
        for pattern in [SparsityPattern::Share(0.5), SparsityPattern::TwoFour] {
            let w = random_w(rows, n);
            let mut pruned = w.clone();
            sparsegpt_prune(&mut pruned, &hinv, pattern);
            // The same mask without the update.
            let masked = faer::Mat::from_fn(rows, n, |r, c| {
                if pruned[(r, c)] == 0.0 {
                    0.0
                } else {
                    w[(r, c)]
                }
            });
            let zeros = (0..rows)
                .flat_map(|r| (0..n).map(move |c| (r, c)))
                .filter(|&(r, c)| pruned[(r, c)] == 0.0)
                .count();
            assert_eq!(zeros, rows * n / 2, "{pattern:?}");
            if pattern == SparsityPattern::TwoFour {
                for r in 0..rows {
                    for g in (0..n).step_by(4) {
                        let z = (g..g + 4).filter(|&c| pruned[(r, c)] == 0.0).count();
                        assert_eq!(z, 2);
                    }
                }
            }
            let with_update = output_error(&w, &pruned, &x, t);
            let mask_only = output_error(&w, &masked, &x, t);
            assert!(
                with_update < 0.8 * mask_only,
                "{pattern:?}: {with_update} vs {mask_only}"
            );
        }
        // A row-major round trip keeps values.
        let w = random_w(3, 5);
        assert_eq!(to_mat(&crate::calibration::obs::from_mat(&w), 3, 5), w);
    }
}
