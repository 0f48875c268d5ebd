//! ggml's CPU vector routines (x86 AVX2 + FMA builds), lane for lane: the `expf` approximation
//! behind softmax and SiLU, the two f32 dot-product orders (`ggml_vec_dot_f32` and llamafile's
//! `tinyBLAS`), and RMS normalisation with its double-precision sum.

#[cfg(target_arch = "x86_64")]
use super::simd::has_avx2_fma;
use super::simd::{hsum8, with_fma};

/// `ggml_v_expf` on one lane: ggml's vectorised `expf` (about 1.5 ulp, not libm's).
#[inline(always)]
pub fn v_expf(x: f32) -> f32 {
    let r = f32::from_bits(0x4b40_0000); // 0x1.8p23
    let z = x.mul_add(f32::from_bits(0x3fb8_aa3b), r); // log2(e)
    let n = z - r;
    let b = (-n).mul_add(
        f32::from_bits(0x35bf_be8e),                  // 0x1.7f7d1cp-20
        (-n).mul_add(f32::from_bits(0x3f31_7200), x), // 0x1.62e4p-1
    );
    let e = z.to_bits() << 23;
    let k = f32::from_bits(e.wrapping_add(1f32.to_bits()));
    let c = n.abs() > 126.0;
    let u = b * b;
    let j = f32::from_bits(0x3c07_2010) // 0x1.0e4020p-7
        .mul_add(b, f32::from_bits(0x3d2b_9f17)) // 0x1.573e2ep-5
        .mul_add(
            u,
            f32::from_bits(0x3e2a_af33).mul_add(b, f32::from_bits(0x3eff_fedb)), // 0x1.555e66p-3, 0x1.fffdb6p-2
        )
        .mul_add(u, f32::from_bits(0x3f7f_fff6) * b); // 0x1.ffffecp-1
    if !c {
        return j.mul_add(k, k);
    }
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
    let s2 = f32::from_bits(e.wrapping_sub(g));
    if n.abs() > 192.0 {
        s1 * s1
    } else {
        s2.mul_add(j, s2) * s1
    }
}

with_fma! {
    /// `ggml_vec_swiglu_f32`: `silu(x)·g` with `silu(x) = x / (1 + v_expf(−x))`.
    pub fn swiglu(x: &[f32], g: &[f32], out: &mut [f32]) {
        for ((o, &x), &g) in out.iter_mut().zip(x).zip(g) {
            let neg = 0.0 - x;
            *o = (x / (1.0 + v_expf(neg))) * g;
        }
    }
}

/// ggml's GELU (tanh approximation) at every f16 value, rounded to f16: the table
/// `ggml_cpu_init` fills and `ggml_vec_geglu_f32` reads (`GGML_GELU_FP16`).
fn gelu_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| {
                let x = half::f16::from_bits(bits).to_f32();
                half::f16::from_f32(gelu_f32(x)).to_f32()
            })
            .collect()
    })
}

with_fma! {
    /// `ggml_gelu_f32`: `0.5·x·(1 + tanh(√(2/π)·x·(1 + 0.044715·x²)))`, the inner sum one FMA
    /// as GCC contracts it.
    fn gelu_f32(x: f32) -> f32 {
        const SQRT_2_OVER_PI: f32 = 0.797_884_6;
        const GELU_COEF_A: f32 = 0.044_715;
        let inner = SQRT_2_OVER_PI * x * (GELU_COEF_A * x).mul_add(x, 1.0);
        0.5 * x * (1.0 + inner.tanh())
    }
}

/// `ggml_vec_geglu_f32`: `gelu(x)·g`, GELU looked up in the f16 table (0 below −10, `x` above
/// 10).
pub fn geglu(x: &[f32], g: &[f32], out: &mut [f32]) {
    let table = gelu_table();
    for ((o, &x), &g) in out.iter_mut().zip(x).zip(g) {
        *o = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x * g
        } else {
            table[half::f16::from_f32(x).to_bits() as usize] * g
        };
    }
}

/// `ggml_vec_dot_f32`: four 8-lane accumulators over steps of 32, reduced pairwise and then
/// with two horizontal adds; leftovers (`n % 32`, head sizes that are not multiples of 32) are
/// added one by one, as FMAs (GCC contracts `sumf += x[i]*y[i]`; not checked against a model).
pub fn dot_f32(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len().min(y.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA; every load is within `n`.
        return unsafe { avx2::dot_f32(&x[..n], &y[..n]) };
    }
    portable::dot_f32(&x[..n], &y[..n])
}

/// The end of `ggml_vec_dot_f32`: `GGML_F32x8_REDUCE` of the summed accumulator (two `hadd`s),
/// then the leftovers.
#[inline(always)]
fn reduce_f32(v: &[f32; 8], x: &[f32], y: &[f32]) -> f32 {
    let t0 = [v[0] + v[4], v[1] + v[5], v[2] + v[6], v[3] + v[7]];
    let mut s = (t0[0] + t0[1]) + (t0[2] + t0[3]);
    for (a, b) in x.iter().zip(y) {
        s = a.mul_add(*b, s);
    }
    s
}

/// One output of llamafile's f32 `tinyBLAS` (AVX2): lane `l % 8` accumulates `a[l]·b[l]` with
/// FMAs in order, then `hsum`. Positions past `a.len()` would add exact zeros, so shorter rows
/// give the padded result.
pub fn dot_lanes8(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA; every load is within `n`.
        return unsafe { avx2::dot_lanes8(&a[..n], &b[..n]) };
    }
    portable::dot_lanes8(&a[..n], &b[..n])
}

mod portable {
    //! The two f32 dot products in plain Rust, for CPUs without AVX2.
    use super::{hsum8, reduce_f32};

    pub fn dot_f32(x: &[f32], y: &[f32]) -> f32 {
        let np = x.len() & !31;
        let mut sum = [[0f32; 8]; 4];
        for i in (0..np).step_by(32) {
            for (j, s) in sum.iter_mut().enumerate() {
                for (l, lane) in s.iter_mut().enumerate() {
                    let k = i + 8 * j + l;
                    *lane = x[k].mul_add(y[k], *lane);
                }
            }
        }
        let v: [f32; 8] =
            std::array::from_fn(|l| (sum[0][l] + sum[2][l]) + (sum[1][l] + sum[3][l]));
        reduce_f32(&v, &x[np..], &y[np..])
    }

    pub fn dot_lanes8(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; 8];
        for (k, (x, y)) in a.iter().zip(b).enumerate() {
            acc[k % 8] = x.mul_add(*y, acc[k % 8]);
        }
        hsum8(&acc)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! The two f32 dot products with AVX2 registers, lane for lane as above.
    use super::{hsum8, reduce_f32};
    use crate::ggml_cpu::simd::lanes;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_f32(x: &[f32], y: &[f32]) -> f32 {
        let n = x.len();
        let np = n & !31;
        let mut sum = [_mm256_setzero_ps(); 4];
        for i in (0..np).step_by(32) {
            for (j, s) in sum.iter_mut().enumerate() {
                let ax = _mm256_loadu_ps(x.as_ptr().add(i + 8 * j));
                let ay = _mm256_loadu_ps(y.as_ptr().add(i + 8 * j));
                *s = _mm256_fmadd_ps(ax, ay, *s);
            }
        }
        let v = _mm256_add_ps(_mm256_add_ps(sum[0], sum[2]), _mm256_add_ps(sum[1], sum[3]));
        reduce_f32(&lanes(v), &x[np..], &y[np..])
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_lanes8(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let n8 = n & !7;
        let mut acc = _mm256_setzero_ps();
        for k in (0..n8).step_by(8) {
            let va = _mm256_loadu_ps(a.as_ptr().add(k));
            let vb = _mm256_loadu_ps(b.as_ptr().add(k));
            acc = _mm256_fmadd_ps(va, vb, acc);
        }
        let mut acc = lanes(acc);
        for k in n8..n {
            acc[k - n8] = a[k].mul_add(b[k], acc[k - n8]);
        }
        hsum8(&acc)
    }
}

with_fma! {
    /// `ggml_compute_forward_soft_max_f32` for one causal row: `scores` already scaled, only the
    /// unmasked prefix given; `out` gets the probabilities (same length). Masked positions are
    /// exactly zero in ggml too, so they only pad the 8-wide blocks of the sum.
    pub fn softmax_row(scores: &[f32], out: &mut [f32]) {
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut sum = 0f64;
        for (s, o) in scores.chunks(8).zip(out.chunks_mut(8)) {
            let mut block = [0f32; 8];
            for (k, (&v, p)) in s.iter().zip(o.iter_mut()).enumerate() {
                *p = v_expf(v - max);
                block[k] = *p;
            }
            sum += hsum8(&block) as f64;
        }
        let inv = (1.0 / sum) as f32;
        for p in out.iter_mut() {
            *p *= inv;
        }
    }
}

/// `ggml_compute_forward_rms_norm_f32` followed by the weight multiply: squares summed in
/// double, in order; `x · scale · w`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let sum: f64 = x.iter().fold(0f64, |s, &v| s + (v * v) as f64);
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * w;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v_expf_is_close_to_exp_and_saturates() {
        for i in -200..=200 {
            let x = i as f32 * 0.437;
            let want = (x as f64).exp();
            let got = v_expf(x) as f64;
            if want > 1e-30 && want < 1e30 {
                assert!(((got - want) / want).abs() < 1e-6, "{x}: {got} vs {want}");
            }
        }
        assert_eq!(v_expf(f32::NEG_INFINITY), 0.0);
        assert_eq!(v_expf(-1000.0), 0.0);
        assert_eq!(v_expf(0.0), 1.0);
    }

    #[test]
    fn dot_orders_agree_with_a_plain_sum_up_to_rounding_and_simd_with_portable() {
        let x: Vec<f32> = (0..70).map(|i| (i as f32 * 0.3).sin()).collect();
        let y: Vec<f32> = (0..70).map(|i| (i as f32 * 0.7).cos()).collect();
        let plain: f64 = x
            .iter()
            .zip(&y)
            .map(|(a, b)| (*a as f64) * (*b as f64))
            .sum();
        assert!((dot_f32(&x, &y) as f64 - plain).abs() < 1e-5);
        assert!((dot_lanes8(&x, &y) as f64 - plain).abs() < 1e-5);
        for n in [64, 70, 13] {
            let (x, y) = (&x[..n], &y[..n]);
            assert_eq!(dot_f32(x, y).to_bits(), portable::dot_f32(x, y).to_bits());
            assert_eq!(
                dot_lanes8(x, y).to_bits(),
                portable::dot_lanes8(x, y).to_bits()
            );
        }
    }

    #[test]
    fn softmax_sums_to_one_and_rms_norm_has_unit_rms() {
        let s: Vec<f32> = (0..13).map(|i| i as f32 * 0.5 - 3.0).collect();
        let mut p = vec![0f32; 13];
        softmax_row(&s, &mut p);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p.windows(2).all(|w| w[0] < w[1]));
        let x: Vec<f32> = (0..64).map(|i| i as f32 - 20.0).collect();
        let mut y = vec![0f32; 64];
        rms_norm(&x, &[1.0; 64], 0.0, &mut y);
        let rms = (y.iter().map(|v| v * v).sum::<f32>() / 64.0).sqrt();
        assert!((rms - 1.0).abs() < 1e-5);
    }
}
