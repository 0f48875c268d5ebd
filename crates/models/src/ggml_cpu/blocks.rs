//! GGUF block formats this path multiplies, and llama.cpp's x86 AVX2 dot products over them.
//!
//! Weights stay in their stored blocks (`Q4_1`, `Q8_0`; the f16 scales are widened to f32 at load,
//! which is exact); activations are quantised per row to `Q8_1` (for `Q4_1` weights) or `Q8_0`
//! (for `Q8_0` weights) exactly as `quantize_row_q8_1` / `quantize_row_q8_0` do: scale
//! `amax / 127`, multiplier `127 / amax`, round half to even, block sum `f16(d · Σq)`. A dot
//! product accumulates eight lanes with fused multiply-adds, lane `m` of a block holding the
//! integer sum of elements `4m..4m+4`, and reduces them in `hsum_float_8`'s order. Integer sums
//! are exact and FMA is correctly rounded on every CPU, so the portable loops below give the AVX2
//! kernels' results bit for bit; the AVX2 versions are the same instructions as llama.cpp's.

use half::f16;

#[cfg(target_arch = "x86_64")]
use super::simd::has_avx2_fma;
use super::simd::{hsum8, with_fma};

/// Elements per block (all formats here).
pub const QK: usize = 32;

/// A `Q4_1` block: value `d·q + m`; `qs[j]` holds element `j` (low nibble) and `j + 16` (high).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: f32,
    pub m: f32,
    pub qs: [u8; 16],
}

/// A `Q8_0` block: value `d·q`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: f32,
    pub qs: [i8; QK],
}

/// One quantised block of an activation row (`Q8_1`; `s` is unused for `Q8_0`).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Q8Block {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; QK],
}

/// The rows of a weight matrix, in one of the block formats this path multiplies.
pub enum Blocks {
    Q4_1(Vec<BlockQ4_1>),
    Q8_0(Vec<BlockQ8_0>),
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

impl Blocks {
    /// Parses GGUF `Q4_1` data (20-byte blocks: `d`, `m` as f16, 16 bytes of nibbles).
    pub fn q4_1(raw: &[u8]) -> Self {
        Blocks::Q4_1(
            raw.chunks_exact(20)
                .map(|b| BlockQ4_1 {
                    d: f16_at(b, 0),
                    m: f16_at(b, 2),
                    qs: b[4..20].try_into().unwrap_or([0; 16]),
                })
                .collect(),
        )
    }

    /// Parses GGUF `Q8_0` data (34-byte blocks: `d` as f16, 32 signed bytes).
    pub fn q8_0(raw: &[u8]) -> Self {
        Blocks::Q8_0(
            raw.chunks_exact(34)
                .map(|b| BlockQ8_0 {
                    d: f16_at(b, 0),
                    qs: std::array::from_fn(|j| b[2 + j] as i8),
                })
                .collect(),
        )
    }

    /// Parses GGUF `Q5_0` data (22-byte blocks: `d` as f16, 32 high bits, 16 bytes of nibbles)
    /// into `Q8_0` blocks of the same values `q − 16`: llama.cpp's AVX2 `Q5_0` kernel builds
    /// exactly these signed bytes and then runs the `Q8_0` arithmetic on them.
    pub fn q5_0(raw: &[u8]) -> Self {
        Blocks::Q8_0(
            raw.chunks_exact(22)
                .map(|b| {
                    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                    let qs = &b[6..22];
                    BlockQ8_0 {
                        d: f16_at(b, 0),
                        qs: std::array::from_fn(|j| {
                            let nibble = if j < 16 {
                                qs[j] & 0x0f
                            } else {
                                qs[j - 16] >> 4
                            };
                            let high = ((qh >> j) & 1) as u8;
                            (nibble | (high << 4)) as i8 - 16
                        }),
                    }
                })
                .collect(),
        )
    }

    /// Dot product of row `r` (of `per_row` blocks) with a quantised activation row.
    pub fn dot(&self, r: usize, per_row: usize, act: &[Q8Block]) -> f32 {
        let span = r * per_row..(r + 1) * per_row;
        match self {
            Blocks::Q4_1(b) => dot_q4_1_q8_1(&b[span], act),
            Blocks::Q8_0(b) => dot_q8_0_q8_0(&b[span], act),
        }
    }

    /// Dequantises row `r` into `out` (`get_rows`): `Q8_0` is `q·d`, `Q4_1` is `q·d + m`
    /// rounded twice (ggml's base library is built without FMA).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let per_row = out.len() / QK;
        let span = r * per_row..(r + 1) * per_row;
        match self {
            Blocks::Q8_0(b) => {
                for (b, o) in b[span].iter().zip(out.chunks_exact_mut(QK)) {
                    for (v, &q) in o.iter_mut().zip(&b.qs) {
                        *v = q as f32 * b.d;
                    }
                }
            }
            Blocks::Q4_1(b) => {
                for (b, o) in b[span].iter().zip(out.chunks_exact_mut(QK)) {
                    for j in 0..16 {
                        o[j] = (b.qs[j] & 0x0f) as f32 * b.d + b.m;
                        o[j + 16] = (b.qs[j] >> 4) as f32 * b.d + b.m;
                    }
                }
            }
        }
    }
}

with_fma! {
    /// Quantises one activation row to `Q8_1`/`Q8_0` blocks (`x.len()` a multiple of 32).
    pub fn quantize_row_q8(x: &[f32]) -> Vec<Q8Block> {
        let mut out = Vec::with_capacity(x.len() / QK);
        for chunk in x.chunks_exact(QK) {
            let mut amax = 0f32;
            for v in chunk {
                amax = amax.max(v.abs());
            }
            let d = amax / 127.0;
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let mut qs = [0i8; QK];
            let mut sum = 0i32;
            for j in 0..QK {
                // `_mm256_round_ps(_, NEAREST)`, `cvtps_epi32`, saturating packs.
                let r = (chunk[j] * id).round_ties_even().clamp(-128.0, 127.0) as i32;
                qs[j] = r as i8;
                sum += r;
            }
            out.push(Q8Block {
                d: f16::from_f32(d).to_f32(),
                s: f16::from_f32(d * sum as f32).to_f32(),
                qs,
            });
        }
        out
    }
}

/// `ggml_vec_dot_q4_1_q8_1`: one `Q4_1` weight row against one `Q8_1` activation row.
pub fn dot_q4_1_q8_1(w: &[BlockQ4_1], act: &[Q8Block]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { avx2::q4_1(w, act) };
    }
    portable::q4_1(w, act)
}

/// `ggml_vec_dot_q8_0_q8_0`, and llamafile's `tinyBLAS_Q0_AVX` (the same arithmetic per
/// output): one `Q8_0` weight row against one `Q8_0` activation row.
pub fn dot_q8_0_q8_0(w: &[BlockQ8_0], act: &[Q8Block]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { avx2::q8_0(w, act) };
    }
    portable::q8_0(w, act)
}

mod portable {
    //! The kernels' arithmetic in plain Rust, for CPUs without AVX2.
    use super::{hsum8, BlockQ4_1, BlockQ8_0, Q8Block};

    pub fn q4_1(w: &[BlockQ4_1], act: &[Q8Block]) -> f32 {
        let mut acc = [0f32; 8];
        let mut summs = 0f32;
        for (w, a) in w.iter().zip(act) {
            // `summs += m · s`, contracted to one FMA by the compiler.
            summs = w.m.mul_add(a.s, summs);
            let d0d1 = w.d * a.d;
            for (lane, slot) in acc.iter_mut().enumerate() {
                let mut isum = 0i32;
                for e in 4 * lane..4 * lane + 4 {
                    let nibble = if e < 16 {
                        w.qs[e] & 0x0f
                    } else {
                        w.qs[e - 16] >> 4
                    };
                    isum += nibble as i32 * a.qs[e] as i32;
                }
                *slot = d0d1.mul_add(isum as f32, *slot);
            }
        }
        hsum8(&acc) + summs
    }

    pub fn q8_0(w: &[BlockQ8_0], act: &[Q8Block]) -> f32 {
        let mut acc = [0f32; 8];
        for (w, a) in w.iter().zip(act) {
            let d = w.d * a.d;
            for (lane, slot) in acc.iter_mut().enumerate() {
                let isum: i32 = (4 * lane..4 * lane + 4)
                    .map(|e| w.qs[e] as i32 * a.qs[e] as i32)
                    .sum();
                *slot = d.mul_add(isum as f32, *slot);
            }
        }
        hsum8(&acc)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! llama.cpp's AVX2 kernels, instruction for instruction.
    use super::{hsum8, BlockQ4_1, BlockQ8_0, Q8Block};
    use crate::ggml_cpu::simd::lanes;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn q4_1(w: &[BlockQ4_1], act: &[Q8Block]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut summs = 0f32;
        let low = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        for (w, a) in w.iter().zip(act) {
            summs = w.m.mul_add(a.s, summs);
            let d0d1 = _mm256_set1_ps(w.d * a.d);
            let tmp = _mm_loadu_si128(w.qs.as_ptr() as *const __m128i);
            let qx = _mm256_and_si256(low, _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp));
            let qy = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
            let dot = _mm256_maddubs_epi16(qx, qy);
            let xy = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, dot));
            acc = _mm256_fmadd_ps(d0d1, xy, acc);
        }
        hsum8(&lanes(acc)) + summs
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn q8_0(w: &[BlockQ8_0], act: &[Q8Block]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let ones = _mm256_set1_epi16(1);
        for (w, a) in w.iter().zip(act) {
            let d = _mm256_set1_ps(w.d * a.d);
            let qx = _mm256_loadu_si256(w.qs.as_ptr() as *const __m256i);
            let qy = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
            let dot = _mm256_maddubs_epi16(_mm256_sign_epi8(qx, qx), _mm256_sign_epi8(qy, qx));
            let q = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, dot));
            acc = _mm256_fmadd_ps(d, q, acc);
        }
        hsum8(&lanes(acc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q4_1_raw(d: f32, m: f32, q: &[u8; 32]) -> Vec<u8> {
        let mut b = Vec::with_capacity(20);
        b.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        b.extend_from_slice(&f16::from_f32(m).to_le_bytes());
        for j in 0..16 {
            b.push(q[j] | (q[j + 16] << 4));
        }
        b
    }

    #[test]
    fn q8_quantisation_rounds_half_to_even_and_keeps_the_block_sum() {
        // amax 127 makes the multiplier exactly 1, so 0.5 and 2.5 are true ties.
        let mut x = [0f32; 32];
        x[0] = 127.0;
        x[1] = 0.5;
        x[2] = 2.5;
        x[3] = -1.5;
        let b = &quantize_row_q8(&x)[0];
        assert_eq!(&b.qs[..4], &[127, 0, 2, -2]);
        assert_eq!(b.d, 1.0);
        assert_eq!(b.s, 127.0);
        let zeros = &quantize_row_q8(&[0f32; 32])[0];
        assert_eq!((zeros.d, zeros.s), (0.0, 0.0));
    }

    #[test]
    fn q4_1_dot_matches_the_dequantised_dot_up_to_rounding() {
        let q: [u8; 32] = std::array::from_fn(|i| (i * 7 % 16) as u8);
        let Blocks::Q4_1(row) = Blocks::q4_1(&q4_1_raw(0.05, -0.4, &q)) else {
            unreachable!()
        };
        let x: Vec<f32> = (0..32).map(|i| ((i as f32) * 0.37).sin()).collect();
        let act = quantize_row_q8(&x);
        let mut w = [0f32; 32];
        Blocks::Q4_1(row.clone()).dequantize_row(0, &mut w);
        let xq: Vec<f32> = act[0].qs.iter().map(|&q| q as f32 * act[0].d).collect();
        let exact: f32 = w.iter().zip(&xq).map(|(a, b)| a * b).sum();
        let got = dot_q4_1_q8_1(&row, &act);
        // The block sum `s` is stored in f16, the only rounding beyond f32.
        assert!((got - exact).abs() < 2e-3, "{got} vs {exact}");
    }

    #[test]
    fn q8_0_dot_is_the_integer_dot_times_both_scales() {
        let mut raw = f16::from_f32(0.5).to_le_bytes().to_vec();
        raw.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let Blocks::Q8_0(row) = Blocks::q8_0(&raw) else {
            unreachable!()
        };
        let x: Vec<f32> = (0..32).map(|i| if i == 0 { 127.0 } else { 1.0 }).collect();
        let act = quantize_row_q8(&x);
        let int: i32 = (0..32).map(|i| (i as i32 - 16) * act[0].qs[i] as i32).sum();
        assert_eq!(dot_q8_0_q8_0(&row, &act), 0.5 * int as f32);
    }

    #[test]
    fn simd_and_portable_dot_products_are_bit_identical() {
        let mut seed = 12345u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        let blocks = 24;
        let (mut r4, mut r8) = (Vec::new(), Vec::new());
        for _ in 0..blocks {
            let q: [u8; 32] = std::array::from_fn(|_| (next() % 16) as u8);
            r4.extend(q4_1_raw(
                next() as f32 * 1e-11,
                -(next() as f32) * 1e-11,
                &q,
            ));
            r8.extend_from_slice(&f16::from_f32(next() as f32 * 1e-11).to_le_bytes());
            r8.extend((0..32).map(|_| (next() % 255) as u8 + 1));
        }
        let (Blocks::Q4_1(w4), Blocks::Q8_0(w8)) = (Blocks::q4_1(&r4), Blocks::q8_0(&r8)) else {
            unreachable!()
        };
        let x: Vec<f32> = (0..blocks * 32)
            .map(|_| next() as f32 / u32::MAX as f32 - 0.5)
            .collect();
        let act = quantize_row_q8(&x);
        let (p4, p8) = (portable::q4_1(&w4, &act), portable::q8_0(&w8, &act));
        assert_eq!(dot_q4_1_q8_1(&w4, &act).to_bits(), p4.to_bits());
        assert_eq!(dot_q8_0_q8_0(&w8, &act).to_bits(), p8.to_bits());
    }
}
