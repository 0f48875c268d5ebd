//! What the kernels share about x86 SIMD: whether this CPU has AVX2 + FMA (llama.cpp's build
//! of reference), functions compiled twice to use FMA when it has, reading an 8-lane register
//! back as an array, and `hsum_float_8`'s order of the horizontal sum.

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

/// `hsum_float_8`: `((a0+a4) + (a2+a6)) + ((a1+a5) + (a3+a7))`.
#[inline(always)]
pub fn hsum8(a: &[f32; 8]) -> f32 {
    let r = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    (r[0] + r[2]) + (r[1] + r[3])
}

/// Defines a function whose body is compiled a second time with AVX2 + FMA and picked at run
/// time when the CPU has them, so that `mul_add` is one instruction rather than a libm call.
/// Both builds compute the same bits: FMA is correctly rounded either way.
macro_rules! with_fma {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                if $crate::ggml_cpu::simd::has_avx2_fma() {
                    // SAFETY: the CPU has AVX2 and FMA.
                    return unsafe { fast($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}
pub(crate) use with_fma;
