//! The 256-element "K" formats this path multiplies (`Q4_K`, `Q6_K`), their activation partner
//! `Q8_K`, and the arithmetic of llama.cpp's x86 CPU products over them.
//!
//! Activations are quantised per 256 values as `quantize_row_q8_K` does: the value of largest
//! magnitude `max` (its sign kept) sets `iscale = −127 / max`, each value becomes
//! `min(127, round_half_even(iscale · x))`, and the block scale is `1 / iscale`. The integer
//! products of a super-block are exact; what each kernel fixes is how the per-super-block
//! floats are combined, which the functions below write out. Every step is exact integer
//! arithmetic or a correctly rounded IEEE operation, so they give the same bits on any CPU.

use half::f16;

use super::simd::{hsum8, with_fma};

/// Elements per super-block.
pub const QK_K: usize = 256;

/// One `Q8_K` block of an activation row: value `d·q`.
#[derive(Clone, Copy, Debug)]
pub struct Q8KBlock {
    pub d: f32,
    pub qs: [i8; QK_K],
    /// Sums of `qs` over each 32-element sub-block (the `bsums` pairs `hadd` makes).
    pub sub_sums: [i32; 8],
}

/// A `Q4_K` super-block: element `e` is `d·scale[e/32]·q[e] − dmin·min[e/32]`, with the 6-bit
/// scales and mins unpacked at load and the 4-bit quants one per byte in element order.
#[derive(Clone, Debug)]
pub struct BlockQ4K {
    pub d: f32,
    pub dmin: f32,
    pub scales: [u8; 8],
    pub mins: [u8; 8],
    pub q: [u8; QK_K],
}

/// A `Q6_K` super-block: element `e` is `d·scale[e/16]·(q[e] − 32)`, the 6-bit quants one per
/// byte in element order.
#[derive(Clone, Debug)]
pub struct BlockQ6K {
    pub d: f32,
    pub scales: [i8; 16],
    pub q: [u8; QK_K],
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` from the packed 12 bytes.
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Parses GGUF `Q4_K` data (144-byte blocks: `d`, `dmin` as f16, 12 bytes of packed scales and
/// mins, 128 bytes of nibbles: each 32-byte group holds 32 elements low and the next 32 high).
pub fn parse_q4k(raw: &[u8]) -> Vec<BlockQ4K> {
    raw.chunks_exact(144)
        .map(|b| {
            let packed = &b[4..16];
            let (mut scales, mut mins) = ([0u8; 8], [0u8; 8]);
            for j in 0..8 {
                (scales[j], mins[j]) = scale_min_k4(j, packed);
            }
            let qs = &b[16..144];
            let mut q = [0u8; QK_K];
            for j in 0..4 {
                for l in 0..32 {
                    q[64 * j + l] = qs[32 * j + l] & 0x0f;
                    q[64 * j + 32 + l] = qs[32 * j + l] >> 4;
                }
            }
            BlockQ4K {
                d: f16_at(b, 0),
                dmin: f16_at(b, 2),
                scales,
                mins,
                q,
            }
        })
        .collect()
}

/// Parses GGUF `Q6_K` data (210-byte blocks: 128 bytes of low nibbles, 64 of high 2-bit pairs,
/// 16 signed scales, `d` as f16).
pub fn parse_q6k(raw: &[u8]) -> Vec<BlockQ6K> {
    raw.chunks_exact(210)
        .map(|b| {
            let (ql, qh) = (&b[0..128], &b[128..192]);
            let mut q = [0u8; QK_K];
            for half in 0..2 {
                let (ql, qh, out) = (&ql[64 * half..], &qh[32 * half..], 128 * half);
                for l in 0..32 {
                    q[out + l] = (ql[l] & 0x0f) | ((qh[l] & 3) << 4);
                    q[out + l + 32] = (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4);
                    q[out + l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                    q[out + l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                }
            }
            BlockQ6K {
                d: f16_at(b, 208),
                scales: std::array::from_fn(|i| b[192 + i] as i8),
                q,
            }
        })
        .collect()
}

/// `quantize_row_q8_K` (`x.len()` a multiple of 256).
pub fn quantize_row_q8k(x: &[f32]) -> Vec<Q8KBlock> {
    x.chunks_exact(QK_K)
        .map(|chunk| {
            let (mut max, mut amax) = (0f32, 0f32);
            for &v in chunk {
                if v.abs() > amax {
                    amax = v.abs();
                    max = v;
                }
            }
            let mut block = Q8KBlock {
                d: 0.0,
                qs: [0; QK_K],
                sub_sums: [0; 8],
            };
            if amax == 0.0 {
                return block;
            }
            let iscale = -127.0 / max;
            for (q, &v) in block.qs.iter_mut().zip(chunk) {
                *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
            }
            for (s, sub) in block.sub_sums.iter_mut().zip(block.qs.chunks_exact(32)) {
                *s = sub.iter().map(|&q| q as i32).sum();
            }
            block.d = 1.0 / iscale;
            block
        })
        .collect()
}

/// The exact integer sums of `scale·q·y` and of `min·Σy` over the 32-element sub-blocks `subs`
/// of one `Q4_K` super-block against its `Q8_K` activations.
#[inline(always)]
fn q4k_sums(w: &BlockQ4K, a: &Q8KBlock, subs: std::ops::Range<usize>) -> (i32, i32) {
    let (mut isum, mut imin) = (0i32, 0i32);
    for sub in subs {
        let span = 32 * sub..32 * (sub + 1);
        let dot: i32 = w.q[span.clone()]
            .iter()
            .zip(&a.qs[span])
            .map(|(&q, &y)| q as i32 * y as i32)
            .sum();
        isum += w.scales[sub] as i32 * dot;
        imin += w.mins[sub] as i32 * a.sub_sums[sub];
    }
    (isum, imin)
}

with_fma! {
    /// One output of llama.cpp's repacked `Q4_K` kernel for groups of four activation rows
    /// (`ggml_gemm_q4_K_8x8_q8_K`, AVX2; the CPU backend repacks `Q4_K` matrices whose rows are
    /// a multiple of 8): for each pair of
    /// 32-element sub-blocks, the exact integer sums of `scale·q·y` and of `min·Σy`, each added
    /// into its own accumulator as `float(sum)·(d_w·d_y)` with one FMA; the mins subtracted
    /// last. Checked bit for bit against llama.cpp.
    pub fn dot_q4k_q8k_gemm(w: &[BlockQ4K], act: &[Q8KBlock]) -> f32 {
        let (mut acc, mut acc_min) = (0f32, 0f32);
        for (w, a) in w.iter().zip(act) {
            let (scale, min) = (w.d * a.d, w.dmin * a.d);
            for pair in 0..4 {
                let (isum, imin) = q4k_sums(w, a, 2 * pair..2 * pair + 2);
                acc = (isum as f32).mul_add(scale, acc);
                acc_min = (imin as f32).mul_add(min, acc_min);
            }
        }
        acc - acc_min
    }
}

with_fma! {
    /// [`dot_q4k_q8k_gemm`] for the activation rows left over after the groups of four
    /// (`ggml_gemv_q4_K_8x8_q8_K`, AVX2): the same integer sums, added once per super-block.
    /// Checked bit for bit against llama.cpp.
    pub fn dot_q4k_q8k_gemv(w: &[BlockQ4K], act: &[Q8KBlock]) -> f32 {
        let (mut acc, mut acc_min) = (0f32, 0f32);
        for (w, a) in w.iter().zip(act) {
            let (isum, imin) = q4k_sums(w, a, 0..8);
            acc = (isum as f32).mul_add(w.d * a.d, acc);
            acc_min = (imin as f32).mul_add(w.dmin * a.d, acc_min);
        }
        acc - acc_min
    }
}

with_fma! {
    /// `ggml_vec_dot_q6_K_q8_K` (AVX2) as its source reads, for the `Q6_K` products llama.cpp
    /// does not tile (batches under 8 rows, rows left over after groups of four): per
    /// super-block eight 32-bit lanes, lane `l` adding `scale·(q − 32)·y` over the elements
    /// whose index modulo 32 lies in `4l..4l+4`; `fma(d_y·d_w, lane, acc_l)`; `hsum_float_8`.
    /// Not yet llama.cpp's bits: its product for such rows differs in the last bits (see
    /// `docs/teacher.md`).
    pub fn dot_q6k_q8k_vec(w: &[BlockQ6K], act: &[Q8KBlock]) -> f32 {
        let mut acc = [0f32; 8];
        for (w, a) in w.iter().zip(act) {
            let d = a.d * w.d;
            let mut lanes = [0i32; 8];
            for (e, &y) in a.qs.iter().enumerate() {
                lanes[(e % 32) / 4] += w.scales[e / 16] as i32 * (w.q[e] as i32 - 32) * y as i32;
            }
            for (slot, lane) in acc.iter_mut().zip(lanes) {
                *slot = d.mul_add(lane as f32, *slot);
            }
        }
        hsum8(&acc)
    }
}

with_fma! {
    /// One output of llama.cpp's tiled x86 kernel for `Q6_K` (`tiled_run_microtile_avx2`, the
    /// product of batches of 8 rows or more, in groups of four): per super-block the exact
    /// integer sum `s1` of `scale·(q − 32)·y`, and the output accumulates `fma(d_w·s1, d_y,
    /// out)` super-block after super-block. Checked bit for bit against llama.cpp.
    pub fn dot_q6k_q8k_tiled(w: &[BlockQ6K], act: &[Q8KBlock]) -> f32 {
        let mut out = 0f32;
        for (w, a) in w.iter().zip(act) {
            let s1: i32 = (0..QK_K)
                .map(|e| w.scales[e / 16] as i32 * (w.q[e] as i32 - 32) * a.qs[e] as i32)
                .sum();
            out = (w.d * s1 as f32).mul_add(a.d, out);
        }
        out
    }
}

/// Dequantises a `Q4_K` row (`dequantize_row_q4_K`: `d·scale` and `dmin·min` first, then
/// `d1·q − m1`, compiled without FMA).
pub fn dequantize_q4k(blocks: &[BlockQ4K], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        for (e, v) in o.iter_mut().enumerate() {
            let d1 = b.d * b.scales[e / 32] as f32;
            let m1 = b.dmin * b.mins[e / 32] as f32;
            *v = d1 * b.q[e] as f32 - m1;
        }
    }
}

/// Dequantises a `Q6_K` row (`d·scale·(q − 32)`).
pub fn dequantize_q6k(blocks: &[BlockQ6K], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        for (e, v) in o.iter_mut().enumerate() {
            *v = b.d * b.scales[e / 16] as f32 * (b.q[e] as i32 - 32) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> u32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    fn random_bytes(n: usize, seed: &mut u64) -> Vec<u8> {
        (0..n).map(|_| lcg(seed) as u8).collect()
    }

    /// Raw blocks with small f16 scales in the usual places.
    fn raw_blocks(block: usize, scale_at: &[usize], n: usize, seed: &mut u64) -> Vec<u8> {
        let mut raw = random_bytes(block * n, seed);
        for b in raw.chunks_exact_mut(block) {
            for &at in scale_at {
                let v = f16::from_f32((lcg(seed) % 1000) as f32 * 1e-5);
                b[at..at + 2].copy_from_slice(&v.to_le_bytes());
            }
        }
        raw
    }

    fn activations(n: usize, seed: &mut u64) -> Vec<f32> {
        (0..n)
            .map(|_| lcg(seed) as f32 / u32::MAX as f32 - 0.5)
            .collect()
    }

    /// Exact (f64) dot of the dequantised row with the dequantised activations.
    fn reference(w: &[f32], act: &[Q8KBlock]) -> f64 {
        let x: Vec<f64> = act
            .iter()
            .flat_map(|a| a.qs.map(|q| q as f64 * a.d as f64))
            .collect();
        w.iter().zip(&x).map(|(a, b)| *a as f64 * b).sum()
    }

    #[test]
    fn q8k_keeps_the_largest_magnitude_at_minus_127_and_sums_sub_blocks() {
        let mut x = vec![0.25f32; QK_K];
        x[3] = -2.0;
        x[7] = 1.0;
        let b = &quantize_row_q8k(&x)[0];
        // iscale = −127 / −2: the largest magnitude maps to 127 with its own sign.
        assert_eq!(b.qs[3], -127);
        assert_eq!(b.qs[7], 64); // 63.5 rounds to even
        assert_eq!(b.d, 1.0 / (-127.0f32 / -2.0));
        assert_eq!(
            b.sub_sums[0],
            b.qs[..32].iter().map(|&q| q as i32).sum::<i32>()
        );
        assert!(quantize_row_q8k(&[0.0; QK_K])[0].qs.iter().all(|&q| q == 0));
    }

    #[test]
    fn k_quant_dots_equal_the_dequantised_dot_up_to_float_rounding() {
        let mut seed = 7;
        let blocks = 3;
        let x = activations(blocks * QK_K, &mut seed);
        let act = quantize_row_q8k(&x);
        let q4 = parse_q4k(&raw_blocks(144, &[0, 2], blocks, &mut seed));
        let q6 = parse_q6k(&raw_blocks(210, &[208], blocks, &mut seed));
        let mut w = vec![0f32; blocks * QK_K];
        dequantize_q4k(&q4, &mut w);
        let want = reference(&w, &act);
        for got in [dot_q4k_q8k_gemm(&q4, &act), dot_q4k_q8k_gemv(&q4, &act)] {
            let got = got as f64;
            assert!(
                (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                "{got} vs {want}"
            );
        }
        dequantize_q6k(&q6, &mut w);
        let want = reference(&w, &act);
        for got in [dot_q6k_q8k_tiled(&q6, &act), dot_q6k_q8k_vec(&q6, &act)] {
            let got = got as f64;
            assert!(
                (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                "{got} vs {want}"
            );
        }
    }

    #[test]
    fn q4k_unpacking_follows_the_sub_block_layout() {
        // Scales 1..=8 (mins 0) and every quant 1: sub-block j dequantises to d·(j + 1).
        let mut raw = vec![0u8; 144];
        raw[0..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        for j in 0..4 {
            raw[4 + j] = (j + 1) as u8;
        }
        for j in 4..8 {
            raw[4 + j + 4] = (j + 1) as u8;
        }
        raw[16..].fill(0x11);
        let b = parse_q4k(&raw);
        assert_eq!(b[0].scales, [1, 2, 3, 4, 5, 6, 7, 8]);
        let mut w = vec![0f32; QK_K];
        dequantize_q4k(&b, &mut w);
        for (e, v) in w.iter().enumerate() {
            assert_eq!(*v, 0.5 * (e / 32 + 1) as f32, "element {e}");
        }
    }
}
