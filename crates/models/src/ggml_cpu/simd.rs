//! What the kernels share about x86 SIMD: whether this CPU has AVX2 + FMA (llama.cpp's build
//! of reference), and reading an 8-lane register back as an array for the horizontal sums.

/// Whether the AVX2 + FMA kernels may run here.
#[cfg(target_arch = "x86_64")]
pub fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// The eight lanes of `v`, lane 0 first.
///
/// # Safety
/// The CPU must have AVX2 and FMA ([`has_avx2_fma`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn lanes(v: std::arch::x86_64::__m256) -> [f32; 8] {
    let mut out = [0f32; 8];
    std::arch::x86_64::_mm256_storeu_ps(out.as_mut_ptr(), v);
    out
}
