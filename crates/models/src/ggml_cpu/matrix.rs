//! Weight matrices as the GGUF stores them, multiplied the way ggml's `mul_mat` does: each
//! activation row quantised once to the format the weights' kernel expects, then one dot
//! product per output.

use candle_core::quantized::GgmlDType;
use candle_core::Device;
use rayon::prelude::*;

use super::blocks::{quantize_row_q8, Blocks, Q8Block, QK};
use super::kquants::{
    dequantize_q4k, dequantize_q6k, dot_q4k_q8k_gemm, dot_q4k_q8k_gemv, dot_q6k_q8k_tiled,
    dot_q6k_q8k_vec, parse_q4k, parse_q6k, quantize_row_q8k, BlockQ4K, BlockQ6K, Q8KBlock, QK_K,
};
use super::vec::{dot_f32, dot_lanes8};
use crate::error::{ModelError, Result, TensorContext};
use crate::gguf::GgufFile;

/// Weight rows a parallel task takes at least: enough work to outweigh scheduling it.
const ROWS_PER_TASK: usize = 16;

/// Multiply-adds below which a product runs on the calling thread: waking the pool for less
/// costs more than it saves (a decoding step's small projections; `perf` showed a third of a
/// step in the scheduler when every product was split).
const PARALLEL_MACS: usize = 1 << 19;

/// Calls `f(row, outputs)` for every weight row's `n` outputs in `by_row`, across the thread
/// pool when `parallel`.
fn for_each_row(
    by_row: &mut [f32],
    n: usize,
    parallel: bool,
    f: impl Fn(usize, &mut [f32]) + Sync,
) {
    if parallel {
        by_row
            .par_chunks_exact_mut(n)
            .enumerate()
            .with_min_len(ROWS_PER_TASK)
            .for_each(|(r, out)| f(r, out));
    } else {
        by_row
            .chunks_exact_mut(n)
            .enumerate()
            .for_each(|(r, out)| f(r, out));
    }
}

/// How a matrix is stored in the GGUF.
enum Stored {
    /// 32-element blocks multiplied against `Q8_1`/`Q8_0` activations.
    Blocks(Blocks),
    /// 256-element super-blocks multiplied against `Q8_K` activations.
    Q4K(Vec<BlockQ4K>),
    Q6K(Vec<BlockQ6K>),
    /// Unquantised rows: multiplied in f32 with the activations as they are.
    F32(Vec<f32>),
}

/// A weight matrix kept as the GGUF stores it.
pub struct BlockMatrix {
    stored: Stored,
    rows: usize,
    cols: usize,
}

/// Where an activation row sits in its batch, which decides the kernel llama.cpp's CPU backend
/// gives its product with a K-format matrix: the batched kernels take rows in groups of four
/// (the tiled `Q6_K` kernel only in batches of at least [`TILED_MIN_ROWS`]); the `n mod 4`
/// rows left over, and every row of a smaller batch, go one by one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RowPlace {
    index: usize,
    batch: usize,
}

/// The smallest batch whose `Q6_K` product llama.cpp runs through its tiled kernel.
const TILED_MIN_ROWS: usize = 8;

impl RowPlace {
    fn in_group_of_four(self) -> bool {
        self.index < self.batch - self.batch % 4
    }

    fn tiled(self) -> bool {
        self.batch >= TILED_MIN_ROWS && self.in_group_of_four()
    }
}

/// One activation row, quantised for the weights' kernel.
enum Quantised {
    Q8(Vec<Q8Block>),
    Q8K(Vec<Q8KBlock>),
}

impl BlockMatrix {
    /// `x` (`n` rows of `cols`) times the matrix's transpose: `n` rows of `rows`, as ggml's
    /// `mul_mat` computes it. Block formats quantise each activation row once; f32 matrices
    /// take llamafile's `tinyBLAS` order where llama.cpp hands them to it (at least 2 rows of
    /// `x`, `cols % 8 == 0`, `rows % 4 == 0`) and `ggml_vec_dot_f32`'s otherwise.
    pub fn matmul(&self, x: &[f32], n: usize) -> Vec<f32> {
        // Each weight row's outputs for the `n` activation rows, one row after another.
        let mut by_row = vec![0f32; self.rows * n];
        let parallel = self.rows * self.cols * n >= PARALLEL_MACS;
        match &self.stored {
            Stored::F32(w) => {
                let tiny_blas =
                    n >= 2 && self.cols.is_multiple_of(8) && self.rows.is_multiple_of(4);
                let dot = if tiny_blas { dot_lanes8 } else { dot_f32 };
                for_each_row(&mut by_row, n, parallel, |r, out| {
                    let row = &w[r * self.cols..(r + 1) * self.cols];
                    for (o, a) in out.iter_mut().zip(x.chunks_exact(self.cols)) {
                        *o = dot(row, a);
                    }
                });
            }
            _ => {
                let act: Vec<Quantised> = x
                    .chunks_exact(self.cols)
                    .map(|row| self.quantise(row))
                    .collect();
                for_each_row(&mut by_row, n, parallel, |r, out| {
                    for (index, (o, a)) in out.iter_mut().zip(&act).enumerate() {
                        *o = self.dot(r, a, RowPlace { index, batch: n });
                    }
                });
            }
        }
        if n == 1 {
            return by_row;
        }
        let mut out = vec![0f32; n * self.rows];
        for (r, col) in by_row.chunks_exact(n).enumerate() {
            for (t, v) in col.iter().enumerate() {
                out[t * self.rows + r] = *v;
            }
        }
        out
    }

    fn quantise(&self, row: &[f32]) -> Quantised {
        match self.stored {
            Stored::Q4K(_) | Stored::Q6K(_) => Quantised::Q8K(quantize_row_q8k(row)),
            _ => Quantised::Q8(quantize_row_q8(row)),
        }
    }

    /// Row `r` of a block-stored matrix against one quantised activation row.
    fn dot(&self, r: usize, act: &Quantised, place: RowPlace) -> f32 {
        let (per_row, per_row_k) = (self.cols / QK, self.cols / QK_K);
        let span_k = r * per_row_k..(r + 1) * per_row_k;
        match (&self.stored, act) {
            (Stored::Blocks(b), Quantised::Q8(a)) => b.dot(r, per_row, a),
            (Stored::Q4K(b), Quantised::Q8K(a)) if place.in_group_of_four() => {
                dot_q4k_q8k_gemm(&b[span_k], a)
            }
            (Stored::Q4K(b), Quantised::Q8K(a)) => dot_q4k_q8k_gemv(&b[span_k], a),
            (Stored::Q6K(b), Quantised::Q8K(a)) if place.tiled() => {
                dot_q6k_q8k_tiled(&b[span_k], a)
            }
            (Stored::Q6K(b), Quantised::Q8K(a)) => dot_q6k_q8k_vec(&b[span_k], a),
            _ => unreachable!("activations are quantised for their matrix's kernel"),
        }
    }

    /// Row `r` as f32 (`get_rows`).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let per_row_k = self.cols / QK_K;
        let span_k = r * per_row_k..(r + 1) * per_row_k;
        match &self.stored {
            Stored::Blocks(b) => b.dequantize_row(r, out),
            Stored::Q4K(b) => dequantize_q4k(&b[span_k], out),
            Stored::Q6K(b) => dequantize_q6k(&b[span_k], out),
            Stored::F32(w) => out.copy_from_slice(&w[r * self.cols..(r + 1) * self.cols]),
        }
    }
}

/// Reads matrix `name` (`rows × cols`), refusing formats whose kernels this path lacks and
/// shapes other than expected.
pub fn read_matrix(g: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<BlockMatrix> {
    let source = g.path().display().to_string();
    let qt = g.qtensor(name, &Device::Cpu)?;
    let parse: fn(&[u8]) -> Stored = match qt.dtype() {
        GgmlDType::Q4_1 => |raw| Stored::Blocks(Blocks::q4_1(raw)),
        GgmlDType::Q5_0 => |raw| Stored::Blocks(Blocks::q5_0(raw)),
        GgmlDType::Q8_0 => |raw| Stored::Blocks(Blocks::q8_0(raw)),
        GgmlDType::Q4K => |raw| Stored::Q4K(parse_q4k(raw)),
        GgmlDType::Q6K => |raw| Stored::Q6K(parse_q6k(raw)),
        GgmlDType::F32 => |raw| {
            Stored::F32(
                raw.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            )
        },
        other => {
            return Err(ModelError::Config {
                source_name: source,
                key: name.into(),
                msg: format!(
                    "stored as {other:?}; the ggml path multiplies Q4_1, Q5_0, Q8_0, Q4_K, Q6_K and F32 matrices (use `gguf_weights: quantized` or `dequantized` for other formats)"
                ),
            })
        }
    };
    let dims = qt.shape().dims().to_vec();
    if dims != [rows, cols] {
        return Err(ModelError::Shape {
            source_name: source,
            name: name.into(),
            expected: vec![rows, cols],
            got: dims,
        });
    }
    let data = qt
        .data()
        .context(|| format!("{source}: reading `{name}`"))?;
    Ok(BlockMatrix {
        stored: parse(&data),
        rows,
        cols,
    })
}

/// Reads the f32 vector `name` of `len` values (a norm's weights).
pub fn read_norm(g: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>> {
    let source = g.path().display().to_string();
    let qt = g.qtensor(name, &Device::Cpu)?;
    if qt.dtype() != GgmlDType::F32 || qt.shape().elem_count() != len {
        return Err(ModelError::Shape {
            source_name: source,
            name: format!("{name} (F32)"),
            expected: vec![len],
            got: qt.shape().dims().to_vec(),
        });
    }
    qt.dequantize(&Device::Cpu)
        .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
        .context(|| format!("{source}: reading `{name}`"))
}
