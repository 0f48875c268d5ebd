//! GPTQ (Frantar et al. 2023, IST-DASLab/gptq) with a GGUF block type as its quantiser, so a
//! GPTQ-quantised matrix is ordinary GGUF blocks any llama.cpp build runs. Columns are
//! quantised in order; at the first column of each block of the type (a group, 256 weights
//! for Q4_K, 32 for Q5_0) the group's grid is chosen by llama.cpp's importance-weighted search
//! on the group's *current* values — after the error feedback from earlier columns, as GPTQ's
//! `static_groups = False` does — and every column is then rounded to that grid, its error
//! spread over the columns not yet quantised through the inverse Hessian.

use faer::MatRef;

use crate::calibration::obs::{from_mat, sweep, to_mat, ColumnRule, InverseHessian};
use crate::formats::gguf::blocks::grid::sigma2;
use crate::formats::gguf::blocks::{fit, BlockGrid, Format};

/// A matrix as GGUF blocks.
pub struct Quantized {
    /// Row-major blocks of the format, rows in the matrix's order.
    pub bytes: Vec<u8>,
    /// The values the blocks decode to, row-major.
    pub values: Vec<f32>,
    /// OBS estimate of the added reconstruction loss.
    pub loss: f64,
}

struct GridRule<'a> {
    format: Format,
    group: usize,
    cols: usize,
    importance: Option<&'a [f32]>,
    sigma2: Vec<f32>,
    /// `grids[row]`: the grid of each group chosen so far.
    grids: Vec<Vec<BlockGrid>>,
    levels: Vec<i32>,
}

impl ColumnRule for GridRule<'_> {
    fn before_column(&mut self, i: usize, start: usize, block: MatRef<f32>, _diag: &[f32]) {
        if !i.is_multiple_of(self.group) {
            return;
        }
        let k0 = i - start;
        let mut seg = vec![0f32; self.group];
        for (r, grids) in self.grids.iter_mut().enumerate() {
            for (t, v) in seg.iter_mut().enumerate() {
                *v = block[(r, k0 + t)];
            }
            let imp = self.importance.map(|w| &w[i..i + self.group]);
            grids.push(fit(self.format, &seg, imp, self.sigma2[r]).0);
        }
    }

    fn replace(&mut self, row: usize, i: usize, w: f32) -> f32 {
        let grid = &self.grids[row][i / self.group];
        let l = grid.nearest(i % self.group, w);
        self.levels[row * self.cols + i] = l;
        grid.value(i % self.group, l)
    }
}

/// GPTQ of the row-major `w [rows, cols]` (`cols` a multiple of the format's block) with the
/// layer's inverse Hessian; `importance` (the mean `x²` per input channel) weights each
/// group's grid search as llama.cpp's importance matrix does.
pub(crate) fn gptq_quantize(
    w: &[f32],
    rows: usize,
    cols: usize,
    format: Format,
    hinv: &InverseHessian,
    importance: Option<&[f32]>,
) -> Quantized {
    let group = format.block();
    debug_assert_eq!(cols % group, 0);
    let mut m = to_mat(w, rows, cols);
    let mut rule = GridRule {
        format,
        group,
        cols,
        importance,
        sigma2: (0..rows)
            .map(|r| sigma2(&w[r * cols..(r + 1) * cols]))
            .collect(),
        grids: vec![Vec::with_capacity(cols / group); rows],
        levels: vec![0; rows * cols],
    };
    // Blocks hold whole groups, so a group's grid is fitted on fully updated values.
    let block = group.max(128).div_ceil(group) * group;
    let loss = sweep(&mut m, hinv, block, &mut rule);
    let mut bytes = Vec::with_capacity(rows * cols / group * format.block_bytes());
    for r in 0..rows {
        for (g, grid) in rule.grids[r].iter().enumerate() {
            let at = r * cols + g * group;
            grid.encode(&rule.levels[at..at + group], &mut bytes);
        }
    }
    Quantized {
        bytes,
        values: from_mat(&m),
        loss,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibration::obs::tests::stats;
    use crate::calibration::obs::{inverse_hessian, DAMP};
    use crate::formats::gguf::blocks::quantize_rows;

    fn output_error(w: &[f32], w_hat: &[f32], x: &[f32], rows: usize, n: usize, t: usize) -> f64 {
        let mut e = 0f64;
        for s in 0..t {
            for r in 0..rows {
                let d: f64 = (0..n)
                    .map(|j| (w[r * n + j] - w_hat[r * n + j]) as f64 * x[s * n + j] as f64)
                    .sum();
                e += d * d;
            }
        }
        e
    }

    fn decode(format: Format, bytes: &[u8], rows: usize, cols: usize) -> Vec<f32> {
        crate::formats::gguf::blocks::decode(bytes, format.dtype(), rows, cols).unwrap()
    }

    #[test]
    fn gptq_beats_round_to_nearest_on_the_same_calibration_data() {
        for (format, n) in [(Format::Q4K, 256), (Format::Q5_0, 64), (Format::Q4_0, 64)] {
            let (rows, t) = (8, 4 * n);
            let (x, st) = stats(t, n, 11);
            let hinv = inverse_hessian("w", &st, DAMP).unwrap();
            let w: Vec<f32> = (0..rows * n)
                .map(|i| {
                    ((i * 37 % 101) as f32 - 50.0) / 400.0 + if i % 13 == 0 { 0.1 } else { 0.0 }
                })
                .collect();
            let imp = st.importance();
            let q = gptq_quantize(&w, rows, n, format, &hinv, Some(&imp));
            // The bytes are the values: what llama.cpp will compute with.
            let back = decode(format, &q.bytes, rows, n);
            for (a, b) in back.iter().zip(&q.values) {
                assert!((a - b).abs() < 1e-6, "{format:?}: {a} vs {b}");
            }
            let rtn = decode(format, &quantize_rows(format, &w, n, Some(&imp)), rows, n);
            let (e_gptq, e_rtn) = (
                output_error(&w, &q.values, &x, rows, n, t),
                output_error(&w, &rtn, &x, rows, n, t),
            );
            assert!(e_gptq < e_rtn, "{format:?}: GPTQ {e_gptq} vs RTN {e_rtn}");
        }
    }
}
