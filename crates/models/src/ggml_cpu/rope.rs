//! `ggml_rope_ext` in `GGML_ROPE_TYPE_NORMAL` mode (the Llama GGUF layout: rotated pairs are
//! adjacent) and `GGML_ROPE_TYPE_NEOX` mode (pairs half a head apart), as llama.cpp's CPU
//! backend computes it: the angle of pair `i` is the position times `theta_scale` multiplied in
//! `i` times (not `base^(−2i/d)` in one go), cosines and sines come from libm, and the rotation
//! is the two FMAs GCC emits for `rotate_pairs`.

use super::simd::with_fma;

/// Per-position cosines and sines for one head dimension.
#[derive(Clone, Debug)]
pub struct RopeCache {
    head_dim: usize,
    theta_scale: f32,
}

impl RopeCache {
    pub fn new(head_dim: usize, freq_base: f32) -> Self {
        Self {
            head_dim,
            theta_scale: freq_base.powf(-2.0 / head_dim as f32),
        }
    }

    /// `[cos, sin]` of every pair at position `pos` (`ggml_rope_cache_init`).
    pub fn angles(&self, pos: usize) -> Vec<(f32, f32)> {
        let mut theta = pos as f32;
        (0..self.head_dim / 2)
            .map(|_| {
                let cs = (theta.cos(), theta.sin());
                theta *= self.theta_scale;
                cs
            })
            .collect()
    }
}

with_fma! {
    /// Rotates one head vector in place.
    pub fn rotate(angles: &[(f32, f32)], head: &mut [f32]) {
        for (pair, &(cos, sin)) in head.chunks_exact_mut(2).zip(angles) {
            let (x0, x1) = (pair[0], pair[1]);
            pair[0] = x0.mul_add(cos, -(x1 * sin));
            pair[1] = sin.mul_add(x0, cos * x1);
        }
    }
}

with_fma! {
    /// Rotates one head vector in place, pairing element `i` with `i + d/2`
    /// (`GGML_ROPE_TYPE_NEOX`, the layout of Gemma's GGUF files), the same two FMAs.
    pub fn rotate_halves(angles: &[(f32, f32)], head: &mut [f32]) {
        let half = head.len() / 2;
        let (lo, hi) = head.split_at_mut(half);
        for ((x0, x1), &(cos, sin)) in lo.iter_mut().zip(hi.iter_mut()).zip(angles) {
            let (a, b) = (*x0, *x1);
            *x0 = a.mul_add(cos, -(b * sin));
            *x1 = sin.mul_add(a, cos * b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_norms_and_position_zero_is_identity() {
        let cache = RopeCache::new(8, 10_000.0);
        let mut h: Vec<f32> = (0..8).map(|i| i as f32 - 3.5).collect();
        let before = h.clone();
        rotate(&cache.angles(0), &mut h);
        assert_eq!(h, before);
        rotate(&cache.angles(17), &mut h);
        for (a, b) in h.chunks(2).zip(before.chunks(2)) {
            let (na, nb) = (a[0].hypot(a[1]), b[0].hypot(b[1]));
            assert!((na - nb).abs() < 1e-5);
        }
    }
}
