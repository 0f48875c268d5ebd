//! Wanda (Sun et al. 2023, locuslab/wanda): pruning by weights *and* activations. A weight's
//! score is `|W_ij| · ‖x_j‖₂`, its magnitude times the norm of the input channel it multiplies
//! over the calibration tokens, and weights compete only within their output row (the
//! comparison group the paper found best for LLMs). No weight is updated: the calibration
//! statistics are the layer's input norms alone.

use crate::passes::pruning::sparsity::SparsityPattern;

/// Zeroes weights of the row-major `w [rows, cols]` by Wanda's score with the input channel
/// norms `norms` (`cols` values): the lowest `share` of every row, or the 2 lowest of every 4
/// consecutive weights of a row.
pub(crate) fn wanda_prune(
    w: &mut [f32],
    rows: usize,
    cols: usize,
    norms: &[f32],
    pattern: SparsityPattern,
) {
    debug_assert_eq!(norms.len(), cols);
    let mut order: Vec<usize> = Vec::with_capacity(cols);
    for r in 0..rows {
        let row = &mut w[r * cols..(r + 1) * cols];
        let score = |j: usize, row: &[f32]| row[j].abs() * norms[j];
        match pattern {
            SparsityPattern::Share(share) => {
                let k = ((cols as f64) * share).floor() as usize;
                if k == 0 {
                    continue;
                }
                order.clear();
                order.extend(0..cols);
                order.select_nth_unstable_by(k - 1, |&a, &b| {
                    score(a, row).total_cmp(&score(b, row)).then(a.cmp(&b))
                });
                for &j in &order[..k] {
                    row[j] = 0.0;
                }
            }
            SparsityPattern::TwoFour => {
                for g in (0..cols).step_by(4) {
                    let mut idx = [g, g + 1, g + 2, g + 3];
                    idx.sort_by(|&a, &b| score(a, row).total_cmp(&score(b, row)).then(a.cmp(&b)));
                    row[idx[0]] = 0.0;
                    row[idx[1]] = 0.0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wanda_keeps_the_weights_that_multiply_large_inputs() {
        // Row 0: by magnitude alone column 0 (0.5) would go; its input is 10x the others', so
        // Wanda prunes the 1.0 in column 3 instead (1.0·0.1 < 0.5·1.0).
        let mut w = vec![0.5, 2.0, 1.5, 1.0, /* row 1 */ -3.0, 0.1, 0.2, 4.0];
        let norms = [1.0, 0.1, 0.1, 0.1];
        wanda_prune(&mut w, 2, 4, &norms, SparsityPattern::Share(0.5));
        // Row 0 scores: 0.5, 0.2, 0.15, 0.1 → columns 2 and 3 go.
        assert_eq!(&w[..4], &[0.5, 2.0, 0.0, 0.0]);
        // Row 1 scores: 3.0, 0.01, 0.02, 0.4 → columns 1 and 2 go; each row loses half.
        assert_eq!(&w[4..], &[-3.0, 0.0, 0.0, 4.0]);

        let mut w = vec![0.5, 2.0, 1.5, 1.0, 0.3, 0.2, 0.1, 0.4];
        let norms = [1.0, 0.1, 0.1, 1.0, 1.0, 1.0, 1.0, 1.0];
        wanda_prune(&mut w, 1, 8, &norms, SparsityPattern::TwoFour);
        assert_eq!(w, vec![0.5, 0.0, 0.0, 1.0, 0.3, 0.0, 0.0, 0.4]);
    }
}
