//! Functions compiled three times, for AVX-512F, for AVX2 + FMA and for the baseline x86-64 (or
//! any other target), and picked at run time by what the CPU has. The bodies use plain `*` and
//! `+` (never `mul_add`), so every build computes the same bits: only the vector width differs.

/// Whether this CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn has_avx512f() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// Whether this CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// Defines `fn name(args) -> ret` whose body is also compiled with AVX-512F and with AVX2 and
/// chosen at run time. The body is inlined into each build, together with the
/// `#[inline(always)]` helpers it calls, so their loops vectorise at that width. Exported for
/// the fused ops of other crates (the training losses).
#[macro_export]
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                if $crate::ops::simd::has_avx512f() {
                    // SAFETY: the CPU has AVX-512F.
                    return unsafe { v4($($arg),*) };
                }
                if $crate::ops::simd::has_avx2() {
                    // SAFETY: the CPU has AVX2 and FMA.
                    return unsafe { v3($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}
