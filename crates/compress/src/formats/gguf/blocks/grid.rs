//! The GGUF block formats this crate encodes itself — Q4_K, Q5_0, Q4_0 and Q8_0 — each as a
//! *grid*: what a block's stored parameters (scales, mins) allow a weight to become. llama.cpp's
//! searches choose a block's grid ([`fit`]); round-to-nearest then takes their levels, and GPTQ
//! rounds each column to the grid after error feedback. [`BlockGrid::encode`] writes the
//! block's bytes exactly as ggml lays them out.

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::Device;
use half::f16;

use super::search::{make_qkx_quants, make_qp_quants, make_qx_quants, nearest_int};

/// A block format of [`fit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Q4K,
    Q5_0,
    Q4_0,
    Q8_0,
}

impl Format {
    pub fn of(dtype: GgmlDType) -> Option<Format> {
        Some(match dtype {
            GgmlDType::Q4K => Format::Q4K,
            GgmlDType::Q5_0 => Format::Q5_0,
            GgmlDType::Q4_0 => Format::Q4_0,
            GgmlDType::Q8_0 => Format::Q8_0,
            _ => return None,
        })
    }

    pub fn dtype(self) -> GgmlDType {
        match self {
            Format::Q4K => GgmlDType::Q4K,
            Format::Q5_0 => GgmlDType::Q5_0,
            Format::Q4_0 => GgmlDType::Q4_0,
            Format::Q8_0 => GgmlDType::Q8_0,
        }
    }

    /// Weights per block.
    pub fn block(self) -> usize {
        match self {
            Format::Q4K => 256,
            _ => 32,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Format::Q4K => 144,
            Format::Q5_0 => 22,
            Format::Q4_0 => 18,
            Format::Q8_0 => 34,
        }
    }
}

/// One block's parameters: `value(i, l) = step[i / sub] · l − offset[i / sub]` for levels
/// `l` in `lo..=hi`.
#[derive(Clone, Debug)]
pub struct BlockGrid {
    pub format: Format,
    /// The stored parameters: `d` (and `dmin`, `scales[12]` for Q4_K), little-endian.
    header: [u8; 16],
    step: [f32; 8],
    offset: [f32; 8],
    sub: usize,
    lo: i32,
    hi: i32,
}

fn f16_bits(x: f32) -> ([u8; 2], f32) {
    let h = f16::from_f32(x);
    (h.to_bits().to_le_bytes(), h.to_f32())
}

/// Q4_K's 6-bit scale and min of sub-block `j` from the packed `scales`.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

impl BlockGrid {
    /// The level nearest to `x` for weight `i` of the block.
    pub fn nearest(&self, i: usize, x: f32) -> i32 {
        let j = i / self.sub;
        let step = self.step[j];
        if step == 0.0 {
            return (0i32).clamp(self.lo, self.hi);
        }
        nearest_int((x + self.offset[j]) / step).clamp(self.lo, self.hi)
    }

    /// What weight `i` is at level `l`.
    pub fn value(&self, i: usize, l: i32) -> f32 {
        let j = i / self.sub;
        self.step[j] * l as f32 - self.offset[j]
    }

    /// Appends the block's bytes for `levels` (one per weight) to `out`.
    pub fn encode(&self, levels: &[i32], out: &mut Vec<u8>) {
        let l = |i: usize| levels[i] as u8;
        match self.format {
            Format::Q4K => {
                out.extend_from_slice(&self.header[..16]);
                for j in (0..256).step_by(64) {
                    for k in 0..32 {
                        out.push(l(j + k) | (l(j + k + 32) << 4));
                    }
                }
            }
            Format::Q5_0 => {
                out.extend_from_slice(&self.header[..2]);
                let mut qh = 0u32;
                for j in 0..16 {
                    qh |= (((l(j) & 0x10) >> 4) as u32) << j;
                    qh |= (((l(j + 16) & 0x10) >> 4) as u32) << (j + 16);
                }
                out.extend_from_slice(&qh.to_le_bytes());
                for j in 0..16 {
                    out.push((l(j) & 0x0F) | ((l(j + 16) & 0x0F) << 4));
                }
            }
            Format::Q4_0 => {
                out.extend_from_slice(&self.header[..2]);
                for j in 0..16 {
                    out.push(l(j) | (l(j + 16) << 4));
                }
            }
            Format::Q8_0 => {
                out.extend_from_slice(&self.header[..2]);
                out.extend(levels[..32].iter().map(|&v| v as i8 as u8));
            }
        }
    }

    fn symmetric(format: Format, d: f32, zero: i32, lo: i32, hi: i32) -> (Self, f32) {
        let (bits, d16) = f16_bits(d);
        let mut header = [0u8; 16];
        header[..2].copy_from_slice(&bits);
        let g = BlockGrid {
            format,
            header,
            step: [d16; 8],
            offset: [d16 * zero as f32; 8],
            sub: 32,
            lo,
            hi,
        };
        (g, d16)
    }
}

/// llama.cpp's grid for one block `x` and the levels it gives `x`: with `importance` (the
/// block's share of an importance matrix) its weighted search (`quantize_row_*_impl`),
/// without it the reference one (`quantize_row_*_ref`). `row_sigma2` is `Σx²/n` over the whole
/// row, which the 32-weight formats' weighted search uses.
pub fn fit(
    format: Format,
    x: &[f32],
    importance: Option<&[f32]>,
    row_sigma2: f32,
) -> (BlockGrid, Vec<i32>) {
    debug_assert_eq!(x.len(), format.block());
    match format {
        Format::Q4K => fit_q4k(x, importance),
        Format::Q8_0 => {
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let (g, _) = BlockGrid::symmetric(format, d, 0, -128, 127);
            let levels = x.iter().map(|v| (v * id).round() as i32).collect();
            (g, levels)
        }
        Format::Q5_0 | Format::Q4_0 => {
            let (nmax, hi) = if format == Format::Q5_0 {
                (16, 31)
            } else {
                (8, 15)
            };
            match importance {
                None => {
                    let mut amax = 0f32;
                    let mut max = 0f32;
                    for &v in x {
                        if amax < v.abs() {
                            amax = v.abs();
                            max = v;
                        }
                    }
                    let d = max / -(nmax as f32);
                    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                    let (g, _) = BlockGrid::symmetric(format, d, nmax, 0, hi);
                    // (int8_t)(x·id + nmax + 0.5): truncation of a positive value.
                    let levels = x
                        .iter()
                        .map(|v| ((v * id + nmax as f32 + 0.5) as i8 as i32).min(hi))
                        .collect();
                    (g, levels)
                }
                Some(qw) => {
                    let weights: Vec<f32> = x
                        .iter()
                        .zip(qw)
                        .map(|(v, q)| q * (row_sigma2 + v * v).sqrt())
                        .collect();
                    let mut l = vec![0i8; 32];
                    let d = make_qx_quants(x, nmax, &mut l, 1, Some(&weights));
                    let (g, _) = BlockGrid::symmetric(format, d, nmax, 0, hi);
                    (g, l.iter().map(|&v| v as i32).collect())
                }
            }
        }
    }
}

fn fit_q4k(x: &[f32], importance: Option<&[f32]>) -> (BlockGrid, Vec<i32>) {
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let mut search_levels = vec![0u8; 256];
    let mut header = [0u8; 16];
    let q = &mut header[4..16];
    let (d, dmin);
    match importance {
        None => {
            let (mut max_scale, mut max_min) = (0f32, 0f32);
            for j in 0..8 {
                let xs = &x[32 * j..32 * j + 32];
                let sum_x2: f32 = xs.iter().map(|v| v * v).sum();
                let av_x = (sum_x2 / 32.0).sqrt();
                let w: Vec<f32> = xs.iter().map(|v| av_x + v.abs()).collect();
                let (s, m) = make_qkx_quants(
                    xs,
                    Some(&w),
                    15,
                    &mut search_levels[32 * j..32 * j + 32],
                    -1.0,
                    0.1,
                    20,
                    false,
                );
                scales[j] = s;
                mins[j] = m;
                max_scale = max_scale.max(s);
                max_min = max_min.max(m);
            }
            let inv_scale = if max_scale > 0.0 {
                63.0 / max_scale
            } else {
                0.0
            };
            let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
            let mut ls = [0u8; 8];
            let mut lm = [0u8; 8];
            for j in 0..8 {
                ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
                lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
            }
            pack_scales(q, &ls, &lm);
            d = max_scale / 63.0;
            dmin = max_min / 63.0;
        }
        Some(qw) => {
            let sum_x2: f32 = x.iter().map(|v| v * v).sum();
            let sigma2 = 2.0 * sum_x2 / 256.0;
            let mut sw = [0f32; 8];
            for j in 0..8 {
                let xs = &x[32 * j..32 * j + 32];
                let w: Vec<f32> = xs
                    .iter()
                    .zip(&qw[32 * j..32 * j + 32])
                    .map(|(v, q)| q * (sigma2 + v * v).sqrt())
                    .collect();
                sw[j] = w.iter().sum();
                let (s, m) = make_qkx_quants(
                    xs,
                    Some(&w),
                    15,
                    &mut search_levels[32 * j..32 * j + 32],
                    -0.9,
                    0.05,
                    36,
                    true,
                );
                scales[j] = s;
                mins[j] = m;
            }
            let mut ls = [0u8; 8];
            let mut lm = [0u8; 8];
            d = make_qp_quants(&scales, 63, &mut ls, &sw);
            dmin = make_qp_quants(&mins, 63, &mut lm, &sw);
            pack_scales(q, &ls, &lm);
        }
    }
    let (db, d16) = f16_bits(d);
    let (mb, m16) = f16_bits(dmin);
    header[..2].copy_from_slice(&db);
    header[2..4].copy_from_slice(&mb);
    let mut step = [0f32; 8];
    let mut offset = [0f32; 8];
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &header[4..16]);
        step[j] = d16 * sc as f32;
        offset[j] = m16 * m as f32;
    }
    let grid = BlockGrid {
        format: Format::Q4K,
        header,
        step,
        offset,
        sub: 32,
        lo: 0,
        hi: 15,
    };
    // The final levels as llama.cpp requantises them; a sub-block whose scale is zero keeps
    // the search's levels (every level is the same value there).
    let levels = (0..256)
        .map(|i| {
            if step[i / 32] == 0.0 {
                search_levels[i] as i32
            } else {
                grid.nearest(i, x[i])
            }
        })
        .collect();
    (grid, levels)
}

fn pack_scales(q: &mut [u8], ls: &[u8; 8], lm: &[u8; 8]) {
    for j in 0..8 {
        if j < 4 {
            q[j] = ls[j];
            q[j + 4] = lm[j];
        } else {
            q[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            q[j - 4] |= (ls[j] >> 4) << 6;
            q[j] |= (lm[j] >> 4) << 6;
        }
    }
}

/// `Σx²/n` of a row.
pub fn sigma2(row: &[f32]) -> f32 {
    row.iter().map(|v| v * v).sum::<f32>() / row.len().max(1) as f32
}

/// Encodes a row-major `[rows, cols]` matrix block by block with llama.cpp's search: the
/// reference one, or the one weighted by `importance` (`cols` values, an importance matrix's
/// entry for this matrix). `cols` must be a multiple of the format's block.
pub fn quantize_rows(
    format: Format,
    values: &[f32],
    cols: usize,
    importance: Option<&[f32]>,
) -> Vec<u8> {
    let b = format.block();
    debug_assert_eq!(cols % b, 0);
    let rows = values.len() / cols;
    let mut out = Vec::with_capacity(rows * cols / b * format.block_bytes());
    for r in 0..rows {
        let row = &values[r * cols..(r + 1) * cols];
        let s2 = sigma2(row);
        for g in (0..cols).step_by(b) {
            let (grid, levels) = fit(format, &row[g..g + b], importance.map(|w| &w[g..g + b]), s2);
            grid.encode(&levels, &mut out);
        }
    }
    out
}

/// GGUF blocks of `dtype` (row-major `[rows, cols]`) as a CPU `QTensor`.
pub fn qtensor(
    bytes: Vec<u8>,
    dtype: GgmlDType,
    rows: usize,
    cols: usize,
) -> candle_core::Result<QTensor> {
    let storage = QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, dtype)?;
    QTensor::new(storage, (rows, cols))
}

/// The values GGUF blocks of `dtype` (row-major `[rows, cols]`) decode to.
pub fn decode(
    bytes: &[u8],
    dtype: GgmlDType,
    rows: usize,
    cols: usize,
) -> candle_core::Result<Vec<f32>> {
    qtensor(bytes.to_vec(), dtype, rows, cols)?
        .dequantize(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                let u = (s as f32 / u32::MAX as f32) * 2.0 - 1.0;
                // Heavy-ish tails and a per-row offset, like trained weights.
                0.05 * u * u * u + 0.02 * u + if i % 97 == 0 { 0.2 } else { 0.0 }
            })
            .collect()
    }

    fn decode(format: Format, bytes: &[u8], rows: usize, cols: usize) -> Vec<f32> {
        super::decode(bytes, format.dtype(), rows, cols).unwrap()
    }

    #[test]
    fn the_weighted_q4k_search_is_the_one_candle_ported_from_llama_cpp() {
        let (rows, cols) = (6, 512);
        let x = values(rows * cols, 3);
        let imatrix: Vec<f32> = (0..cols).map(|j| 0.1 + (j % 7) as f32).collect();
        let ours = quantize_rows(Format::Q4K, &x, cols, Some(&imatrix));
        let t = Tensor::from_vec(x.clone(), (rows, cols), &Device::Cpu).unwrap();
        let theirs = QTensor::quantize_imatrix(&t, &imatrix, GgmlDType::Q4K).unwrap();
        assert_eq!(ours, theirs.data().unwrap().to_vec());
    }

    #[test]
    fn reference_searches_match_candles_ports_of_the_simple_formats() {
        let (rows, cols) = (5, 128);
        let x = values(rows * cols, 9);
        let t = Tensor::from_vec(x.clone(), (rows, cols), &Device::Cpu).unwrap();
        for f in [Format::Q5_0, Format::Q4_0] {
            let ours = quantize_rows(f, &x, cols, None);
            let theirs = QTensor::quantize(&t, f.dtype()).unwrap();
            assert_eq!(ours, theirs.data().unwrap().to_vec(), "{f:?}");
        }
    }

    #[test]
    fn every_format_decodes_to_its_grid_values_and_importance_lowers_weighted_error() {
        let (rows, cols) = (4, 256);
        let x = values(rows * cols, 5);
        // A few channels matter 100x more.
        let imatrix: Vec<f32> = (0..cols)
            .map(|j| if j % 16 == 3 { 100.0 } else { 1.0 })
            .collect();
        for f in [Format::Q4K, Format::Q5_0, Format::Q4_0, Format::Q8_0] {
            let mut err = [0f64; 2];
            for (k, imp) in [None, Some(imatrix.as_slice())].into_iter().enumerate() {
                let bytes = quantize_rows(f, &x, cols, imp);
                assert_eq!(bytes.len(), rows * cols / f.block() * f.block_bytes());
                let back = decode(f, &bytes, rows, cols);
                // The grid's own values are what the bytes decode to.
                let r0 = &x[..cols];
                let (grid, levels) = fit(
                    f,
                    &r0[..f.block()],
                    imp.map(|w| &w[..f.block()]),
                    sigma2(r0),
                );
                for i in 0..f.block() {
                    assert!(
                        (grid.value(i, levels[i]) - back[i]).abs() < 1e-6,
                        "{f:?} {i}"
                    );
                }
                err[k] = x
                    .iter()
                    .zip(&back)
                    .enumerate()
                    .map(|(i, (a, b))| imatrix[i % cols] as f64 * ((a - b) as f64).powi(2))
                    .sum();
            }
            if f != Format::Q8_0 {
                assert!(err[1] < err[0], "{f:?}: weighted error {err:?}");
            }
        }
    }
}
