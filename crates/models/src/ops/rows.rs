//! Row primitives of the fused ops: a branch-free `exp` that vectorises, and the max and
//! exp-sum of a row over 16 fixed lanes. The lane layout is part of the definition, so results
//! are the same bits on every CPU and at every vector width.

use crate::multiversion;

/// Lanes of the reductions.
const L: usize = 16;

/// `e^x` to about 2 ulp (Cephes' `expf` polynomial after reduction by ln 2), branch-free so
/// that loops over it vectorise; 0 below −87.3 (where `expf` leaves the normal range) and
/// saturated at e^88.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const MAGIC: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let under = x < -87.33;
    let x = x.clamp(-87.33, 88.0);
    let z = x * LOG2E + MAGIC;
    let n = z - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r2 + r + 1.0;
    // z's low mantissa bits hold n; shifted into the exponent field and biased they are 2ⁿ.
    let two_n = f32::from_bits((z.to_bits() << 23).wrapping_add(1f32.to_bits()));
    if under {
        0.0
    } else {
        y * two_n
    }
}

/// Indices of the `k` largest values of `row`, largest first, ties by lower index: the
/// selection top-k sampling and sorted-probability losses make.
pub fn largest(row: &[f32], k: usize) -> Vec<u32> {
    let k = k.min(row.len());
    if k == 0 {
        return vec![];
    }
    let by_value = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, by_value);
        idx.truncate(k);
    }
    idx.sort_unstable_by(by_value);
    idx
}

#[inline(always)]
fn combine(acc: &[f32; L]) -> f32 {
    // Pairwise, in a fixed order.
    let mut a = *acc;
    let mut w = L / 2;
    while w > 0 {
        for k in 0..w {
            a[k] += a[k + w];
        }
        w /= 2;
    }
    a[0]
}

multiversion! {
    /// The largest element of `x` (−∞ for an empty row).
    pub fn row_max(x: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; L];
        let chunks = x.chunks_exact(L);
        let rest = chunks.remainder();
        for c in chunks {
            for k in 0..L {
                acc[k] = if c[k] > acc[k] { c[k] } else { acc[k] };
            }
        }
        let mut m = acc.iter().fold(f32::NEG_INFINITY, |m, &a| if a > m { a } else { m });
        for &v in rest {
            m = if v > m { v } else { m };
        }
        m
    }
}

multiversion! {
    /// `out[j] = e^(x[j]·scale − shift)`; returns Σ out.
    pub fn exp_into(x: &[f32], scale: f32, shift: f32, out: &mut [f32]) -> f32 {
        let n = x.len().min(out.len());
        let (x, out) = (&x[..n], &mut out[..n]);
        let mut acc = [0f32; L];
        let full = n / L * L;
        for (c, o) in x[..full].chunks_exact(L).zip(out[..full].chunks_exact_mut(L)) {
            for k in 0..L {
                let e = exp(c[k] * scale - shift);
                o[k] = e;
                acc[k] += e;
            }
        }
        let mut s = combine(&acc);
        for j in full..n {
            let e = exp(x[j] * scale - shift);
            out[j] = e;
            s += e;
        }
        s
    }
}

multiversion! {
    /// Σ e^(x[j]·scale − shift), without storing the terms.
    pub fn exp_sum(x: &[f32], scale: f32, shift: f32) -> f32 {
        let mut acc = [0f32; L];
        let chunks = x.chunks_exact(L);
        let rest = chunks.remainder();
        for c in chunks {
            for k in 0..L {
                acc[k] += exp(c[k] * scale - shift);
            }
        }
        let mut s = combine(&acc);
        for &v in rest {
            s += exp(v * scale - shift);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm_and_saturates() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (exp(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.001_37;
        }
        assert!(worst < 2.5e-7, "max relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::MIN), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(100.0).is_finite() && exp(100.0) > 1e38);
    }

    #[test]
    fn reductions_match_plain_loops_at_every_length() {
        for n in [0usize, 1, 5, 16, 17, 100, 1000] {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let m = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            assert_eq!(row_max(&x), m, "n = {n}");
            let mut out = vec![0f32; n];
            let se = exp_into(&x, 0.5, 1.0, &mut out);
            let want: f64 = x.iter().map(|&v| ((v * 0.5 - 1.0) as f64).exp()).sum();
            assert!((se as f64 - want).abs() < 1e-5 * (1.0 + want), "n = {n}");
            assert!(
                (exp_sum(&x, 0.5, 1.0) - se).abs() <= 1e-6 * (1.0 + se),
                "n = {n}"
            );
            for (o, &v) in out.iter().zip(&x) {
                assert!((o - (v * 0.5 - 1.0).exp()).abs() <= 3e-7 * o.max(1e-30));
            }
        }
    }
}
